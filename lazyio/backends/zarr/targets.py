"""Region writes into Zarr arrays: chunk files written directly where the array is plain.

Only plain local Zarr v2 arrays take the direct path (see :mod:`lazyio.backends.zarr.direct`,
which also explains why); the rest, and regions that do not start on chunk boundaries, are
written by zarr-python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import zarr
from zarr.storage import LocalStore

from lazyio.backends.zarr.direct import LocalV2Layout, is_aligned, local_v2_layout, write_region

__all__ = ["ZarrRegionTarget", "zarr_target"]


@dataclass(frozen=True)
class ZarrRegionTarget:
    """A picklable region-write target: whole chunks written as files, or through zarr."""

    array: zarr.Array[Any]
    layout: LocalV2Layout | None = None

    def __setitem__(self, region: tuple[slice, ...], block: Any) -> None:
        layout = self.layout
        if layout is None or not is_aligned(region, layout.chunks, tuple(self.array.shape)):
            self.array[region] = block
            return
        write_region(layout, region, block)


def zarr_target(array: zarr.Array[Any]) -> ZarrRegionTarget:
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
