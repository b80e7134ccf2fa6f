"""Where a file lives: a URL or path plus fsspec storage options, picklable by value.

A :class:`Location` is what lazy tasks carry instead of an open file. Local paths keep a
fast path (``local_path``) for memory maps and ``pread``.

Remote byte ranges over HTTP go through :meth:`Location.read_bytes` /
:meth:`Location.read_ranges`, which check that the server answered with the range: a server
that ignores ``Range`` (``python -m http.server``) is refused with
:class:`~lazyio.errors.RangeNotSupportedError` before its answer is downloaded, unless the
whole file is small (at most ``_WHOLE_FILE_LIMIT`` bytes), which is then read and cut.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazyio.errors import (
    SourceNotFoundError,
    not_a_file,
    not_found,
    range_not_supported,
    translate,
)

if TYPE_CHECKING:
    import fsspec

__all__ = ["DEFAULT_TIMEOUT", "Location", "RangeFile", "as_location", "forget_read_ahead",
           "remote_timeout",
           "storage_errors"]

# Small reads (headers, sniffing) of remote files must not pull fsspec's default 5 MB block.
_REMOTE_BLOCK = 2**16
# The first bytes of a remote file are fetched once per Location, together with its
# HEAD (one round trip): every sniffer, the .npy header and HDF5's superblock, root group
# and HyperSpy's metadata tree (~20 KB in a 134 MB .hspy) are read from it. Small: at
# 100 Mbit/s 64 KiB cost 5 ms, a tenth of a 50 ms round trip.
_HEAD_BLOCK = 2**16
# How long a Location trusts what it learnt of a remote file (HEAD, first bytes): the
# steps of one load ask several times; a later load, or a write, asks again.
_PROBE_TTL = 2.0
# Suffixes of directory stores: no first bytes to fetch with their HEAD.
_DIR_SUFFIXES = (".zspy", ".zarr", ".n5")
# A server that ignores Range answers every range with the whole file: up to this size the
# answer is read and cut (one header block's worth), beyond it the file is refused unread.
_WHOLE_FILE_LIMIT = _REMOTE_BLOCK
_HTTP = ("http", "https")
# Seconds a remote connection may stay silent (connecting, or between bytes of an answer).
DEFAULT_TIMEOUT = 60.0
_RANGE_CHECKED: set[str] = set()  # HTTP URLs whose server answered a range with a range


def remote_timeout() -> tuple[float | None, bool]:
    """The time limit of remote connections in seconds (``None``: none), and whether the
    user set it: the ``LAZYIO_TIMEOUT`` environment variable (``0`` or ``none`` for no
    limit), else :data:`DEFAULT_TIMEOUT`."""
    text = os.environ.get("LAZYIO_TIMEOUT", "").strip().lower()
    if not text:
        return DEFAULT_TIMEOUT, False
    if text in ("0", "none", "inf"):
        return None, True
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"LAZYIO_TIMEOUT must be a number of seconds, not {text!r}") from None
    return (seconds if seconds > 0 else None), True


def _with_timeouts(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with lazyio's time limit where the caller gave none.

    HTTP: aiohttp's default gives up on a whole request after 300 s, however healthy (a
    large chunk on a slow link), and waits as long on a silent server; lazyio limits
    silence instead (connect and between reads). S3: s3fs's own limits (5 s connect, 15 s
    read) stay unless ``LAZYIO_TIMEOUT`` is set.
    """
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    seconds, explicit = remote_timeout()
    if protocol in _HTTP:
        client = dict(options.get("client_kwargs") or {})
        if "timeout" in client:
            return options
        import aiohttp

        client["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=seconds,
                                                  sock_read=seconds)
        return {**options, "client_kwargs": client}
    if protocol in ("s3", "s3a") and explicit and seconds is not None:
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("connect_timeout", seconds)
        config.setdefault("read_timeout", seconds)
        return {**options, "config_kwargs": config}
    return options


def storage_errors(url: str) -> contextlib.AbstractContextManager[None]:
    """Translate missing-file and permission errors (of fsspec or the OS) into lazyio's,
    naming ``url`` (see :func:`lazyio.errors.translate`)."""
    return translate(url, scope="storage")


_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISDIR, "a directory"))


def file_kind(mode: int) -> str | None:
    """What a ``st_mode`` is when it is not a regular file ("a FIFO", "a socket", ...);
    ``None`` for a regular file."""
    for test, kind in _SPECIAL:
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def _open_regular(path: str, url: str, mode: str) -> Any:
    """Open a local file for reading, refusing anything but a regular file before a read
    could block (a FIFO with no writer, a terminal) or never end (``/dev/zero``)."""
    try:
        kind = file_kind(os.stat(path).st_mode)  # before any open: opening a device may act
    except FileNotFoundError:
        raise not_found(url) from None
    if kind is not None:
        raise not_a_file(url, kind)
    # O_NONBLOCK: should a FIFO replace the file between the stat and the open, the open
    # returns at once instead of waiting for a writer; fstat then refuses it
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise not_a_file(url, kind)
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class Location:
    """A file or directory addressed by an fsspec URL and its storage options.

    Parameters
    ----------
    url : str
        A local path or any fsspec URL (``s3://``, ``https://``, ``memory://``, ...).
    storage_options : dict, optional
        Passed to the fsspec filesystem.
    """

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "://" not in self.url:
            # Absolute local paths make tokens and worker processes independent of the cwd.
            object.__setattr__(self, "url", os.path.abspath(os.path.expanduser(self.url)))

    def __hash__(self) -> int:
        return hash((self.url, json.dumps(self.storage_options, sort_keys=True, default=str)))

    def __dask_tokenize__(self) -> tuple[str, str]:
        return (self.url, json.dumps(self.storage_options, sort_keys=True, default=str))

    def __str__(self) -> str:
        return self.url

    def __getstate__(self) -> dict[str, Any]:
        # cached_property values (the filesystem) are rebuilt in the receiving process.
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "url", state["url"])
        object.__setattr__(self, "storage_options", state["storage_options"])

    @property
    def fs_options(self) -> dict[str, Any]:
        """The storage options a filesystem of this location is built with: the caller's,
        plus lazyio's time limit where they set none (see :func:`remote_timeout`). Code
        that builds its own filesystem (zarr's store) passes these."""
        return _with_timeouts(self.url, self.storage_options)

    @cached_property
    def _fs_and_path(self) -> tuple[fsspec.AbstractFileSystem, str]:
        # fsspec (0.1 s to import) only for what needs a filesystem: a local file is read
        # with os and the builtin open, so `lazyio info` of one never imports it
        import fsspec.core

        return fsspec.core.url_to_fs(self.url, **self.fs_options)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem (instances are cached by fsspec per process)."""
        return self._fs_and_path[0]

    @property
    def path(self) -> str:
        """The path of the file inside :attr:`fs`."""
        return self._fs_and_path[1]

    @property
    def is_http(self) -> bool:
        """Whether the file is served over HTTP(S) (byte ranges are checked)."""
        return self.url.split("://", 1)[0].lower() in _HTTP if "://" in self.url else False

    @property
    def is_local(self) -> bool:
        """Whether the file is on the local file system (memory maps allowed)."""
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def local_path(self) -> str | None:
        """The local file system path, or ``None`` for remote locations."""
        if not self.is_local:
            return None
        return self.url.removeprefix("file://")

    @property
    def name(self) -> str:
        """The last component of the path (file name)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        """The lower-case extension, with its dot (``".hspy"``), or ``""``."""
        return Path(self.name).suffix.lower()

    def _probe(self, key: str) -> Any:
        """What was learnt of the remote file under ``key`` less than ``_PROBE_TTL`` ago
        (``("info", value)``, ``("head", bytes)``), else None."""
        found = self.__dict__.get("_probes", {}).get(key)
        if found is None or time.monotonic() - found[0] > _PROBE_TTL:
            return None
        return found[1:]

    def _remember(self, key: str, value: Any) -> None:
        self.__dict__.setdefault("_probes", {})[key] = (time.monotonic(), value)

    def forget_probes(self) -> None:
        """Forget the cached HEAD answer and first bytes (the file is being written)."""
        self.__dict__.pop("_probes", None)

    def _fetch_info(self) -> dict[str, Any]:
        """``fs.info`` (one HEAD), fetched with the first ``_HEAD_BLOCK`` bytes in the same
        round trip when the location may be a file; both are remembered."""
        cached = self._probe("info")
        if cached is not None:
            return dict(cached[0])
        fs = self.fs
        directory = self.url.rstrip("/").lower().endswith(_DIR_SUFFIXES)
        with_head = (getattr(fs, "async_impl", False) and self._probe("head") is None
                     and not directory)
        if not with_head:
            info = None
            if self.is_http and directory and not self.url.endswith("/"):
                # a directory store over HTTP: its URL redirects to the folder's "/", and
                # fsspec then tries HEAD and GET, both redirected (four round trips)
                with contextlib.suppress(FileNotFoundError):
                    info = fs.info(self.path + "/")
                    self._remember("folder", True)  # a listing: no bytes of its own
            if info is None:
                info = fs.info(self.path)  # a missing file is not remembered: it may appear
            self._remember("info", info)
            return dict(info)
        import asyncio

        from fsspec.asyn import sync

        async def both() -> list[Any]:
            return list(await asyncio.gather(fs._info(self.path), self._head_coroutine(0),
                                             return_exceptions=True))

        info, head = sync(fs.loop, both)
        if isinstance(head, bytes) and not isinstance(info, BaseException):
            self._remember("head", head)
        if isinstance(info, BaseException):
            raise info
        self._remember("info", info)
        return dict(info)

    def _head_coroutine(self, nbytes: int) -> Any:
        stop = max(nbytes, _HEAD_BLOCK)
        if self.is_http:
            return _http_range(self.fs, self.path, self.url, 0, stop)
        return self.fs._cat_file(self.path, start=0, end=stop)

    def _remote_info(self) -> dict[str, Any] | None:
        # fsspec's HTTP exists() and isdir() download the resource (to list links in it):
        # info() is one HEAD request there, and one request on object stores.
        try:
            with storage_errors(self.url):
                return self._fetch_info()
        except SourceNotFoundError:
            return None

    def exists(self) -> bool:
        """Whether something exists at this location.

        Raises :class:`~lazyio.errors.AccessDeniedError` when the store refuses to say.
        """
        if self.local_path is not None:
            return os.path.exists(self.local_path)
        return self._remote_info() is not None

    def isdir(self) -> bool:
        """Whether the location is a directory (or a key prefix in an object store).

        Over HTTP nothing is a directory (servers do not say): callers probe for known
        files inside instead.
        """
        if self.local_path is not None:
            return os.path.isdir(self.local_path)
        info = self._remote_info()
        return info is not None and info.get("type") == "directory"

    def size(self) -> int:
        """Size in bytes of the file."""
        if self.local_path is not None:
            return os.path.getsize(self.local_path)
        with storage_errors(self.url):
            info = self._fetch_info()
            if info.get("size") is not None:
                return int(info["size"])
            return int(self.fs.size(self.path))

    def modified_token(self) -> str:
        """A token that changes when the file changes (mtime and size where known; locally
        the inode too, so a file replaced by rename within one clock tick still differs)."""
        try:
            if self.local_path is not None:
                st = os.stat(self.local_path)
                return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"
            info = self._fetch_info()
        except (OSError, ValueError):
            return "unknown"
        parts = [info.get(k) for k in ("mtime", "LastModified", "ETag", "size")]
        return "-".join(str(p) for p in parts if p is not None)

    def open(self, mode: str = "rb", **kwargs: Any) -> Any:
        """Open the file through fsspec (or the builtin ``open`` for local files).

        Over HTTP a file opened for reading is checked first to be served with byte
        ranges (once per URL and process; see :meth:`read_bytes`).
        """
        with storage_errors(self.url):
            if self.local_path is not None:
                if mode in ("r", "rb"):
                    return _open_regular(self.local_path, self.url, mode)
                return open(self.local_path, mode)
            if "r" not in mode:
                self.forget_probes()
                return self.fs.open(self.path, mode, **kwargs)
            if self.is_http and self.url not in _RANGE_CHECKED:
                self.read_head(1)
            return RangeFile(self, self.size(), int(kwargs.get("block_size") or _REMOTE_BLOCK))

    def read_bytes(self, start: int, stop: int) -> bytes:
        """Read the byte range ``[start, stop)`` (one range request remotely).

        Raises :class:`~lazyio.errors.RangeNotSupportedError` when an HTTP server answers
        with the whole file and the file is larger than ``_WHOLE_FILE_LIMIT``.
        """
        return self.read_ranges([start], [stop])[0]

    def read_ranges(self, starts: list[int], stops: list[int],
                    ahead: list[tuple[int, int]] | None = None, tag: str = "") -> list[bytes]:
        """Read several byte ranges (concurrent requests remotely), checked as
        :meth:`read_bytes`.

        Remotely, on an asynchronous filesystem (HTTP, S3, ...), ranges read ahead earlier
        are taken from :data:`_AHEAD` instead of fetched again, ranges over ``_PIECE``
        bytes are fetched as concurrent pieces, and ``ahead`` names ranges that the
        following reads will want (the next chunks of a sequential read): they are fetched
        in the background, up to ``LAZYIO_REMOTE_READAHEAD`` bytes per process, so the link
        carries them while this read's bytes are decoded. ``tag`` (the file's version
        token) keeps ranges read ahead in one version of a file from answering a read of
        another.
        """
        with storage_errors(self.url):
            fs = self.fs
            if not getattr(fs, "async_impl", False):
                if len(starts) == 1:
                    return [fs.cat_file(self.path, start=starts[0], end=stops[0])]
                return list(fs.cat_ranges([self.path] * len(starts), starts, stops,
                                          on_error="raise"))
            from fsspec.asyn import sync

            taken = {i: _AHEAD.take((self.url, tag, a, b))
                     for i, (a, b) in enumerate(zip(starts, stops, strict=True))}
            taken = {i: f for i, f in taken.items() if f is not None}
            todo = sorted((i for i in range(len(starts)) if i not in taken),
                          key=lambda i: starts[i])
            # requests: small neighbouring ranges merged, large ones cut in pieces
            groups: list[list[int]] = []
            for i in todo:
                last = groups[-1] if groups else None
                if (last is not None and stops[i] - starts[i] < _PIECE
                        and 0 <= starts[i] - stops[last[-1]] <= _GAP
                        and stops[i] - starts[last[0]] <= _PIECE):
                    last.append(i)
                else:
                    groups.append([i])
            pieces: list[tuple[int, int]] = []
            owner: list[list[int]] = []
            for g in groups:
                lo, hi = starts[g[0]], max(stops[j] for j in g)
                for a in range(lo, max(hi, lo + 1), _PIECE):
                    pieces.append((a, min(a + _PIECE, hi)))
                    owner.append(g)
            mine = [(self.url, tag, starts[i], stops[i]) for i in todo]
            _AHEAD.fetching(mine, True)
            try:
                if ahead and _AHEAD.limit:
                    self._read_ahead(ahead, tag)
                got = (sync(fs.loop, _fetch_ranges, self, [a for a, _ in pieces],
                            [b for _, b in pieces]) if pieces else [])
            finally:
                _AHEAD.fetching(mine, False)
            out: list[Any] = [None] * len(starts)
            joined: dict[int, list[bytes]] = {}
            for g, data in zip(owner, got, strict=True):
                joined.setdefault(id(g), []).append(data)
            for g in groups:
                parts = joined.get(id(g), [b""])
                whole = parts[0] if len(parts) == 1 else b"".join(parts)
                lo = starts[g[0]]
                for j in g:
                    out[j] = whole if len(g) == 1 else whole[starts[j] - lo:stops[j] - lo]
            for i, future in taken.items():
                out[i] = future.result()
            return out

    def _read_ahead(self, ranges: list[tuple[int, int]], tag: str) -> None:
        """Start fetching ``ranges`` in the background (see :meth:`read_ranges`)."""
        import asyncio

        fs = self.fs
        for a, b in ranges:
            key = (self.url, tag, a, b)
            if _AHEAD.busy(key):
                continue
            if not _AHEAD.room(key, b - a):
                break
            future = asyncio.run_coroutine_threadsafe(_fetch_ranges(self, [a], [b]), fs.loop)
            _AHEAD.add(key, _first(future), b - a)

    def read_head(self, nbytes: int) -> bytes:
        """The first ``nbytes`` bytes of a file (fewer if it is shorter); ``b""`` for dirs."""
        if self.local_path is not None:
            if os.path.isdir(self.local_path):
                return b""
            with self.open("rb") as f:
                return f.read(nbytes)
        if self._probe("folder") is not None:
            return b""  # an HTTP folder (a directory store): its listing is not its bytes
        head = self._probe("head")
        if head is not None and (len(head[0]) >= nbytes or len(head[0]) < _HEAD_BLOCK):
            return bytes(head[0][:nbytes])
        try:
            from fsspec.asyn import sync

            with storage_errors(self.url):
                if getattr(self.fs, "async_impl", False):
                    block = sync(self.fs.loop, self._head_coroutine, nbytes)
                else:
                    block = self.fs.cat_file(self.path, start=0, end=max(nbytes, _HEAD_BLOCK))
            self._remember("head", block)
            return bytes(block[:nbytes])
        except (SourceNotFoundError, IsADirectoryError):
            # an object-store prefix (a directory) has no bytes; a missing object is
            # reported by the caller's exists() check
            return b""

    def child(self, name: str) -> Location:
        """A location inside this directory."""
        return Location(f"{self.url.rstrip('/')}/{name}", self.storage_options)


class RangeFile(io.RawIOBase):
    """A read-only remote file for h5py and the .npy reader: blocks of ``block_size``
    bytes in a small LRU, every read's missing blocks fetched in one concurrent batch
    (adjacent ones as one range), reads of many blocks fetched past the cache in
    concurrent pieces.

    Its first block comes from the Location's first bytes (fetched with its HEAD). When
    HDF5 reads an inner node of a version-1 B-tree (the chunk index of a chunked dataset
    in files written with h5py's default format), all its children are fetched at once:
    the index of 128 chunks took three round trips one after the other, now two.
    """

    _MAX_BLOCKS = 32
    _PIECE = 4 * 2**20  # pieces of a large read fetched concurrently

    def __init__(self, location: Location, size: int, block_size: int) -> None:
        super().__init__()
        self.location, self.size, self.block_size = location, size, max(block_size, 4096)
        self.pos = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        head = location._probe("head")
        self._head = bytes(head[0]) if head is not None else b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._read(self.pos, min(len(view), max(0, self.size - self.pos)))
        view[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        n = self.size - self.pos if size is None or size < 0 else size
        data = self._read(self.pos, min(n, max(0, self.size - self.pos)))
        self.pos += len(data)
        return data

    def _read(self, start: int, n: int) -> bytes:
        if n <= 0:
            return b""
        if start + n <= len(self._head):
            out = self._head[start:start + n]
        else:
            out = self._read_blocks(start, n)
        if out[:4] == b"TREE" and n >= 24 and out[5] > 0:
            self._prefetch_children(out)
        return out

    def _read_blocks(self, start: int, n: int) -> bytes:
        bs = self.block_size
        first, last = start // bs, (start + n - 1) // bs
        if last - first >= self._MAX_BLOCKS // 2:  # a bulk read: past the cache
            cuts = list(range(start, start + n, self._PIECE))
            parts = self.location.read_ranges(cuts, [min(c + self._PIECE, start + n)
                                                      for c in cuts])
            return b"".join(parts)
        self._fill(range(first, last + 1))
        with self._lock:
            data = b"".join(self._blocks[i] for i in range(first, last + 1))
        return data[start - first * bs:start - first * bs + n]

    def _fill(self, wanted: range | list[int]) -> None:
        with self._lock:
            missing = sorted({i for i in wanted if i not in self._blocks})
            for i in wanted:
                if i in self._blocks:
                    self._blocks.move_to_end(i)
        if not missing:
            return
        runs: list[list[int]] = []
        for i in missing:  # adjacent blocks: one range
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        bs = self.block_size
        datas = self.location.read_ranges([r[0] * bs for r in runs],
                                          [min((r[-1] + 1) * bs, self.size) for r in runs])
        with self._lock:
            for run, data in zip(runs, datas, strict=True):
                for k, i in enumerate(run):
                    self._blocks[i] = data[k * bs:(k + 1) * bs]
            while len(self._blocks) > self._MAX_BLOCKS:
                self._blocks.popitem(last=False)

    def _prefetch_children(self, node: bytes) -> None:
        """Fetch the blocks of all children of a v1 B-tree inner node in one batch."""
        entries = int.from_bytes(node[6:8], "little")
        rank = _btree_rank(len(node), node[4])
        if rank is None or not entries:
            return
        key = 8 + 8 * rank if node[4] == 1 else 8  # chunk keys; group keys: a heap offset
        addrs = []
        for i in range(entries):
            at = 24 + key * (i + 1) + 8 * i
            addr = int.from_bytes(node[at:at + 8], "little")
            if addr < self.size:
                addrs.append(addr)
        bs = self.block_size
        blocks = {i for a in addrs for i in range(a // bs, (a + len(node) - 1) // bs + 1)}
        if len(blocks) <= self._MAX_BLOCKS:
            self._fill(sorted(blocks))


def _btree_rank(nbytes: int, kind: int) -> int | None:
    """The key size of a v1 B-tree node of ``nbytes`` bytes: for a chunk index (``kind``
    1), the number of chunk offsets per key (the dataset's rank + 1); ``0`` for a group
    node; None when no 2K-entry layout fits (then nothing is prefetched)."""
    if kind == 0:
        return 0
    for k in (32, 16, 64, 8, 128, 4, 256, 2, 1):
        # 24-byte header, 2K+1 keys of (8 + 8 * (rank + 1)) bytes, 2K 8-byte children
        rest = nbytes - 24 - 16 * k
        if rest > 0 and rest % (2 * k + 1) == 0:
            keysize = rest // (2 * k + 1)
            if keysize > 8 and (keysize - 8) % 8 == 0:
                return (keysize - 8) // 8
    return None


_PIECE = 8 * 2**20  # a larger range is fetched as concurrent pieces of this size
# neighbouring ranges (small chunks stored one after the other) up to this far apart are
# fetched as one request: fewer requests, each a round trip of the server's own work
_GAP = 4096


def _readahead_limit() -> int:
    """``LAZYIO_REMOTE_READAHEAD`` in bytes (default 32 MiB; not a whole number: the
    default, as this is read on import, where no error could be reported well)."""
    text = os.environ.get("LAZYIO_REMOTE_READAHEAD", "").strip()
    try:
        return max(0, int(text)) if text else 32 * 2**20
    except ValueError:
        return 32 * 2**20


class _ReadAhead:
    """Ranges fetched ahead of the reads that want them, per process: futures keyed by
    (url, start, stop), each taken once. At most ``limit`` bytes are held or in flight;
    entries nobody took within ``_AHEAD_TTL`` seconds are dropped (a read that stopped,
    or a file read once more should get its bytes anew)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str, int, int], tuple[Any, int, float]] = OrderedDict()
        self._bytes = 0
        self._own: dict[tuple[str, str, int, int], int] = {}
        self._done: OrderedDict[tuple[str, str, int, int], float] = OrderedDict()
        self.hits = 0  # reads answered by a range read ahead (tests, benchmarks)
        self._pid = os.getpid()

    def _expire(self) -> None:
        if os.getpid() != self._pid:  # a forked child: the parent's futures are not ours
            self._items.clear()
            self._own.clear()
            self._done.clear()
            self._bytes, self._pid = 0, os.getpid()
        now = time.monotonic()
        while self._items:
            key, (_, nbytes, born) = next(iter(self._items.items()))
            if now - born < _AHEAD_TTL:
                break
            del self._items[key]
            self._bytes -= nbytes

    def take(self, key: tuple[str, str, int, int]) -> Any:
        with self._lock:
            self._expire()
            item = self._items.pop(key, None)
            self._delivered(key)
            if item is None:
                return None
            self._bytes -= item[1]
            self.hits += 1
            return item[0]

    def _delivered(self, key: tuple[str, str, int, int]) -> None:
        # a range a read has had is not read ahead again: tasks run out of file order,
        # and a range fetched again for a read that already happened is never taken
        self._done[key] = time.monotonic()
        self._done.move_to_end(key)
        while len(self._done) > _DONE_KEYS:
            self._done.popitem(last=False)

    def fetching(self, keys: list[tuple[str, str, int, int]], started: bool) -> None:
        """Note ranges a read is fetching for itself (none is read ahead meanwhile)."""
        with self._lock:
            for key in keys:
                self._own[key] = self._own.get(key, 0) + (1 if started else -1)
                if self._own[key] <= 0:
                    del self._own[key]

    def busy(self, key: tuple[str, str, int, int]) -> bool:
        """Whether ``key`` is being fetched by a read, was read ahead already, or was
        read less than ``_AHEAD_TTL`` seconds ago."""
        with self._lock:
            done = self._done.get(key)
            return (key in self._own or key in self._items
                    or (done is not None and time.monotonic() - done < _AHEAD_TTL))

    def room(self, key: tuple[str, str, int, int], nbytes: int) -> bool:
        with self._lock:
            self._expire()
            return key in self._items or self._bytes + nbytes <= self.limit

    def add(self, key: tuple[str, str, int, int], future: Any, nbytes: int) -> None:
        with self._lock:
            if key in self._items or key in self._own:
                return
            self._items[key] = (future, nbytes, time.monotonic())
            self._bytes += nbytes

    def forget(self, url: str | None = None) -> None:
        """Drop what was read ahead (of ``url``, or of every file)."""
        with self._lock:
            for key in [k for k in self._items if url is None or k[0] == url]:
                self._bytes -= self._items.pop(key)[1]
            for key in [k for k in self._done if url is None or k[0] == url]:
                del self._done[key]


def forget_read_ahead(url: str | None = None) -> None:
    """Drop the ranges read ahead of ``url`` (every file: ``None``) in this process."""
    _AHEAD.forget(url)


_AHEAD_TTL = 10.0
_DONE_KEYS = 1 << 16  # ranges remembered as delivered (see _ReadAhead._delivered)
_AHEAD = _ReadAhead(_readahead_limit())


class _First:
    """The first item of a future's list result (a range fetched alone)."""

    def __init__(self, future: Any) -> None:
        self._future = future

    def result(self) -> bytes:
        return bytes(self._future.result()[0])


def _first(future: Any) -> _First:
    return _First(future)


async def _fetch_ranges(location: Location, starts: list[int], stops: list[int]) -> list[bytes]:
    """Fetch byte ranges concurrently on the filesystem's loop (HTTP: checked ranges)."""
    fs = location.fs
    if location.is_http:
        return await _http_ranges(fs, location.path, location.url, starts, stops)
    import asyncio

    limit = asyncio.Semaphore(max(1, min(len(starts), fs.batch_size or 128)))

    async def one(start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        async with limit:
            return bytes(await fs._cat_file(location.path, start=start, end=stop))

    return list(await asyncio.gather(*(one(a, b) for a, b in zip(starts, stops,
                                                                  strict=True))))


async def _http_ranges(fs: Any, path: str, url: str, starts: list[int],
                       stops: list[int]) -> list[bytes]:
    import asyncio

    limit = asyncio.Semaphore(max(1, min(len(starts), fs.batch_size or 128)))

    async def one(start: int, stop: int) -> bytes:
        async with limit:
            return await _http_range(fs, path, url, start, stop)

    return list(await asyncio.gather(*(one(a, b) for a, b in zip(starts, stops,
                                                                  strict=True))))


async def _http_range(fs: Any, path: str, url: str, start: int, stop: int) -> bytes:
    """GET ``[start, stop)`` of ``path``; the answer must be that range (206, or a
    Content-Range starting at ``start``), or the whole of a small file."""
    if stop <= start:
        return b""
    session = await fs.set_session()
    kwargs = dict(fs.kwargs)
    headers = dict(kwargs.pop("headers", None) or {})
    headers["Range"] = f"bytes={start}-{stop - 1}"
    async with session.get(fs.encode_url(path), headers=headers, **kwargs) as r:
        if r.status == 416:
            return b""  # a range past the end of the file: nothing there
        if r.status == 404:
            raise FileNotFoundError(url)
        r.raise_for_status()
        content_range = r.headers.get("Content-Range", "")
        if r.status == 206 or content_range.startswith(f"bytes {start}-"):
            _RANGE_CHECKED.add(url)
            return bytes(await r.read())
        # the whole file: read (and cut) only a small one; leave a large one unread
        if r.content_length is not None and r.content_length > _WHOLE_FILE_LIMIT:
            raise range_not_supported(url)
        body = bytearray()
        while len(body) <= _WHOLE_FILE_LIMIT:
            piece = await r.content.read(_WHOLE_FILE_LIMIT + 1 - len(body))
            if not piece:
                break
            body += piece
        if len(body) > _WHOLE_FILE_LIMIT:
            raise range_not_supported(url)
        return bytes(body[start:stop])


def as_location(
    source: str | os.PathLike[str] | Location, storage_options: dict[str, Any] | None = None
) -> Location:
    """Turn a path, URL or :class:`Location` into a :class:`Location`."""
    if isinstance(source, Location):
        if storage_options:
            return Location(source.url, {**source.storage_options, **storage_options})
        return source
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(
            f"Expected a path, URL or Location; got an instance of {type(source).__name__}"
        )
    return Location(source, dict(storage_options or {}))
