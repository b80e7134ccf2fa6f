"""A full disk is an error naming the target, never a crash, a lost file or debris.

Each write runs in a forked child process on a small tmpfs that the test mounts (the suite runs
as root): a SIGBUS (a memory-mapped .npy payload that cannot get its pages) or a SIGSEGV
(the HDF5 library after a failed write) fails the test instead of killing pytest. The
previous version of the target must load unchanged afterwards, and nothing but the
target may be left in the folder.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest

import lazyio
from lazyio.errors import DiskFullError

SIZE_MB = 8

def _child(fmt: str, target: str, source: str, options: dict[str, Any], report: str,
           metadata: dict[str, Any] | None = None) -> None:
    """Runs in a forked child: write more than the file system holds."""
    import dask

    # no thread pool: one made by the parent before the fork has no threads here
    dask.config.set(scheduler="synchronous")
    shape = (48, 256, 256)  # 12 MiB of float32
    if metadata is not None:  # a metadata-only update of the existing file
        data: Any = np.random.default_rng(1).random((5, 256, 256), dtype="f4")
    elif source == "dask":
        data = da.random.random(shape, chunks=(4, 256, 256)).astype("f4")
    else:
        data = np.random.default_rng(0).random(shape, dtype="f4")
    try:
        lazyio.save(target, {"data": data, "metadata": metadata or {}}, format=fmt,
                    show_progressbar=False, **options)
    except DiskFullError as err:
        Path(report).write_text(f"DiskFullError: {err}")
        del err
        _exit_like_python(0)
    _exit_like_python(1)


def _exit_like_python(code: int) -> None:
    # A forked child ends with os._exit, which skips the HDF5 library's shutdown, where a
    # file left open by a failed write crashed the process: run that shutdown here.
    import ctypes
    import gc

    import h5py.h5

    gc.collect()
    ctypes.CDLL(h5py.h5.__file__).H5close()
    os._exit(code)


def run_child(*args: Any, **kwargs: Any) -> tuple[int, str]:
    """Fork (lazyio is imported already: ms, not seconds), wait, return the exit code
    (negative: killed by that signal; -999: still running after 100 s, then killed) and
    the child's report."""
    report = Path(tempfile.mkdtemp()) / "report"
    child = multiprocessing.get_context("fork").Process(
        target=_child, args=(*args, str(report)), kwargs=kwargs)
    child.start()
    child.join(100)
    hung = child.exitcode is None
    if hung:  # end it, and fail
        child.kill()
        child.join()
    text = report.read_text() if report.exists() else ""
    shutil.rmtree(report.parent)
    return (-999 if hung else int(child.exitcode or 0)), text


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "disk"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs",
                           str(folder)], capture_output=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a {SIZE_MB} MB tmpfs (needs root): {done.stderr!r}")
    try:
        yield folder
    finally:
        lazyio.close_all()
        subprocess.run(["umount", "-l", str(folder)], check=True)


OLD = np.arange(4 * 6 * 10, dtype="f4").reshape(4, 6, 10)

CASES = {
    # name: (format, suffix, source, save options)
    "npy-dask": ("npy", ".npy", "dask", {}),
    "npy-numpy": ("npy", ".npy", "numpy", {}),
    "hspy": ("hspy", ".hspy", "dask", {"compression": None}),
    "zspy-directory": ("zspy", ".zspy", "dask", {"compressor": None}),
    "zspy-zip": ("zspy", ".zspy", "dask", {"compressor": None, "store_type": "zip"}),
    "usid": ("usid", ".h5", "dask", {}),
    "usid-numpy": ("usid", ".h5", "numpy", {}),
    "usid-append": ("usid", ".h5", "dask", {"append": True}),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_a_full_disk_is_an_error_naming_the_target(small_disk: Path, case: str) -> None:
    fmt, suffix, source, extra = CASES[case]
    target = small_disk / f"a{suffix}"
    lazyio.save(target, OLD, format=fmt, show_progressbar=False,
                **({"store_type": "zip"} if "store_type" in extra else {}))
    lazyio.close_all()
    options = dict(extra)
    if not options.get("append"):
        options["overwrite"] = True
    code, message = run_child(fmt, str(target), source, options)
    assert code == 0, f"{case}: exit code {code} (negative: killed by that signal)"
    assert message.startswith("DiskFullError:")
    assert str(target) in message
    assert ".lazyio-" not in message  # names the target, not a temporary
    [out] = lazyio.load(target, lazy=False)
    np.testing.assert_array_equal(out["data"], OLD)  # the previous version, intact
    assert os.listdir(small_disk) == [target.name]  # no debris


@pytest.mark.timeout(120)
def test_a_metadata_update_that_cannot_fit_keeps_the_file(small_disk: Path) -> None:
    # the update writes a copy: with no room for it, the file stays as it was
    target = small_disk / "a.hspy"
    big = np.random.default_rng(1).random((5, 256, 256), dtype="f4")  # 1.3 MB
    lazyio.save(target, big, compression=None, show_progressbar=False)
    filler = small_disk / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb") as f:  # leave less free space than the file's size
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        f.write(b"\0" * max(0, free - 512 * 1024))
    before = target.read_bytes()
    code, message = run_child("hspy", str(target), "numpy", {"write_dataset": False},
                              metadata={"General": {"notes": "new"}})
    assert code == 0, f"exit code {code} (negative: killed by that signal)"
    assert message.startswith("DiskFullError:")
    assert str(target) in message
    assert target.read_bytes() == before
    assert sorted(os.listdir(small_disk)) == sorted([target.name, filler.name])
