"""Resumable writes (``save(..., resume=True)``, ``lazyio convert --resume``).

A write is killed after its n-th journaled block (``LAZYIO_TEST_KILL_AT=chunk-<n>``, an
``os._exit`` inside lazyio, in a forked child: no timing), then resumed here; the result
is compared with an uninterrupted write, and the blocks the resumed run computes and
writes are counted.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest

import lazyio
from lazyio.backends import journal
from lazyio.backends.atomic import KILL_EXIT_CODE, LOCK_TAG
from lazyio.backends.raw.memmap import MemmapSource
from lazyio.errors import ResumeMismatchError, TargetExistsError, UnsupportedError

SHAPE = (64, 32, 16)  # 128 KiB of float32: 16 blocks of 4 x 32 x 16
READ_CHUNKS = (4, 32, 16)
BLOCKS = 16
# small dask blocks, so that the write blocks are the storage chunks (none merged)
CONFIG = {"array.chunk-size": "8KiB"}

FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    "npy": (".npy", {}),
    "hspy": (".hspy", {"chunks": READ_CHUNKS}),
    "zspy": (".zspy", {"chunks": READ_CHUNKS}),
    "zspy-zip": (".zspy", {"chunks": READ_CHUNKS, "store_type": "zip"}),
    "zspy-v3": (".zspy", {"chunks": READ_CHUNKS, "zarr_format": 3}),
    "usid": (".h5", {"chunks": (128, 16)}),
}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src.npy"
    np.save(path, np.random.default_rng(0).random(SHAPE, dtype="f4"))
    return path


def _save(src: Path, dst: Path, options: dict[str, Any], *, resume: bool = True) -> None:
    with dask.config.set(scheduler="synchronous", **CONFIG):
        signal = lazyio.load(src, chunks=READ_CHUNKS)[0]
        lazyio.save(dst, signal, resume=resume, show_progressbar=False, **options)


def _killed_child(kill_at: str, func: Any, *args: Any) -> None:
    os.environ["LAZYIO_TEST_KILL_AT"] = kill_at
    func(*args)
    os._exit(0)  # not killed: the test fails on the exit code


def _run_killed(kill_at: int, func: Any, *args: Any) -> int:
    """Run ``func(*args)`` in a forked child that dies after its ``kill_at``-th journaled
    block; return the child's exit code."""
    child = multiprocessing.get_context("fork").Process(
        target=_killed_child, args=(f"chunk-{kill_at}", func, *args))
    child.start()
    child.join(60)
    if child.exitcode is None:
        child.kill()
        child.join()
        return -999
    return int(child.exitcode)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the blocks computed and written, and the source blocks read, in this process."""
    counts = {"written": 0, "read": 0}
    write = journal._write_block
    read = MemmapSource.read_box

    def counting_write(*args: Any, **kwargs: Any) -> None:
        counts["written"] += 1
        write(*args, **kwargs)

    def counting_read(self: MemmapSource, box: tuple[slice, ...]) -> np.ndarray:
        counts["read"] += 1
        return read(self, box)

    monkeypatch.setattr(journal, "_write_block", counting_write)
    monkeypatch.setattr(MemmapSource, "read_box", counting_read)
    return counts


def _checksum(path: Path) -> str:
    data = np.asarray(lazyio.load(path, lazy=False)[0]["data"])
    return hashlib.blake2b(np.ascontiguousarray(data).tobytes()).hexdigest()


def _debris(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}"))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_killed_write_resumes_writing_only_what_was_missing(
    fmt: str, source: Path, tmp_path: Path, counted: dict[str, int]
) -> None:
    ext, options = FORMATS[fmt]
    reference = tmp_path / f"reference{ext}"
    _save(source, reference, options, resume=False)
    assert counted["read"] == BLOCKS  # one read per block: the counts below are exact
    target = tmp_path / f"out{ext}"
    kill_at = random.Random(fmt).randint(1, BLOCKS - 2)  # a seeded moment
    assert _run_killed(kill_at, _save, source, target, options) == KILL_EXIT_CODE
    assert not target.exists()
    left = _debris(tmp_path, target.name)
    assert any(n.endswith(journal.JOURNAL_SUFFIX) for n in left), left

    counted.update(written=0, read=0)
    _save(source, target, options)
    assert counted["written"] == BLOCKS - kill_at  # the rest, and only the rest
    assert counted["read"] == BLOCKS - kill_at  # skipped blocks are not even read
    assert _checksum(target) == _checksum(reference)
    if fmt == "npy":
        assert target.read_bytes() == reference.read_bytes()
    assert _debris(tmp_path, target.name) == []


def test_a_resumed_write_killed_again_resumes_again(
    source: Path, tmp_path: Path, counted: dict[str, int]
) -> None:
    _ext, options = FORMATS["zspy"]
    target = tmp_path / "out.zspy"
    assert _run_killed(3, _save, source, target, options) == KILL_EXIT_CODE
    # the second run restores 3 blocks (journaled again: chunk-1..3), writes 6, dies
    assert _run_killed(9, _save, source, target, options) == KILL_EXIT_CODE
    # killed after restoring one block: its journal is newer but holds fewer blocks, and
    # the next run continues the one with 9
    assert _run_killed(1, _save, source, target, options) == KILL_EXIT_CODE
    _save(source, target, options)
    assert counted["written"] == BLOCKS - 9
    assert _checksum(target) == hashlib.blake2b(np.load(source).tobytes()).hexdigest()
    assert _debris(tmp_path, target.name) == []


def test_a_damaged_block_of_the_interrupted_write_is_written_again(
    source: Path, tmp_path: Path, counted: dict[str, int]
) -> None:
    target = tmp_path / "out.npy"
    assert _run_killed(4, _save, source, target, {}) == KILL_EXIT_CODE
    (temporary,) = [p for p in tmp_path.iterdir()
                    if p.name.startswith(".out.npy.lazyio-tmp-") and p.suffix != ".journal"]
    lines = Path(f"{temporary}{journal.JOURNAL_SUFFIX}").read_text().splitlines()
    _index, starts, _stops, _record = json.loads(lines[1])  # the first journaled block
    data = bytearray(temporary.read_bytes())
    payload = data[len(data) - np.load(source).nbytes:]
    payload[starts[0] * 32 * 16 * 4 + 5] ^= 0xFF
    data[len(data) - len(payload):] = payload
    temporary.write_bytes(bytes(data))
    _save(source, target, {})
    assert counted["written"] == BLOCKS - 4 + 1  # the damaged block, computed again
    assert target.read_bytes() == _reference_npy(source, tmp_path)


def _reference_npy(source: Path, tmp_path: Path) -> bytes:
    reference = tmp_path / "reference.npy"
    _save(source, reference, {}, resume=False)
    return reference.read_bytes()


def test_a_changed_source_or_option_is_refused(source: Path, tmp_path: Path) -> None:
    options = {"chunks": READ_CHUNKS}
    target = tmp_path / "out.hspy"
    assert _run_killed(5, _save, source, target, options) == KILL_EXIT_CODE
    before = [n for n in _debris(tmp_path, target.name) if not n.endswith(LOCK_TAG)]
    cases = [
        ({"chunks": (8, 32, 16)}, "chunks"),
        ({**options, "compression": None}, "writer options"),
        ({**options, "format": "usid"}, "format"),
    ]
    for changed, words in cases:
        with pytest.raises(ResumeMismatchError, match=words) as err:
            _save(source, target, changed)
        assert str(target) in str(err.value)
        assert "nothing was written" in str(err.value)
    with dask.config.set(scheduler="synchronous", **CONFIG):
        signal = lazyio.load(source, chunks=READ_CHUNKS)[0]
        for data, words in ((signal["data"][:32], "shape"),
                            (signal["data"].astype("f8"), "dtype"),
                            (signal["data"] + 1, "source data")):
            changed_signal = signal if words != "shape" else {}
            with pytest.raises(ResumeMismatchError, match=words):
                lazyio.save(target, {**changed_signal, "data": data}, resume=True,
                            show_progressbar=False, **options)
        with pytest.raises(ResumeMismatchError, match="metadata"):
            lazyio.save(target, {**signal, "metadata": {"General": {"title": "other"}}},
                        resume=True, show_progressbar=False, **options)
    # the source file itself changed (same shape and dtype)
    np.save(tmp_path / "src.npy", np.zeros(SHAPE, dtype="f4"))
    with pytest.raises(ResumeMismatchError, match="source data"):
        _save(source, target, options)
    assert _debris(tmp_path, target.name) == before  # the interrupted write is kept
    _save(source, target, options, resume=False)  # a normal write starts over, cleans up
    assert _debris(tmp_path, target.name) == []
    assert not lazyio.load(target, lazy=False)[0]["data"].any()


def test_resume_with_nothing_to_resume_is_a_normal_write(
    source: Path, tmp_path: Path, counted: dict[str, int]
) -> None:
    target = tmp_path / "out.zspy"
    _save(source, target, {"chunks": READ_CHUNKS})
    assert counted["written"] == BLOCKS
    assert _checksum(target) == hashlib.blake2b(np.load(source).tobytes()).hexdigest()
    assert _debris(tmp_path, target.name) == []
    with pytest.raises(TargetExistsError):  # resuming is no licence to replace
        _save(source, target, {"chunks": READ_CHUNKS})


def test_resume_is_refused_where_nothing_can_be_resumed(tmp_path: Path) -> None:
    data = np.zeros((4, 4), dtype="f4")
    with pytest.raises(UnsupportedError, match="local target"):
        lazyio.save({}, data, format="zspy", resume=True, show_progressbar=False)
    lazyio.save(tmp_path / "a.zspy", data, show_progressbar=False)
    with pytest.raises(UnsupportedError, match="update"):
        lazyio.save(tmp_path / "a.zspy", data, write_dataset=False, resume=True,
                    show_progressbar=False)
    with pytest.raises(TypeError, match="resume"):
        lazyio.save(tmp_path / "b.zspy", data, resume="yes")


def _convert(src: Path, dst: Path) -> None:
    with dask.config.set(scheduler="synchronous", **CONFIG):
        lazyio.convert(src, dst, chunks=READ_CHUNKS, resume=True, show_progressbar=False)


def test_cli_convert_resume(source: Path, tmp_path: Path, counted: dict[str, int],
                            capsys: pytest.CaptureFixture[str]) -> None:
    from lazyio.cli import main

    target = tmp_path / "out.hspy"
    assert _run_killed(2, _convert, source, target) == KILL_EXIT_CODE
    with dask.config.set(**CONFIG):
        code = main(["convert", str(source), str(target), "--chunks", "4,32,16", "--resume",
                     "--no-progress", "--scheduler", "synchronous"])
    assert code == 0, capsys.readouterr().err
    assert counted["written"] == BLOCKS - 2
    assert _checksum(target) == hashlib.blake2b(np.load(source).tobytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["npy", "hspy"])
def test_resume_on_a_process_cluster(fmt: str, source: Path, tmp_path: Path, client: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """HDF5 chunks are encoded on the workers and written (and journaled) by the process
    holding the file; .npy blocks are written and journaled by the workers."""
    ext, options = FORMATS[fmt]
    target = tmp_path / f"out{ext}"
    assert _run_killed(5, _save, source, target, options) == KILL_EXIT_CODE
    runs: list[journal.Resume] = []
    store = journal.Resume.store

    def recorded(self: journal.Resume, *args: Any) -> None:
        runs.append(self)
        store(self, *args)

    monkeypatch.setattr(journal.Resume, "store", recorded)
    with dask.config.set(**CONFIG):
        signal = lazyio.load(source, chunks=READ_CHUNKS)[0]
        lazyio.save(target, signal, resume=True, show_progressbar=False, **options)
    assert [(r.restored, r.written) for r in runs] == [(5, BLOCKS - 5)]
    assert _checksum(target) == hashlib.blake2b(np.load(source).tobytes()).hexdigest()
    assert _debris(tmp_path, target.name) == []


def test_a_write_interrupted_by_ctrl_c_resumes_in_the_same_process(
    source: Path, tmp_path: Path, counted: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.hspy"
    options = FORMATS["hspy"][1]
    record = journal.Journal.record
    seen = []

    def interrupted(self: journal.Journal, *args: Any) -> None:
        record(self, *args)
        seen.append(1)
        if len(seen) == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(journal.Journal, "record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _save(source, target, options)
    monkeypatch.setattr(journal.Journal, "record", record)
    assert not target.exists()
    counted.update(written=0)
    _save(source, target, options)
    assert counted["written"] == BLOCKS - 6
    assert _checksum(target) == hashlib.blake2b(np.load(source).tobytes()).hexdigest()
    assert _debris(tmp_path, target.name) == []


def test_resume_with_compute_false_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    target = tmp_path / "deferred.npy"
    with pytest.raises(UnsupportedError, match="resume=True cannot be combined"):
        lazyio.save(target, np.zeros((4, 4)), resume=True, compute=False)
    assert list(tmp_path.iterdir()) == []
