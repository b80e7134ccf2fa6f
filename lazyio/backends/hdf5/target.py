"""HDF5 write targets: chunks compressed in the dask tasks, written by one writer.

:class:`H5ChunkTarget` receives a block (a whole number of storage chunks), encodes each
storage chunk with the dataset's own filter pipeline (shuffle, deflate, blosc, zstd) in
the task, in parallel and outside the HDF5 lock, and then writes the encoded bytes with
``write_direct_chunk`` under a lock, so the file is byte-for-byte what h5py would write.
Pipelines lazyio cannot encode (lzf, szip, fletcher32, ...) go through h5py under the lock.
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from itertools import product
from typing import Any

import h5py
import numcodecs
import numpy as np

from lazyio import handles
from lazyio.backends.hdf5.shuffle import shuffle
from lazyio.backends.hdf5.sources import BLOSC, DEFLATE, SHUFFLE, ZSTD

__all__ = ["H5ChunkTarget", "encodable_pipeline", "open_for_targets"]

# One lock per process: h5py objects are shared by the threads of a local scheduler.
_WRITE_LOCK = threading.Lock()

_BLOSC_NAMES = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}


@contextlib.contextmanager
def open_for_targets(h5file: h5py.File) -> Iterator[str]:
    """Make a file the writer opened reachable by :class:`H5ChunkTarget` in this process.

    Yields the key the targets use. The writer keeps ownership: the file is only
    unregistered (not closed) on exit.
    """
    key = f"{h5file.filename}#{id(h5file)}"
    handles.acquire(("h5-write", key), lambda: h5file)
    try:
        yield key
    finally:
        handles.default_cache.forget(("h5-write", key))


def _encoder(fid: int, values: tuple[int, ...], itemsize: int) -> Any:
    if fid == SHUFFLE:  # numpy, not numcodecs: it releases the GIL
        return partial(shuffle, itemsize=values[0] if values else itemsize)
    if fid == DEFLATE:
        level = values[0] if values else 4
        return lambda buf: zlib.compress(buf, level)
    if fid == BLOSC and len(values) >= 7:
        codec = numcodecs.Blosc(
            cname=_BLOSC_NAMES.get(values[6], "blosclz"), clevel=values[4], shuffle=values[5],
            typesize=itemsize,
        )
        return codec.encode
    if fid == ZSTD:
        codec = numcodecs.Zstd(level=values[0] if values else 3)
        return codec.encode
    return None


def encodable_pipeline(dset: h5py.Dataset) -> tuple[tuple[int, tuple[int, ...]], ...] | None:
    """The dataset's filter pipeline if lazyio can encode every filter of it, else None."""
    if dset.chunks is None or dset.dtype.kind not in "biufc":
        return None
    plist = dset.id.get_create_plist()
    pipeline = []
    for i in range(plist.get_nfilters()):
        fid, _flags, values, _name = plist.get_filter(i)
        if _encoder(int(fid), tuple(values), dset.dtype.itemsize) is None:
            return None
        pipeline.append((int(fid), tuple(int(v) for v in values)))
    return tuple(pipeline)


@dataclass(frozen=True)
class H5ChunkTarget:
    """Write blocks into dataset ``dataset`` of the file registered under ``key``."""

    key: str
    dataset: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    pipeline: tuple[tuple[int, tuple[int, ...]], ...] | None

    def _dataset(self) -> h5py.Dataset:
        h5file = handles.default_cache.acquire(("h5-write", self.key), _not_open(self.key))
        return h5file[self.dataset]

    def encode(self, chunk: np.ndarray) -> bytes:
        """Encode one full storage chunk with the dataset's filters."""
        buf: Any = np.ascontiguousarray(chunk, dtype=self.dtype).tobytes()
        for fid, values in self.pipeline or ():
            buf = _encoder(fid, values, self.dtype.itemsize)(buf)
        return bytes(buf)

    #: HDF5 files cannot be written by several processes: a cluster sends encoded chunks
    #: back to the process that holds the file (see :func:`lazyio.backends.store.store`).
    single_writer = True

    def encode_block(
        self, region: tuple[slice, ...], block: np.ndarray
    ) -> list[tuple[tuple[int, ...], Any]]:
        """Encode a block into ``(chunk offset, bytes)`` pairs, or one raw region write."""
        block = np.asarray(block, dtype=self.dtype)
        if self.pipeline is None or self.chunks is None:
            return [(tuple(r.start or 0 for r in region), block)]
        starts = [r.start or 0 for r in region]
        encoded = []
        grid = [range(0, b, c) for b, c in zip(block.shape, self.chunks, strict=True)]
        for corner in product(*grid):
            sel = tuple(slice(o, o + c) for o, c in zip(corner, self.chunks, strict=True))
            piece = block[sel]
            if piece.shape != self.chunks:  # edge chunks are stored full size
                full = np.zeros(self.chunks, dtype=self.dtype)
                full[tuple(slice(0, s) for s in piece.shape)] = piece
                piece = full
            offset = tuple(s + o for s, o in zip(starts, corner, strict=True))
            encoded.append((offset, self.encode(piece)))
        return encoded

    def write_encoded(self, encoded: list[tuple[tuple[int, ...], Any]]) -> None:
        """Write the output of :meth:`encode_block` (in the process holding the file)."""
        with _WRITE_LOCK:
            dset = self._dataset()
            for offset, data in encoded:
                if isinstance(data, np.ndarray):
                    region = tuple(
                        slice(o, o + s) for o, s in zip(offset, data.shape, strict=True)
                    )
                    dset[region if region else ()] = data
                else:
                    dset.id.write_direct_chunk(offset, data)

    def __setitem__(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        self.write_encoded(self.encode_block(region, block))


def _not_open(key: str) -> Any:
    def fail() -> Any:
        raise RuntimeError(
            f"HDF5 file {key} is not open for writing in this process; HDF5 files are "
            "written through one writer process"
        )

    return fail
