"""The ``.npy`` header: read it (versions 1, 2 and 3), validate it, and write it.

The header is a Python dict literal (``descr``, ``fortran_order``, ``shape``) after a magic
string and a length. Reading never unpickles anything: object dtypes are refused here,
before any payload byte is touched, and the payload size promised by the header is checked
against the file size so that a truncated file fails with its name instead of a bus error
when a memory map is read.
"""

from __future__ import annotations

import ast
import io
import math
import struct
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from lazyio.errors import FormatError, UnsupportedError, not_found
from lazyio.location import Location

if TYPE_CHECKING:
    from lazyio.backends.raw.memmap import Order

__all__ = ["MAGIC", "NpyHeader", "header_bytes", "read_header"]

MAGIC = np.lib.format.MAGIC_PREFIX  # b"\x93NUMPY"
_EXPECTED_KEYS = {"descr", "fortran_order", "shape"}


@dataclass(frozen=True)
class NpyHeader:
    """What the header of a ``.npy`` file says, and where its payload starts.

    Attributes
    ----------
    version : tuple of int
        Format version, ``(1, 0)``, ``(2, 0)`` or ``(3, 0)``.
    shape : tuple of int
        The array's shape.
    dtype : numpy.dtype
        The array's dtype, byte order included.
    fortran_order : bool
        Whether the payload is stored in Fortran (column-major) order.
    offset : int
        Byte offset of the payload.
    """

    version: tuple[int, int]
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """Bytes of the payload."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def order(self) -> Order:
        """``"F"`` or ``"C"``."""
        return "F" if self.fortran_order else "C"


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.hasobject:
        raise UnsupportedError(
            f"{where}: the array has dtype {dtype!r}, which holds Python objects; lazyio "
            "never unpickles data, so object arrays cannot be read or written"
        )


_MAX_INDEX = 2**63 - 1  # numpy indexes with np.intp: no axis or element count beyond


def _check_size(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """Refuse shapes numpy cannot index and items of no bytes: such a header makes a
    tiny file that declares an array of 10**30 elements or a grid of 10**15 empty items,
    which numpy answers with a bare OverflowError or MemoryError."""
    count = math.prod(shape)
    if count > _MAX_INDEX or any(s > _MAX_INDEX for s in shape):
        raise FormatError(
            f"{where}: the .npy header declares shape {shape}, larger than numpy can index")
    if dtype.itemsize == 0 and count:
        raise UnsupportedError(
            f"{where}: the .npy header declares {count} items of dtype {dtype.str!r}, which "
            "holds 0 bytes per item; lazyio does not read arrays of empty items")


def _parse_v3(fp: IO[bytes], where: str, max_header_size: int) -> dict[str, Any]:
    # numpy has no public reader for version 3; its layout is version 2's, in UTF-8.
    raw = fp.read(4)
    if len(raw) != 4:
        raise FormatError(f"{where}: the .npy header is truncated")
    (length,) = struct.unpack("<I", raw)
    if length > max_header_size:
        raise FormatError(
            f"{where}: the .npy header is {length} bytes, more than max_header_size="
            f"{max_header_size}; pass a larger max_header_size if the file is trusted"
        )
    text = fp.read(length)
    if len(text) != length:
        raise FormatError(f"{where}: the .npy header is truncated")
    try:
        # literal_eval evaluates literals only: nothing in the header can run code.
        header = ast.literal_eval(text.decode("utf8"))
    except (SyntaxError, ValueError, UnicodeDecodeError) as err:
        raise FormatError(f"{where}: cannot parse the .npy header {text[:200]!r}") from err
    if not isinstance(header, dict) or set(header) != _EXPECTED_KEYS:
        raise FormatError(f"{where}: the .npy header {header!r} lacks or adds keys")
    if not isinstance(header["shape"], tuple) or not all(
        isinstance(s, int) and s >= 0 for s in header["shape"]
    ):
        raise FormatError(f"{where}: bad shape in the .npy header: {header['shape']!r}")
    if not isinstance(header["fortran_order"], bool):
        raise FormatError(f"{where}: bad fortran_order in the .npy header")
    try:
        header["descr"] = np.lib.format.descr_to_dtype(header["descr"])
    except (TypeError, ValueError) as err:
        raise FormatError(f"{where}: bad descr in the .npy header: {header['descr']!r}") from err
    return header


def parse_header(fp: IO[bytes], where: str, max_header_size: int | None = None) -> NpyHeader:
    """Parse the header at the start of ``fp`` (positioned at 0); ``where`` names the file."""
    head = fp.read(len(MAGIC))
    if head != MAGIC:
        raise FormatError(f"{where}: not a .npy file (it does not start with {MAGIC!r})")
    fp.seek(0)
    try:
        version = np.lib.format.read_magic(fp)
    except ValueError as err:
        raise FormatError(f"{where}: {err}") from err
    limit = 10_000 if max_header_size is None else int(max_header_size)
    try:
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=limit)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=limit)
        elif version == (3, 0):
            d = _parse_v3(fp, where, limit)
            shape, fortran, dtype = d["shape"], d["fortran_order"], d["descr"]
        else:
            raise FormatError(f"{where}: unsupported .npy format version {version}")
    except FormatError:
        raise
    except (ValueError, SyntaxError, TypeError, struct.error, EOFError) as err:
        # TypeError: numpy compares the header's keys, which a damaged header may mix
        raise FormatError(f"{where}: cannot parse the .npy header ({err})") from err
    _check_dtype(dtype, where)
    if any(int(s) < 0 for s in shape):
        raise FormatError(f"{where}: the .npy header declares a negative shape {shape}")
    _check_size(tuple(int(s) for s in shape), dtype, where)
    return NpyHeader(
        version=(int(version[0]), int(version[1])),
        shape=tuple(int(s) for s in shape),
        dtype=dtype,
        fortran_order=bool(fortran),
        offset=fp.tell(),
    )


def read_header(location: Location, max_header_size: int | None = None) -> NpyHeader:
    """Read and validate the header of the ``.npy`` file at ``location``.

    Parameters
    ----------
    location : Location
        The file.
    max_header_size : int, optional
        Largest header accepted, as in :func:`numpy.load` (10000 bytes by default).

    Returns
    -------
    NpyHeader

    Raises
    ------
    FormatError
        Not a ``.npy`` file, a malformed header, or a payload shorter than the header
        promises.
    UnsupportedError
        An object dtype (or a structured dtype with object fields).
    """
    where = str(location)
    if not location.exists():
        raise not_found(where)
    with location.open("rb") as fp:
        header = parse_header(fp, where, max_header_size)
    size = location.size()
    if header.offset + header.nbytes > size:
        raise FormatError(
            f"{where}: the .npy header promises {header.nbytes} bytes of {header.dtype} data "
            f"of shape {header.shape} from byte {header.offset}, but the file holds only "
            f"{size} bytes (truncated or still being written?)"
        )
    return header


def _v3_header(d: dict[str, Any]) -> bytes:
    # numpy writes version 3 only when field names need UTF-8 and has no public writer for
    # it; this lays the header out as numpy does (sorted keys, room for the growth axis to
    # be rewritten in place, padding to ARRAY_ALIGN), so the bytes match numpy.save's.
    text = "{" + "".join(f"'{k}': {d[k]!r}, " for k in sorted(d)) + "}"
    shape = d["shape"]
    if shape:
        growth = repr(shape[-1 if d["fortran_order"] else 0])
        text += " " * (np.lib.format.GROWTH_AXIS_MAX_DIGITS - len(growth))
    body = text.encode("utf8")
    prefix_len = len(MAGIC) + 2 + 4
    pad = np.lib.format.ARRAY_ALIGN - (prefix_len + len(body) + 1) % np.lib.format.ARRAY_ALIGN
    body += b" " * pad + b"\n"
    return MAGIC + bytes([3, 0]) + struct.pack("<I", len(body)) + body


def header_bytes(shape: tuple[int, ...], dtype: np.dtype, fortran_order: bool = False) -> bytes:
    """The header numpy would write for an array of ``shape`` and ``dtype``.

    Version 1.0 when it fits, else 2.0, else 3.0 (field names that need UTF-8), as
    :func:`numpy.save` chooses; the result is byte-identical to numpy's for versions 1
    and 2.
    """
    dtype = np.dtype(dtype)
    _check_dtype(dtype, "the array to write")
    d = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": bool(fortran_order),
        "shape": tuple(int(s) for s in shape),
    }
    for writer in (np.lib.format.write_array_header_1_0, np.lib.format.write_array_header_2_0):
        buf = io.BytesIO()
        try:
            writer(buf, d)
        except UnicodeEncodeError:
            return _v3_header(d)
        except ValueError:  # too long for version 1.0
            continue
        return buf.getvalue()
    raise FormatError(f"the header for shape {shape} and dtype {dtype} is too long")
