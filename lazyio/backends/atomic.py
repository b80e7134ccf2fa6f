"""Atomic replacement of files and directories: write beside the target, rename when done.

An interrupted write leaves only a hidden temporary sibling (removed on failure when
possible, and by the next successful write of the same target), never a target that
looks complete. Remote targets get the same treatment where the store allows it: a
temporary object moved into place (:func:`remote_temporary`), or a local temporary
uploaded whole (:func:`upload_temporary`) for formats that cannot be streamed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lazyio.location import Location

__all__ = [
    "TMP_TAG",
    "atomic_path",
    "remote_temporary",
    "remove_path",
    "remove_target",
    "temporary_sibling",
    "upload_temporary",
]

TMP_TAG = ".lazyio-tmp-"  # in every temporary's name, so tests and cleanup can find them
_TAG = TMP_TAG


def temporary_sibling(final_path: str) -> str:
    """A unique hidden name in the same directory as ``final_path``."""
    head, tail = os.path.split(os.path.abspath(final_path))
    return os.path.join(head, f".{tail}{_TAG}{uuid.uuid4().hex[:12]}")


def remove_path(path: str) -> None:
    """Remove a file or a directory tree, if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _clean_debris(final_path: str) -> None:
    head, tail = os.path.split(os.path.abspath(final_path))
    for stale in glob.glob(os.path.join(glob.escape(head), f".{glob.escape(tail)}{_TAG}*")):
        remove_path(stale)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not every platform or file system allows it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _replace(tmp: str, final_path: str) -> None:
    if (os.path.isdir(final_path) and not os.path.islink(final_path)) or (
        os.path.isdir(tmp) and os.path.lexists(final_path)
    ):
        # os.replace cannot put anything over a directory, nor a directory over a file:
        # move the old target aside first, and put it back if the new one cannot go in.
        old = temporary_sibling(final_path)
        os.replace(final_path, old)
        try:
            os.replace(tmp, final_path)
        except BaseException:
            os.replace(old, final_path)
            raise
        remove_path(old)
    else:
        os.replace(tmp, final_path)


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path to write; move it to ``final_path`` only on success.

    Works for files and directories. An existing target is replaced only after the new
    one is complete; on error the temporary output is removed and the target untouched.

    Parameters
    ----------
    final_path : str or os.PathLike
        Where the result must appear. Whether an existing target may be replaced is the
        caller's decision, taken before the first byte is written.

    Yields
    ------
    str
        The temporary path to write (a file or a directory); it does not exist yet.
    """
    final_path = os.path.abspath(os.fspath(final_path))
    tmp = temporary_sibling(final_path)
    try:
        yield tmp
        _replace(tmp, final_path)
    except BaseException:
        remove_path(tmp)
        raise
    _clean_debris(final_path)
    _fsync_directory(os.path.dirname(final_path))


@contextlib.contextmanager
def remote_temporary(target: Location) -> Iterator[Location]:
    """Yield a temporary sibling object of the remote ``target``; move it into place on
    success, remove it on failure (the old target stays until the move)."""
    from lazyio.location import Location

    # Object-store keys are not local paths: the sibling's name is built here, not with
    # os.path (which would make a bucket key absolute).
    base, sep, name = target.url.rstrip("/").rpartition("/")
    tmp = Location(f"{base}{sep}.{name}{_TAG}{uuid.uuid4().hex[:12]}", target.storage_options)
    fs = target.fs
    try:
        yield tmp
        fs.mv(tmp.path, target.path)
    except BaseException:
        with contextlib.suppress(OSError):
            if fs.exists(tmp.path):
                fs.rm(tmp.path, recursive=True)
        raise


@contextlib.contextmanager
def upload_temporary(target: Location) -> Iterator[str]:
    """Yield a local path (in a private temporary directory) named like ``target``; upload
    what was written there to ``target`` on success, replacing what was there."""
    with tempfile.TemporaryDirectory(prefix="lazyio-") as tmpdir:
        local = os.path.join(tmpdir, target.name or "upload")
        yield local
        fs = target.fs
        if os.path.isdir(local):
            remove_target(target)
            fs.put(local, target.path, recursive=True)
        else:
            fs.put_file(local, target.path)


def remove_target(target: Location) -> None:
    """Remove a file or directory tree at ``target`` (local or remote), if it exists."""
    if target.local_path is not None:
        remove_path(target.local_path)
        return
    if target.exists():
        target.fs.rm(target.path, recursive=True)
