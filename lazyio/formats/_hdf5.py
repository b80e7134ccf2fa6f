"""What the HDF5-based formats (hspy, usid) share: the signature, the untrusted-file guard,
and opening a file for reading with the safety checks applied."""

from __future__ import annotations

from lazyio.errors import FormatError, UnsupportedError, not_found
from lazyio.location import Location

__all__ = ["HDF5_MAGIC", "check_hdf5_source", "guard_untrusted_hdf5", "is_hdf5"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_hdf5(head: bytes) -> bool:
    """Whether ``head`` starts with the HDF5 superblock signature."""
    return head.startswith(HDF5_MAGIC)


def check_hdf5_source(location: Location) -> None:
    """Refuse, with lazyio's wording, a missing file or one without the HDF5 signature."""
    if not location.exists():
        raise not_found(location)
    if not is_hdf5(location.read_head(len(HDF5_MAGIC))):
        raise FormatError(f"{location}: not an HDF5 file (no HDF5 signature)")


def guard_untrusted_hdf5(location: Location, head: bytes, timeout: float | None) -> None:
    """Parse a local HDF5 file in a child process first (see
    :func:`lazyio.backends.hdf5.safety.inspect_untrusted`); other files pass."""
    if not is_hdf5(head):
        return  # only the HDF5 C library parses untrusted structure in-process
    if location.local_path is None:
        raise UnsupportedError(f"{location}: untrusted=True needs a local HDF5 file")
    from lazyio.backends.hdf5.safety import DEFAULT_TIMEOUT, inspect_untrusted

    inspect_untrusted(location.local_path, timeout or DEFAULT_TIMEOUT)
