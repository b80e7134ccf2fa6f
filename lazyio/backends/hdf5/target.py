"""HDF5 write targets: chunks compressed in the dask tasks, written by one writer.

:class:`H5ChunkTarget` receives a block (a whole number of storage chunks), encodes each
storage chunk with the dataset's own filter pipeline (shuffle, deflate, blosc, zstd) in
the task, in parallel and outside the HDF5 lock, and then writes the encoded bytes with
``write_direct_chunk`` under a lock, so the file is byte-for-byte what h5py would write
(Fletcher32 checksums included). Pipelines lazyio cannot encode (lzf, szip, ...) go
through h5py under the lock.

The file being written lives in this module's writer registry (:data:`WRITERS`), not in
the bounded read-handle cache: reading from many files during a write, a small
``LAZYIO_MAX_OPEN_FILES`` or :func:`lazyio.close_all` cannot close it mid-write.
"""

from __future__ import annotations

import contextlib
import os
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import product
from typing import Any

import h5py
import numpy as np

from lazyio import handles
from lazyio.backends.hdf5.filters import (
    Codec,
    Pipeline,
    encoder,
    read_pipeline,
    register_hdf5_plugins,
)
from lazyio.errors import LazyioError

__all__ = ["WRITERS", "H5ChunkTarget", "WriterNotOpenError", "encodable_pipeline",
           "open_for_targets", "writing_file"]

# One lock per process: h5py objects are shared by the threads of a local scheduler.
_WRITE_LOCK = threading.Lock()

#: The HDF5 files being written in this process, by the key their targets carry.
WRITERS: handles.WriterRegistry[str, h5py.File] = handles.WriterRegistry("hdf5")


class WriterNotOpenError(LazyioError, RuntimeError):
    """A chunk target ran in a process that does not hold the file being written."""


@contextlib.contextmanager
def open_for_targets(h5file: h5py.File) -> Iterator[str]:
    """Make a file the writer opened reachable by :class:`H5ChunkTarget` in this process.

    Yields the key the targets use. The writer keeps ownership: the file is only
    unregistered (not closed) on exit. The registry is not the read-handle cache, so
    the file stays open however many files the write reads from.
    """
    with WRITERS.registered(f"{h5file.filename}#{id(h5file)}", h5file) as key:
        yield key


@contextlib.contextmanager
def writing_file(path: str, mode: str) -> Iterator[h5py.File]:
    """Open the HDF5 file ``path`` (a temporary lazyio owns) for writing; close it safely
    after an error, a full disk included.

    When the disk fills, the HDF5 library cannot write the metadata it holds: closing the
    file fails, and the library crashed the process later (SIGSEGV at exit, or when h5py
    objects kept by the error's traceback were freed). The file is a temporary that will be
    removed, so it is emptied (truncated to 0 bytes, which frees its blocks), after which the
    library's pending writes succeed and the file closes normally. The frames of the error
    are cleared first, so the h5py objects they hold are released while the file is open.
    """
    # a copied pipeline may name one of hdf5plugin's filters, which h5py must know to create
    register_hdf5_plugins()
    h5file = h5py.File(path, mode)
    try:
        yield h5file
    except BaseException as err:
        from lazyio.backends.atomic import is_disk_full

        if _chain_disk_full(err, is_disk_full):
            with contextlib.suppress(OSError):
                os.truncate(path, 0)
        _release_frames(err)
        with contextlib.suppress(Exception):  # the error being raised says more
            _close(h5file, path)
        raise
    _close(h5file, path)


def _chain_disk_full(err: BaseException | None, test: Any) -> bool:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if test(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _close(h5file: h5py.File, path: str) -> None:
    from lazyio.backends.atomic import is_disk_full

    try:
        h5file.close()
    except Exception as err:
        if not is_disk_full(err):
            raise
        with contextlib.suppress(OSError):
            os.truncate(path, 0)  # see writing_file
        with contextlib.suppress(Exception):
            h5file.close()
        raise


def _release_frames(err: BaseException | None) -> None:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)
        err = err.__cause__ or err.__context__


def _encoder(fid: int, values: tuple[int, ...], itemsize: int) -> Codec | None:
    return encoder(fid, values, itemsize)


def encodable_pipeline(dset: h5py.Dataset) -> Pipeline | None:
    """The dataset's filter pipeline if lazyio can encode every filter of it, else None."""
    if dset.chunks is None or dset.dtype.kind not in "biufc":
        return None
    pipeline, _names = read_pipeline(dset)
    if any(encoder(fid, values, dset.dtype.itemsize) is None for fid, values in pipeline):
        return None
    return pipeline


@dataclass(frozen=True)
class H5ChunkTarget:
    """Write blocks into dataset ``dataset`` of the file registered under ``key``."""

    key: str
    dataset: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: tuple[int, ...] | None
    pipeline: Pipeline | None

    def _dataset(self) -> h5py.Dataset:
        h5file = WRITERS.get(self.key)
        if h5file is None:
            raise WriterNotOpenError(
                f"HDF5 file {self.key} is not open for writing in this process; HDF5 "
                "files are written through one writer process"
            )
        return h5file[self.dataset]

    def _steps(self) -> list[Codec]:
        steps = []
        for fid, values in self.pipeline or ():
            step = encoder(fid, values, self.dtype.itemsize)
            if step is None:  # encodable_pipeline() vouched for every filter
                raise ValueError(f"HDF5 filter {fid} cannot be encoded by lazyio")
            steps.append(step)
        return steps

    def encode(self, chunk: np.ndarray[Any, Any]) -> bytes:
        """Encode one full storage chunk with the dataset's filters."""
        buf: Any = np.ascontiguousarray(chunk, dtype=self.dtype).tobytes()
        for step in self._steps():
            buf = step(buf)
        return bytes(buf)

    #: HDF5 files cannot be written by several processes: a cluster sends encoded chunks
    #: back to the process that holds the file (see :func:`lazyio.backends.store.store`).
    single_writer = True

    def encoder(self) -> H5ChunkTarget:
        """What an encoding task needs (the layout and the filters), without the key of
        the file: a path on the writer's machine, which a cluster's workers neither see
        nor need (tests/test_nodisk_cluster.py finds any client path in a task)."""
        return replace(self, key="")

    def encode_block(
        self, region: tuple[slice, ...], block: np.ndarray[Any, Any]
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

    def __setitem__(self, region: tuple[slice, ...], block: np.ndarray[Any, Any]) -> None:
        self.write_encoded(self.encode_block(region, block))
