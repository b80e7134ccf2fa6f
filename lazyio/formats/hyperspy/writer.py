"""The array writer shared by the hspy and zspy plugins.

Metadata is written as the tree is walked; every array goes through
:class:`ArrayWriter`, which picks storage chunks, creates the dataset and either writes
small numpy arrays at once or queues the data for one streamed store at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np

from lazyio.backends.chunking import (
    Chunks,
    rechunk_to_storage,
    storage_chunks,
    write_chunks,
)
from lazyio.backends.store import store
from lazyio.formats.hyperspy.node import Node, has_subarray_fields

__all__ = ["ArrayWriter"]

# numpy arrays up to this size are written directly instead of through dask
_SMALL_BYTES = 16 * 2**20


class ArrayWriter:
    """Collects array writes; :meth:`flush` streams the queued ones with one store call.

    Parameters
    ----------
    make_target : callable
        ``make_target(node, name, dataset) -> target`` for a created dataset.
    chunks : None, True or tuple
        The writer's ``chunks`` argument, applied to the main data.
    target_bytes : float
        Size of default storage chunks.
    options : dict
        Dataset-creation options (compression/compressor, ...).
    """

    def __init__(
        self,
        make_target: Callable[[Node, str, Any], Any],
        *,
        chunks: Chunks,
        target_bytes: float,
        signal_axes: list[int],
        options: dict[str, Any],
    ) -> None:
        self.make_target = make_target
        self.chunks = chunks
        self.target_bytes = target_bytes
        self.signal_axes = signal_axes
        self.options = options
        self.sources: list[da.Array] = []
        self.targets: list[Any] = []

    def __call__(self, node: Node, name: str, data: Any) -> None:
        is_main = name == "data" and node.path.strip("/").startswith("Experiments/") and (
            node.path.strip("/").count("/") == 1
        )
        # .zspy's shard shape describes the main data only
        options = self.options if is_main else {
            k: v for k, v in self.options.items() if k != "shards"}
        if data.dtype.kind in "UO" or has_subarray_fields(data.dtype):
            # strings, ragged arrays and HyperSpy 1.x model maps (sub-array fields): small,
            # and each node stores them in its own way
            node.write_small_array(name, np.asarray(data), **options)
            return
        request = self.chunks if is_main else None
        axes = self.signal_axes if is_main else list(range(data.ndim))
        chunks = storage_chunks(data.shape, data.dtype, request, axes, self.target_bytes)
        dset = node.create_array(name, tuple(data.shape), data.dtype, chunks, **options)
        if math.prod(data.shape) == 0:
            return
        small = isinstance(data, np.ndarray) and data.nbytes <= _SMALL_BYTES
        if data.ndim == 0:
            dset[()] = np.asarray(data)
            return
        # a target without storage chunks takes any block; a sharded Zarr array is
        # written in whole shards (a task rewriting part of a shard would race another)
        grid = getattr(dset, "shards", None) or getattr(dset, "chunks", None)
        actual = tuple(grid) if grid else (1,) * data.ndim
        target = self.make_target(node, name, dset)
        if small:
            target[tuple(slice(0, s) for s in data.shape)] = data
            return
        if not isinstance(data, da.Array):  # one block, cut into write blocks (views)
            whole = tuple((int(n),) for n in data.shape)
            data = da.from_array(data, chunks=write_chunks(whole, actual, data.dtype.itemsize))
        self.sources.append(rechunk_to_storage(data, actual))
        self.targets.append(target)

    def flush(self, show_progressbar: bool) -> None:
        """Stream every queued array into its target."""
        store(self.sources, self.targets, show_progressbar=show_progressbar)
        self.sources.clear()
        self.targets.clear()
