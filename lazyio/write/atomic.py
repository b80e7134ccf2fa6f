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

__all__ = ["atomic_path", "remove_path", "temporary_sibling"]

_TAG = ".lazyio-tmp-"


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


@contextlib.contextmanager
def atomic_path(final_path: str) -> Iterator[str]:
    """Yield a temporary path to write; move it to ``final_path`` only on success.

    Works for files and directories. An existing target is replaced only after the new
    one is complete; on error the temporary output is removed and the target untouched.
    """
    final_path = os.path.abspath(final_path)
    tmp = temporary_sibling(final_path)
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    if os.path.isdir(tmp) and os.path.exists(final_path):
        # a directory cannot replace another in one step: move the old one aside first
        old = temporary_sibling(final_path)
        os.replace(final_path, old)
        os.replace(tmp, final_path)
        remove_path(old)
    else:
        if os.path.isdir(final_path):
            remove_path(final_path)
        os.replace(tmp, final_path)
    _clean_debris(final_path)
