"""Region writes into Zarr arrays: chunk files written directly where the array is plain.

Only plain local Zarr v2 arrays take the direct path (see :mod:`lazyio.backends.zarr.direct`,
which also explains why); the rest, and regions that do not start on chunk boundaries, are
written by zarr-python.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import zarr
from zarr.core.sync import sync
from zarr.storage import LocalStore

from lazyio.backends.zarr.direct import LocalV2Layout, is_aligned, local_v2_layout, write_region
from lazyio.backends.zarr.stores import FreshStore

__all__ = ["ROOT_DOCS", "DeferredRootStore", "ZarrRegionTarget", "commit_root",
           "hierarchy_keys", "WRITING_MARKER", "zarr_target"]


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


#: Put at the root of a remote store while lazyio writes it, removed once it is complete:
#: a prefix holding it is an unfinished store that the next overwrite may replace.
WRITING_MARKER = ".lazyio-writing"
_GROUP_DOCS = frozenset({".zgroup", ".zattrs", ".zmetadata", "zarr.json"})


def hierarchy_keys(fs: Any, root: str) -> tuple[list[str], list[str]]:
    """Split the objects under ``root`` into the Zarr hierarchy's own and foreign ones.

    Own: the metadata documents of every group reachable from the root through groups,
    and everything under every array reachable so (its chunks). Foreign: the rest (a
    README, another program's files, a folder without Zarr metadata). Returns full paths
    in ``fs``, as ``fs.find`` gives them; a root that is no Zarr group has no own keys.
    With ``fs=None`` the local directory ``root`` is walked without descending into
    arrays (an array is one own entry, its directory) and without following links.
    """
    root = root.rstrip("/")
    if fs is None:
        return _local_hierarchy(root)
    files = [p for p in fs.find(root, withdirs=False) if p.rstrip("/") != root]
    by_dir: dict[str, set[str]] = {}
    for path in files:
        head, _, name = path.rpartition("/")
        by_dir.setdefault(head, set()).add(name)

    def kind(folder: str) -> str | None:
        names = by_dir.get(folder, set())
        if folder == root and WRITING_MARKER in names:
            return "group"  # a store whose writer did not finish: no root documents yet
        if ".zarray" in names:
            return "array"
        if ".zgroup" in names:
            return "group"
        if "zarr.json" in names:
            import json

            try:
                doc = json.loads(fs.cat_file(f"{folder}/zarr.json", start=0, end=1_000_000))
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
                verdict = part in _GROUP_DOCS or (depth == 0 and part == WRITING_MARKER)
                break
            folder = f"{folder}/{part}"
        (own if verdict else foreign).append(path)
    return own, foreign


def _node_kind(folder: str, files: set[str]) -> str | None:
    if ".zarray" in files:
        return "array"
    if ".zgroup" in files:
        return "group"
    if "zarr.json" in files:
        import json

        try:
            with open(os.path.join(folder, "zarr.json"), "rb") as f:
                doc = json.loads(f.read(1_000_000))
        except (OSError, ValueError):
            return None
        node = doc.get("node_type") if isinstance(doc, dict) else None
        return node if node in ("array", "group") else None
    return None


def _local_hierarchy(root: str) -> tuple[list[str], list[str]]:
    own: list[str] = []
    foreign: list[str] = []
    todo = [root]
    while todo:
        folder = todo.pop()
        with os.scandir(folder) as it:
            entries = list(it)
        files = {e.name for e in entries if not e.is_dir(follow_symlinks=False)}
        kind = _node_kind(folder, files)
        if folder == root and WRITING_MARKER in files:
            kind = "group"
        if kind == "array":
            own.append(folder)  # with everything under it
            continue
        if kind != "group":
            foreign.append(folder)
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                todo.append(entry.path)
            elif entry.name in _GROUP_DOCS or (folder == root and entry.name == WRITING_MARKER):
                own.append(entry.path)
            else:
                foreign.append(entry.path)
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
        await self._mark()
        await super().set(key, value)

    async def _mark(self) -> None:
        # Before the first object (zarr may have cleared the prefix since the pipeline put
        # the marker): a prefix with the marker is an unfinished store of lazyio's.
        if WRITING_MARKER not in self._docs:
            from zarr.core.buffer import default_buffer_prototype

            marker = default_buffer_prototype().buffer.from_bytes(b"lazyio")
            await self._store.set(WRITING_MARKER, marker)
            self._docs[WRITING_MARKER] = None

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        # zarr creates parent groups this way, past set()
        if key in ROOT_DOCS:
            self._docs.setdefault(key, value)
            return
        await self._mark()
        await super().set_if_not_exists(key, value)

    async def _set_many(self, values: Any) -> None:
        for key, value in values:
            await self.set(key, value)

    async def commit_root(self) -> None:
        """Write the held-back root documents, the group document last, then (Zarr v2)
        the consolidated metadata of every document written through this store, then
        remove the writing marker."""
        for key in sorted((k for k in self._docs if k in ROOT_DOCS and k != CONSOLIDATED),
                          key=lambda k: k in (".zgroup", "zarr.json")):
            await self._store.set(key, self._docs[key])
        if self._docs.get(".zgroup") is not None:
            from zarr.core.buffer import default_buffer_prototype

            docs = {k: v.to_bytes() for k, v in self._docs.items()
                    if v is not None and k.rsplit("/", 1)[-1] in _V2_DOCS}
            await self._store.set(CONSOLIDATED, default_buffer_prototype().buffer.from_bytes(
                consolidated_bytes(docs)))
        if self._docs.pop(WRITING_MARKER, False) is None:
            await self._store.delete(WRITING_MARKER)


CONSOLIDATED = ".zmetadata"
_V2_DOCS = (".zgroup", ".zattrs", ".zarray")


def consolidated_bytes(docs: dict[str, bytes]) -> bytes:
    """The ``.zmetadata`` document (Zarr v2 consolidated metadata) of ``docs``, a map
    of document keys to their bytes."""
    meta = {key: json.loads(raw) for key, raw in sorted(docs.items())}
    return json.dumps({"metadata": meta, "zarr_consolidated_format": 1},
                      indent=4, sort_keys=True).encode()


def consolidate_local(root: str) -> None:
    """Write the ``.zmetadata`` of the Zarr v2 hierarchy in the local folder ``root``,
    after everything else (a reader trusts it only when it agrees with the root's own
    documents: see :class:`~lazyio.backends.zarr.stores._MetadataCache`)."""
    docs: dict[str, bytes] = {}
    for folder, _dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        for name in files:
            if name in _V2_DOCS:
                with open(os.path.join(folder, name), "rb") as f:
                    docs[name if rel == "." else f"{rel}/{name}"] = f.read()
    if ".zgroup" not in docs:
        return
    tmp = os.path.join(root, CONSOLIDATED + ".part")
    with open(tmp, "wb") as f:
        f.write(consolidated_bytes(docs))
    os.replace(tmp, os.path.join(root, CONSOLIDATED))


def commit_root(store: DeferredRootStore) -> None:
    """Write the root documents a :class:`DeferredRootStore` held back."""
    sync(store.commit_root())
