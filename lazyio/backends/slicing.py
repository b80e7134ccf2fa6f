"""Turn any basic or fancy index into a bounding box plus a residual index.

Sources read a rectangular *box* of the stored array (whole storage chunks where they can)
and apply the *residual* in memory, so dask's fused getters (integers, steps, short
integer lists) all work on every source.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["apply_residual", "split_index"]


def split_index(key: Any, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], list[Any]]:
    """Split ``key`` into a box of step-1 slices and the index to apply to the box.

    >>> split_index((2, slice(1, 7, 2)), (5, 10))
    ((slice(2, 3, None), slice(1, 6, None)), [0, slice(None, None, 2)])
    """
    if not isinstance(key, tuple):
        key = (key,)
    if not _plain(key, shape):
        # imported here: reading a file's description (lazyio info) never slices
        from dask.array.slicing import normalize_index

        key = normalize_index(key, shape)
    box: list[slice] = []
    residual: list[Any] = []
    axis = 0
    for k in key:
        if k is None:
            residual.append(None)
            continue
        size = shape[axis]
        axis += 1
        if isinstance(k, int | np.integer):
            i = int(k) + size if k < 0 else int(k)
            box.append(slice(i, i + 1))
            residual.append(0)
        elif isinstance(k, slice):
            start, stop, step = k.indices(size)
            positions = range(start, stop, step)
            if len(positions) == 0:
                box.append(slice(0, 0))
                residual.append(slice(None))
            elif step == 1:
                box.append(slice(start, stop))
                residual.append(slice(None))
            elif step > 0:
                box.append(slice(positions[0], positions[-1] + 1))
                residual.append(slice(None, None, step))
            else:
                lo, hi = positions[-1], positions[0] + 1
                box.append(slice(lo, hi))
                residual.append(np.arange(hi - 1 - lo, -1, step))
        else:
            idx = np.asarray(k)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = np.where(idx < 0, idx + size, idx)
            if idx.size == 0:
                box.append(slice(0, 0))
                residual.append(idx)
            else:
                lo = int(idx.min())
                box.append(slice(lo, int(idx.max()) + 1))
                residual.append(idx - lo)
    return tuple(box), residual


def _plain(key: tuple[Any, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``key`` is already one in-range integer or slice per axis, which the loop
    below takes as it is (normalising it cost half the time of reading one signal)."""
    if len(key) != len(shape):
        return False
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, slice):
            continue
        if type(k) is not int or not -n <= k < n:
            return False
    return True


def apply_residual(block: np.ndarray, residual: list[Any]) -> np.ndarray:
    """Apply the residual of :func:`split_index` to the box that was read."""
    if all(isinstance(r, slice) and r == slice(None) for r in residual):
        return block
    basic: list[Any] = []
    fancy: list[tuple[int, np.ndarray]] = []
    out_axis = 0
    for r in residual:
        if isinstance(r, np.ndarray):
            basic.append(slice(None))
            fancy.append((out_axis, r))
            out_axis += 1
        else:
            basic.append(r)
            if r is None or isinstance(r, slice):
                out_axis += 1
    result: np.ndarray = block[tuple(basic)]
    for axis, idx in fancy:
        result = np.take(result, idx, axis=axis)
    return result
