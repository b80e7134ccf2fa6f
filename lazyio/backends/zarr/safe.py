"""Reading the files of a local Zarr directory store that may have been built to attack.

A .zspy directory is a tree of small files, and every name in it comes from whoever made
it. Read naively, a symbolic link makes a chunk of a secret file elsewhere, ``/dev/zero``
or a FIFO is read until memory runs out or forever, a ``dimension_separator`` of
``/../../`` opens paths outside the store, and links between groups make a walk
exponential. Here every key is opened relative to a descriptor of the store's root
directory, with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` where the kernel has it
(one system call; a walk of ``O_NOFOLLOW`` opens otherwise), ``O_NONBLOCK`` so a FIFO
cannot block the open, and ``fstat`` so only regular files are read, never more bytes
than the caller allows.

The descriptor also pins the version of the store: a store replaced by renaming another
directory over it (as every writer does) keeps being read from the old directory, and a
chunk missing there is reported as :class:`~lazyio.errors.StaleFileError` if the path now
names another directory, instead of reading as the fill value.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from typing import Any, TypeGuard

from lazyio.errors import FormatError, StaleFileError, UnsafeFileError

__all__ = ["MAX_METADATA_BYTES", "RootDir", "check_array_metadata", "check_key",
           "safe_key_parts", "stat_token", "still_names"]

MAX_METADATA_BYTES = int(os.environ.get("LAZYIO_MAX_METADATA_BYTES", str(64 * 2**20)))
"""The largest metadata document (``.zattrs``, ``.zarray``, ``zarr.json``...) read: a
HyperSpy tree's biggest, with a vendor's original metadata, is a few MiB."""

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on every Linux architecture (new syscalls are unified)
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _load_openat2() -> Any:
    if os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    # no argtypes: the arguments are plain ints, bytes and prepared references, and
    # ctypes' per-call conversion was a third of the call's cost
    syscall.restype = ctypes.c_long
    return syscall


_syscall = _load_openat2()
_openat2_works: bool | None = None  # decided on first use (seccomp may refuse it)
_HOW = {flags: _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS
                        | _RESOLVE_NO_MAGICLINKS)
        for flags in (_FILE_FLAGS, _DIR_FLAGS)}
_HOW_REF = {flags: ctypes.byref(how) for flags, how in _HOW.items()}
_HOW_SIZE = ctypes.sizeof(_OpenHow)
_how_lock = threading.Lock()


def safe_key_parts(key: str) -> list[str]:
    """The components of a store key, refusing one that could leave the store.

    Raises
    ------
    UnsafeFileError
        For an absolute key, an empty, ``.`` or ``..`` component, or a NUL byte.
    """
    parts = key.split("/")
    if key.startswith("/") or "\x00" in key or any(p in ("", ".", "..") for p in parts):
        raise UnsafeFileError(f"key {key[:80]!r} points outside the store; refused")
    return parts


def check_key(key: str, where: object) -> None:
    """:func:`safe_key_parts`, with ``where`` (the store) named in the error."""
    try:
        safe_key_parts(key)
    except UnsafeFileError as err:
        raise UnsafeFileError(f"{where}: {err}") from None


def _openat2(dir_fd: int, key: str, flags: int) -> int:
    global _openat2_works
    if _syscall is not None and _openat2_works is not False:
        fd = _syscall(_SYS_OPENAT2, dir_fd, key.encode(), _HOW_REF[flags], _HOW_SIZE)
        if fd >= 0:
            _openat2_works = True
            return int(fd)
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EPERM) or _openat2_works:
            raise OSError(code, os.strerror(code), key)
        with _how_lock:
            _openat2_works = False  # no openat2 here (old kernel, seccomp): walk instead
    return _open_walk(dir_fd, key, flags)


def _open_walk(dir_fd: int, key: str, flags: int) -> int:
    """``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` done one component at a time."""
    parts = safe_key_parts(key)
    current = dir_fd
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=current)
            except OSError as err:
                # O_DIRECTORY|O_NOFOLLOW on a link fails with ENOTDIR, as on a file: tell
                # them apart, a link must be refused, not read as a missing chunk
                if err.errno in (errno.ENOTDIR, errno.ELOOP) and stat.S_ISLNK(
                    os.stat(part, dir_fd=current, follow_symlinks=False).st_mode
                ):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), key) from None
                raise
            if current != dir_fd:
                os.close(current)
            current = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=current)
    finally:
        if current != dir_fd:
            os.close(current)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"



def stat_token(st: os.stat_result) -> str:
    """A version token of an open file or directory, as
    :meth:`lazyio.location.Location.modified_token` makes for a path."""
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


def still_names(path: str | os.PathLike[str], identity: tuple[int, int]) -> bool:
    """Whether ``path`` still names the object whose ``(st_dev, st_ino)`` is ``identity``
    (False once it was replaced, renamed away or removed)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == identity

class RootDir:
    """An open descriptor of a local store's root directory, and safe reads below it.

    Parameters
    ----------
    path : str
        The store's directory (it may itself be reached through a symbolic link: the
        user named it; nothing *inside* it may be one).
    where : object
        Names the store in error messages.
    """

    def __init__(self, path: str, where: object) -> None:
        self.path = path
        self.where = where
        self.fd = os.open(path, _DIR_FLAGS)
        st = os.fstat(self.fd)
        self._identity = (st.st_dev, st.st_ino)

    def __del__(self, _close: Any = os.close) -> None:
        # os.close is bound early: at interpreter exit the module may be gone already
        fd, self.fd = getattr(self, "fd", -1), -1
        if fd >= 0:
            try:  # noqa: SIM105  (contextlib may be torn down at exit too)
                _close(fd)
            except OSError:
                pass

    def version_token(self) -> str:
        """The token of :meth:`lazyio.location.Location.modified_token`, of the directory
        this descriptor holds (not of whatever the path names now)."""
        return stat_token(os.fstat(self.fd))

    def is_current(self) -> bool:
        """Whether the path still names the directory this descriptor holds."""
        return still_names(self.path, self._identity)

    def check_current(self, key: str) -> None:
        """Raise :class:`StaleFileError` if the store was replaced (``key`` was missing)."""
        if not self.is_current():
            raise StaleFileError(
                f"{self.where}: the store was replaced or removed after it was opened "
                f"lazily ({key!r} is gone from the version being read); load it again "
                "to read the new version"
            )

    def _open(self, key: str, flags: int, check: bool = True) -> int | None:
        """A descriptor of ``key`` (``None`` if it does not exist); ``check=False`` for
        keys built from checked parts (chunk keys of a checked array path)."""
        if not key:
            # a new open file description, not dup(): a dup shares the directory's read
            # position, and threads (or forked processes) listing it at once saw
            # entries missing
            return os.open(".", _DIR_FLAGS, dir_fd=self.fd) if flags == _DIR_FLAGS else None
        try:
            if check:
                safe_key_parts(key)  # openat2 would allow "a/../b": one rule for both
            return _openat2(self.fd, key, flags)
        except UnsafeFileError as err:
            raise UnsafeFileError(f"{self.where}: {err}") from None
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            if err.errno in (errno.ELOOP, errno.EMLINK):
                raise UnsafeFileError(
                    f"{self.where}: {key!r} is or passes through a symbolic link; lazyio "
                    "reads only files inside the store (nothing is followed)"
                ) from None
            if err.errno == errno.EXDEV:
                raise UnsafeFileError(
                    f"{self.where}: {key[:80]!r} points outside the store; refused"
                ) from None
            raise

    def read(self, key: str, limit: int, what: str = "file", check: bool = True
             ) -> bytes | None:
        """The bytes of the regular file ``key`` below the root, or ``None`` if there is
        none (missing, or a directory). ``check=False`` skips the key's syntax check (the
        kernel still refuses links and escapes) for keys built from checked parts.

        Raises
        ------
        UnsafeFileError
            If ``key`` is a symbolic link, a FIFO, a device or leaves the store.
        FormatError
            If the file holds more than ``limit`` bytes.
        """
        fd = self._open(key, _FILE_FLAGS, check)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return None
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeFileError(
                    f"{self.where}: {key!r} is {_kind(st.st_mode)}; lazyio reads only "
                    "regular files inside the store"
                )
            if st.st_size > limit:
                raise FormatError(
                    f"{self.where}: {what} {key!r} holds {st.st_size} bytes, more than the "
                    f"{limit} it can hold; refused"
                )
            return _read_fd(fd, st.st_size, limit, self.where, key, what)
        finally:
            os.close(fd)

    def listdir(self, prefix: str) -> list[str]:
        """The names in directory ``prefix`` (``[]`` if it is not a directory)."""
        fd = self._open(prefix, _DIR_FLAGS)
        if fd is None:
            return []
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                return []
            return os.listdir(fd)
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a regular file below the root (a link or FIFO is refused)."""
        fd = self._open(key, _FILE_FLAGS)
        if fd is None:
            return False
        try:
            mode = os.fstat(fd).st_mode
        finally:
            os.close(fd)
        if stat.S_ISDIR(mode):
            return False
        if not stat.S_ISREG(mode):
            raise UnsafeFileError(
                f"{self.where}: {key!r} is {_kind(mode)}; lazyio reads only regular files "
                "inside the store"
            )
        return True


def _read_fd(fd: int, size: int, limit: int, where: object, key: str, what: str) -> bytes:
    # a file that grew since fstat() must not be read past the limit either
    want = min(size, limit) + 1
    data = os.read(fd, want)
    if len(data) < want and len(data) == size:
        return data
    parts = [data]
    total = len(data)
    while total <= limit:
        more = os.read(fd, min(1 << 24, limit + 1 - total))
        if not more:
            break
        parts.append(more)
        total += len(more)
    if total > limit:
        raise FormatError(f"{where}: {what} {key!r} holds more than {limit} bytes; refused")
    return b"".join(parts)


def _ints(value: Any, minimum: int) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value
    )


def check_array_metadata(meta: dict[str, Any], zarr_format: int, where: str) -> None:
    """Refuse an array document whose shape, chunk shape or chunk-key separator no valid
    store has, before zarr-python divides by a chunk length of 0 or builds chunk keys
    such as ``0/../../x``.

    Raises
    ------
    FormatError
    """
    if zarr_format == 3:
        shape = meta.get("shape")
        grid = meta.get("chunk_grid")
        chunks = (grid.get("configuration") or {}).get("chunk_shape") \
            if isinstance(grid, dict) else None
        encoding = meta.get("chunk_key_encoding")
        conf = encoding.get("configuration") if isinstance(encoding, dict) else None
        separator = conf.get("separator", "/") if isinstance(conf, dict) else "/"
        inner: list[Any] = [c.get("configuration", {}).get("chunk_shape")
                 for c in meta.get("codecs") or [] if isinstance(c, dict)
                 and c.get("name") == "sharding_indexed"]
    else:
        shape, chunks = meta.get("shape"), meta.get("chunks")
        separator = meta.get("dimension_separator") or "."
        inner = []
    if not _ints(shape, 0):
        raise FormatError(f"{where}: shape {str(shape)[:80]} is not a list of sizes >= 0")
    if not _ints(chunks, 1) or len(chunks) != len(shape):
        raise FormatError(
            f"{where}: chunk shape {str(chunks)[:80]} is not one length >= 1 per axis of "
            f"shape {str(shape)[:80]}"
        )
    if any(not _ints(c, 1) or len(c) != len(shape) for c in inner):
        raise FormatError(f"{where}: a sharded chunk shape is not one length >= 1 per axis")
    if separator not in (".", "/"):
        raise FormatError(
            f"{where}: chunk-key separator {str(separator)[:40]!r} is neither '.' nor '/'"
        )
