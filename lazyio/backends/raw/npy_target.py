"""Streamed ``.npy`` writes: the header first, then every block into its region.

:func:`lazyio.save` hands the writer a temporary sibling of the target and renames it
into place afterwards. Locally the writer puts the header there, with its magic string
left blank, and a payload of the final size; then :func:`~lazyio.backends.store.store`
writes each dask block in place through a memory map that every process opens for itself
(:class:`NpyTarget`); then the magic is written and the file synced. Until then the
temporary is not a valid ``.npy`` file, so an interrupted write never leaves a file that
looks complete.

Remote targets (fsspec URLs) cannot be written in place: blocks are computed a few at a
time in storage order and appended to the (temporary) object.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import math
import mmap
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from lazyio import handles
from lazyio.backends.chunking import write_block_bytes
from lazyio.backends.raw.npy_header import MAGIC, header_bytes
from lazyio.backends.store import rechunk_to_storage, store, uses_distributed
from lazyio.errors import UnsupportedError
from lazyio.location import Location

__all__ = ["NpyTarget", "write_npy_into"]

_SLAB_BYTES = 32 * 2**20  # numpy payloads and remote uploads go out in pieces of this size
_REMOTE_BATCH = 4  # remote writes compute this many slabs at once


#: This process's write maps of the .npy files being written, by path: a registry of
#: their own, so the read-handle cache's bound and ``close_all`` never close one mid-write.
WRITE_MAPS: handles.WriterRegistry[str, mmap.mmap] = handles.WriterRegistry("npy")


def _open_write_map(path: str) -> mmap.mmap:
    def opener() -> mmap.mmap:
        with open(path, "r+b") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE)

    return WRITE_MAPS.acquire(path, opener)


def close_writers(path: str) -> int:
    """Close this process's write maps of ``path`` (run on every worker after a write)."""
    return int(WRITE_MAPS.close(path))


@dataclass(frozen=True)
class NpyTarget:
    """The payload of a ``.npy`` file being written, as a :func:`dask.array.store` target.

    Picklable and handle-free: each process maps the file on its first write and keeps
    the map in the handle cache. Regions of different tasks never overlap, so processes
    on one machine (sharing its page cache) write concurrently without locks.

    Parameters
    ----------
    path : str
        Local path of the (temporary) file, already of its final size.
    offset : int
        Byte offset of the payload (the header's length).
    shape : tuple of int
        Shape of the array.
    dtype : numpy.dtype
        Its dtype.
    """

    path: str
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __setitem__(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        if not isinstance(region, tuple):
            region = (region,)
        lens = [s.stop - s.start for s in region] if region else []
        if math.prod(lens) == 0 and self.shape:
            return
        mm = _open_write_map(self.path)
        view = np.ndarray(self.shape, dtype=self.dtype, buffer=mm, offset=self.offset)
        view[region] = block
        # Drop the written pages from this process's map: they stay in the page cache
        # (dirty, written back by the kernel) but no longer count as the worker's memory.
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is not None:
            first = _flat([s.start for s in region], self.shape)
            last = _flat([s.stop - 1 for s in region], self.shape) + 1
            start = self.offset + first * self.dtype.itemsize
            start -= start % mmap.PAGESIZE
            stop = self.offset + last * self.dtype.itemsize
            with contextlib.suppress(OSError, ValueError):  # only an optimisation
                mm.madvise(advice, start, stop - start)


def _flat(index: list[int], shape: tuple[int, ...]) -> int:
    flat = 0
    for i, n in zip(index, shape, strict=True):
        flat = flat * n + i
    return flat


def _slabs(shape: tuple[int, ...], itemsize: int, limit: int) -> Iterator[tuple[slice, ...]]:
    """Regions of ``shape`` in C order, each one contiguous run of at most ~``limit`` bytes."""
    if not shape:
        yield ()
        return
    row = math.prod(shape[1:]) * itemsize
    if row <= limit or len(shape) == 1:
        step = max(1, limit // max(1, row))
        for start in range(0, shape[0], step):
            yield (slice(start, min(start + step, shape[0])),)
        return
    for i in range(shape[0]):
        for rest in _slabs(shape[1:], itemsize, limit):
            yield (slice(i, i + 1), *rest)


def _payload_pieces(data: np.ndarray, fortran: bool) -> Iterator[bytes]:
    # A Fortran-ordered payload is the C-ordered payload of the transpose.
    arr = data.T if fortran else data
    if arr.ndim == 0:
        yield arr.tobytes()
        return
    for region in _slabs(arr.shape, arr.dtype.itemsize, _SLAB_BYTES):
        yield arr[region].tobytes()


def _fortran(data: np.ndarray) -> bool:
    # numpy.save's rule: Fortran order only for arrays that are F- but not C-contiguous.
    return bool(data.flags.f_contiguous and not data.flags.c_contiguous)


def _check(data: Any) -> None:
    if data.dtype.hasobject:
        raise UnsupportedError(
            f"cannot write an array of dtype {data.dtype!r} to .npy: it holds Python "
            "objects, which lazyio neither pickles nor unpickles"
        )
    if isinstance(data, da.Array) and any(math.isnan(c) for cs in data.chunks for c in cs):
        raise ValueError(
            "the dask array has unknown chunk sizes; call compute_chunk_sizes() first"
        )


def write_npy_into(
    location: Location, data: np.ndarray | da.Array, *, show_progressbar: bool = True
) -> None:
    """Write ``data`` as a ``.npy`` file exactly at ``location``, streaming dask arrays.

    The caller (:func:`lazyio.save`) chose ``location``: a temporary sibling of the target,
    renamed into place once this returns. Locally the magic string is written last, so an
    interrupted write never leaves a valid ``.npy`` file; remotely the file is streamed.

    Parameters
    ----------
    location : Location
        Where to write (created or truncated).
    data : numpy.ndarray or dask.array.Array
        What to write. Numpy arrays are written as :func:`numpy.save` writes them (byte
        for byte, Fortran order included); dask arrays are written in C order, block by
        block, by whatever scheduler is active (a ``distributed`` cluster included,
        whose workers must see the target's directory).
    show_progressbar : bool, default True
        Show a progress bar while dask blocks are written.
    """
    _check(data)
    if location.local_path is None:
        _stream_remote(location, data)
        return
    path = location.local_path
    fortran = not isinstance(data, da.Array) and _fortran(data)
    header = header_bytes(data.shape, data.dtype, fortran)
    # The magic goes in last: until then the file is not a .npy file to any reader.
    blank_header = bytes(len(MAGIC)) + header[len(MAGIC) :]
    with open(path, "wb") as f:
        f.write(blank_header)
        if isinstance(data, da.Array):
            # _check refused unknown chunk sizes, so nbytes is a whole number
            size = len(header) + int(data.nbytes)
            f.truncate(size)
            f.flush()
            # Reserve the blocks before anything maps the file: a full disk is then an
            # ENOSPC here, not a SIGBUS in whichever task first touches a missing page.
            _reserve(f.fileno(), size)
        else:
            f.writelines(_payload_pieces(np.asarray(data), fortran))
    if isinstance(data, da.Array) and data.size:
        _store_blocks(path, len(header), data, show_progressbar)
    with open(path, "r+b") as f:
        f.write(MAGIC)
        f.flush()
        os.fsync(f.fileno())


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks (Linux ``fallocate``); raise ENOSPC if they do not fit.

    ``fallocate(2)`` itself, not ``os.posix_fallocate``: where the file system cannot
    reserve (NFS, ZFS), glibc's emulation writes every block, which would double a large
    write; there the file is written without a reservation, as before.
    """
    fallocate = _libc_fallocate()
    if size == 0 or fallocate is None:
        return
    if fallocate(fd, 0, ctypes.c_int64(0), ctypes.c_int64(size)) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
        return
    raise OSError(err, os.strerror(err))


@functools.cache
def _libc_fallocate() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int
    return func


def _store_blocks(tmp: str, offset: int, data: da.Array, show_progressbar: bool) -> None:
    target = NpyTarget(tmp, offset, tuple(data.shape), data.dtype)
    try:
        # a memory map has no storage chunks: any block is aligned. Many small blocks are
        # merged (fewer tasks); computed blocks are not cut, since cutting saves no memory
        # (the source block is computed whole anyway) and puts split tasks between each
        # source block and its write, which lets a cluster compute source blocks far ahead
        # of slower writes (a 400 MiB worker writing 16 MiB blocks ran out of memory)
        largest = math.prod(max(c, default=0) for c in data.chunks)
        limit = max(write_block_bytes(), largest * data.dtype.itemsize)
        store([rechunk_to_storage(data, None, limit)], [target],
              show_progressbar=show_progressbar)
    finally:
        close_writers(tmp)
        if uses_distributed():
            from distributed import default_client

            default_client().run(close_writers, tmp)


def _stream_remote(location: Location, data: np.ndarray | da.Array) -> None:
    # Remote targets cannot be written in place: blocks are computed a few at a time in
    # storage order and appended to the object.
    fortran = not isinstance(data, da.Array) and _fortran(data)
    with location.fs.open(location.path, "wb") as f:
        f.write(header_bytes(data.shape, data.dtype, fortran))
        if not isinstance(data, da.Array):
            f.writelines(_payload_pieces(np.asarray(data), fortran))
        elif data.ndim == 0:
            f.write(np.asarray(data.compute()).tobytes())
        else:
            regions = list(_slabs(tuple(data.shape), data.dtype.itemsize, _SLAB_BYTES))
            for i in range(0, len(regions), _REMOTE_BATCH):
                batch = regions[i : i + _REMOTE_BATCH]
                for block in dask.compute(*(data[r] for r in batch)):
                    f.write(np.ascontiguousarray(block).tobytes())

