"""Choosing storage chunks: first the chunks, then the dask array is rechunked to them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["signal_chunks", "storage_chunks"]


def signal_chunks(
    shape: Sequence[int], dtype: Any, signal_axes: Sequence[int], target_bytes: float
) -> tuple[int, ...]:
    """Chunks that hold whole signals, about ``target_bytes`` each (HyperSpy's rule).

    Signal axes are never split. Navigation axes share the remaining budget evenly; an axis
    shorter than its share is taken whole and its leftover goes to the others.
    """
    shape = tuple(int(s) for s in shape)
    itemsize = np.dtype(dtype).itemsize
    sig = set(signal_axes)
    nav = [i for i in range(len(shape)) if i not in sig]
    signal_bytes = math.prod(shape[i] for i in sig) * itemsize
    per_chunk = int(target_bytes // max(1, signal_bytes))
    if per_chunk < 2 or not nav:
        return tuple(s if i in sig else 1 for i, s in enumerate(shape))
    if per_chunk >= math.prod(shape[i] for i in nav):
        return shape
    chunks = {i: shape[i] for i in sig}
    free = list(nav)
    budget = float(per_chunk)
    while free:
        side = math.floor(budget ** (1 / len(free)) + 1e-9)
        small = [i for i in free if shape[i] < side]
        if not small:
            for i in free:
                chunks[i] = max(1, side)
            break
        for i in small:
            chunks[i] = shape[i]
            budget /= shape[i]
            free.remove(i)
    return tuple(max(1, min(chunks[i], shape[i])) if shape[i] else 1 for i in range(len(shape)))


def storage_chunks(
    shape: Sequence[int],
    dtype: Any,
    request: Any,
    signal_axes: Sequence[int],
    target_bytes: float,
) -> tuple[int, ...] | None:
    """Resolve the ``chunks`` argument of the writers.

    ``None`` follows :func:`signal_chunks`; ``True`` uses h5py's guess; a tuple is clipped
    to the shape. Scalars and empty arrays are not chunked (``None``).
    """
    shape = tuple(int(s) for s in shape)
    if not shape or math.prod(shape) == 0:
        return None
    if request is True:
        from h5py._hl.filters import guess_chunk  # h5py's public behaviour for chunks=True

        return tuple(guess_chunk(shape, None, np.dtype(dtype).itemsize))
    if request is None or request is False:
        return signal_chunks(shape, dtype, signal_axes, target_bytes)
    request = tuple(request)
    if len(request) != len(shape):
        raise ValueError(
            f"chunks {request} has {len(request)} entries for data of shape {shape}"
        )
    return tuple(
        s if (c is None or c == -1) else max(1, min(int(c), s))
        for c, s in zip(request, shape, strict=True)
    )
