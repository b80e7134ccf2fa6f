"""Opening HDF5 files for reading: h5py handles and raw descriptors, from the handle cache.

Both are cached per process under typed keys (:class:`H5FileKey`, :class:`RawFileKey`)
that carry the file's version token, so a rewritten file is never read through a handle
of its previous version.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
from dataclasses import dataclass
from typing import ClassVar, Literal

import h5py

from lazyio import handles
from lazyio.backends.hdf5.safety import refuse_crash_hazards
from lazyio.errors import FormatError, not_a_file, not_found, translate
from lazyio.location import Location

__all__ = [
    "CrashHazardError",
    "HDF5_MAGIC", "H5FileKey", "H5Mode", "HeapLoopError", "RawFileKey", "check_global_heaps",
    "check_hdf5_source", "is_hdf5", "open_h5", "open_raw", "sniff_hdf5",
]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_hdf5(head: bytes) -> bool:
    """Whether ``head`` starts with the HDF5 superblock signature."""
    return head.startswith(HDF5_MAGIC)


def sniff_hdf5(location: Location, head: bytes) -> h5py.File | None:
    """The file at ``location`` opened for reading if ``head`` has the HDF5 signature and
    the library opens it, else ``None``: what a format's sniffer looks into."""
    if not is_hdf5(head):
        return None
    try:
        return open_h5(location, token=location.modified_token())
    except (HeapLoopError, CrashHazardError):
        raise  # an HDF5 file, damaged: say so rather than "unknown format"
    except (OSError, FormatError):
        return None


class HeapLoopError(FormatError):
    """A global heap collection of the file would make the HDF5 library loop forever."""


class CrashHazardError(FormatError):
    """A damaged structure of the file would crash the HDF5 library (a SIGSEGV) if read
    (:func:`lazyio.backends.hdf5.safety.crash_hazards`)."""


# A global heap collection ("GCOL", version 1, 3 reserved zero bytes, then its size) holds
# variable-length data (strings in attributes and datasets). HDF5 (2.0 included) walks
# its objects by their sizes; an object of index 0 and size 0 -- a few zeroed bytes --
# never advances the walk, and the first read of any string attribute loops forever in C,
# where no signal or timeout reaches it. 0.2-1 % of mutated files hung this way.
_GCOL = b"GCOL\x01\x00\x00\x00"
_GCOL_MIN = 4096  # H5HG_MINSIZE: HDF5 writes no smaller collection
# files up to this size are scanned whole; larger ones at both ends, where h5py writes the
# file's metadata (~3 ms per MiB: a full scan of a 16 MB file added 45 ms to every open)
_SCAN_WHOLE = 2 << 20
_SCAN_ENDS = 1 << 20


def _looping_object(view: mmap.mmap, start: int) -> int | None:
    """Where the walk of the collection at ``start`` stalls (HDF5's own walk), or None."""
    size = struct.unpack_from("<Q", view, start + 8)[0]
    end = min(start + size, len(view))
    if size < _GCOL_MIN:
        return None  # not a collection HDF5 would accept: it refuses it, no loop
    p = start + 16
    while p + 16 <= end:
        index = struct.unpack_from("<H", view, p)[0]
        length = struct.unpack_from("<Q", view, p + 8)[0]
        need = 16 + ((length + 7) & ~7) if index else length
        if need == 0:
            return p
        p += need
    return None


def check_global_heaps(location: Location) -> None:
    """Refuse a local HDF5 file whose global heap would make the HDF5 library hang.

    Files up to 2 MiB are scanned whole, larger ones in their first and last MiB (where
    h5py puts metadata); ``untrusted=True`` covers the rest by parsing in a child process.

    Raises
    ------
    HeapLoopError
        Naming the file and the byte offset of the damaged collection.
    """
    path = location.local_path
    if path is None:
        return
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            view = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size >= 4096 else None
    except (OSError, ValueError):
        return  # unreadable or not a regular file: opening it reports that in context
    if view is None:
        return
    with view:
        spans = ([(0, size)] if size <= _SCAN_WHOLE
                 else [(0, _SCAN_ENDS), (size - _SCAN_ENDS, size)])
        for lo, hi in spans:
            at = view.find(_GCOL, lo, hi)
            while at >= 0 and at + 16 <= size:
                stall = _looping_object(view, at)
                if stall is not None:
                    raise HeapLoopError(
                        f"{location}: the global heap collection at byte {at} is damaged "
                        f"(an empty object at byte {stall} would make the HDF5 library loop "
                        "forever reading its strings)")
                at = view.find(_GCOL, at + 1, hi)


def check_hdf5_source(location: Location) -> None:
    """Refuse, with lazyio's wording, a missing file or one without the HDF5 signature."""
    if not location.exists():
        raise not_found(location)
    if location.isdir():
        raise not_a_file(location, "a directory")
    if not is_hdf5(location.read_head(len(HDF5_MAGIC))):
        raise FormatError(f"{location}: not an HDF5 file (no HDF5 signature)")

H5Mode = Literal["r", "r+", "w", "w-", "x", "a"]  # h5py.File's modes


@dataclass(frozen=True)
class H5FileKey(handles.FileKey):
    """An h5py file open for reading (or in ``mode``) on ``location``."""

    kind: ClassVar[str] = "h5py"
    mode: H5Mode = "r"
    token: str = ""


@dataclass(frozen=True)
class RawFileKey(handles.FileKey):
    """A raw read-only descriptor of a local file, for ``os.pread``."""

    kind: ClassVar[str] = "fd"
    token: str = ""


def open_h5(location: Location, mode: H5Mode = "r", token: str = "") -> h5py.File:
    """Open (or reuse) an h5py file for ``location`` from the per-process handle cache."""

    def opener() -> h5py.File:
        with translate(location):
            if location.local_path is not None:
                if mode == "r":
                    check_global_heaps(location)
                opened = h5py.File(location.local_path, mode)
            else:
                # HDF5 metadata is scattered: a RangeFile (an LRU of 256 KiB blocks, its first
                # bytes fetched with the HEAD, a chunk index's B-tree leaves fetched at once)
                fileobj = location.open("rb", block_size=2**18)
                opened = h5py.File(fileobj, mode)
            if mode == "r":
                # before any value is read: what would crash the library is refused
                try:
                    refuse_crash_hazards(opened, location)
                except BaseException:
                    opened.close()
                    raise
            return opened

    return handles.acquire(H5FileKey(location, mode, token),
                           handles.opened_unchanged(location, token, opener))


def open_raw(location: Location, token: str) -> io.FileIO:
    """An unbuffered read-only file for ``os.pread`` on its descriptor (local files only).

    A file object rather than a bare descriptor: it closes when its last user drops it, so
    a descriptor released by the cache is never closed (and its number reused) while a
    task still reads through it.
    """
    path = location.local_path
    if path is None:
        raise ValueError(f"{location} is not a local file")
    return handles.acquire(RawFileKey(location, token), handles.opened_unchanged(
        location, token, lambda: io.FileIO(path, "r")))
