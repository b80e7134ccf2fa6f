"""Reading without dask: the lazy arrays a read *would* build, as plain descriptions.

``lazyio info`` wants what :func:`lazyio.load` returns (shapes, dtypes, dask blocks, axes,
metadata) but no dask array: importing ``dask.array`` alone costs half a second of CPU, more
than the whole answer. Inside :func:`planning`, the readers run unchanged except that every
place where a lazy array is made (:func:`lazyio.backends.to_dask`,
:func:`~lazyio.backends.raw.memmap.memmap_distributed`, the helpers below) returns a
:class:`PlannedArray` instead: the same shape, dtype and block chunks, no graph.

Nothing here imports dask; :func:`is_dask_array` tells a dask array from anything else
without importing it either (nothing can be a dask array before ``dask.array`` is
imported).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["PlannedArray", "is_dask_array", "is_lazy_array", "lazy_whole", "plan", "planned",
           "planning"]

_PLANNING: contextvars.ContextVar[bool] = contextvars.ContextVar("lazyio_planning",
                                                                 default=False)


@contextlib.contextmanager
def planning(active: bool = True) -> Iterator[None]:
    """Within this context, lazy reads return :class:`PlannedArray` objects instead of
    dask arrays (for ``lazyio.info``: a read of the file's metadata only).

    ``planning(False)`` builds dask arrays again inside it (for a reader whose blocks
    only dask itself can work out)."""
    token = _PLANNING.set(active)
    try:
        yield
    finally:
        _PLANNING.reset(token)


def planned() -> bool:
    """Whether a :func:`planning` context is active."""
    return _PLANNING.get()


@dataclass(frozen=True, eq=False)
class PlannedArray:
    """What a lazy read would return, without the dask graph: shape, dtype and blocks.

    Carries the attributes ``lazyio.info`` reads of a dask array (``shape``, ``dtype``,
    ``ndim``, ``chunks``, ``chunksize``, ``npartitions``, ``nbytes``, ``size``); it holds
    no data and cannot be computed.
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: tuple[tuple[int, ...], ...]

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the array in memory."""
        return self.size * self.dtype.itemsize

    @property
    def chunksize(self) -> tuple[int, ...]:
        """The largest block along each axis, as ``dask.array.Array.chunksize``."""
        return tuple(max(c, default=0) for c in self.chunks)

    @property
    def npartitions(self) -> int:
        """Number of blocks (tasks of a full read)."""
        return math.prod(len(c) for c in self.chunks)

    def __repr__(self) -> str:
        return f"<planned array {self.shape} {self.dtype}, {self.npartitions} block(s)>"


def plan(shape: tuple[int, ...], dtype: Any, chunks: Any) -> da.Array:
    """A :class:`PlannedArray` standing for the dask array the caller would build.

    Typed as a dask array because it takes its place in the readers' code paths; only
    the attributes :class:`PlannedArray` has may be used on it there.
    """
    blocks = tuple(tuple(int(c) for c in axis) for axis in chunks)
    array = PlannedArray(tuple(int(s) for s in shape), np.dtype(dtype), blocks)
    return cast("da.Array", array)


def lazy_whole(array: np.ndarray) -> da.Array:
    """``dask.array.from_array(array, chunks=-1)``, or its plan inside :func:`planning`."""
    if planned():
        return plan(array.shape, array.dtype, tuple((s,) for s in array.shape))
    import dask.array as da

    whole: da.Array = da.from_array(array, chunks=-1)
    return whole


def is_dask_array(value: Any) -> bool:
    """Whether ``value`` is a dask array, without importing ``dask.array``."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(value, module.Array)


def is_lazy_array(value: Any) -> bool:
    """A dask array or a :class:`PlannedArray`."""
    return isinstance(value, PlannedArray) or is_dask_array(value)
