"""The chunk-slice layer: picklable chunk sources in, dask arrays out.

A *chunk source* is a small frozen dataclass with ``shape``, ``dtype``, ``ndim`` and
``__getitem__``. It holds a :class:`~lazyio.location.Location` and whatever describes the
stored array (a dataset path, a byte offset), never an open file: each ``__getitem__``
opens what it needs through :mod:`lazyio.handles`. Dask embeds the source in every task
(``inline_array=True``), so a graph pickles by value and runs in any process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from lazyio.backends.chunking import (
    BlockChunks,
    aligned_chunks,
    regular_chunks,
    target_chunk_bytes,
)
from lazyio.backends.plan import plan, planned

if TYPE_CHECKING:
    import dask.array as da

__all__ = [
    "ChunkSource",
    "direct_source",
    "register_direct",
    "StorageLayout",
    "aligned_chunks",
    "regular_chunks",
    "target_chunk_bytes",
    "to_dask",
]


@dataclass(frozen=True)
class StorageLayout:
    """How one stored array is laid out: what ``lazyio.info`` shows of its storage.

    ``chunks`` is ``None`` for contiguous storage; ``compression`` names the filters or
    codecs (``None``: stored raw); ``stored`` counts the bytes it takes in storage, where
    known.
    """

    dataset: str | None = None
    chunks: tuple[int, ...] | None = None
    compression: str | None = None
    stored: int | None = None


@runtime_checkable
class ChunkSource(Protocol):
    """What :func:`to_dask` needs: an array-like that reads a slice per call."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def ndim(self) -> int: ...

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray: ...


def to_dask(
    source: ChunkSource,
    chunks: BlockChunks,
    *,
    prefix: str = "lazyio",
    token_extra: Any = None,
) -> da.Array:
    """Wrap a chunk source as a dask array, one task per block of ``chunks``.

    Parameters
    ----------
    source : ChunkSource
        The picklable source; it is embedded in each task.
    chunks : tuple of tuple of int
        Block sizes, already aligned to the storage chunks (see :func:`aligned_chunks`).
    prefix : str
        Start of the dask name, e.g. the format.
    token_extra : object
        Anything else that must change the name when the data changes (e.g. the file's
        modification time).

    Returns
    -------
    dask.array.Array
        Inside :func:`lazyio.backends.plan.planning`, a
        :class:`~lazyio.backends.plan.PlannedArray` of the same shape and chunks instead.
    """
    if planned():
        return plan(source.shape, source.dtype, chunks)
    import dask.array as da
    from dask.base import tokenize

    meta = np.empty((0,) * len(source.shape), dtype=source.dtype)
    name = f"{prefix}-{tokenize(source, chunks, token_extra)}"
    array: da.Array = da.from_array(
        source,
        chunks=chunks,
        name=name,
        meta=meta,
        inline_array=True,
        asarray=False,
        fancy=True,  # sources take any index, so dask pushes selections into the read
    )
    register_direct(array, source)
    return array


# The sources of the arrays lazyio built, by dask name (a name is a content hash: an array
# of that name reads that source), for lazyio.fetch to read a selection without the
# scheduler. Sources hold no data; the oldest are forgotten (fetch then uses dask).
_DIRECT: OrderedDict[str, ChunkSource] = OrderedDict()
_DIRECT_MAX = 1024
_DIRECT_LOCK = threading.Lock()


def register_direct(array: Any, source: ChunkSource) -> None:
    """Remember that dask array ``array`` reads ``source`` block by block (whole, in its
    own shape), so that :func:`lazyio.fetch` can read a selection of it directly."""
    with _DIRECT_LOCK:
        _DIRECT[array.name] = source
        _DIRECT.move_to_end(array.name)
        while len(_DIRECT) > _DIRECT_MAX:
            _DIRECT.popitem(last=False)


def direct_source(array: Any) -> ChunkSource | None:
    """The source that ``array`` (a dask array lazyio built) reads, or ``None``."""
    name = getattr(array, "name", None)
    if not isinstance(name, str):
        return None
    with _DIRECT_LOCK:
        source = _DIRECT.get(name)
    if source is None or tuple(source.shape) != tuple(array.shape):
        return None
    return source
