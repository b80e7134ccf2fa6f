"""``lazyio.fetch``: one small selection of a lazy array, read now, without the scheduler.

``array[key].compute()`` on a dask array costs about a millisecond whatever it reads:
dask builds, optimises and schedules a graph even for one task. For one signal of a
memory-mapped ``.npy`` that is 30 times the read itself. :func:`fetch` answers a small
basic selection (integers, slices, ``...``) of an array that :func:`lazyio.load` returned
by calling the array's chunk source directly, in the calling thread: the same code a
task runs (the same decoding, checksums and error messages), minus dask. Anything else
(a derived array, fancy indexing, a large selection) goes through dask as usual.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from lazyio.backends import direct_source
from lazyio.backends.chunking import auto_block_bytes
from lazyio.backends.plan import is_dask_array

__all__ = ["fetch"]

# selections up to this size never need dask's parallelism
_ALWAYS_DIRECT = 1 << 20


def _basic(
    key: tuple[Any, ...], shape: tuple[int, ...]
) -> tuple[tuple[Any, ...], tuple[int, ...]] | None:
    """A basic key (ints, slices, one ``...``) as one int or slice per axis, and the shape
    ``array[key]`` has; ``None`` if ``key`` is anything else (left to dask)."""
    if sum(k is Ellipsis for k in key) > 1:
        return None
    if Ellipsis in key:
        at = key.index(Ellipsis)
        key = key[:at] + (slice(None),) * (len(shape) - len(key) + 1) + key[at + 1:]
    if len(key) > len(shape):
        return None
    key = key + (slice(None),) * (len(shape) - len(key))
    plain: list[Any] = []
    out = []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, slice):
            plain.append(k)
            out.append(len(range(*k.indices(n))))
            continue
        if isinstance(k, bool | np.bool_):
            return None
        try:
            i = operator.index(k)
        except TypeError:
            return None
        if not -n <= i < n:
            return None  # dask raises the IndexError
        plain.append(i)
    return tuple(plain), tuple(out)


def fetch(array: Any, key: Any = ...) -> np.ndarray:
    """``array[key]`` as a numpy array, read at once.

    For an array returned by :func:`lazyio.load` (not derived from it) and a basic
    selection of at most one block's worth of bytes, the selection is read directly from
    the file by the array's chunk source in the calling thread, without building or
    scheduling a dask graph; otherwise this is ``array[key].compute()``.

    Parameters
    ----------
    array : dask.array.Array or numpy.ndarray
        Typically ``lazyio.load(path)[0]["data"]``.
    key : index, default ``...``
        Integers, slices and ``...`` take the direct path; any other index works too,
        through dask.

    Returns
    -------
    numpy.ndarray
        What ``array[key].compute()`` returns (from a memory-mapped ``.npy``, a read-only
        view of the map, as a task returns).

    Examples
    --------
    >>> data = lazyio.load("scan.npy")[0]["data"]  # doctest: +SKIP
    >>> pattern = lazyio.fetch(data, (12, 40))      # one signal, no dask scheduler
    ... # doctest: +SKIP
    """
    if not is_dask_array(array):
        return np.asarray(array[key])
    source = direct_source(array)
    if source is not None:
        basic = _basic(key if isinstance(key, tuple) else (key,),
                       tuple(int(s) for s in array.shape))
        if basic is not None:
            index, shape = basic
            nbytes = math.prod(shape) * array.dtype.itemsize
            # a block's worth at most (asked of dask's settings only above 1 MiB)
            if nbytes <= _ALWAYS_DIRECT or nbytes <= auto_block_bytes():
                return np.asarray(source[index])
    result: np.ndarray = np.asarray(array[key].compute())
    return result
