"""Zarr stores described by value, so any process can reopen them.

A :class:`StoreSpec` says how to open a store: a directory or an object-store prefix
(through fsspec), a zip file, or a store instance the caller gave us (embedded as is).
It also offers the few raw-key operations lazyio needs where zarr-python 3 cannot help:
listing a group that holds Zarr v2 object arrays (which zarr-python 3 refuses to open)
and reading such arrays' chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

import zarr
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer as StoredBuffer
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, WrapperStore, ZipStore

from lazyio import handles
from lazyio.backends.zarr.codecs import ZarrFormat
from lazyio.backends.zarr.safe import MAX_METADATA_BYTES, RootDir, stat_token, still_names
from lazyio.errors import (
    FormatError,
    StaleFileError,
    UnsafeFileError,
    UnsupportedError,
    corrupt_chunk,
    translate,
)
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
    "pinned_store",
    "read_json",
    "set_bytes",
    "store_spec",
]

StoreKind = Literal["dir", "zip", "instance"]

MAX_KEY_DEPTH = 300  # a HyperSpy tree is ~10 levels, plus one per chunk-key axis
MAX_CHUNK_FILE_BYTES = int(os.environ.get("LAZYIO_MAX_CHUNK_FILE_BYTES", str(512 * 2**20)))
"""The largest stored chunk (or shard) zarr-python is given whole from a local store; the
direct reader bounds each chunk by its own declared size instead."""


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
        if read_only:
            return SafeLocalStore(loc.local_path, spec)
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
    if read_only:
        safe = SafeZipStore(loc.local_path, loc)
        safe.open_now()
        return safe
    store = zarr.storage.ZipStore(loc.local_path, mode="w")
    if not store._is_open:  # zarr opens zip files lazily, but our raw reads need it now
        sync(store._open())
    return store


def _doc_limit(key: str) -> tuple[int, str]:
    return ((MAX_METADATA_BYTES, "metadata document") if _is_doc(key)
            else (MAX_CHUNK_FILE_BYTES, "chunk file"))


def _byte_span(size: int, byte_range: ByteRequest | None) -> tuple[int, int]:
    """The ``[start, stop)`` of ``byte_range`` in a value of ``size`` bytes."""
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, RangeByteRequest):
        return min(byte_range.start, size), min(byte_range.end, size)
    if isinstance(byte_range, OffsetByteRequest):
        return min(byte_range.offset, size), size
    if isinstance(byte_range, SuffixByteRequest):
        return max(0, size - byte_range.suffix), size
    raise TypeError(f"Unexpected byte_range, got {byte_range}.")


class SafeLocalStore(LocalStore):
    """A read-only local directory store that reads only regular files inside its root.

    Every key is opened below a descriptor of the root directory
    (:class:`~lazyio.backends.zarr.safe.RootDir`): no symbolic link is followed, FIFOs and
    devices are refused, metadata documents and chunk files are read only up to a size
    cap, and the version of the store that was opened keeps being read after the path is
    replaced (a chunk missing there then raises :class:`StaleFileError`).
    """

    def __init__(self, root: str, where: object) -> None:
        super().__init__(root, read_only=True)
        try:
            self.rootdir = RootDir(os.fspath(root), where)
        except NotADirectoryError:
            raise FormatError(f"{where}: not a Zarr store (neither a directory nor a zip "
                              "file)") from None
        self._is_open = True

    def version_token(self) -> str:
        """The modification token of the directory being read (see :class:`RootDir`)."""
        return self.rootdir.version_token()

    def is_current(self) -> bool:
        """Whether the store's path still names the directory being read."""
        return self.rootdir.is_current()

    def read_key(self, key: str, byte_range: ByteRequest | None = None) -> bytes | None:
        """The value of ``key`` (or a range of it), size-capped; ``None`` if missing."""
        limit, what = _doc_limit(key)
        if byte_range is None:
            data = self.rootdir.read(key, limit, what)
        else:
            data = self.rootdir.read(key, MAX_CHUNK_FILE_BYTES * 64, what)
            if data is not None:
                start, stop = _byte_span(len(data), byte_range)
                data = data[start:stop]
        if data is None and not _is_doc(key):
            self.rootdir.check_current(key)
        return data

    async def get(self, key: str, prototype: Any = None,
                  byte_range: ByteRequest | None = None) -> Any:
        if prototype is None:
            prototype = default_buffer_prototype()
        data = await asyncio.to_thread(self.read_key, key, byte_range)
        return None if data is None else prototype.buffer.from_bytes(data)

    def get_sync(self, key: str, *, prototype: Any = None,
                 byte_range: ByteRequest | None = None) -> Any:
        if prototype is None:
            prototype = default_buffer_prototype()
        data = self.read_key(key, byte_range)
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: Any, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Any]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.rootdir.exists, key)

    async def list(self) -> AsyncIterator[str]:
        for key in self._walk(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in self._walk(prefix.rstrip("/")):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        for name in self.rootdir.listdir(prefix.strip("/")):
            yield name

    def _walk(self, prefix: str) -> Iterable[str]:
        # each directory once: nothing is followed, so the tree cannot loop
        for name in sorted(self.rootdir.listdir(prefix)):
            key = f"{prefix}/{name}" if prefix else name
            if self.rootdir.exists(key):
                yield key
            else:
                yield from self._walk(key)


class SafeZipStore(ZipStore):
    """A read-only zip store that lists a group in constant time and caps what it reads.

    zarr's own lists every member of the zip for each group listed (20,000 groups: two
    minutes); here the listing is indexed once when the zip is opened. A member is read
    only up to its declared size, which must be under the cap of its kind (metadata or
    chunk), so a member that inflates to gigabytes is refused before it is inflated.
    """

    def __init__(self, path: str, where: object) -> None:
        super().__init__(path, mode="r", read_only=True)
        self.where = where
        self._children: dict[str, list[str]] = {}
        self._small_docs: dict[str, bytes] = {}
        self._fd = -1
        self._identity: tuple[int, int] = (0, 0)

    def open_now(self) -> None:
        """Open the zip, refuse members that leave the store, and index the listing."""
        if not self._is_open:
            sync(self._open())
        names = self._zf.namelist()
        _refuse_escaping_members(self.where, names)
        children: dict[str, set[str]] = {}
        for name in names:
            parts = name.rstrip("/").split("/")
            for depth in range(len(parts)):
                children.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
        self._children = {k: sorted(v) for k, v in children.items()}
        st = os.fstat(self._zf.fp.fileno()) if self._zf.fp is not None else None
        if self._fd < 0 and self._zf.fp is not None:
            # our own descriptor, closed only by close() under the lock that reads take:
            # a number zipfile closed could be reused by another file and read silently
            self._fd = os.dup(self._zf.fp.fileno())
        self._identity = (st.st_dev, st.st_ino) if st is not None else (0, 0)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)
        super().close()

    def __del__(self, _close: Any = os.close) -> None:
        # os.close is bound early: at interpreter exit the module may be gone already
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            try:  # noqa: SIM105  (contextlib may be torn down at exit too)
                _close(fd)
            except OSError:
                pass

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_fd"] = -1  # a descriptor means nothing in another process
        state["_small_docs"] = {}
        return state

    def version_token(self) -> str:
        """The modification token of the zip file being read (not of the path's now)."""
        if self._zf.fp is None:
            return "unknown"
        return stat_token(os.fstat(self._zf.fp.fileno()))

    def is_current(self) -> bool:
        """Whether the path still names the zip file being read."""
        return still_names(self.path, self._identity)

    def read(self, key: str, limit: int, what: str = "file", check: bool = True
             ) -> bytes | None:
        """The bytes of member ``key``, refusing one that declares more than ``limit``
        (member names were checked when the zip was opened: ``check`` is ignored)."""
        info = self._zf.NameToInfo.get(key)
        if info is None or info.is_dir():
            return None
        if info.file_size > limit:
            raise FormatError(
                f"{self.where}: zip member {key!r} inflates to {info.file_size} bytes, more "
                f"than the {limit} a {what} may hold; refused"
            )
        small_doc = info.file_size <= 4096 and _is_doc(key)
        if small_doc and key in self._small_docs:
            return self._small_docs[key]
        try:
            data = self._read_member(info)
        except Exception:
            with self._member_errors(key, what):
                raise
        if small_doc:  # a tree walk reads each group's documents twice; the zip is fixed
            self._small_docs[key] = data
        return data

    def _read_member(self, info: zipfile.ZipInfo) -> bytes:
        """The bytes of a member, checked as zipfile checks them (local header signature
        and name, size, CRC-32).

        A plain stored or deflated member, as every .zspy writer makes them, is read with
        one ``pread`` and inflated at most to its declared size: zipfile's reader costs
        ~100 us a member, the most of a load of 20,000 groups. Anything else (encrypted,
        other methods, a compressed size larger than deflate ever makes) goes through
        zipfile, which raises its own error.
        """
        size, packed = info.file_size, info.compress_size
        with self._lock:
            if (self._fd < 0 or info.flag_bits & 0x61  # encrypted, patched, strong encr.
                    or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
                    or packed > size + size // 8 + 1024
                    or (info.compress_type == zipfile.ZIP_STORED and packed != size)):
                with self._zf.open(info) as f:
                    # zipfile never returns more than the declared size, checks the CRC
                    return f.read(size)
            if not 0 <= info.header_offset < 1 << 62:  # a damaged directory entry
                raise zipfile.BadZipFile(f"member {info.orig_filename!r} starts at "
                                         f"offset {info.header_offset}")
            head = os.pread(self._fd, 30, info.header_offset)
            if len(head) != 30 or head[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile("Bad magic number for file header")
            name_len, extra_len = struct.unpack_from("<HH", head, 26)
            rest = os.pread(self._fd, name_len + extra_len + packed,
                            info.header_offset + 30)
        name = rest[:name_len].decode("utf-8" if info.flag_bits & 0x800 else "cp437")
        if name != info.orig_filename:
            raise zipfile.BadZipFile(f"File name in directory {info.orig_filename!r} and "
                                     f"header {rest[:name_len]!r} differ.")
        stored = rest[name_len + extra_len:]
        if len(stored) != packed:
            raise EOFError(f"member {info.orig_filename!r} is cut short")
        if info.compress_type == zipfile.ZIP_STORED:
            data = stored
        else:
            inflater = zlib.decompressobj(-15)
            data = inflater.decompress(stored, size)
        if len(data) != size:
            raise zipfile.BadZipFile(f"member {info.orig_filename!r} holds {len(data)} "
                                     f"bytes, not the {size} declared")
        if zlib.crc32(data) != info.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.orig_filename!r}")
        return data

    @contextlib.contextmanager
    def _member_errors(self, key: str, what: str = "") -> Iterator[None]:
        """Turn the failures of reading member ``key`` into lazyio's errors: a metadata
        document's into :class:`FormatError` (the store cannot be opened), a chunk's into
        :class:`CorruptChunkError` naming the member (its array's path and chunk key).

        zipfile checks each member's local header against the central directory and its
        CRC-32 only as it reads it, so a damaged member fails here, long after the zip
        was opened: with ``BadZipFile``, ``zlib.error``, ``EOFError``, or
        ``NotImplementedError`` for a compression method flipped to an unknown one.
        """
        doc = _is_doc(key)
        label = f"{what or ('metadata document' if doc else 'chunk file')} {key!r}"
        with translate(self.where, scope="file" if doc else "chunk", what=label):
            try:
                yield
            except _ZIP_DAMAGE as err:
                # damage to this member: say which (translate would name only the zip,
                # and knows no zlib.error); I/O errors go on to translate
                kind = "zlib.error" if isinstance(err, zlib.error) else type(err).__name__
                if doc:
                    raise FormatError(f"{self.where}: damaged zip member {key!r} ({kind}: "
                                      f"{err})") from err
                raise corrupt_chunk(self.where, label, f"{kind}: {err}") from err

    def check_current(self, key: str) -> None:
        """Nothing to check: the zip file open here is the version being read."""

    def _get(self, key: str, prototype: Any, byte_range: ByteRequest | None = None) -> Any:
        limit, what = _doc_limit(key)
        info = self._zf.NameToInfo.get(key)
        if info is not None and byte_range is None and info.file_size > limit:
            raise FormatError(
                f"{self.where}: zip member {key!r} inflates to {info.file_size} bytes, more "
                f"than the {limit} a {what} may hold; refused"
            )
        with self._member_errors(key):
            return super()._get(key, prototype, byte_range)

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        for name in self._children.get(prefix.strip("/"), ()):
            yield name


_ZIP_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, struct.error, ValueError)
"""What zipfile raises for a damaged member: a bad CRC-32 or local header, a truncated or
undecodable stream, an unknown compression method or an encryption flag (RuntimeError)."""

_METADATA_NAMES = frozenset({".zattrs", ".zgroup", ".zarray", ".zmetadata", "zarr.json"})
_NODE_DOCS = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
# the concurrent walk of a remote tree (_MetadataCache._walk): requests in flight, and
# nodes visited at most (a HyperSpy signal has a few dozen)
_WALK_CONCURRENCY = 32
_WALK_NODES = 4096


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
        self._walked = False

    def _with_store(self, store: Store) -> _MetadataCache:
        return type(self)(store)

    def __str__(self) -> str:
        return str(self._store)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if byte_range is not None or not _is_doc(key):
            return await self._store.get(key, prototype, byte_range)
        if "/" not in key and not self._walked:
            # a document of the root: a load starts walking the tree (an array opened by
            # a task asks for its own documents only, and walks nothing)
            self._walked = True
            await self._walk()
        if key not in self._docs:
            self._docs[key] = await self._store.get(key, prototype)
        return self._docs[key]

    async def exists(self, key: str) -> bool:
        if _is_doc(key):
            return await self.get(key, default_buffer_prototype()) is not None
        return bool(await self._store.exists(key))

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        if not prefix.strip("/") and not self._walked:
            self._walked = True
            await self._walk()
        if prefix not in self._listings:
            self._listings[prefix] = [k async for k in self._store.list_dir(prefix)]
        for key in self._listings[prefix]:
            yield key

    async def _walk(self) -> None:
        """Fetch the metadata documents and listings of the whole tree, concurrently.

        Listing the root starts a load's walk of the HyperSpy tree, which then asks for each
        node's documents and each group's listing one after the other (87 requests, 86
        round trips for a .zspy of one signal over HTTP). Here each node's four candidate
        documents are fetched at once and a group is listed as soon as they say it is one,
        every branch at the same time: the critical path is two round trips per level.
        Arrays are not listed and chunks never fetched; failures are left for the walk
        itself to meet (and report) again.
        """
        limit = asyncio.Semaphore(_WALK_CONCURRENCY)
        budget = [_WALK_NODES]
        proto = default_buffer_prototype()

        async def doc(key: str) -> None:
            async with limit:
                # a failure is met again, in context, by the walk itself
                with contextlib.suppress(Exception):
                    self._docs[key] = await self._store.get(key, proto)

        def is_group(pre: str) -> bool:
            if self._docs.get(pre + ".zgroup") is not None:
                return True
            meta = self._docs.get(pre + "zarr.json")
            if meta is None or len(meta) > MAX_METADATA_BYTES:
                return False
            try:
                return bool(json.loads(meta.to_bytes()).get("node_type") == "group")
            except (ValueError, AttributeError):
                return False

        async def node(pre: str, depth: int) -> None:
            wanted = _NODE_DOCS + ((".zmetadata",) if not pre else ())
            await asyncio.gather(*(doc(pre + n) for n in wanted if pre + n not in self._docs))
            if not pre and self._consolidated():
                return
            if not is_group(pre) or depth >= MAX_KEY_DEPTH:
                return
            async with limit:
                try:
                    names = await self._list(pre)
                except Exception:  # noqa: BLE001 - listed again, in context, by the walk
                    return
            self._listings[pre] = names
            children = []
            for name in names:
                name = name.rstrip("/")
                if name and not name.startswith(".") and name != "zarr.json" and budget[0] > 0:
                    budget[0] -= 1
                    children.append(name)
            await asyncio.gather(*(node(f"{pre}{c}/", depth + 1) for c in children))

        await node("", 0)

    def _consolidated(self) -> bool:
        """Take the tree's documents and listings from the root's consolidated metadata
        (``.zmetadata``, Zarr v2), fetched with the root's own documents: the whole open
        then costs one round trip instead of two per level of the tree (see
        :func:`consolidated_tree` for when it is trusted)."""
        raw, group = self._docs.get(".zmetadata"), self._docs.get(".zgroup")
        if raw is None or group is None:
            return False
        attrs = self._docs.get(".zattrs")
        tree = consolidated_tree(raw.to_bytes(), group.to_bytes(),
                                 None if attrs is None else attrs.to_bytes())
        if tree is None:
            return False
        docs, listings = tree
        for key, doc in docs.items():
            self._docs.setdefault(
                key, None if doc is None else Buffer.from_bytes(json.dumps(doc).encode()))
        self._listings.update(listings)
        return True

    async def _list(self, pre: str) -> list[str]:
        """The names below ``pre``, as the wrapped store's ``list_dir`` gives them.

        Over HTTP a folder is asked for with its trailing ``/``: without it, servers
        answer with a redirect there, one more round trip per level of the tree.
        """
        store = self._store
        fs = getattr(store, "fs", None)
        if not pre or fs is None or not isinstance(store, FsspecStore) or \
                type(fs).__name__ != "HTTPFileSystem":
            return [k async for k in store.list_dir(pre)]
        base = f"{store.path}/{pre.rstrip('/')}"
        try:
            found = await fs._ls(base + "/", detail=False)
        except FileNotFoundError:
            return []
        # the same names FsspecStore.list_dir makes of the listing
        return [a.replace(base + "/", "").removeprefix(store.path).removeprefix("/")
                for a in found]


def consolidated_tree(
    raw: bytes, group: bytes, attrs: bytes | None
) -> tuple[dict[str, dict[str, Any] | None], dict[str, list[str]]] | None:
    """The documents and group listings of a Zarr v2 tree from its consolidated metadata
    ``raw`` (the root's ``.zmetadata``), or ``None`` if it is not to be trusted.

    Trusted only when well formed and in agreement with the root's own ``group`` and
    ``attrs`` documents, read at the same time: lazyio's writer writes it after every
    other document and removes it before a metadata-only update, as RosettaSciIO
    consolidates after its writes. A tool that changed a deeper node without
    consolidating again is not detected (zarr-python reads such a store so too).
    Documents a node lacks are given as ``None``; arrays are not listed.
    """
    if len(raw) > MAX_METADATA_BYTES:
        return None
    try:
        cons = json.loads(raw)
        meta = cons["metadata"]
        if cons.get("zarr_consolidated_format") != 1 or not isinstance(meta, dict):
            return None
        if meta.get(".zgroup") != json.loads(group):
            return None
        if meta.get(".zattrs", {}) != (json.loads(attrs) if attrs is not None else {}):
            return None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    docs: dict[str, dict[str, Any] | None] = {}
    names: dict[str, set[str]] = {"": set()}
    for key, value in meta.items():
        parts = key.split("/") if isinstance(key, str) else []
        if (not parts or parts[-1] not in _NODE_DOCS or not isinstance(value, dict)
                or "" in parts or any(p in (".", "..") for p in parts)
                or len(parts) > MAX_KEY_DEPTH):
            return None
        docs[key] = value
        for depth in range(len(parts)):
            pre = "".join(p + "/" for p in parts[:depth])
            names.setdefault(pre, set()).add(parts[depth])
    listings = {}
    for pre, found in names.items():
        if pre + ".zgroup" not in meta and pre + ".zarray" not in meta:
            return None  # a parent it does not describe: incomplete, walk the tree
        for name in _NODE_DOCS:
            docs.setdefault(pre + name, None)  # absent: not asked for again
        if pre + ".zarray" not in meta:
            listings[pre] = sorted(found)
    return docs, listings


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


def _refuse_escaping_members(loc: object, names: list[str]) -> None:
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
    """Open (or reuse, per process) the store described by ``spec``.

    A local store read earlier in this process is reused only while its path still names
    the same directory or zip file: one replaced since (by another process) is opened
    anew, so a new load reads the new version.
    """
    if not cached or isinstance(spec, InstanceSpec):
        return _make_store(spec, read_only)
    key = StoreKey(spec, read_only)
    store = handles.acquire(key, lambda: _make_store(spec, read_only))
    if isinstance(store, SafeLocalStore | SafeZipStore) and not store.is_current():
        handles.default_cache.forget(key)  # not closed: older lazy arrays may read it
        store = handles.acquire(key, lambda: _make_store(spec, read_only))
    return store


def version_token(store: Store, spec: StoreSpec) -> str:
    """The modification token of the version of the store being read through ``store``
    (for a remote store, of what the location names now)."""
    token = getattr(store, "version_token", None)
    if callable(token):
        return str(token())
    return spec.location.modified_token() if spec.location is not None else ""


@dataclass(frozen=True)
class PinnedStoreKey(handles.FileKey):
    """A read-only store opened for lazy arrays made from one version of it."""

    kind: ClassVar[str] = "zarr-pinned-store"
    token: str = ""


def pinned_store(spec: StoreSpec, token: str) -> Store:
    """The store of ``spec`` at the version ``token`` (see :func:`version_token`), shared
    per process.

    A local store is opened and its directory or zip file checked against ``token``:
    once open, it keeps reading that version even if the path is replaced.

    Raises
    ------
    StaleFileError
        If the store was replaced or modified since ``token`` was taken.
    """
    if isinstance(spec, InstanceSpec) or not token or token == "unknown":
        return open_store(spec)

    def opener() -> Store:
        # the store the load opened, if it is still that version: opening a zip again
        # parses its whole central directory (seconds for 40,000 members), and a remote
        # store's remembered metadata spares a task's first read 1-3 round trips
        store = open_store(spec) if isinstance(spec, DirSpec | ZipSpec) \
            else _make_store(spec, True)
        if isinstance(store, SafeLocalStore | SafeZipStore):
            if store.version_token() != token:
                raise StaleFileError(
                    f"{spec}: the store was replaced or modified after it was opened "
                    "lazily; load it again to read the new version"
                )
        else:
            handles.check_unchanged(spec.location, token)
        return store

    return handles.acquire(PinnedStoreKey(spec, token), opener)


async def _collect(it: AsyncIterator[str]) -> list[str]:
    return [x async for x in it]


def _local_root(store: Store) -> str | None:
    # A local directory is read with plain file calls: each call through zarr's async
    # store is a round trip to its event loop thread, and opening a .zspy makes ~100.
    return os.fspath(store.root) if type(store) is LocalStore else None


def list_dir(store: Store, prefix: str) -> list[str]:
    """Names directly below ``prefix`` (sorted)."""
    prefix = prefix.strip("/")
    # local stores are read with plain calls, not round trips through zarr's event loop
    if isinstance(store, SafeLocalStore):
        return sorted(store.rootdir.listdir(prefix))
    if isinstance(store, SafeZipStore):
        return list(store._children.get(prefix, ()))
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
    """The value of ``key``, or ``None`` if it does not exist (metadata documents are
    read only up to :data:`~lazyio.backends.zarr.safe.MAX_METADATA_BYTES`)."""
    key = key.lstrip("/")
    if isinstance(store, SafeLocalStore):
        return store.read_key(key)
    if isinstance(store, SafeZipStore):
        limit, what = _doc_limit(key)
        return store.read(key, limit, what)
    root = _local_root(store)
    if root is not None:
        try:
            with open(os.path.join(root, key.lstrip("/")), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
    buf = sync(store.get(key, prototype=default_buffer_prototype()))
    if buf is not None and _is_doc(key) and len(buf) > MAX_METADATA_BYTES:
        raise FormatError(f"{store}: metadata document {key!r} holds {len(buf)} bytes, more "
                          f"than the {MAX_METADATA_BYTES} it may; refused")
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


def zarr_array(store: Store, path: str, where: str | None = None) -> zarr.Array[Any]:
    """Open the array at ``path`` with zarr-python (numeric and string arrays), its
    chunks' decoding bounded by their size (:mod:`lazyio.backends.zarr.bounded`);
    ``where`` names the store and array in errors."""
    from lazyio.backends.zarr.bounded import bound_array

    array = zarr.open_array(store=store, path=path.strip("/"), mode="r")
    return bound_array(array, where if where is not None else f"{store}: array {path}")
