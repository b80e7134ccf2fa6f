"""Atomic local writes: a temporary sibling renamed over the target once complete."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lazyio.backends import atomic
from lazyio.backends.atomic import atomic_path


def test_atomic_path_for_files_and_directories(tmp_path):
    target = tmp_path / "t"
    with atomic_path(target) as tmp:
        Path(tmp).write_text("one")
    assert target.read_text() == "one"
    with pytest.raises(KeyError), atomic_path(target) as tmp:  # noqa: PT012
        Path(tmp).write_text("two")
        raise KeyError("stop")  # fails inside the block: the target must survive
    assert target.read_text() == "one"
    with atomic_path(target) as tmp:  # a directory replaces a file
        os.mkdir(tmp)
        (Path(tmp) / "inner").write_text("three")
    assert (target / "inner").read_text() == "three"
    with atomic_path(target) as tmp:  # and a file a directory
        Path(tmp).write_text("four")
    assert target.read_text() == "four"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_temporaries_name_their_owner_and_only_dead_owners_are_cleaned(tmp_path):
    target = tmp_path / "t"
    mine = Path(atomic.temporary_sibling(str(target)))
    assert f"-{os.getpid()}-" in mine.name
    mine.write_text("a live writer's")
    dead = tmp_path / f".t{atomic.TMP_TAG}{atomic._host_tag()}-{_dead_pid()}-{'0' * 12}"
    dead.write_text("a dead writer's")
    legacy = tmp_path / f".t{atomic.TMP_TAG}{'1' * 12}"  # lazyio before owners were named
    legacy.write_text("old")
    other_host = tmp_path / f".t{atomic.TMP_TAG}{'f' * 8}-1-{'0' * 12}"
    other_host.write_text("cannot tell")
    assert sorted(atomic.clean_debris(target)) == sorted([str(dead), str(legacy)])
    assert mine.exists() and other_host.exists()  # noqa: PT018


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_recover_puts_back_an_old_version_only_when_the_target_is_missing(tmp_path):
    target = tmp_path / "store"
    old = tmp_path / f".store{atomic.OLD_TAG}{atomic._host_tag()}-{_dead_pid()}-{'0' * 12}"
    old.mkdir()
    (old / "x").write_text("old")
    assert atomic.recover(target) is True
    assert (target / "x").read_text() == "old"
    old.mkdir()  # a completed swap's leftover, its owner dead: removed
    assert atomic.recover(target) is False
    assert not old.exists()
    live = Path(atomic.temporary_sibling(str(target), atomic.OLD_TAG))
    live.mkdir()  # a live owner's: left alone
    atomic.recover(target)
    assert live.exists()


def test_the_lock_refuses_a_second_holder_and_is_removed_on_release(tmp_path):
    target = tmp_path / "t"
    with atomic.target_lock(target):
        lock = tmp_path / f".t{atomic.LOCK_TAG}"
        assert f"pid {os.getpid()}" in lock.read_text()
        with pytest.raises(atomic.TargetBusy, match=f"pid {os.getpid()}"), \
                atomic.target_lock(target):
            pass
        # another process is refused too (flock is per open file, not per process)
        code = subprocess.run(
            [sys.executable, "-c", ("import fcntl, os, sys\n"
             f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "except BlockingIOError:\n    sys.exit(3)\n")], check=False).returncode
        assert code == 3
    assert os.listdir(tmp_path) == []
    with atomic.target_lock(target):  # free again
        pass


def test_a_suffixed_temporary_keeps_its_owner(tmp_path):
    # the zip writer builds "<temporary>.dir" beside its temporary: still the live owner's
    live = Path(atomic.temporary_sibling(str(tmp_path / "a.zspy")) + ".dir")
    live.mkdir()
    assert atomic.owner_alive(live.name)
    assert atomic.clean_debris(tmp_path / "a.zspy") == []
