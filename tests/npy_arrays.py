"""Arrays for the .npy and raw memory-map tests: every dtype and shape numpy writes, random
bytes in any of them, and a comparison by bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lazyio.backends.atomic import TMP_TAG

STRUCT = np.dtype([("a", "<f4"), ("b", ">i2", (2, 3)), ("c", "S3"), ("d", "?")])
ALIGNED = np.dtype([("x", "u1"), ("y", "<f8")], align=True)
DTYPES = ["u1", "<i2", ">i4", "<u8", "<f4", ">f8", "<c8", "?", "<M8[us]", "<U3", STRUCT, ALIGNED]
SHAPES = [(), (0,), (7,), (5, 6), (3, 4, 5), (2, 3, 4, 5), (2, 3, 2, 3, 2), (4, 0, 3)]


def _fix_bools(arr: np.ndarray) -> None:
    if arr.dtype.names:
        for name in arr.dtype.names:
            _fix_bools(arr[name])
    elif arr.dtype.kind == "b":
        arr.view(np.uint8)[...] &= 1


def random_array(rng: np.random.Generator, shape, dtype, order: str = "C") -> np.ndarray:
    """Random bytes in any dtype (valid bools; NaNs are fine: results compare by bytes)."""
    dtype = np.dtype(dtype)
    raw = rng.integers(0, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    arr = raw.view(dtype).reshape(shape) if raw.size else np.empty(shape, dtype)
    if dtype.kind == "U":
        arr = rng.integers(0, 26, shape).astype("U1").astype(dtype)
    _fix_bools(arr)
    return np.asarray(arr, order=order)


def assert_same(got, expected: np.ndarray) -> None:
    """Same dtype, shape and bytes (field by field: padding between fields is not data)."""
    got = np.asarray(got)
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    if expected.dtype.names:
        for name in expected.dtype.names:
            assert_same(got[name], expected[name])
        return
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(expected).tobytes()


def leftovers(directory: Path) -> list[str]:
    """Temporary names a write left in ``directory``."""
    return [p.name for p in directory.iterdir() if TMP_TAG in p.name]


