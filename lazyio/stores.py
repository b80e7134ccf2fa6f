"""Zarr stores described by value, so any process can reopen them.

A :class:`StoreSpec` says how to open a store: a directory or an object-store prefix
(through fsspec), a zip file, or a store instance the caller gave us (embedded as is).
It also offers the few raw-key operations lazyio needs where zarr-python 3 cannot help:
listing a group that holds Zarr v2 object arrays (which zarr-python 3 refuses to open)
and reading such arrays' chunks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, ZipStore

from lazyio import handles
from lazyio.errors import FormatError
from lazyio.location import Location

__all__ = ["StoreSpec", "open_store", "read_json", "list_dir", "get_bytes", "set_bytes"]

StoreKind = Literal["dir", "zip", "instance"]


@dataclass(frozen=True)
class StoreSpec:
    """How to open a zarr store in any process.

    Attributes
    ----------
    kind : {"dir", "zip", "instance"}
        A directory or object-store prefix, a zip file, or a store object given by the user.
    location : Location or None
        Where the directory or zip file lives (``None`` for ``"instance"``).
    instance : object
        The user's zarr store, or a MutableMapping (wrapped), for ``"instance"``.
    """

    kind: StoreKind
    location: Location | None = None
    instance: Any = None

    def __dask_tokenize__(self) -> Any:
        if self.kind == "instance":
            return ("instance", id(self.instance))
        return (self.kind, self.location.__dask_tokenize__())

    def __hash__(self) -> int:
        if self.kind == "instance":
            return hash(("instance", id(self.instance)))
        return hash((self.kind, self.location))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoreSpec) or other.kind != self.kind:
            return False
        if self.kind == "instance":
            return self.instance is other.instance
        return self.location == other.location

    def __str__(self) -> str:
        return str(self.location) if self.location is not None else repr(self.instance)


def _make_store(spec: StoreSpec, read_only: bool) -> Store:
    if spec.kind == "instance":
        inst = spec.instance
        if isinstance(inst, Store):
            return inst
        if isinstance(inst, MutableMapping):
            # e.g. an fsspec FSMap: reach its filesystem through zarr's fsspec store
            fs = getattr(inst, "fs", None)
            root = getattr(inst, "root", None)
            if fs is not None and root is not None:
                if not fs.async_impl:
                    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

                    fs = AsyncFileSystemWrapper(fs, asynchronous=True)
                return FsspecStore(fs, path=root, read_only=read_only)
        raise TypeError(f"Unsupported zarr store object: {type(inst).__name__}")
    loc = spec.location
    if spec.kind == "zip":
        if loc.local_path is None:
            raise NotImplementedError(f"{loc}: zip stores must be local files")
        store = ZipStore(loc.local_path, mode="r" if read_only else "w")
        if not store._is_open:  # zarr opens zip files lazily, but our raw reads need it now
            sync(store._open())
        return store
    if loc.local_path is not None:
        return LocalStore(loc.local_path, read_only=read_only)
    return FsspecStore.from_url(loc.url, storage_options=loc.storage_options, read_only=read_only)


def open_store(spec: StoreSpec, read_only: bool = True, cached: bool = True) -> Store:
    """Open (or reuse, per process) the store described by ``spec``."""
    if not cached or spec.kind == "instance":
        return _make_store(spec, read_only)
    return handles.acquire(("zarr-store", spec, read_only), lambda: _make_store(spec, read_only))


async def _collect(it: AsyncIterator[str]) -> list[str]:
    return [x async for x in it]


def list_dir(store: Store, prefix: str) -> list[str]:
    """Names directly below ``prefix`` (sorted)."""
    prefix = prefix.strip("/")
    return sorted(sync(_collect(store.list_dir(prefix + "/" if prefix else ""))))


def get_bytes(store: Store, key: str) -> bytes | None:
    """The value of ``key``, or ``None`` if it does not exist."""
    buf = sync(store.get(key.lstrip("/"), prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def set_bytes(store: Store, key: str, value: bytes) -> None:
    """Write ``value`` under ``key``."""
    sync(store.set(key.lstrip("/"), Buffer.from_bytes(value)))


def read_json(store: Store, key: str) -> dict[str, Any] | None:
    """Parse the JSON document at ``key`` (``None`` if absent)."""
    raw = get_bytes(store, key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FormatError(f"{store}: damaged Zarr metadata {key!r} ({err})") from err


def node_kind(store: Store, path: str) -> tuple[str | None, int | None, dict[str, Any] | None]:
    """What lives at ``path``: ("group"|"array"|None, zarr format, metadata document)."""
    base = path.strip("/")
    pre = base + "/" if base else ""
    meta = read_json(store, pre + "zarr.json")
    if meta is not None:
        return meta.get("node_type"), 3, meta
    meta = read_json(store, pre + ".zarray")
    if meta is not None:
        return "array", 2, meta
    meta = read_json(store, pre + ".zgroup")
    if meta is not None:
        return "group", 2, meta
    return None, None, None


def zarr_array(store: Store, path: str) -> zarr.Array:
    """Open the array at ``path`` with zarr-python (numeric and string arrays)."""
    return zarr.open_array(store=store, path=path.strip("/"), mode="r")
