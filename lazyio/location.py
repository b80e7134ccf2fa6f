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
import json
import os
import stat
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

__all__ = ["DEFAULT_TIMEOUT", "Location", "as_location", "remote_timeout", "storage_errors"]

# Small reads (headers, sniffing) of remote files must not pull fsspec's default 5 MB block.
_REMOTE_BLOCK = 2**16
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

    def _remote_info(self) -> dict[str, Any] | None:
        # fsspec's HTTP exists() and isdir() download the resource (to list links in it):
        # info() is one HEAD request there, and one request on object stores.
        try:
            with storage_errors(self.url):
                return self.fs.info(self.path)
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
            return int(self.fs.size(self.path))

    def modified_token(self) -> str:
        """A token that changes when the file changes (mtime and size where known; locally
        the inode too, so a file replaced by rename within one clock tick still differs)."""
        try:
            if self.local_path is not None:
                st = os.stat(self.local_path)
                return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"
            info = self.fs.info(self.path)
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
            if "r" in mode:
                kwargs.setdefault("block_size", _REMOTE_BLOCK)
                if self.is_http and self.url not in _RANGE_CHECKED:
                    self.read_bytes(0, 1)
            return self.fs.open(self.path, mode, **kwargs)

    def read_bytes(self, start: int, stop: int) -> bytes:
        """Read the byte range ``[start, stop)`` (one range request remotely).

        Raises :class:`~lazyio.errors.RangeNotSupportedError` when an HTTP server answers
        with the whole file and the file is larger than ``_WHOLE_FILE_LIMIT``.
        """
        return self.read_ranges([start], [stop])[0]

    def read_ranges(self, starts: list[int], stops: list[int]) -> list[bytes]:
        """Read several byte ranges (concurrent requests remotely), checked as
        :meth:`read_bytes`."""
        with storage_errors(self.url):
            if not self.is_http:
                if len(starts) == 1:
                    return [self.fs.cat_file(self.path, start=starts[0], end=stops[0])]
                return list(self.fs.cat_ranges([self.path] * len(starts), starts, stops,
                                               on_error="raise"))
            from fsspec.asyn import sync

            fs = self.fs
            return list(sync(fs.loop, _http_ranges, fs, self.path, self.url, starts, stops))

    def read_head(self, nbytes: int) -> bytes:
        """The first ``nbytes`` bytes of a file (fewer if it is shorter); ``b""`` for dirs."""
        if self.local_path is not None:
            if os.path.isdir(self.local_path):
                return b""
            with self.open("rb") as f:
                return f.read(nbytes)
        try:
            return self.read_bytes(0, nbytes)
        except (SourceNotFoundError, IsADirectoryError):
            # an object-store prefix (a directory) has no bytes; a missing object is
            # reported by the caller's exists() check
            return b""

    def child(self, name: str) -> Location:
        """A location inside this directory."""
        return Location(f"{self.url.rstrip('/')}/{name}", self.storage_options)


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
