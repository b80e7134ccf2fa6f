"""Region writes into local Zarr v2 arrays, chunk files written directly.

zarr-python 3 sends every chunk through its event loop and codec thread pool: writing
512 MiB in 8 MiB Blosc chunks took 1.55 s through it against 0.70 s encoding with numcodecs
in the dask tasks and writing the files here. Only plain arrays take this path (see
:func:`lazyio.backends.zarr.sources.local_v2_layout`); the rest, and regions that do not start on
chunk boundaries, are written by zarr-python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from lazyio.backends.zarr.sources import LocalV2Layout, local_v2_layout

__all__ = ["ZarrRegionTarget", "zarr_target"]


@dataclass(frozen=True)
class ZarrRegionTarget:
    """A picklable region-write target: whole chunks written as files, or through zarr."""

    array: zarr.Array
    layout: LocalV2Layout | None = None

    def __setitem__(self, region: tuple[slice, ...], block: Any) -> None:
        if self.layout is None or not self._aligned(region):
            self.array[region] = block
            return
        layout = self.layout
        block = np.asarray(block)
        codec = layout.codec()
        grid = [range(r.start // c, -(-r.stop // c))
                for r, c in zip(region, layout.chunks, strict=True)]
        for coords in product(*grid):
            local = tuple(
                slice(i * c - r.start, min((i + 1) * c, r.stop) - r.start)
                for i, c, r in zip(coords, layout.chunks, region, strict=True)
            )
            piece = block[local]
            if piece.shape != layout.chunks:  # edge chunks are stored whole, padded
                full = np.full(layout.chunks, layout.fill_value, dtype=layout.dtype)
                full[tuple(slice(0, n) for n in piece.shape)] = piece
                piece = full
            raw = np.ascontiguousarray(piece, dtype=layout.dtype)
            data = codec.encode(raw) if codec is not None else raw.tobytes()
            name = layout.chunk_path(coords)
            os.makedirs(os.path.dirname(name), exist_ok=True)
            with open(name, "wb") as f:
                f.write(data)

    def _aligned(self, region: tuple[slice, ...]) -> bool:
        shape = self.array.shape
        return len(region) == len(shape) > 0 and all(
            r.start % c == 0 and (r.stop % c == 0 or r.stop == n)
            for r, c, n in zip(region, self.layout.chunks, shape, strict=True)
        )


def zarr_target(array: zarr.Array) -> ZarrRegionTarget:
    """The region-write target for ``array``: direct chunk files where it is a plain
    local Zarr v2 array, zarr-python otherwise."""
    store = array.store
    layout = None
    if type(store) is LocalStore and array.metadata.zarr_format == 2 and array.ndim:
        root = os.path.join(os.fspath(store.root), *array.path.strip("/").split("/"))
        layout = local_v2_layout(root)
        if layout is not None and (
            layout.chunks != tuple(array.chunks) or layout.dtype != array.dtype
        ):
            layout = None
    return ZarrRegionTarget(array, layout)
