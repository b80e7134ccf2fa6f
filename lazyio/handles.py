"""A per-process cache of open file handles, closed on eviction.

Lazy graphs never hold an open file: a task carries a small key (a
:class:`~lazyio.location.Location`, a mode, ...) and asks this cache for the handle,
which is opened on first use in each process and reused afterwards. This is the pattern
of xarray's ``CachingFileManager``.

Three stores, kept apart so that none can starve another:

* :data:`default_cache`, a bounded LRU of files open for *reading*, under typed keys
  (:class:`FileKey` subclasses); evicting or closing one only costs a reopen;
* :data:`default_memo`, values derived from files (chunk indexes, scan results), which
  use up no file slot;
* :class:`WriterRegistry` instances, files being *written*: never evicted and never
  closed by :func:`close_all`, because their owner is mid-write.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

__all__ = [
    "FileKey", "HandleCache", "MapKey", "Memo", "WriterRegistry", "acquire",
    "check_unchanged", "close_all", "close_location", "close_matching", "default_cache",
    "default_memo", "memo", "opened_unchanged", "read_map",
]

_logger = logging.getLogger("lazyio")
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class FileKey:
    """The key of one open file in :data:`default_cache`; one subclass per kind of handle.

    Subclasses add what distinguishes two handles on the same file (mode, version
    token); ``kind`` names the kind in logs and tests.
    """

    kind: ClassVar[str] = "file"
    location: Hashable


@dataclass(frozen=True)
class MapKey(FileKey):
    """A read-only memory map of a local file (:func:`read_map`)."""

    kind: ClassVar[str] = "mmap"
    token: str = ""


def _on_location(key: Hashable, location: Hashable) -> bool:
    # a typed key names its location, itself or through an object whose location it is
    # (a zarr store spec); a plain tuple key may hold either among its parts
    parts = key if isinstance(key, tuple) else (key, getattr(key, "location", None))
    return any(p == location or getattr(p, "location", None) == location for p in parts)


def _close(handle: Any) -> None:
    close = getattr(handle, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # a handle that fails to close must not break eviction
            _logger.debug("closing %r failed", handle, exc_info=True)
    elif isinstance(handle, int):
        os.close(handle)


class HandleCache:
    """A bounded, thread-safe LRU of open handles.

    Beyond ``maxsize`` the least recently used handle is *released*, not closed: the cache
    drops its reference and the handle closes when its last user is done with it (files,
    memory maps and h5py files all close when no reference is left). Closing it outright
    would pull it from under a thread still reading through it: an h5py dataset then
    fails with "invalid identifier", and a raw descriptor's number could be reused by
    another file and read silently. :meth:`close`, :meth:`close_matching` and
    :meth:`close_all` do close, because their callers ask for it.

    Parameters
    ----------
    maxsize : int
        How many handles the cache keeps open at once.
    """

    def __init__(self, maxsize: int = 128) -> None:
        self.maxsize = maxsize
        self._handles: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.RLock()
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        # Handles inherited through fork() belong to the parent; reusing them corrupts reads.
        if os.getpid() != self._pid:
            self._handles = OrderedDict()
            self._lock = threading.RLock()
            self._pid = os.getpid()

    def acquire(self, key: Hashable, opener: Callable[[], T]) -> T:
        """Return the handle cached under ``key``, opening it with ``opener`` if needed."""
        self._check_fork()
        with self._lock:
            try:
                handle: T = self._handles[key]
            except KeyError:
                handle = opener()
                self._handles[key] = handle
                while len(self._handles) > self.maxsize:
                    self._handles.popitem(last=False)  # released: see the class docstring
            else:
                self._handles.move_to_end(key)
            return handle

    def close(self, key: Hashable) -> None:
        """Close and forget one handle (nothing happens if it is not open)."""
        self._check_fork()
        with self._lock:
            handle = self._handles.pop(key, None)
            if handle is not None:
                _close(handle)

    def forget(self, key: Hashable) -> None:
        """Drop a handle without closing it (its owner closes it)."""
        self._check_fork()
        with self._lock:
            self._handles.pop(key, None)

    def close_matching(self, predicate: Callable[[Hashable], bool]) -> int:
        """Close every handle whose key satisfies ``predicate``; return how many."""
        self._check_fork()
        with self._lock:
            keys = [k for k in self._handles if predicate(k)]
            for k in keys:
                _close(self._handles.pop(k))
            return len(keys)

    def close_all(self) -> int:
        """Close every handle; return how many were open."""
        return self.close_matching(lambda _: True)

    def __len__(self) -> int:
        self._check_fork()
        return len(self._handles)

    def keys(self) -> list[Hashable]:
        """The keys of the open handles, least recently used first."""
        self._check_fork()
        with self._lock:
            return list(self._handles)


default_cache = HandleCache(maxsize=int(os.environ.get("LAZYIO_MAX_OPEN_FILES", "128")))


class Memo:
    """A bounded, thread-safe LRU of values derived from files (chunk indexes, read plans,
    scan results). Nothing in it is an open file, so it never uses up a file slot of
    :data:`default_cache`; keys carry the file's version token, so a rewritten file is
    never described by a stale entry."""

    def __init__(self, maxsize: int = 1024) -> None:
        self.maxsize = maxsize
        self._values: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.RLock()
        self._building: dict[Hashable, threading.Lock] = {}
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        # a lock held by another thread at fork() time would never be released here
        if os.getpid() != self._pid:
            self._values = OrderedDict()
            self._lock = threading.RLock()
            self._building = {}
            self._pid = os.getpid()

    def _lookup(self, key: Hashable) -> tuple[bool, Any]:
        with self._lock:
            try:
                value = self._values[key]
            except KeyError:
                return False, None
            self._values.move_to_end(key)
            return True, value

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """Return the value memoised under ``key``, building it on first use.

        One thread builds a missing value while the others asking for the same key wait
        for it (a chunk index of 16,384 chunks costs 0.15 s of CPU: built by every thread
        at once, it was most of a small file's read); other keys are built meanwhile.
        """
        self._check_fork()
        found, value = self._lookup(key)
        if found:
            return value  # type: ignore[no-any-return]  # stored by build(): a T
        with self._lock:
            gate = self._building.setdefault(key, threading.Lock())
        with gate:
            found, value = self._lookup(key)  # built by the thread we waited for
            if found:
                return value  # type: ignore[no-any-return]  # stored by build(): a T
            try:
                built = build()  # outside the cache's lock: building may read a file
                with self._lock:
                    self._values[key] = built
                    while len(self._values) > self.maxsize:
                        self._values.popitem(last=False)
            finally:
                with self._lock:
                    self._building.pop(key, None)
            return built

    def forget_matching(self, predicate: Callable[[Hashable], bool]) -> int:
        """Forget every value whose key satisfies ``predicate``; return how many."""
        with self._lock:
            keys = [k for k in self._values if predicate(k)]
            for k in keys:
                del self._values[k]
            return len(keys)

    def clear(self) -> None:
        """Forget every value."""
        with self._lock:
            self._values.clear()


default_memo = Memo()


def memo(key: Hashable, build: Callable[[], T]) -> T:
    """A value derived from a file, memoised per process (see :class:`Memo`)."""
    return default_memo.get(key, build)


def acquire(key: Hashable, opener: Callable[[], T]) -> T:
    """Acquire a handle from the process-wide cache."""
    return default_cache.acquire(key, opener)


def close_matching(predicate: Callable[[Hashable], bool]) -> int:
    """Close the process-wide cache's handles whose key satisfies ``predicate``."""
    return default_cache.close_matching(predicate)


def close_location(location: Hashable) -> int:
    """Close every read handle on ``location`` (keys whose ``location`` it is, or tuples
    that hold it or an object whose ``location`` it is, e.g. a zarr store spec) and
    forget what was derived from it. Files being written are not affected. Returns how
    many handles were closed."""

    def on_location(key: Hashable) -> bool:
        return _on_location(key, location)

    # what was derived from the file goes too: a rewritten file must be described anew
    default_memo.forget_matching(on_location)
    _forget_read_ahead(getattr(location, "url", None))
    return default_cache.close_matching(on_location)


def close_all(client: Any = None) -> int | dict[str, int]:
    """Close every file lazyio holds open in this process, and on a cluster's workers.

    Lazy arrays stay valid: their tasks reopen what they need.

    Parameters
    ----------
    client : distributed.Client or True, optional
        Also close the files held by every worker of this client's cluster (through
        ``client.run``); ``True`` uses the default client. Without it only this process
        is concerned.

    Returns
    -------
    int or dict
        Without ``client``: the number of handles closed here. With it: a dict with this
        process's count under ``"local"`` and each worker's count under its address.
    """
    closed = default_cache.close_all()
    default_memo.clear()
    _forget_read_ahead(None)
    if client is None or client is False:
        return closed
    if client is True:
        from distributed import default_client

        client = default_client()
    on_workers = client.run(_close_all_here)
    return {"local": closed, **{str(k): int(v) for k, v in on_workers.items()}}


def _forget_read_ahead(url: str | None) -> None:
    # remote ranges read ahead (lazyio.location) are data derived from the file too
    from lazyio.location import forget_read_ahead

    forget_read_ahead(url)


def _close_all_here() -> int:
    default_memo.clear()
    _forget_read_ahead(None)
    return default_cache.close_all()


def check_unchanged(location: Any, token: str) -> None:
    """Raise :class:`~lazyio.errors.StaleFileError` if the local file at ``location`` no
    longer matches ``token`` (from :meth:`~lazyio.location.Location.modified_token`, taken
    when a lazy array was made). Called when a handle is (re)opened for such an array:
    a handle still open on the old file keeps reading the old data correctly, a new one
    would read the new file through the old layout."""
    if not token or token == "unknown" or getattr(location, "local_path", None) is None:
        return
    now = location.modified_token()
    if now != token:
        from lazyio.errors import StaleFileError

        raise StaleFileError(
            f"{location}: the file was replaced or modified after it was opened lazily; "
            "load it again to read the new version"
        )


def opened_unchanged(location: Any, token: str, opener: Callable[[], T]) -> Callable[[], T]:
    """Wrap ``opener``: open, then check (:func:`check_unchanged`) that what was opened is
    still the version ``token`` describes, closing it if not."""

    def open_checked() -> T:
        handle = opener()
        try:
            check_unchanged(location, token)
        except BaseException:
            _close(handle)
            raise
        return handle

    return open_checked


def read_map(location: Any, token: str) -> mmap.mmap:
    """A read-only memory map of the local file at ``location``, shared per process.

    ``token`` (:meth:`~lazyio.location.Location.modified_token`) is in the key, so a
    rewritten file is never read through a map of its previous version.
    """

    def opener() -> mmap.mmap:
        with open(location.local_path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    return acquire(MapKey(location, token), opened_unchanged(location, token, opener))


class WriterRegistry(Generic[K, T]):
    """Files open for writing in this process, by key: never evicted, never closed by
    :func:`close_all` or :func:`close_location`.

    A write's owner registers the file it opened (:meth:`registered`), or tasks open
    per-process write handles on first use (:meth:`acquire`) and the owner closes them
    after the write (:meth:`close`). Fork-safe as :class:`HandleCache`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._handles: dict[K, T] = {}
        self._lock = threading.RLock()
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            self._handles = {}
            self._lock = threading.RLock()
            self._pid = os.getpid()

    @contextmanager
    def registered(self, key: K, handle: T) -> Iterator[K]:
        """Make ``handle`` reachable under ``key`` for the duration of the block.

        The caller keeps ownership: on exit the handle is unregistered, not closed.
        """
        self._check_fork()
        with self._lock:
            self._handles[key] = handle
        try:
            yield key
        finally:
            with self._lock:
                if self._handles.get(key) is handle:
                    del self._handles[key]

    def get(self, key: K) -> T | None:
        """The handle registered under ``key`` in this process, or None."""
        self._check_fork()
        with self._lock:
            return self._handles.get(key)

    def acquire(self, key: K, opener: Callable[[], T]) -> T:
        """The handle under ``key``, opened with ``opener`` on first use in this process."""
        self._check_fork()
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                handle = self._handles[key] = opener()
            return handle

    def close(self, key: K) -> bool:
        """Close and unregister the handle under ``key``; False if there was none."""
        self._check_fork()
        with self._lock:
            handle = self._handles.pop(key, None)
        if handle is None:
            return False
        _close(handle)
        return True

    def keys(self) -> list[K]:
        """The keys of the files open for writing in this process."""
        self._check_fork()
        with self._lock:
            return list(self._handles)

    def __len__(self) -> int:
        self._check_fork()
        return len(self._handles)

    def __repr__(self) -> str:
        return f"WriterRegistry({self.name!r}, {len(self)} open)"
