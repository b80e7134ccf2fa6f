"""HDF5 datasets as chunk sources: bytes read directly, decoded outside the HDF5 lock.

h5py describes the layout (byte offset of a contiguous dataset, the chunk index and the
filter pipeline of a chunked one); the tasks read those bytes themselves (``pread`` or a
memory map locally, range requests remotely) and decode them with zlib/numcodecs, so
reads run in parallel instead of one at a time under h5py's global lock. Layouts or
filters lazyio cannot decode fall back to h5py, which is logged at debug level.
"""

from __future__ import annotations

import bz2
import logging
import math
import mmap
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import product
from typing import Any

import h5py
import numcodecs
import numpy as np

from lazyio import handles
from lazyio.chunks.slicing import apply_residual, split_index
from lazyio.errors import CorruptChunkError, FormatError, SourceNotFoundError
from lazyio.location import Location

__all__ = ["H5Source", "open_h5", "chunk_index"]

_logger = logging.getLogger("lazyio")

# HDF5 filter ids (H5Zpublic.h and the registered plugin ids)
DEFLATE, SHUFFLE, FLETCHER32, SZIP, NBIT, SCALEOFFSET = 1, 2, 3, 4, 5, 6
BZIP2, LZF, BLOSC, ZSTD = 307, 32000, 32001, 32015


def _unshuffle(itemsize: int, buf: bytes) -> bytes:
    return numcodecs.Shuffle(elementsize=itemsize).decode(buf)


def _blosc(buf: bytes) -> bytes:
    return numcodecs.Blosc().decode(buf)


def _zstd(buf: bytes) -> bytes:
    return numcodecs.Zstd().decode(buf)


def _strip_checksum(buf: bytes) -> bytes:
    return bytes(memoryview(buf)[:-4])


def _decoder(filter_id: int, values: tuple[int, ...], itemsize: int) -> Callable | None:
    if filter_id == DEFLATE:
        return zlib.decompress
    if filter_id == SHUFFLE:
        return partial(_unshuffle, values[0] if values else itemsize)
    if filter_id == FLETCHER32:
        return _strip_checksum
    if filter_id == BZIP2:
        return bz2.decompress
    if filter_id == BLOSC:
        return _blosc
    if filter_id == ZSTD:
        return _zstd
    return None


def open_h5(location: Location, mode: str = "r", token: str = "") -> h5py.File:
    """Open (or reuse) an h5py file for ``location`` from the per-process handle cache."""

    def opener() -> h5py.File:
        try:
            if location.local_path is not None:
                return h5py.File(location.local_path, mode)
            fileobj = location.fs.open(location.path, "rb", block_size=2**20, cache_type="bytes")
            return h5py.File(fileobj, mode)
        except FileNotFoundError as err:
            raise SourceNotFoundError(f"No such file: '{location}'") from err
        except OSError as err:
            raise FormatError(f"{location}: cannot be opened as HDF5 ({err})") from err

    return handles.acquire(("h5py", location, mode, token), opener)


def _open_raw(location: Location, token: str) -> int:
    """A raw file descriptor for ``pread`` (local files only)."""
    path = location.local_path
    return handles.acquire(("fd", location, token), lambda: os.open(path, os.O_RDONLY))


def _open_mmap(location: Location, token: str) -> mmap.mmap:
    def opener() -> mmap.mmap:
        with open(location.local_path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    return handles.acquire(("mmap", location, token), opener)


@dataclass(frozen=True)
class ChunkIndex:
    """Where each stored chunk lives: grid-shaped arrays of offset, size and filter mask."""

    offsets: np.ndarray  # int64, -1 where the chunk was never written
    sizes: np.ndarray
    masks: np.ndarray


def chunk_index(location: Location, dataset: str, token: str = "") -> ChunkIndex:
    """Read a chunked dataset's index once per process (cached with the handles)."""

    def build() -> ChunkIndex:
        dset = open_h5(location, token=token)[dataset]
        grid = tuple(math.ceil(s / c) for s, c in zip(dset.shape, dset.chunks, strict=True))
        offsets = np.full(grid, -1, dtype=np.int64)
        sizes = np.zeros(grid, dtype=np.int64)
        masks = np.zeros(grid, dtype=np.uint32)
        chunks = dset.chunks

        def visit(info: Any) -> None:
            pos = tuple(o // c for o, c in zip(info.chunk_offset, chunks, strict=True))
            offsets[pos] = info.byte_offset
            sizes[pos] = info.size
            masks[pos] = info.filter_mask

        try:
            dset.id.chunk_iter(visit)
        except AttributeError:  # HDF5 older than 1.12.3: slower, same answer
            for i in range(dset.id.get_num_chunks()):
                visit(dset.id.get_chunk_info(i))
        return ChunkIndex(offsets, sizes, masks)

    return handles.acquire(("h5index", location, dataset, token), build)


@dataclass(frozen=True)
class H5Source:
    """One HDF5 dataset, read by slices; holds no open handle.

    Use :meth:`from_dataset` to describe an open ``h5py.Dataset``.
    """

    location: Location
    dataset: str
    shape: tuple[int, ...]
    dtype: np.dtype
    storage_chunks: tuple[int, ...] | None = None
    offset: int | None = None  # byte offset of an unfiltered contiguous dataset
    filters: tuple[tuple[int, tuple[int, ...]], ...] | None = None  # None: use h5py
    fill_value: Any = 0
    token: str = ""  # changes when the file does, so stale handles are never reused

    @classmethod
    def from_dataset(cls, location: Location, dset: h5py.Dataset) -> H5Source:
        """Describe ``dset`` (layout, filters, offset) without reading its data."""
        dtype = dset.dtype
        direct = dtype.kind in "biufc" and not dset.is_virtual and dset.external is None
        offset: int | None = None
        filters: tuple[tuple[int, tuple[int, ...]], ...] | None = None
        if direct and dset.chunks is None:
            offset = dset.id.get_offset()  # None until space is allocated
            if offset is None and dset.size:
                direct = False
        elif direct:
            plist = dset.id.get_create_plist()
            pipeline = []
            for i in range(plist.get_nfilters()):
                fid, _flags, values, _name = plist.get_filter(i)
                if _decoder(int(fid), tuple(values), dtype.itemsize) is None:
                    _logger.debug(
                        "%s:%s uses HDF5 filter %s that lazyio does not decode; reading "
                        "through h5py", location, dset.name, fid,
                    )
                    direct = False
                    break
                pipeline.append((int(fid), tuple(int(v) for v in values)))
            filters = tuple(pipeline) if direct else None
        fill = dset.fillvalue if dtype.kind in "biufc" else None
        return cls(
            location=location,
            dataset=dset.name,
            shape=tuple(dset.shape),
            dtype=dtype,
            storage_chunks=tuple(dset.chunks) if dset.chunks else None,
            offset=offset if direct else None,
            filters=filters if direct else None,
            fill_value=fill.item() if isinstance(fill, np.generic) else fill,
            token=location.modified_token(),
        )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        box, residual = split_index(key, self.shape)
        return apply_residual(self.read_box(box), residual)

    def read_box(self, box: tuple[slice, ...]) -> np.ndarray:
        """Read a rectangular region given as step-1 slices."""
        out_shape = tuple(s.stop - s.start for s in box)
        if math.prod(out_shape) == 0:
            return np.empty(out_shape, dtype=self.dtype)
        if self.offset is not None:
            return self._read_contiguous(box)
        if self.filters is not None:
            return self._read_chunks(box, out_shape)
        return self._read_h5py(box)

    def _read_h5py(self, box: tuple[slice, ...]) -> np.ndarray:
        dset = open_h5(self.location, token=self.token)[self.dataset]
        return dset[box] if self.ndim else dset[()]

    def _read_contiguous(self, box: tuple[slice, ...]) -> np.ndarray:
        # Whole rows along axis 0 form one contiguous byte range; the rest is sliced in memory.
        row_items = math.prod(self.shape[1:]) if self.ndim else 1
        first_row, rows = (box[0].start, box[0].stop - box[0].start) if self.ndim else (0, 1)
        start = self.offset + first_row * row_items * self.dtype.itemsize
        nbytes = rows * row_items * self.dtype.itemsize
        if self.location.local_path is not None:
            mm = _open_mmap(self.location, self.token)
            if start + nbytes > len(mm):
                raise CorruptChunkError(
                    f"{self.location}: dataset {self.dataset} extends past the end of the file "
                    f"(needs {start + nbytes} bytes, the file has {len(mm)})"
                )
            flat = np.frombuffer(mm, dtype=self.dtype, count=rows * row_items, offset=start)
        else:
            raw = self.location.read_bytes(start, start + nbytes)
            if len(raw) != nbytes:
                raise CorruptChunkError(
                    f"{self.location}: dataset {self.dataset} is truncated (short read)"
                )
            flat = np.frombuffer(raw, dtype=self.dtype)
        if self.ndim == 0:
            return flat.reshape(()).copy()
        region = flat.reshape((rows, *self.shape[1:]))
        return np.array(region[(slice(None), *box[1:])])

    def _fetch(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        if self.location.local_path is not None:
            fd = _open_raw(self.location, self.token)
            return [os.pread(fd, size, offset) for offset, size in ranges]
        fs, path = self.location.fs, self.location.path
        starts = [o for o, _ in ranges]
        ends = [o + s for o, s in ranges]
        return fs.cat_ranges([path] * len(ranges), starts, ends)

    def _decode(self, raw: bytes, mask: int, coords: tuple[int, ...]) -> np.ndarray:
        chunk_shape = self.storage_chunks
        try:
            buf: Any = raw
            for i, (fid, values) in reversed(list(enumerate(self.filters))):
                if mask & (1 << i):
                    continue  # HDF5 skipped this (optional) filter for this chunk
                buf = _decoder(fid, values, self.dtype.itemsize)(buf)
            return np.frombuffer(buf, dtype=self.dtype).reshape(chunk_shape)
        except Exception as err:
            raise CorruptChunkError(
                f"{self.location}: chunk {coords} of dataset {self.dataset} cannot be decoded "
                f"({type(err).__name__}: {err})"
            ) from err

    def _read_chunks(self, box: tuple[slice, ...], out_shape: tuple[int, ...]) -> np.ndarray:
        cs = self.storage_chunks
        index = chunk_index(self.location, self.dataset, self.token)
        ranges_per_axis = [
            range(s.start // c, -(-s.stop // c)) for s, c in zip(box, cs, strict=True)
        ]
        coords_list = list(product(*ranges_per_axis))
        present = [c for c in coords_list if index.offsets[c] >= 0]
        raws = self._fetch([(int(index.offsets[c]), int(index.sizes[c])) for c in present])
        if len(present) == len(coords_list) and len(present) == 1:
            # one chunk covering the box: no assembly copy beyond the slice
            c = present[0]
            chunk = self._decode(raws[0], int(index.masks[c]), c)
            sel = tuple(
                slice(s.start - ci * k, s.stop - ci * k) for s, ci, k in zip(box, c, cs, strict=True)
            )
            return np.array(chunk[sel])
        out = np.empty(out_shape, dtype=self.dtype)
        if len(present) < len(coords_list):
            out[...] = self.fill_value
        for c, raw in zip(present, raws, strict=True):
            chunk = self._decode(raw, int(index.masks[c]), c)
            src, dst = [], []
            for s, ci, k in zip(box, c, cs, strict=True):
                lo, hi = max(s.start, ci * k), min(s.stop, (ci + 1) * k)
                src.append(slice(lo - ci * k, hi - ci * k))
                dst.append(slice(lo - s.start, hi - s.start))
            out[tuple(dst)] = chunk[tuple(src)]
        return out
