"""Zarr stores described by value, so any process can reopen them.

A :class:`StoreSpec` says how to open a store: a directory or an object-store prefix
(through fsspec), a zip file, or a store instance the caller gave us (embedded as is).
It also offers the few raw-key operations lazyio needs where zarr-python 3 cannot help:
listing a group that holds Zarr v2 object arrays (which zarr-python 3 refuses to open)
and reading such arrays' chunks.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

import zarr
from zarr.abc.store import Store
from zarr.core.buffer import Buffer as StoredBuffer
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from lazyio import handles
from lazyio.backends.zarr.codecs import ZarrFormat
from lazyio.errors import FormatError, UnsafeFileError, UnsupportedError
from lazyio.location import Location

__all__ = [
    "AnyStoreSpec",
    "DirSpec",
    "FreshStore",
    "InstanceSpec",
    "StoreSpec",
    "ZipSpec",
    "get_bytes",
    "list_dir",
    "open_store",
    "read_json",
    "set_bytes",
    "store_spec",
]

StoreKind = Literal["dir", "zip", "instance"]

MAX_KEY_DEPTH = 300  # a HyperSpy tree is ~10 levels, plus one per chunk-key axis


class _SpecMeta(type):
    """Lets ``StoreSpec(kind, location, instance)`` build the matching subclass.

    Callers outside the Zarr room built specs that way before the kinds became classes;
    the call keeps working and returns a :class:`DirSpec`, :class:`ZipSpec` or
    :class:`InstanceSpec`.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is StoreSpec:
            return store_spec(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class StoreSpec(metaclass=_SpecMeta):
    """How to open a zarr store in any process: one of :class:`DirSpec`,
    :class:`ZipSpec` or :class:`InstanceSpec`.

    A spec pickles by value and tokenizes by value (the same directory or zip file gives
    the same dask names in every process); ``kind`` names the subclass and ``location``
    is where the store lives (``None`` for a store object).
    """

    kind: ClassVar[StoreKind]
    location: Location | None


@dataclass(frozen=True)
class DirSpec(StoreSpec):
    """A directory, or a prefix of an object store, opened through fsspec.

    Attributes
    ----------
    location : Location
    """

    kind: ClassVar[Literal["dir"]] = "dir"
    location: Location

    def __dask_tokenize__(self) -> tuple[str, tuple[str, str]]:
        return (self.kind, self.location.__dask_tokenize__())

    def __str__(self) -> str:
        return str(self.location)


@dataclass(frozen=True)
class ZipSpec(StoreSpec):
    """A zip file holding a store (local files only).

    Attributes
    ----------
    location : Location
    """

    kind: ClassVar[Literal["zip"]] = "zip"
    location: Location

    def __dask_tokenize__(self) -> tuple[str, tuple[str, str]]:
        return (self.kind, self.location.__dask_tokenize__())

    def __str__(self) -> str:
        return str(self.location)


@dataclass(frozen=True, eq=False)
class InstanceSpec(StoreSpec):
    """A store object given by the user: a zarr ``Store``, or a MutableMapping such as
    an fsspec ``FSMap`` (wrapped). Identified by identity, as it cannot be reopened
    from a description.

    Attributes
    ----------
    instance : object
    """

    kind: ClassVar[Literal["instance"]] = "instance"
    instance: Any
    location: None = field(default=None, init=False, repr=False, compare=False)

    def __dask_tokenize__(self) -> tuple[str, int]:
        return (self.kind, id(self.instance))

    def __hash__(self) -> int:
        return hash((self.kind, id(self.instance)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstanceSpec) and self.instance is other.instance

    def __str__(self) -> str:
        return repr(self.instance)


AnyStoreSpec: TypeAlias = DirSpec | ZipSpec | InstanceSpec
"""The closed set of specs, for code that branches on the kind."""


def store_spec(
    kind: StoreKind, location: Location | None = None, instance: Any = None
) -> AnyStoreSpec:
    """The spec of ``kind``, checking that the right one of ``location``/``instance``
    is given.

    Raises
    ------
    ValueError
        For an unknown kind, or a location given with an instance (or missing).
    """
    if kind in ("dir", "zip"):
        if location is None or instance is not None:
            raise ValueError(f"a {kind!r} store spec needs a location and no instance")
        return DirSpec(location) if kind == "dir" else ZipSpec(location)
    if kind == "instance":
        if location is not None or instance is None:
            raise ValueError("an 'instance' store spec needs an instance and no location")
        return InstanceSpec(instance)
    raise ValueError(f"store kind must be 'dir', 'zip' or 'instance', not {kind!r}")


def _make_store(spec: StoreSpec, read_only: bool) -> Store:
    if isinstance(spec, InstanceSpec):
        inst = spec.instance
        if isinstance(inst, Store):
            return inst
        if isinstance(inst, MutableMapping):
            # e.g. an fsspec FSMap: reach its filesystem through zarr's fsspec store
            fs = getattr(inst, "fs", None)
            root = getattr(inst, "root", None)
            if fs is not None and root is not None:
                if not fs.async_impl:
                    from fsspec.implementations.asyn_wrapper import (
                        AsyncFileSystemWrapper,
                    )

                    fs = AsyncFileSystemWrapper(fs, asynchronous=True)
                return FsspecStore(fs, path=root, read_only=read_only)
        raise TypeError(f"Unsupported zarr store object: {type(inst).__name__}")
    if isinstance(spec, ZipSpec):
        return _open_zip(spec.location, read_only)
    if not isinstance(spec, DirSpec):
        raise TypeError(f"not a store spec: {spec!r}")
    loc = spec.location
    if loc.local_path is not None:
        return LocalStore(loc.local_path, read_only=read_only)
    store = FsspecStore.from_url(loc.url, storage_options=loc.fs_options,
                                 read_only=read_only)
    return _MetadataCache(store) if read_only else store


def _open_zip(loc: Location, read_only: bool) -> Store:
    if loc.local_path is None:
        raise UnsupportedError(
            f"{loc}: a zipped .zspy store can only be opened as a local file; copy it "
            "locally, or store it unzipped (a directory store) remotely"
        )
    store = zarr.storage.ZipStore(loc.local_path, mode="r" if read_only else "w")
    if not store._is_open:  # zarr opens zip files lazily, but our raw reads need it now
        sync(store._open())
    if read_only:
        _refuse_escaping_members(loc, store._zf.namelist())
    return store


_METADATA_NAMES = frozenset({".zattrs", ".zgroup", ".zarray", ".zmetadata", "zarr.json"})


def _is_doc(key: str) -> bool:
    """Whether ``key`` names a metadata document (not a chunk)."""
    return key.rsplit("/", 1)[-1] in _METADATA_NAMES


class _MetadataCache(WrapperStore[Store]):
    """Remember a remote read-only store's metadata documents and listings.

    Opening a HyperSpy tree reads each node's metadata several times (lazyio probes the
    node kind, zarr-python reads it again to open the array or group): over a network every
    repeat is a round trip. Chunks are never cached. The cache lives as long as the store
    in the handle cache, which a write to the same location closes.
    """

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._docs: dict[str, StoredBuffer | None] = {}
        self._listings: dict[str, list[str]] = {}

    def _with_store(self, store: Store) -> _MetadataCache:
        return type(self)(store)

    def __str__(self) -> str:
        return str(self._store)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if byte_range is not None or not _is_doc(key):
            return await self._store.get(key, prototype, byte_range)
        if key not in self._docs:
            self._docs[key] = await self._store.get(key, prototype)
        return self._docs[key]

    async def exists(self, key: str) -> bool:
        if _is_doc(key):
            return await self.get(key, default_buffer_prototype()) is not None
        return bool(await self._store.exists(key))

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        if prefix not in self._listings:
            self._listings[prefix] = [k async for k in self._store.list_dir(prefix)]
        for key in self._listings[prefix]:
            yield key


class FreshStore(WrapperStore[Store]):
    """A store being written from empty: metadata look-ups are answered from what was
    written through this wrapper, without asking the (remote) store.

    Building a HyperSpy tree checks, for every node, whether metadata documents exist and
    reads them back; on an object store each check is one or two round trips (HEAD, then
    a listing for a missing key). The target was emptied just before (an overwrite removes
    it first), so a document not written here does not exist. Chunks pass through.
    """

    def __init__(self, store: Store, docs: dict[str, Any] | None = None) -> None:
        super().__init__(store)
        self._docs: dict[str, Any] = {} if docs is None else docs

    def _with_store(self, store: Store) -> FreshStore:
        return type(self)(store, self._docs)

    def __str__(self) -> str:
        return str(self._store)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if byte_range is None and _is_doc(key):
            return self._docs.get(key)
        return await self._store.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        if _is_doc(key):
            return key in self._docs
        return bool(await self._store.exists(key))

    async def set(self, key: str, value: Any) -> None:
        await self._store.set(key, value)
        if _is_doc(key):
            self._docs[key] = value

    async def delete(self, key: str) -> None:
        self._docs.pop(key, None)
        await self._store.delete(key)

    async def delete_dir(self, prefix: str) -> None:
        base = prefix.rstrip("/") + "/" if prefix else ""
        for key in [k for k in self._docs if k.startswith(base)]:
            del self._docs[key]
        await self._store.delete_dir(prefix)


def _refuse_escaping_members(loc: Location, names: list[str]) -> None:
    # Such names are never keys of a valid store, and a tool that extracts the zip would
    # write outside its target folder: refuse the file rather than guess. Absurdly deep
    # names are refused too: zarr lists a zip's every member for each group it opens.
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise UnsafeFileError(
                f"{loc}: zip member {name[:80]!r} points outside the store; refused"
            )
        if len(parts) > MAX_KEY_DEPTH:
            raise UnsafeFileError(
                f"{loc}: zip member {name[:60]!r}... is nested {len(parts)} levels deep "
                f"(more than {MAX_KEY_DEPTH}); refused"
            )


@dataclass(frozen=True)
class StoreKey(handles.FileKey):
    """An open zarr store in the handle cache; ``location`` is its :data:`StoreSpec`."""

    kind: ClassVar[str] = "zarr-store"
    read_only: bool = True


def open_store(spec: StoreSpec, read_only: bool = True, cached: bool = True) -> Store:
    """Open (or reuse, per process) the store described by ``spec``."""
    if not cached or isinstance(spec, InstanceSpec):
        return _make_store(spec, read_only)
    return handles.acquire(StoreKey(spec, read_only), lambda: _make_store(spec, read_only))


async def _collect(it: AsyncIterator[str]) -> list[str]:
    return [x async for x in it]


def _local_root(store: Store) -> str | None:
    # A local directory is read with plain file calls: each call through zarr's async
    # store is a round trip to its event loop thread, and opening a .zspy makes ~100.
    return os.fspath(store.root) if type(store) is LocalStore else None


def list_dir(store: Store, prefix: str) -> list[str]:
    """Names directly below ``prefix`` (sorted)."""
    prefix = prefix.strip("/")
    root = _local_root(store)
    if root is not None:
        try:
            return sorted(os.listdir(os.path.join(root, prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return []
    names = sync(_collect(store.list_dir(prefix + "/" if prefix else "")))
    # fsspec's HTTP listing (links of an index page) names sub-directories "name/"
    return sorted({n.rstrip("/") for n in names if n.rstrip("/")})


def get_bytes(store: Store, key: str) -> bytes | None:
    """The value of ``key``, or ``None`` if it does not exist."""
    root = _local_root(store)
    if root is not None:
        try:
            with open(os.path.join(root, key.lstrip("/")), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
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
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FormatError(f"{store}: damaged Zarr metadata {key!r} ({err})") from err
    if not isinstance(doc, dict):
        raise FormatError(f"{store}: damaged Zarr metadata {key!r} (not a JSON object)")
    return doc


def node_kind(
    store: Store, path: str
) -> tuple[str | None, ZarrFormat | None, dict[str, Any] | None]:
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


def zarr_array(store: Store, path: str) -> zarr.Array[Any]:
    """Open the array at ``path`` with zarr-python (numeric and string arrays)."""
    return zarr.open_array(store=store, path=path.strip("/"), mode="r")
