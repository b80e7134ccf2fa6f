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
from zarr.core.sync import sync
from zarr.storage import LocalStore

from lazyio.backends.zarr.direct import LocalV2Layout, is_aligned, local_v2_layout, write_region
from lazyio.backends.zarr.stores import FreshStore

__all__ = ["ROOT_DOCS", "DeferredRootStore", "ZarrRegionTarget", "commit_root",
           "hierarchy_keys", "zarr_target"]


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


_GROUP_DOCS = frozenset({".zgroup", ".zattrs", ".zmetadata", "zarr.json"})


def hierarchy_keys(fs: Any, root: str) -> tuple[list[str], list[str]]:
    """Split the objects under ``root`` into the Zarr hierarchy's own and foreign ones.

    Own: the metadata documents of every group reachable from the root through groups,
    and everything under every array reachable so (its chunks). Foreign: the rest (a
    README, another program's files, a folder without Zarr metadata). Returns full paths
    in ``fs``, as ``fs.find`` gives them; a root that is no Zarr group has no own keys.
    """
    root = root.rstrip("/")
    files = [p for p in fs.find(root, withdirs=False) if p.rstrip("/") != root]
    by_dir: dict[str, set[str]] = {}
    for path in files:
        head, _, name = path.rpartition("/")
        by_dir.setdefault(head, set()).add(name)

    def kind(folder: str) -> str | None:
        names = by_dir.get(folder, set())
        if ".zarray" in names:
            return "array"
        if ".zgroup" in names:
            return "group"
        if "zarr.json" in names:
            import json

            try:
                doc = json.loads(fs.cat_file(f"{folder}/zarr.json")[:1_000_000])
            except (OSError, ValueError):
                return None
            node = doc.get("node_type") if isinstance(doc, dict) else None
            return node if node in ("array", "group") else None
        return None

    kinds: dict[str, str | None] = {}
    own: list[str] = []
    foreign: list[str] = []
    for path in files:
        parts = path[len(root) + 1:].split("/")
        folder = root
        verdict = False
        for depth, part in enumerate(parts):
            if folder not in kinds:
                kinds[folder] = kind(folder)
            node = kinds[folder]
            if node == "array":
                verdict = True  # chunks, at any depth below an array
                break
            if node != "group":
                break
            if depth == len(parts) - 1:
                verdict = part in _GROUP_DOCS
                break
            folder = f"{folder}/{part}"
        (own if verdict else foreign).append(path)
    return own, foreign


#: The root documents that make a store look like a Zarr hierarchy.
ROOT_DOCS = (".zgroup", "zarr.json", ".zattrs", ".zmetadata")


class DeferredRootStore(FreshStore):
    """A store being written from empty whose root documents are held back.

    Reads see them; the underlying store gets them only from :func:`commit_root`, called
    once every array is written. A write that fails or is killed before then leaves a
    store without root metadata, which no reader takes for a complete hierarchy.
    """

    async def set(self, key: str, value: Any) -> None:
        if key in ROOT_DOCS:
            self._docs[key] = value
            return
        await super().set(key, value)

    async def commit_root(self) -> None:
        """Write the held-back root documents, the group document last."""
        for key in sorted((k for k in self._docs if k in ROOT_DOCS),
                          key=lambda k: k in (".zgroup", "zarr.json")):
            await self._store.set(key, self._docs[key])


def commit_root(store: DeferredRootStore) -> None:
    """Write the root documents a :class:`DeferredRootStore` held back."""
    sync(store.commit_root())
