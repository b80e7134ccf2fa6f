"""Atomic replacement of files and directories: write beside the target, rename when done.

An interrupted write leaves only a hidden temporary sibling, never a target that looks
complete. Every temporary's name carries its owner (a host tag and a process id), so the
next write of the same target removes the temporaries of writers that died and never
those of a live one. Replacing a directory takes two renames (the old version aside, the
new one in); the old version's name says so (:data:`OLD_TAG`), and :func:`recover` puts it
back if its owner died between the two. Writers of one local target are serialised by a
lock file beside it (:func:`target_lock`, an ``flock`` the kernel releases when its owner
dies).

Remote targets get the same treatment where the store allows it: a temporary object moved
into place (:func:`remote_temporary`), or a local temporary uploaded whole
(:func:`upload_temporary`) for formats that cannot be streamed.

:func:`checkpoint` names each step of a commit; the test suite sets
``LAZYIO_TEST_KILL_AT=<step>`` (the process exits there, as if killed) or
``LAZYIO_TEST_PAUSE_AT=<step>`` with ``LAZYIO_TEST_PAUSE_FILE`` (the process waits there) to
check every step without relying on timing.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lazyio.location import Location

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, no clones
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "JOURNAL_TAG",
    "KILL_EXIT_CODE",
    "LOCK_TAG",
    "OLD_TAG",
    "TMP_TAG",
    "UPDATE_TAG",
    "atomic_path",
    "checkpoint",
    "clean_debris",
    "copy_for_update",
    "owner_alive",
    "recover",
    "remote_temporary",
    "remove_path",
    "remove_target",
    "replay_update",
    "staged_update",
    "target_lock",
    "temporary_sibling",
    "upload_temporary",
]

TMP_TAG = ".lazyio-tmp-"  # in every temporary's name, so tests and cleanup can find them
OLD_TAG = ".lazyio-old-"  # an old version moved aside during a directory swap
LOCK_TAG = ".lazyio-lock"  # the lock file of a target's writers
UPDATE_TAG = ".lazyio-update-"  # the staged metadata tree of a directory store's update
JOURNAL_TAG = ".lazyio-journal"  # an update's committed list of moves (one per target)
_TAG = TMP_TAG
_OWNED = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}")  # then maybe a suffix

KILL_ENV = "LAZYIO_TEST_KILL_AT"
PAUSE_ENV = "LAZYIO_TEST_PAUSE_AT"
PAUSE_FILE_ENV = "LAZYIO_TEST_PAUSE_FILE"
KILL_EXIT_CODE = 86


def checkpoint(step: str) -> None:
    """A named step of a commit, where the test suite can stop or pause the process.

    With ``LAZYIO_TEST_KILL_AT=<step>`` the process ends at once with
    :data:`KILL_EXIT_CODE` (``os._exit``: no cleanup runs, as after SIGKILL). With
    ``LAZYIO_TEST_PAUSE_AT=<step>`` it creates ``$LAZYIO_TEST_PAUSE_FILE.reached`` and
    waits until ``$LAZYIO_TEST_PAUSE_FILE`` exists. Unset, it costs one dictionary look-up.
    """
    if os.environ.get(KILL_ENV) == step:
        os._exit(KILL_EXIT_CODE)
    if os.environ.get(PAUSE_ENV) == step:
        release = os.environ[PAUSE_FILE_ENV]
        with open(release + ".reached", "w"):
            pass
        while not os.path.exists(release):
            time.sleep(0.01)


def _host_tag() -> str:
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


def _owner() -> str:
    # computed per call: a forked child owns its own temporaries
    return f"{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def temporary_sibling(final_path: str, tag: str = TMP_TAG) -> str:
    """A unique hidden name in the same directory as ``final_path``, naming its owner."""
    head, tail = os.path.split(os.path.abspath(final_path))
    return os.path.join(head, f".{tail}{tag}{_owner()}")


def owner_alive(name: str) -> bool:
    """Whether the process that made the temporary ``name`` may still be running.

    A name from another host, or one whose process exists, counts as alive; a name
    without an owner (written by lazyio before owners were recorded) counts as dead.
    """
    for tag in (TMP_TAG, OLD_TAG, UPDATE_TAG):
        if tag in name:
            name = name.rpartition(tag)[2]  # the owner follows the tag (then a suffix)
            break
    match = _OWNED.match(name)
    if match is None:
        return False
    if match["host"] != _host_tag():
        return True  # cannot tell: keep it
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def remove_path(path: str) -> None:
    """Remove a file or a directory tree, if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _siblings(final_path: str, tag: str) -> list[str]:
    head, tail = os.path.split(os.path.abspath(final_path))
    return glob.glob(os.path.join(glob.escape(head), f".{glob.escape(tail)}{tag}*"))


def clean_debris(final_path: str | os.PathLike[str], keep: Collection[str] = ()) -> list[str]:
    """Remove the temporaries of dead writers of ``final_path``; return what was removed.

    A temporary whose owner is alive (another process writing now) is left alone, and so
    is one whose path starts with an entry of ``keep`` (an interrupted write being
    resumed, with its journal: see :mod:`lazyio.backends.journal`).
    """
    removed = []
    for stale in _siblings(os.fspath(final_path), TMP_TAG):
        if any(stale.startswith(k) for k in keep):
            continue
        if not owner_alive(os.path.basename(stale)):
            remove_path(stale)
            removed.append(stale)
    return removed


def recover(final_path: str | os.PathLike[str]) -> bool:
    """Finish or undo a directory swap that a dead writer left half-done.

    A metadata update of a directory store whose journal was committed is finished
    (:func:`replay_update`); staged trees of dead updaters without one are removed. If the
    target is missing and an old version its dead owner moved aside exists, the
    old version is renamed back (returns True). If the target exists, old versions of
    dead owners are leftovers of a completed swap and are removed. Live owners' are left.
    """
    final_path = os.path.abspath(os.fspath(final_path))
    _recover_updates(final_path)
    olds = [p for p in _siblings(final_path, OLD_TAG) if not owner_alive(os.path.basename(p))]
    if not olds:
        return False
    restored = False
    if not os.path.lexists(final_path):
        newest = max(olds, key=lambda p: os.lstat(p).st_mtime_ns)
        with contextlib.suppress(FileNotFoundError):  # another process restored it
            os.rename(newest, final_path)
            restored = True
            olds.remove(newest)
            _fsync_directory(os.path.dirname(final_path))
    if os.path.lexists(final_path):
        for old in olds:
            remove_path(old)
    return restored


def _recover_updates(final_path: str) -> None:
    # an update's journal first (it names a staging tree to finish moving), then the
    # staging trees of dead writers that never committed one
    journal = journal_name(final_path)
    if os.path.lexists(journal):
        replay_update(final_path)
    remove_path(journal + "-pending")  # a journal whose writer died before committing it
    for stage in _siblings(final_path, UPDATE_TAG):
        if not owner_alive(os.path.basename(stage)):
            remove_path(stage)


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
        # move the old target aside first (under a name recover() knows), and put it back
        # if the new one cannot go in.
        old = temporary_sibling(final_path, OLD_TAG)
        os.replace(final_path, old)
        checkpoint("old-aside")
        try:
            os.replace(tmp, final_path)
        except BaseException:
            os.replace(old, final_path)
            raise
        checkpoint("swapped")
        remove_path(old)
    else:
        os.replace(tmp, final_path)
        checkpoint("swapped")


@contextlib.contextmanager
def atomic_path(
    final_path: str | os.PathLike[str], keep: Collection[str] = (),
    keep_interrupted: bool = False,
) -> Iterator[str]:
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
    keep : collection of str
        Temporaries (path prefixes) of dead writers not to remove before writing: an
        interrupted write being resumed. Removed with the others once committed.
    keep_interrupted : bool, default False
        Leave the temporary in place when the write is interrupted by
        ``KeyboardInterrupt`` (a resumable write: it continues from there).
    """
    final_path = os.path.abspath(os.fspath(final_path))
    clean_debris(final_path, keep)  # first: a dead writer's temporary may hold the space needed
    tmp = temporary_sibling(final_path)
    try:
        yield tmp
        checkpoint("written")
        _replace(tmp, final_path)
    except BaseException as err:
        if not (keep_interrupted and isinstance(err, KeyboardInterrupt)):
            remove_path(tmp)
        raise
    clean_debris(final_path)
    _fsync_directory(os.path.dirname(final_path))
    checkpoint("committed")


def copy_for_update(source: str, destination: str) -> None:
    """Copy the file ``source`` to ``destination`` (a temporary), to be updated there and
    renamed over ``source``: an update killed half-way then leaves the old file whole."""
    # A copy-on-write clone first (btrfs, XFS: instant, no space used until the update
    # writes), else the kernel's copy (sendfile), which keeps nothing in Python memory.
    with open(source, "rb") as src, open(destination, "wb") as dst:
        try:
            if fcntl is None:
                raise OSError("no clones here")
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
        except OSError:
            dst.truncate(0)
            _sendfile(src, dst)
    shutil.copymode(source, destination)


_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def _sendfile(src: Any, dst: Any) -> None:
    if not hasattr(os, "sendfile"):  # pragma: no cover - not Linux or macOS
        shutil.copyfileobj(src, dst, 16 * 2**20)
        return
    size = os.fstat(src.fileno()).st_size
    offset = 0
    while offset < size:
        sent = os.sendfile(dst.fileno(), src.fileno(), offset, min(size - offset, 2**30))
        if sent == 0:
            break
        offset += sent


# ------------------------------------------------------- updates of directory stores
# A metadata-only update of a directory store (write_dataset=False on a .zspy directory)
# touches a few small documents among possibly millions of chunk files. It is made
# kill-safe without copying the chunks: the store's metadata tree (every file except the
# chunks of the arrays the update leaves alone) is copied to a staging directory beside
# the target, the update is written there, and the files that changed are moved into the
# target under a journal. The journal, renamed into place in one step, is the commit: a
# kill before it leaves the old store untouched (the staging tree is debris), a kill after
# it is finished by the next lazyio call (recover, load), which replays the journal.

METADATA_DOCS = frozenset({".zgroup", ".zattrs", ".zarray", ".zmetadata", "zarr.json"})


def journal_name(final_path: str | os.PathLike[str]) -> str:
    """The journal of an update of ``final_path`` (a hidden sibling; one per target, as
    the target's lock admits one writer)."""
    head, tail = os.path.split(os.path.abspath(os.fspath(final_path)))
    return os.path.join(head, f".{tail}{JOURNAL_TAG}")


def _walk_tree(root: str, untouched: frozenset[str]) -> tuple[set[str], set[str]]:
    """Relative files and directories under ``root``; inside the directories named in
    ``untouched``, only their metadata documents (chunks are never listed)."""
    files: set[str] = set()
    dirs: set[str] = set()
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if rel in untouched:
                        continue  # a chunk directory of an array left alone
                    dirs.add(name)
                    stack.append(name)
                elif entry.is_file(follow_symlinks=False) and (
                        rel not in untouched or entry.name in METADATA_DOCS):
                    files.add(name)
                # anything else (a link, a FIFO) is refused by every reader: not copied
    return files, dirs


def _same_bytes(a: str, b: str) -> bool:
    try:
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()  # metadata documents and small arrays only
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def staged_update(
    final_path: str | os.PathLike[str], untouched: list[str] | tuple[str, ...] = ()
) -> Iterator[str]:
    """Yield a staging copy of the directory store ``final_path`` to update; move what
    changed into the target under a journal on success.

    Parameters
    ----------
    final_path : str or os.PathLike
        An existing directory store. The caller holds its :func:`target_lock`.
    untouched : sequence of str
        Relative paths of arrays the update does not write (the signals' data): their
        chunks are neither copied nor moved, only their metadata documents are copied.

    Yields
    ------
    str
        The staging directory, a copy of the store's metadata tree, to update in place.
    """
    import json

    final_path = os.path.abspath(os.fspath(final_path))
    skip = frozenset(u.strip("/") for u in untouched)
    stage = temporary_sibling(final_path, UPDATE_TAG)
    try:
        old_files, old_dirs = _walk_tree(final_path, skip)
        for rel in sorted(old_dirs):
            os.makedirs(os.path.join(stage, rel), exist_ok=True)
        os.makedirs(stage, exist_ok=True)
        for rel in old_files:
            shutil.copyfile(os.path.join(final_path, rel), os.path.join(stage, rel),
                            follow_symlinks=False)
        for rel in skip:  # the arrays left alone must look present to the writer
            os.makedirs(os.path.join(stage, rel), exist_ok=True)
        checkpoint("copied")
        yield stage
        checkpoint("written")
        new_files, new_dirs = _walk_tree(stage, skip)
        moves = sorted(rel for rel in new_files
                       if not _same_bytes(os.path.join(stage, rel), os.path.join(final_path, rel)))
        deletes = sorted(old_files - new_files)
        rmdirs = sorted(old_dirs - new_dirs - skip, key=lambda d: -d.count("/"))
        journal = journal_name(final_path)
        pending = journal + "-pending"  # one writer at a time: a fixed name
        with open(pending, "w") as fh:
            json.dump({"stage": os.path.basename(stage), "moves": moves,
                       "deletes": deletes, "rmdirs": rmdirs}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(pending, journal)  # the commit: from here on the update is finished
        _fsync_directory(os.path.dirname(final_path))
    except BaseException:
        remove_path(stage)
        raise
    checkpoint("journaled")
    replay_update(final_path, own=True)
    checkpoint("committed")


def _mine(name: str) -> bool:
    # a name this process owns: its update failed half-way, nobody else will finish it
    match = _OWNED.match(name.rpartition(UPDATE_TAG)[2])
    return (match is not None and match["host"] == _host_tag()
            and int(match["pid"]) == os.getpid())


def replay_update(final_path: str | os.PathLike[str], own: bool = False) -> bool:
    """Finish the update of the directory store ``final_path`` whose journal was
    committed, if its writer died (or ``own``: this process wrote it); idempotent.
    Returns whether a journal was replayed."""
    import json

    final_path = os.path.abspath(os.fspath(final_path))
    journal = journal_name(final_path)
    try:
        with open(journal) as fh:
            plan = json.load(fh)
        stage = os.path.join(os.path.dirname(final_path), plan["stage"])
        moves, deletes, rmdirs = plan["moves"], plan["deletes"], plan["rmdirs"]
    except FileNotFoundError:
        return False
    except (ValueError, KeyError, TypeError):
        remove_path(journal)  # never committed whole (os.replace makes that impossible)
        return False
    if not own and owner_alive(plan["stage"]) and not _mine(plan["stage"]):
        return False  # its writer is still moving the files in
    for i, rel in enumerate(moves):
        source = os.path.join(stage, rel)
        if not os.path.lexists(source):
            continue  # moved before the kill
        destination = os.path.join(final_path, rel)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        os.replace(source, destination)
        if i == 0:
            checkpoint("moving")
    for rel in deletes:
        remove_path(os.path.join(final_path, rel))
    for rel in rmdirs:
        with contextlib.suppress(OSError):  # not empty: it still holds something else
            os.rmdir(os.path.join(final_path, rel))
    checkpoint("swapped")
    _fsync_directory(os.path.dirname(final_path))
    remove_path(stage)
    remove_path(journal)
    return True


class TargetBusy(Exception):
    """Another live process holds the target's lock (``args[0]`` says who, if known)."""


def _lock_name(final_path: str) -> str:
    head, tail = os.path.split(os.path.abspath(final_path))
    return os.path.join(head, f".{tail}{LOCK_TAG}")


@contextlib.contextmanager
def target_lock(final_path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the writers' lock of the local target ``final_path`` for the block.

    The lock is an ``flock`` on a hidden file beside the target, holding the owner's host
    and pid for the message of a refused writer. The kernel releases it when its owner
    dies, so a killed writer never blocks the next one; the file is removed on release.

    Raises
    ------
    TargetBusy
        Another live process (or another thread of this one) holds the lock.
    """
    path = _lock_name(os.fspath(final_path))
    if fcntl is None:  # pragma: no cover - Windows: writers are not serialised
        yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise TargetBusy(holder) from None
        except BaseException:
            os.close(fd)
            raise
        # The previous holder may have removed the file between our open and our lock:
        # then we hold a lock on a name nobody else sees, and must start again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # while still holding it: see the check above
        os.close(fd)


def is_special(path: str) -> str | None:
    """What ``path`` is if it is neither a regular file nor a directory (nor missing)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return None


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (an OSError, or an HDF5 error carrying the C errno) is a full disk."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "errno = 28" in text or "No space left on device" in text


@contextlib.contextmanager
def remote_temporary(target: Location) -> Iterator[Location]:
    """Yield a temporary sibling object of the remote ``target``; move it into place on
    success, remove it on failure (the old target stays until the move)."""
    from lazyio.location import Location

    # Object-store keys are not local paths: the sibling's name is built here, not with
    # os.path (which would make a bucket key absolute).
    base, sep, name = target.url.rstrip("/").rpartition("/")
    tmp = Location(f"{base}{sep}.{name}{_TAG}{_owner()}", target.storage_options)
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


def remove_target(target: Location, keys: list[str] | None = None) -> None:
    """Remove a file or directory tree at ``target`` (local or remote), if it exists.

    With ``keys`` (full paths in the target's file system), remove exactly those objects
    and nothing else: a replaced remote store loses its own keys only.
    """
    if keys is not None:
        if keys:
            target.fs.rm(keys)
        return
    if target.local_path is not None:
        remove_path(target.local_path)
        return
    if target.exists():
        target.fs.rm(target.path, recursive=True)
