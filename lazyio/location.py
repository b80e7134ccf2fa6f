"""Where a file lives: a URL or path plus fsspec storage options, picklable by value.

A :class:`Location` is what lazy tasks carry instead of an open file. Local paths keep a
fast path (``local_path``) for memory maps and ``pread``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import fsspec

from lazyio.errors import SourceNotFoundError, translate

__all__ = ["Location", "as_location", "storage_errors"]

# Small reads (headers, sniffing) of remote files must not pull fsspec's default 5 MB block.
_REMOTE_BLOCK = 2**16


def storage_errors(url: str) -> contextlib.AbstractContextManager[None]:
    """Translate missing-file and permission errors (of fsspec or the OS) into lazyio's,
    naming ``url`` (see :func:`lazyio.errors.translate`)."""
    return translate(url, scope="storage")


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

    @cached_property
    def _fs_and_path(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return fsspec.core.url_to_fs(self.url, **self.storage_options)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem (instances are cached by fsspec per process)."""
        return self._fs_and_path[0]

    @property
    def path(self) -> str:
        """The path of the file inside :attr:`fs`."""
        return self._fs_and_path[1]

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
        """Open the file through fsspec (or the builtin ``open`` for local files)."""
        with storage_errors(self.url):
            if self.local_path is not None:
                return open(self.local_path, mode)
            if "r" in mode:
                kwargs.setdefault("block_size", _REMOTE_BLOCK)
            return self.fs.open(self.path, mode, **kwargs)

    def read_bytes(self, start: int, stop: int) -> bytes:
        """Read the byte range ``[start, stop)`` (one range request remotely)."""
        with storage_errors(self.url):
            return self.fs.cat_file(self.path, start=start, end=stop)

    def read_head(self, nbytes: int) -> bytes:
        """The first ``nbytes`` bytes of a file (fewer if it is shorter); ``b""`` for dirs."""
        if self.local_path is not None:
            if os.path.isdir(self.local_path):
                return b""
            with self.open("rb") as f:
                return f.read(nbytes)
        try:
            with storage_errors(self.url):
                return self.fs.cat_file(self.path, start=0, end=nbytes)
        except (SourceNotFoundError, IsADirectoryError):
            # an object-store prefix (a directory) has no bytes; a missing object is
            # reported by the caller's exists() check
            return b""

    def child(self, name: str) -> Location:
        """A location inside this directory."""
        return Location(f"{self.url.rstrip('/')}/{name}", self.storage_options)


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
