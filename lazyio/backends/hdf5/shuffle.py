"""HDF5's byte shuffle filter in numpy, which releases the GIL.

numcodecs' ``Shuffle`` holds the GIL while it runs, so in a threaded dask read it
serialises the tasks that otherwise decompress in parallel. For 2-, 4- and 8-byte items
on a little-endian machine the byte planes are split and merged with integer shifts
(several GB/s, vectorised); other cases use numcodecs.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["shuffle", "unshuffle", "unshuffle_into", "unshuffle_rows"]

_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_FAST = sys.byteorder == "little"
# Below this size numcodecs' single C call beats numpy's few calls; the GIL is held briefly.
_SMALL = 16 * 1024


def _codec(itemsize: int) -> Any:
    # numcodecs takes 0.3 s to import: only when a chunk needs it, never for `lazyio info`
    import numcodecs

    return numcodecs.Shuffle(elementsize=itemsize)


def unshuffle(buf: bytes | memoryview | np.ndarray, itemsize: int) -> np.ndarray | bytes:
    """Undo HDF5's shuffle: byte plane ``i`` holds byte ``i`` of every item."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    kind = _UINT.get(itemsize)
    if kind is None or not _FAST or raw.size % itemsize or raw.size < _SMALL:
        decoded: np.ndarray | bytes = _codec(itemsize).decode(buf)
        return decoded
    planes = raw.reshape(itemsize, -1)
    out: np.ndarray = planes[itemsize - 1].astype(kind)
    for i in range(itemsize - 2, -1, -1):
        out <<= 8
        out |= planes[i]
    return out


def shuffle(buf: bytes | memoryview | np.ndarray, itemsize: int) -> np.ndarray | bytes:
    """Apply HDF5's shuffle to the bytes of whole items."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    kind = _UINT.get(itemsize)
    if kind is None or not _FAST or raw.size % itemsize:
        encoded: np.ndarray | bytes = _codec(itemsize).encode(buf)
        return encoded
    items = raw.view(kind)
    out = np.empty((itemsize, items.size), dtype=np.uint8)
    out[0] = items  # the assignment keeps the low byte
    for i in range(1, itemsize):
        out[i] = items >> (8 * i)
    return out


def unshuffle_rows(rows: np.ndarray, itemsize: int) -> np.ndarray:
    """Undo the shuffle of many equal-sized buffers at once (``rows``: uint8, one per row).

    Returns the unshuffled bytes, one row per buffer (as uint8 or wider integers).
    """
    kind = _UINT.get(itemsize)
    if kind is None or not _FAST or rows.shape[1] % itemsize:
        codec = _codec(itemsize)
        return np.stack([np.frombuffer(codec.decode(r), dtype=np.uint8) for r in rows])
    planes = rows.reshape(rows.shape[0], itemsize, -1)
    out = planes[:, itemsize - 1].astype(kind)
    for i in range(itemsize - 2, -1, -1):
        out <<= 8
        out |= planes[:, i]
    return out


def unshuffle_into(buf: Any, itemsize: int, out: np.ndarray) -> bool:
    """Undo the shuffle straight into ``out`` (any strides): no temporary, no copy.

    Returns False, writing nothing, when the fast path does not apply (item size, byte
    order, or a buffer whose size does not match ``out``).
    """
    kind = _UINT.get(itemsize)
    raw = np.frombuffer(buf, dtype=np.uint8)
    if kind is None or not _FAST or out.dtype.itemsize != itemsize or raw.size != out.nbytes:
        return False
    target = out.view(kind)
    planes = raw.reshape(itemsize, *out.shape)
    np.left_shift(planes[itemsize - 1], 8, out=target, dtype=kind)
    np.bitwise_or(target, planes[itemsize - 2], out=target)
    for i in range(itemsize - 3, -1, -1):
        np.left_shift(target, 8, out=target)
        np.bitwise_or(target, planes[i], out=target)
    return True
