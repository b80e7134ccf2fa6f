"""Atomic replacement of files and directories: write beside the target, rename when done.

An interrupted write leaves only a hidden temporary sibling (removed on failure when
possible, and by the next successful write of the same target), never a target that
looks complete.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import uuid
from collections.abc import Iterator

__all__ = ["TMP_TAG", "atomic_path", "remove_path", "temporary_sibling"]

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
