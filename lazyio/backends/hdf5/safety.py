"""Safety checks on HDF5 files before lazyio trusts them.

Two checks:

* :func:`refuse_external` walks the links and datasets of an open file *without resolving
  them* and refuses external links, virtual datasets and external raw storage (all of which
  make HDF5 open other files named by the file) unless the caller allowed them.
* :func:`inspect_untrusted` runs this module as a script on the file in a child process,
  which opens the file and touches everything the HDF5 library parses when lazyio opens it
  (the hierarchy, attributes, dataset headers, chunk indexes, small datasets). If the HDF5
  C library crashes on a malformed file, the child dies instead of the caller.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lazyio.location import Location

__all__ = [
    "DEFAULT_TIMEOUT", "ExternalScanKey", "HazardScanKey", "crash_hazards", "guard_untrusted",
    "inspect_untrusted", "refuse_crash_hazards", "refuse_external",
]

# Small datasets are read whole in the child: lazyio reads them eagerly as metadata.
SMALL_BYTES = 1 << 16
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class ExternalScanKey:
    """The memo key of one file version's external-reference scan (``handles.memo``)."""

    location: Hashable
    token: str


def walk(h5file: Any) -> Iterator[tuple[str, str, Any]]:
    """Every link of ``h5file`` without following external or soft links.

    Yields ``(path, kind, value)``: ``kind`` is ``"external"`` (value: ``(file, path)``),
    ``"group"`` or ``"dataset"`` (value: the low-level object id). Iterative and walking
    from each parent's id, so a 10,000-level hierarchy costs linear time and no Python
    recursion (h5py's ``visititems`` looks every name up from the root: quadratic).
    """
    from h5py import h5d, h5g, h5l, h5o

    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[Any, str]] = [(h5file.id, "")]
    while stack:
        gid, path = stack.pop()
        links: list[tuple[bytes, int]] = []
        gid.links.iterate(lambda name, info, out=links: out.append((name, info.type)),
                          info=True)
        for name, ltype in links:
            full = f"{path}/{name.decode(errors='replace')}"
            if ltype == h5l.TYPE_EXTERNAL:
                yield full, "external", gid.links.get_val(name)
            elif ltype == h5l.TYPE_HARD:
                try:
                    oid = h5o.open(gid, name)
                    key = (oid.fileno, h5o.get_info(oid).addr)
                except (KeyError, OSError, ValueError, RuntimeError):
                    continue  # unreadable: the reader reports it in context
                if key in seen:  # hard links can form cycles
                    continue
                seen.add(key)
                if isinstance(oid, h5g.GroupID):
                    stack.append((oid, full))
                    yield full, "group", oid
                elif isinstance(oid, h5d.DatasetID):
                    yield full, "dataset", oid


@dataclass(frozen=True)
class HazardScanKey:
    """The memo key of one file version's crash-hazard scan (``handles.memo``)."""

    location: Hashable
    token: str


# ------------------------------------------------------------- what crashes the library
# The fuzz campaign's SIGSEGVs inside libhdf5 (2.0) on mutated files were two classes,
# each found in several inputs, and each detectable through the library's own API without
# converting any value (the step that crashes):
#
# * a variable-length datatype whose kind (the low nibble of its first class bit field:
#   0 sequence, 1 string) is neither: HDF5 decodes it, h5py reads it as a sequence of
#   bytes, and the conversion calls a null disk callback (H5VL_blob_put) -- reading the
#   attribute or the dataset is a SIGSEGV. The encoded datatype (H5Tencode) carries the
#   kind verbatim. (An unknown string padding, the high nibble, is read without harm.)
# * a dataset's fill value message whose size disagrees with its buffer (one flipped byte
#   of the size): H5Pget_fill_value converts from a missing buffer. The library's own
#   consistency check (H5Pfill_value_defined) reports it as an error first.


def _bad_type(tid: Any, depth: int = 0) -> str | None:
    """Why the datatype ``tid`` would crash the HDF5 library when read, or None."""
    from h5py import h5t

    if depth > 32:
        return "a datatype nested more than 32 levels deep"
    cls = tid.get_class()
    if cls in (h5t.VLEN, h5t.STRING):
        raw = tid.encode()  # [id, encode version, class|version, bit fields 0-2, ...]
        if len(raw) >= 5 and raw[2] & 0x0F == 9:  # variable length
            kind = raw[3] & 0x0F
            if kind > 1:
                return f"a variable-length datatype of unknown kind {kind}"
        if cls == h5t.VLEN:
            return _bad_type(tid.get_super(), depth + 1)
    elif cls == h5t.COMPOUND:
        for i in range(tid.get_nmembers()):
            why = _bad_type(tid.get_member_type(i), depth + 1)
            if why is not None:
                return why
    elif cls in (h5t.ARRAY, h5t.ENUM):
        return _bad_type(tid.get_super(), depth + 1)
    return None


# A third class, found as a peak of memory rather than a crash: a variable-length value
# stored in an attribute is a 16-byte reference (its length, then the global heap object
# holding it), and libhdf5 allocates the declared length before it reads the object. One
# flipped bit of a string attribute's length made a 14 KB USID file allocate 1 GiB (a
# peak of 1,175 MiB, then an error). The references are not reachable through the API:
# for local files with version-1 object headers (what h5py writes by default) the
# attribute messages are parsed here, and a length larger than the file is refused.

_ATTRIBUTE_MSG, _CONTINUATION_MSG = 0x000C, 0x0010


def _u(raw: bytes, at: int, size: int) -> int:
    return int.from_bytes(raw[at:at + size], "little")


def _header_messages(fh: Any, addr: int, filesize: int) -> Iterator[tuple[int, bytes]]:
    """``(type, body)`` of each message of the version-1 object header at ``addr``
    (following continuation blocks); nothing for other versions or damaged headers."""
    fh.seek(addr)
    prefix = fh.read(16)
    if len(prefix) < 16 or prefix[0] != 1:
        return  # version 2 ("OHDR") or not a header: not parsed
    blocks = [(addr + 16, _u(prefix, 8, 4))]
    seen = 0
    while blocks and seen < 64:
        start, size = blocks.pop()
        seen += 1
        if size <= 0 or start + size > filesize or size > 1 << 24:
            return
        fh.seek(start)
        block = fh.read(size)
        at = 0
        while at + 8 <= len(block):
            mtype, msize = _u(block, at, 2), _u(block, at + 2, 2)
            body = block[at + 8:at + 8 + msize]
            if mtype == _CONTINUATION_MSG and len(body) >= 16:
                blocks.append((_u(body, 0, 8), _u(body, 8, 8)))
            else:
                yield mtype, body
            at += 8 + msize


def _attribute_vlen_lengths(body: bytes) -> tuple[str, list[int]] | None:
    """The name of the attribute message ``body`` and the lengths its variable-length
    values declare (None if it holds none, or is not a version 1-3 message). A
    variable-length datatype of unknown kind raises ``_UnknownKind``."""
    version = body[0] if body else 0
    if version not in (1, 2, 3) or len(body) < 8:
        return None
    name_size, dt_size, ds_size = _u(body, 2, 2), _u(body, 4, 2), _u(body, 6, 2)
    at = 8 if version < 3 else 9

    def span(n: int) -> int:
        return (n + 7) // 8 * 8 if version == 1 else n

    dt_at = at + span(name_size)
    ds_at = dt_at + span(dt_size)
    data_at = ds_at + span(ds_size)
    if data_at > len(body) or body[dt_at] & 0x0F != 9:
        return None  # not a variable-length datatype (nested ones are not parsed)
    name = body[at:at + name_size].split(b"\x00", 1)[0].decode(errors="replace")
    if body[dt_at + 1] & 0x0F > 1:
        raise _UnknownKind(f"attribute {name!r} has a variable-length datatype of unknown "
                           f"kind {body[dt_at + 1] & 0x0F}")
    element = _u(body, dt_at + 4, 4)
    rank = body[ds_at + 1]
    dims_at = ds_at + (8 if body[ds_at] == 1 else 4)
    count = 1
    for i in range(rank):
        count *= _u(body, dims_at + 8 * i, 8)
    if element != 16 or count > (len(body) - data_at) // 16:
        return None
    return name, [_u(body, data_at + 16 * i, 4) for i in range(count)]


class _UnknownKind(Exception):
    pass


def _header_hazard(fh: Any, addr: int, filesize: int) -> tuple[bool, str | None]:
    """Check the attribute messages of the object header at ``addr`` from its bytes:
    ``(parsed, why)``; ``parsed`` is False where the header is not version 1."""
    fh.seek(addr)
    if fh.read(1) != b"\x01":
        return False, None
    try:
        for mtype, body in _header_messages(fh, addr, filesize):
            if mtype != _ATTRIBUTE_MSG:
                continue
            found = _attribute_vlen_lengths(body)
            if found is not None and found[1] and max(found[1]) > filesize:
                return True, (f"attribute {found[0]!r} declares a value of {max(found[1])} "
                              f"bytes in a file of {filesize}")
    except _UnknownKind as err:
        return True, str(err)
    except (OSError, IndexError, ValueError):
        return False, None
    return True, None


def _attribute_hazard(oid: Any, fh: Any = None, filesize: int = 0) -> str | None:
    from h5py import h5a, h5o

    if fh is not None:
        # a version-1 header is checked from its bytes: ~10x faster than asking the
        # library for each attribute's datatype (1,000 attributes: 20 ms against 200)
        try:
            addr = h5o.get_info(oid).addr
        except (KeyError, OSError, ValueError, RuntimeError, TypeError):
            addr = None
        if addr is not None:
            parsed, why = _header_hazard(fh, addr, filesize)
            if parsed:
                return why

    names: list[bytes] = []
    try:
        h5a.iterate(oid, lambda name, out=names: out.append(name))
    except (KeyError, OSError, ValueError, RuntimeError, TypeError):
        return None  # unreadable names: the reader reports them in context
    for name in names:
        try:
            tid = h5a.open(oid, name).get_type()
        except (KeyError, OSError, ValueError, RuntimeError, TypeError):
            continue  # h5py raises on it when read: no crash
        why = _bad_type(tid)
        if why is not None:
            return f"attribute {name.decode(errors='replace')!r} has {why}"
    return None


def _dataset_hazard(oid: Any) -> str | None:
    try:
        why = _bad_type(oid.get_type())
        if why is not None:
            return f"has {why}"
        plist = oid.get_create_plist()
    except (KeyError, OSError, RuntimeError, TypeError):
        return None
    except ValueError:
        return None
    try:
        plist.fill_value_defined()
    except (ValueError, RuntimeError, OSError):
        return "has a damaged fill value (its size disagrees with its value)"
    return None


def crash_hazards(h5file: Any) -> list[str]:
    """What in ``h5file`` would crash the HDF5 library when lazyio reads it: every
    attribute's and dataset's datatype, every dataset's fill value (see above)."""
    found: list[str] = []
    with contextlib.ExitStack() as stack:
        fh, filesize = None, 0
        if h5file.driver == "sec2" and os.path.isfile(h5file.filename):
            fh = stack.enter_context(open(h5file.filename, "rb"))
            filesize = os.fstat(fh.fileno()).st_size
        why = _attribute_hazard(h5file.id, fh, filesize)
        if why is not None:
            found.append(f"/: {why}")
        for path, kind, oid in walk(h5file):
            if kind == "external":
                continue
            why = _attribute_hazard(oid, fh, filesize)
            if why is None and kind == "dataset":
                why = _dataset_hazard(oid)
            if why is not None:
                found.append(f"{path}: {why}")
    return found


def refuse_crash_hazards(h5file: Any, where: Any) -> None:
    """Raise ``CrashHazardError`` if reading ``h5file`` would crash the HDF5 library
    (:func:`crash_hazards`); scanned once per version of the file and process."""
    from lazyio import handles
    from lazyio.backends.hdf5.files import CrashHazardError

    token = where.modified_token() if hasattr(where, "modified_token") else ""
    if token and token != "unknown":
        found = handles.memo(HazardScanKey(where, token), lambda: crash_hazards(h5file))
    else:
        found = crash_hazards(h5file)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise CrashHazardError(
            f"{where}: damaged HDF5 structure, refused before the HDF5 library reads it "
            f"(it would crash or exhaust memory): {found[0]}{more}")


def external_references(h5file: Any) -> list[str]:
    """Describe every link or dataset of ``h5file`` that points at another file."""
    from h5py import h5d

    found: list[str] = []
    for path, kind, value in walk(h5file):
        if kind == "external":
            found.append(f"{path} is an external link to {value[0].decode(errors='replace')}"
                         f":{value[1].decode(errors='replace')}")
        elif kind == "dataset":
            plist = value.get_create_plist()
            if plist.get_layout() == h5d.VIRTUAL:
                files = sorted({plist.get_virtual_filename(i)
                                for i in range(plist.get_virtual_count())})
                found.append(f"{path} is a virtual dataset reading {', '.join(files)}")
            elif plist.get_external_count():
                files = sorted({plist.get_external(i)[0].decode(errors="replace")
                                for i in range(plist.get_external_count())})
                found.append(f"{path} stores its data in external file(s) {', '.join(files)}")
    return found


def refuse_external(h5file: Any, where: Any, allow_external: bool) -> None:
    """Raise :class:`UnsafeFileError` if ``h5file`` refers to other files, unless allowed.

    Parameters
    ----------
    h5file : h5py.File
        The open file (its links are listed, not followed).
    where : str or Location
        Names the file in the error.
    allow_external : bool
        Accept external links, virtual datasets and external storage.
    """
    if allow_external:
        return
    from lazyio import handles
    from lazyio.errors import UnsafeFileError

    # the walk opens every object: once per version of the file and process is enough
    token = where.modified_token() if hasattr(where, "modified_token") else ""
    if token and token != "unknown":
        found = handles.memo(ExternalScanKey(where, token),
                             lambda: external_references(h5file))
    else:
        found = external_references(h5file)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UnsafeFileError(
            f"{where}: refers to other files, which lazyio does not follow by default: "
            f"{found[0]}{more}; pass allow_external=True if you trust it"
        )


def guard_untrusted(location: Location, head: bytes, timeout: float | None) -> None:
    """With ``untrusted=True``: parse a local HDF5 file in a child process first (see
    :func:`inspect_untrusted`); other files pass, since only the HDF5 C library parses
    untrusted structure in-process."""
    from lazyio.backends.hdf5.files import check_global_heaps, is_hdf5
    from lazyio.errors import UnsupportedError

    if not is_hdf5(head):
        return
    if location.local_path is None:
        raise UnsupportedError(f"{location}: untrusted=True needs a local HDF5 file")
    # a damaged global heap hangs the child until the timeout: refused at once instead
    check_global_heaps(location)
    inspect_untrusted(location.local_path, timeout or DEFAULT_TIMEOUT)


def inspect_untrusted(path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Parse the HDF5 file at ``path`` in a child process first.

    Raises
    ------
    UnsafeFileError
        The child was killed by a signal (the HDF5 library crashed) or timed out.
    """
    from lazyio.errors import UnsafeFileError

    # Run this file as a script (isolated mode): the child imports h5py and numpy only,
    # not lazyio, dask or fsspec, which halves its start-up time.
    cmd = [sys.executable, "-I", os.path.abspath(__file__), os.fspath(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise UnsafeFileError(
            f"{path}: inspecting the file in a child process took over {timeout:g} s; "
            "refused as untrusted"
        ) from err
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        raise UnsafeFileError(
            f"{path}: the HDF5 library crashed ({name}) while a child process parsed the "
            "file; refused as untrusted"
        )
    # Any other outcome (including a Python error in the child) is left to the in-process
    # read, which raises the proper lazyio error.


def _walk(path: str) -> None:
    import h5py

    from lazyio.backends.hdf5.filters import ensure_filters

    with h5py.File(path, "r") as f:
        _read_attrs(f.id)
        for _path, kind, oid in walk(f):
            if kind == "external":
                continue
            _read_attrs(oid)
            if kind != "dataset":
                continue
            with contextlib.suppress(OSError, TypeError, ValueError, RuntimeError):
                dset = h5py.Dataset(oid)
                _ = dset.dtype, dset.shape, dset.chunks, dset.compression
                if dset.chunks is not None:
                    oid.chunk_iter(lambda _info: None)
                if dset.size * dset.dtype.itemsize <= SMALL_BYTES:
                    ensure_filters(dset)
                    dset[()]


def _read_attrs(oid: Any) -> None:
    import h5py

    attrs = h5py.AttributeManager(h5py.Group(oid) if isinstance(oid, h5py.h5g.GroupID)
                                  else h5py.Dataset(oid))
    for key in list(attrs):
        with contextlib.suppress(OSError, TypeError, ValueError, RuntimeError):
            attrs[key]


def main(argv: list[str]) -> int:
    """Entry point of the child process: exit 0 when the file parsed, 1 on a Python error."""
    try:
        _walk(argv[0])
    except Exception:  # noqa: BLE001 - the parent re-raises a proper error in-process
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
