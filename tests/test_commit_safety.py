"""The commit pipeline of ``lazyio.save`` under faults and mistakes (issue 13).

- ``overwrite=True`` (and the ``file_writer``s, which replace by default) replaces only a
  target of the same kind; anything else is refused and left untouched, locally and on S3.
- Writers of one target are serialised by a lock; cleanup never removes a live writer's
  temporary.
- A process killed at any step of a commit (an in-process hook, not timing) leaves the old
  or the new version at the target, or one that the next lazyio call restores.
- A remote .zspy write that fails half-way never loads as complete.
- Missing parent directories, read-only directories: an error naming the target, alike for
  every format.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import fsspec
import numpy as np
import pytest

import lazyio
from lazyio.backends import atomic
from lazyio.backends.atomic import (
    JOURNAL_TAG,
    KILL_EXIT_CODE,
    LOCK_TAG,
    OLD_TAG,
    TMP_TAG,
    UPDATE_TAG,
)
from lazyio.errors import (
    ForeignTargetError,
    LazyioError,
    MissingDirectoryError,
    TargetBusyError,
    TargetExistsError,
    WriteError,
)
from lazyio.formats import format_names, get_plugin

FORMATS = format_names()[:4]
OLD = np.arange(4 * 6 * 10, dtype="f4").reshape(4, 6, 10)
NEW = OLD + 1000
AXES = [{"size": 4, "navigate": True}, {"size": 6, "navigate": True},
        {"size": 10, "navigate": False}]


def path_for(folder: Path, fmt: str, stem: str = "a") -> Path:
    return folder / f"{stem}{get_plugin(fmt).extensions[0]}"


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself), by relative name."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder)
                  if TMP_TAG in n or OLD_TAG in n or UPDATE_TAG in n or JOURNAL_TAG in n
                  or n.endswith(LOCK_TAG))


def save(path: Any, data: np.ndarray, fmt: str | None = None, **kwds: Any) -> None:
    lazyio.save(path, {"data": data, "axes": AXES}, format=fmt, show_progressbar=False,
                **kwds)


def read(path: Any, **kwds: Any) -> np.ndarray:
    out = lazyio.load(path, lazy=False, **kwds)[0]["data"]
    lazyio.close_all()
    return np.asarray(out)


def unrelated_folder(path: Path) -> dict[str, bytes]:
    path.mkdir()
    (path / "thesis.tex").write_text("three years of work")
    (path / "sub").mkdir()
    (path / "sub" / "figure.png").write_bytes(b"\x89PNG....")
    return snapshot(path)


# ----------------------------------------------------------------- overwrite: local refusals


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwrite_refuses_a_directory_of_other_files(tmp_path: Path, fmt: str) -> None:
    target = path_for(tmp_path, fmt)
    before = unrelated_folder(target)
    with pytest.raises(ForeignTargetError, match="directory") as info:
        save(target, NEW, fmt, overwrite=True)
    assert str(target) in str(info.value)
    assert TMP_TAG not in str(info.value)
    # the RosettaSciIO-style writer replaces by default: refused the same way
    with pytest.raises(ForeignTargetError):
        getattr(lazyio, fmt).file_writer(str(target), {"data": NEW, "axes": AXES})
    assert snapshot(target) == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwrite_refuses_a_file_of_another_kind(tmp_path: Path, fmt: str) -> None:
    target = path_for(tmp_path, fmt)
    target.write_bytes(b"my notes, not a data file\n" * 10)
    with pytest.raises(ForeignTargetError, match=f"not a {fmt} file"):
        save(target, NEW, fmt, overwrite=True)
    assert target.read_bytes() == b"my notes, not a data file\n" * 10
    other = "npy" if fmt != "npy" else "hspy"  # a real file of another format
    path = tmp_path / "other"
    save(path, OLD, other)
    before = snapshot(path)
    with pytest.raises(ForeignTargetError):
        save(path, NEW, fmt, overwrite=True)
    assert snapshot(path) == before
    assert leftovers(tmp_path) == []


def test_overwrite_refuses_the_working_and_home_directories(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    before = unrelated_folder(work)
    (work / ".zgroup").write_text('{"zarr_format": 2}')  # even if it looks like a store
    before = snapshot(work)
    monkeypatch.chdir(work)
    for target in (".", str(work), str(tmp_path), "/"):
        with pytest.raises(ForeignTargetError, match="working directory"):
            save(target, NEW, "zspy", overwrite=True)
    monkeypatch.setenv("HOME", str(work))
    with pytest.raises(ForeignTargetError):
        save(os.path.expanduser("~"), NEW, "zspy", overwrite=True)
    assert snapshot(work) == before
    assert leftovers(work) == []
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwrite_refuses_links_fifos_and_devices(tmp_path: Path, fmt: str) -> None:
    real = path_for(tmp_path, fmt, "elsewhere")
    save(real, OLD, fmt)
    before = snapshot(real)
    link = path_for(tmp_path, fmt, "link")
    link.symlink_to(real)
    fifo = path_for(tmp_path, fmt, "fifo")
    os.mkfifo(fifo)
    device = path_for(tmp_path, fmt, "device")
    os.mknod(device, 0o600 | 0o020000, os.makedev(1, 3))  # a character device: /dev/null
    for target, what in ((link, "symbolic link"), (fifo, "FIFO"), (device, "device")):
        with pytest.raises(ForeignTargetError, match=what):
            save(target, NEW, fmt, overwrite=True)
    assert os.readlink(link) == str(real)
    assert snapshot(real) == before
    assert leftovers(tmp_path) == []


def test_overwrite_refuses_a_zarr_store_holding_other_files(tmp_path: Path) -> None:
    target = tmp_path / "a.zspy"
    save(target, OLD, "zspy")
    (target / "README.txt").write_text("notes")
    before = snapshot(target)
    with pytest.raises(ForeignTargetError, match=r"README\.txt"):
        save(target, NEW, "zspy", overwrite=True)
    assert snapshot(target) == before
    (target / "README.txt").unlink()
    save(target, NEW, "zspy", overwrite=True)  # a store of its own: replaced
    np.testing.assert_array_equal(read(target), NEW)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------- overwrite: S3 refusals


@pytest.fixture
def s3(s3_server: Any) -> tuple[Any, dict[str, Any], str]:
    options = s3_server.storage_options
    fs = fsspec.filesystem("s3", **options)
    return fs, options, s3_server.bucket


def test_s3_overwrite_never_touches_the_bucket_or_unrelated_objects(s3: Any) -> None:
    fs, options, bucket = s3
    keep = f"{bucket}/unrelated-{os.getpid()}.txt"
    fs.pipe(keep, b"precious")
    prefix = f"{bucket}/project-{os.getpid()}"
    fs.pipe({f"{prefix}/notes.txt": b"notes", f"{prefix}/raw/scan.bin": b"scan"})
    for url in (f"s3://{bucket}", f"s3://{prefix}"):
        for fmt in ("zspy", "npy", "hspy"):
            with pytest.raises(ForeignTargetError):
                save(url, NEW, fmt, overwrite=True, storage_options=options)
    fs.invalidate_cache()
    assert fs.cat(keep) == b"precious"
    assert sorted(fs.find(prefix)) == [f"{prefix}/notes.txt", f"{prefix}/raw/scan.bin"]
    obj = f"s3://{bucket}/not-npy-{os.getpid()}.npy"
    fs.pipe(obj[5:], b"plain text")
    with pytest.raises(ForeignTargetError, match="not a npy file"):
        save(obj, NEW, "npy", overwrite=True, storage_options=options)
    assert fs.cat(obj[5:]) == b"plain text"


@pytest.mark.parametrize("fmt", ["hspy", "npy", "usid"])
def test_s3_verify_failure_keeps_the_previous_version(s3: Any, fmt: str) -> None:
    """verify=True checks the temporary (a local file uploaded afterwards, or a temporary
    object moved afterwards) before it replaces the target: a copy that fails never
    replaces the previous version."""
    from lazyio.errors import VerificationError

    fs, options, bucket = s3
    url = f"s3://{bucket}/verify-{os.getpid()}/a{get_plugin(fmt).extensions[0]}"
    save(url, OLD, fmt, storage_options=options)

    def noisy(x: np.ndarray) -> np.ndarray:
        return np.random.default_rng().random(x.shape).astype("f4")

    bad = da.from_array(NEW, chunks=(2, 6, 10)).map_blocks(noisy, dtype="f4")
    with pytest.raises(VerificationError) as info:
        save(url, bad, fmt, overwrite=True, verify=True, storage_options=options)
    assert url in str(info.value)
    assert TMP_TAG not in str(info.value)
    fs.invalidate_cache()
    np.testing.assert_array_equal(read(url, storage_options=options), OLD)
    assert [k for k in fs.find(f"{bucket}/verify-{os.getpid()}") if TMP_TAG in k] == []


def test_s3_zarr_store_replacement_removes_only_its_own_keys(s3: Any) -> None:
    fs, options, bucket = s3
    url = f"s3://{bucket}/replace-{os.getpid()}/a.zspy"
    beside = f"{bucket}/replace-{os.getpid()}/a.zspy.notes"  # shares the name's prefix
    fs.pipe(beside, b"keep me")
    save(url, OLD, "zspy", storage_options=options)
    fs.invalidate_cache()
    fs.pipe(url[5:] + "/Experiments/__unnamed__/README", b"foreign")
    with pytest.raises(ForeignTargetError, match="README"):
        save(url, NEW, "zspy", overwrite=True, storage_options=options)
    fs.rm(url[5:] + "/Experiments/__unnamed__/README")
    fs.invalidate_cache()
    save(url, NEW, "zspy", overwrite=True, storage_options=options)
    np.testing.assert_array_equal(read(url, storage_options=options), NEW)
    fs.invalidate_cache()
    assert fs.cat(beside) == b"keep me"


# --------------------------------------------------------------- remote .zspy commit marker


def failing_source(fail_at_block: int) -> da.Array:
    """A dask array of NEW's shape whose block ``fail_at_block`` raises."""
    blocks = []
    for i in range(4):
        def make(i: int = i) -> np.ndarray:
            if i == fail_at_block:
                raise RuntimeError("source lost half-way")
            return NEW[i:i + 1]
        blocks.append(da.from_delayed(dask.delayed(make)(), (1, 6, 10), NEW.dtype))
    return da.concatenate(blocks)


def test_s3_zspy_that_failed_half_way_never_loads_as_complete(s3: Any) -> None:
    fs, options, bucket = s3
    for replacing in (False, True):
        url = f"s3://{bucket}/half-{os.getpid()}-{replacing}/a.zspy"
        if replacing:
            save(url, OLD, "zspy", storage_options=options)
        with dask.config.set(scheduler="synchronous"), \
                pytest.raises(RuntimeError, match="half-way"):
            lazyio.save(url, {"data": failing_source(2), "axes": AXES}, format="zspy",
                        overwrite=True, chunks=(1, 6, 10), storage_options=options,
                        show_progressbar=False)
        fs.invalidate_cache()
        assert fs.find(url[5:]), "chunks were written before the failure"
        with pytest.raises(LazyioError):
            read(url, storage_options=options)
        # the unfinished store is recognised as lazyio's own and replaced
        save(url, NEW, "zspy", overwrite=True, storage_options=options)
        np.testing.assert_array_equal(read(url, storage_options=options), NEW)
        fs.invalidate_cache()
        assert not [k for k in fs.find(url[5:]) if "lazyio" in k.rpartition("/")[2]]


# ----------------------------------------------------------- missing and read-only folders


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_missing_parent_directory_is_refused_alike(tmp_path: Path, fmt: str) -> None:
    target = path_for(tmp_path / "no" / "such", fmt)
    for write in (lambda: save(target, OLD, fmt),
                  lambda: getattr(lazyio, fmt).file_writer(str(target),
                                                           {"data": OLD, "axes": AXES})):
        with pytest.raises(MissingDirectoryError, match="does not exist") as info:
            write()
        assert isinstance(info.value, FileNotFoundError)
        assert str(target) in str(info.value)
    assert os.listdir(tmp_path) == []  # zspy does not create it either


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Any:
    folder = tmp_path / "ro"
    folder.mkdir()
    save(path_for(folder, "npy"), OLD, "npy")
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)],
                          check=False, capture_output=True)
    if done.returncode:
        done = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)],
                              check=False, capture_output=True)
    if done.returncode or (os.access(folder, os.W_OK) and _writable(folder)):
        subprocess.run(["umount", str(folder)], check=False, capture_output=True)
        pytest.skip(f"cannot mount a read-only folder here: {done.stderr!r}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _writable(folder: Path) -> bool:
    try:
        (folder / "probe").write_bytes(b"")
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_read_only_directory_gives_an_error_naming_the_target(
        read_only_dir: Path, fmt: str) -> None:
    target = path_for(read_only_dir, fmt, "new")
    with pytest.raises(LazyioError) as info:
        save(target, OLD, fmt)
    assert isinstance(info.value, OSError)
    assert str(target) in str(info.value)
    assert TMP_TAG not in str(info.value)


# ----------------------------------------------------------------------- concurrent writers


def _child_save(path: str, fmt: str, value: float, env: dict[str, str]) -> None:
    os.environ.update(env)
    dask.config.set(scheduler="synchronous")
    try:
        save(path, OLD + value, fmt, overwrite=True)
    except TargetBusyError:
        os._exit(3)
    os._exit(0)


def _start(path: Path, fmt: str, value: float, **env: str) -> Any:
    ctx = multiprocessing.get_context("fork")  # starts in ms, lazyio already imported
    child = ctx.Process(target=_child_save, args=(str(path), fmt, value, env))
    child.start()
    return child


def _wait_for(path: Path, child: Any) -> None:
    while not path.exists():
        assert child.is_alive(), f"the writer ended early (exit code {child.exitcode})"
        child.join(0.01)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["zspy", "npy"])
def test_a_second_writer_is_refused_and_never_removes_a_live_temporary(
        tmp_path: Path, fmt: str) -> None:
    path = path_for(tmp_path, fmt)
    save(path, OLD, fmt)
    release = tmp_path / "release"
    first = _start(path, fmt, 1, LAZYIO_TEST_PAUSE_AT="written",
                   LAZYIO_TEST_PAUSE_FILE=str(release))
    try:
        _wait_for(Path(str(release) + ".reached"), first)
        [live] = [n for n in os.listdir(tmp_path) if TMP_TAG in n]
        assert atomic.clean_debris(path) == []  # its owner is alive: kept
        second = _start(path, fmt, 2)  # another real process
        second.join(60)
        assert second.exitcode == 3  # TargetBusyError
        with pytest.raises(TargetBusyError, match=f"pid {first.pid}"):
            save(path, OLD + 3, fmt, overwrite=True)  # and this process
        assert live in os.listdir(tmp_path)
        np.testing.assert_array_equal(read(path), OLD)
    finally:
        release.write_text("")
        first.join(60)
    assert first.exitcode == 0
    np.testing.assert_array_equal(read(path), OLD + 1)  # one complete version
    assert leftovers(tmp_path) == []


@pytest.mark.timeout(120)
def test_a_dead_writer_neither_blocks_nor_leaves_debris(tmp_path: Path) -> None:
    path = path_for(tmp_path, "zspy")
    save(path, OLD, "zspy")
    child = _start(path, "zspy", 1, LAZYIO_TEST_KILL_AT="written")
    child.join(60)
    assert child.exitcode == KILL_EXIT_CODE
    assert any(TMP_TAG in n for n in os.listdir(tmp_path))  # it died holding a temporary
    np.testing.assert_array_equal(read(path), OLD)
    save(path, NEW, "zspy", overwrite=True)  # the kernel released its lock
    np.testing.assert_array_equal(read(path), NEW)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ kills at every step


def _kill_at(step: str, write: Callable[[], None]) -> int:
    def run() -> None:
        os.environ[atomic.KILL_ENV] = step
        dask.config.set(scheduler="synchronous")
        write()
        os._exit(0)

    child = multiprocessing.get_context("fork").Process(target=run)
    child.start()
    child.join(60)
    return int(child.exitcode or 0)


CASES = {
    # name: (format, make the old version, write the new one, steps to kill at, read)
    "zspy-directory": ("zspy", {}, {"overwrite": True},
                       ["written", "old-aside", "swapped", "committed"]),
    "zspy-zip-over-directory": ("zspy", {}, {"overwrite": True, "store_type": "zip"},
                                ["written", "old-aside", "swapped", "committed"]),
    "npy": ("npy", {}, {"overwrite": True}, ["written", "swapped", "committed"]),
    "hspy": ("hspy", {}, {"overwrite": True}, ["written", "swapped", "committed"]),
    "hspy-metadata-update": ("hspy", {}, {"write_dataset": False},
                             ["copied", "written", "swapped", "committed"]),
    # a .zspy directory: the metadata tree is staged and moved in under a journal; a kill
    # after the journal (and half-way through the moves) is finished by the next load
    "zspy-directory-metadata-update": ("zspy", {}, {"write_dataset": False},
                                       ["copied", "written", "journaled", "moving",
                                        "swapped", "committed"]),
    "usid-append": ("usid", {"append": True}, {"append": True},
                    ["copied", "written", "swapped", "committed"]),
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", list(CASES))
def test_a_kill_at_any_commit_step_leaves_the_old_or_the_new_version(
        tmp_path: Path, case: str) -> None:
    fmt, first, second, steps = CASES[case]
    path = path_for(tmp_path, fmt)
    update = second.get("write_dataset") is False
    new_meta = {"General": {"notes": "new"}}
    for step in steps:
        lazyio.close_all()
        if os.path.isdir(path):
            atomic.remove_path(str(path))
        elif path.exists():
            path.unlink()
        save(path, OLD, fmt, **first)
        old_state = lazyio.load(path, lazy=False)
        old_bytes = snapshot(path)
        signal = {"data": OLD if update else NEW, "axes": AXES, "metadata": new_meta}
        code = _kill_at(step, lambda signal=signal: lazyio.save(
            path, signal, format=fmt, show_progressbar=False, **second))
        assert code == KILL_EXIT_CODE, f"{case}: never reached step {step!r}"
        # the next lazyio call finds the old or the new version, complete
        got = lazyio.load(path, lazy=False)
        lazyio.close_all()
        notes = [s["metadata"].get("General", {}).get("notes") for s in got]
        if fmt == "usid":
            assert len(got) in (1, 2), step
            np.testing.assert_array_equal(got[0]["data"], OLD)
            if len(got) == 2:
                np.testing.assert_array_equal(got[1]["data"], NEW)
            assert len(got) == (1 if step in ("copied", "written") else 2), step
        elif update:
            np.testing.assert_array_equal(got[0]["data"], OLD)
            old_notes = old_state[0]["metadata"].get("General", {}).get("notes")
            before_swap = step in ("copied", "written")
            want = old_notes if before_swap else "new"
            assert notes[0] == want, f"{case}: kill at {step!r}"
            if before_swap:  # not one byte of the old version changed
                assert snapshot(path) == old_bytes, f"{case}: kill at {step!r}"
        else:
            assert len(got) == 1
            ok_old = np.array_equal(got[0]["data"], OLD)
            ok_new = np.array_equal(got[0]["data"], NEW)
            assert ok_old or ok_new, f"{case}: kill at {step!r} left neither version"
            if step in ("written", "old-aside"):
                assert ok_old, step
            else:
                assert ok_new, step
        # and the next write succeeds and leaves nothing behind
        lazyio.save(path, {"data": NEW, "axes": AXES}, format=fmt, overwrite=True,
                    show_progressbar=False)
        np.testing.assert_array_equal(read(path), NEW)
        assert leftovers(tmp_path) == [], f"{case}: debris after a kill at {step!r}"


def test_load_restores_a_directory_whose_writer_died_between_the_renames(
        tmp_path: Path) -> None:
    path = path_for(tmp_path, "zspy")
    save(path, OLD, "zspy")
    code = _kill_at("old-aside", lambda: save(path, NEW, "zspy", overwrite=True))
    assert code == KILL_EXIT_CODE
    assert not path.exists()  # the target is gone ...
    assert [n for n in os.listdir(tmp_path) if OLD_TAG in n]  # ... but kept aside
    np.testing.assert_array_equal(read(path), OLD)  # load puts it back
    assert path.is_dir()


def test_the_hooks_do_nothing_unless_asked() -> None:
    # the hooks cost nothing and do nothing unless the environment asks for them
    assert atomic.KILL_ENV not in os.environ
    assert atomic.PAUSE_ENV not in os.environ
    atomic.checkpoint("written")


def test_existing_target_without_overwrite_is_still_refused(tmp_path: Path) -> None:
    path = path_for(tmp_path, "npy")
    save(path, OLD, "npy")
    with pytest.raises(TargetExistsError, match="overwrite=True"):
        save(path, NEW, "npy")
    assert not isinstance(TargetExistsError("x"), WriteError)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.timeout(120)
def test_usid_append_while_another_process_reads_the_file(tmp_path: Path) -> None:
    # h5py locks an open file: appending in place raised a bare BlockingIOError. The
    # append now writes a copy renamed over the file; the reader keeps the old version.
    path = path_for(tmp_path, "usid")
    save(path, OLD, "usid")
    reader = subprocess.Popen(
        [sys.executable, "-c",
         ("import sys, h5py\n"
         f"f = h5py.File({str(path)!r}, 'r')\n"
         "print('open', flush=True)\n"
         "sys.stdin.read()\n"
         "print(len(f), flush=True)\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "open"
        save(path, NEW, "usid", append=True)
        got = lazyio.load(path, lazy=False)
        lazyio.close_all()
        assert len(got) == 2
        np.testing.assert_array_equal(got[1]["data"], NEW)
    finally:
        out, _ = reader.communicate("", timeout=60)
    assert out.strip() == "1"  # the reader saw its version to the end


def test_zspy_directory_metadata_update_leaves_the_data_chunks_alone(
        tmp_path: Path) -> None:
    # the staged update copies and moves the metadata tree only: every data chunk file
    # is the same inode afterwards, never copied, and nothing is left beside the store
    path = path_for(tmp_path, "zspy")
    lazyio.save(path, {"data": OLD, "axes": AXES}, chunks=(1, 6, 10),
                show_progressbar=False)
    chunks = {p: p.stat().st_ino for p in (path / "Experiments").rglob("data/*")
              if not p.name.startswith(".")}
    assert len(chunks) == 4
    lazyio.save(path, {"data": OLD, "axes": AXES, "metadata": {"General": {"notes": "n"}}},
                write_dataset=False, show_progressbar=False)
    assert {p: p.stat().st_ino for p in chunks} == chunks
    got = lazyio.load(path, lazy=False)[0]
    lazyio.close_all()
    assert got["metadata"]["General"]["notes"] == "n"
    np.testing.assert_array_equal(got["data"], OLD)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------- a lease for remote targets


def _child_remote_save(url: str, options: dict[str, Any], value: float,
                       env: dict[str, str]) -> None:
    os.environ.update(env)
    dask.config.set(scheduler="synchronous")
    try:
        save(url, OLD + value, "zspy", overwrite=True, storage_options=options)
    except TargetBusyError:
        os._exit(3)
    os._exit(0)


def _start_remote(url: str, options: dict[str, Any], value: float, **env: str) -> Any:
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_child_remote_save, args=(url, options, value, env))
    child.start()
    return child


@pytest.mark.timeout(120)
def test_s3_second_writer_is_refused_by_the_lease(s3: Any, tmp_path: Path) -> None:
    from lazyio.backends.lease import LEASE_TAG

    fs, options, bucket = s3
    url = f"s3://{bucket}/lease-{os.getpid()}/a.zspy"
    save(url, OLD, "zspy", storage_options=options)
    release = tmp_path / "release"
    first = _start_remote(url, options, 1, LAZYIO_TEST_PAUSE_AT="leased",
                          LAZYIO_TEST_PAUSE_FILE=str(release))
    try:
        _wait_for(Path(str(release) + ".reached"), first)
        second = _start_remote(url, options, 2)  # another real process
        second.join(60)
        assert second.exitcode == 3  # TargetBusyError
        with pytest.raises(TargetBusyError, match=f"a.zspy: another process.*pid {first.pid}"):
            save(url, OLD + 3, "zspy", overwrite=True, storage_options=options)
        np.testing.assert_array_equal(read(url, storage_options=options), OLD)
    finally:
        release.write_text("")
        first.join(60)
    assert first.exitcode == 0
    np.testing.assert_array_equal(read(url, storage_options=options), OLD + 1)
    fs.invalidate_cache()
    assert not [k for k in fs.find(f"{bucket}/lease-{os.getpid()}") if LEASE_TAG in k]


@pytest.mark.timeout(120)
def test_s3_lease_of_a_dead_writer_expires(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from lazyio.backends.lease import LEASE_ENV, lease_name
    from lazyio.location import Location

    fs, options, bucket = s3
    url = f"s3://{bucket}/lease-dead-{os.getpid()}/a.zspy"
    save(url, OLD, "zspy", storage_options=options)
    monkeypatch.setenv(LEASE_ENV, "3")
    child = _start_remote(url, options, 1, LAZYIO_TEST_KILL_AT="leased")
    child.join(60)
    assert child.exitcode == KILL_EXIT_CODE  # died holding the lease
    fs.invalidate_cache()
    lease = json.loads(fs.cat_file(lease_name(Location(url, options))))
    assert lease["pid"] == child.pid
    if time.time() < lease["expires"] - 1:  # (a loaded machine may be slower than that)
        with pytest.raises(TargetBusyError, match=f"pid {child.pid}"):
            save(url, NEW, "zspy", overwrite=True, storage_options=options)
    deadline = time.monotonic() + 15
    while True:  # it expires 3 s after it was taken; no renewal comes
        try:
            save(url, NEW, "zspy", overwrite=True, storage_options=options)
            break
        except TargetBusyError:
            assert time.monotonic() < deadline, "the dead writer's lease never expired"
            time.sleep(0.2)
    np.testing.assert_array_equal(read(url, storage_options=options), NEW)


@pytest.mark.timeout(60)
def test_s3_lease_is_renewed_during_a_long_write(s3: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # a write longer than the lease's lifetime keeps it: renewed from a thread
    from lazyio.backends.lease import LEASE_ENV, lease_name, remote_lease
    from lazyio.location import Location

    fs, options, bucket = s3
    monkeypatch.setenv(LEASE_ENV, "0.6")
    target = Location(f"s3://{bucket}/lease-long-{os.getpid()}/a.zspy", options)
    with remote_lease(target):
        first = fs.cat_file(lease_name(target))
        time.sleep(1.5)  # over two lifetimes
        assert fs.cat_file(lease_name(target)) != first  # renewed
        with pytest.raises(atomic.TargetBusy), remote_lease(target):
            pass
    fs.invalidate_cache()
    assert not fs.exists(lease_name(target))  # released
