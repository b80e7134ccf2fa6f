"""Bad input: every failure is a lazyio error that names the file and the problem, and no
write leaves a half-written target or temporary debris behind.

"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import dask.array as da
import h5py
import numpy as np
import pytest
from formats_table import EXT, HYPERSPY, HYPERSPY_KINDS, NAMES

import lazyio
from lazyio.errors import (
    CorruptChunkError,
    FormatError,
    LazyioError,
    SourceNotFoundError,
    TargetExistsError,
    UnknownFormatError,
    UnsupportedError,
)

pytestmark = pytest.mark.timeout(30)

FORMATS = pytest.mark.parametrize("fmt", HYPERSPY)
LAZY = pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "eager"])
DATA = np.arange(24.0).reshape(2, 3, 4)
EXPERIMENT = "Experiments/__unnamed__"


def save(path: Path, data: Any = DATA, **kwds: Any) -> Path:
    lazyio.save(path, data, show_progressbar=False, **kwds)
    return path


def load_and_compute(path: Path, lazy: bool, **kwds: Any) -> list[np.ndarray]:
    """Open and read every byte of data (the error may come at either step)."""
    signals = lazyio.load(path, lazy=lazy, **kwds)
    return [
        s["data"].compute() if isinstance(s["data"], da.Array) else np.asarray(s["data"])
        for s in signals
    ]


def assert_lazyio_error(info: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    err = info.value
    assert isinstance(err, LazyioError), f"{type(err).__name__}: {err}"
    message = str(err)
    assert str(path) in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def snapshot(path: Path) -> dict[str, bytes]:
    """Every byte of a file, or of every file below a directory."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def debris(folder: Path) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(".") and ".lazyio-tmp-" in n]


# ------------------------------------------------------------------------------ not a file


@FORMATS
@pytest.mark.parametrize("explicit", [False, True], ids=["detect", "format="])
def test_not_hdf5_or_zarr(
    tmp_path: Path, rng: np.random.Generator, fmt: str, explicit: bool
) -> None:
    path = tmp_path / f"junk.{fmt}"
    if fmt == "hspy":
        path.write_bytes(rng.bytes(4096))
    else:
        path.write_text("this is a text file, not a Zarr store\n")
    with pytest.raises(FormatError) as info:
        lazyio.load(path, format=fmt if explicit else None)
    assert_lazyio_error(info, path)
    assert isinstance(info.value, ValueError)


def test_empty_directory_named_zspy(tmp_path: Path) -> None:
    path = tmp_path / "empty.zspy"
    path.mkdir()
    with pytest.raises(FormatError) as info:
        lazyio.load(path)
    assert_lazyio_error(info, path, "Zarr")


def test_empty_file_named_hspy(tmp_path: Path) -> None:
    path = tmp_path / "empty.hspy"
    path.write_bytes(b"")
    with pytest.raises(FormatError) as info:
        lazyio.load(path, format="hspy")
    assert_lazyio_error(info, path, "HDF5")


@FORMATS
def test_container_that_is_not_hyperspy(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"other.{fmt}"
    if fmt == "hspy":
        with h5py.File(path, "w") as f:
            f["measurement"] = np.arange(10)
    else:
        import zarr

        group = zarr.open_group(str(path), mode="w", zarr_format=2)
        group.create_array("measurement", shape=(10,), dtype="i8")[...] = np.arange(10)
    with pytest.raises(FormatError) as info:
        lazyio.load(path, format=fmt)
    assert_lazyio_error(info, path, "not a HyperSpy file")


@pytest.mark.parametrize("name", ["other.h5", "other.hdf5", "other.hspy", "other.bin"])
def test_hdf5_not_hyperspy_detected(tmp_path: Path, name: str) -> None:
    """Without format=: refused by whichever plugin the extension picks, or by none."""
    path = tmp_path / name
    with h5py.File(path, "w") as f:
        f["measurement"] = np.arange(10)
    with pytest.raises(FormatError) as info:
        lazyio.load(path)
    assert_lazyio_error(info, path)


# ------------------------------------------------------------------------------ truncated


@pytest.mark.parametrize("cut", [0.5, 0.9, 100, -1], ids=["50%", "90%", "100B", "last-byte"])
@pytest.mark.parametrize("kind", ["hspy", "zspy-zip"])
@LAZY
def test_truncated_file(tmp_path: Path, kind: str, cut: float, lazy: bool) -> None:
    fmt = kind[:4]
    whole = save(tmp_path / f"whole.{fmt}", **({"store_type": "zip"} if kind == "zspy-zip"
                                              else {}))
    raw = whole.read_bytes()
    size = int(len(raw) * cut) if isinstance(cut, float) else cut % len(raw)
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(raw[:size])
    with pytest.raises(LazyioError) as info:
        load_and_compute(path, lazy, format=fmt)
    assert_lazyio_error(info, path)


ZSPY_PIECES = [
    ".zgroup",
    ".zattrs",
    f"{EXPERIMENT}/data/.zarray",
    f"{EXPERIMENT}/metadata/.zattrs",
    f"{EXPERIMENT}/data/0/0/0",
]


@pytest.mark.parametrize("piece", ZSPY_PIECES)
@LAZY
def test_truncated_zspy_directory_piece(tmp_path: Path, piece: str, lazy: bool) -> None:
    path = save(tmp_path / "dir.zspy")
    target = path / piece
    raw = target.read_bytes()
    target.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LazyioError) as info:
        load_and_compute(path, lazy)
    assert_lazyio_error(info, path)


# ------------------------------------------------------------------------------ missing parts


@FORMATS
@LAZY
def test_missing_axis_group(tmp_path: Path, fmt: str, lazy: bool) -> None:
    path = save(tmp_path / f"noaxis.{fmt}")
    if fmt == "hspy":
        with h5py.File(path, "a") as f:
            del f[f"{EXPERIMENT}/axis-1"]
    else:
        shutil.rmtree(path / EXPERIMENT / "axis-1")
    with pytest.raises(FormatError) as info:
        lazyio.load(path, lazy=lazy)
    assert_lazyio_error(info, path, "/Experiments/__unnamed__/data", "3 dimensions",
                        "axis")


@FORMATS
def test_missing_data(tmp_path: Path, fmt: str) -> None:
    path = save(tmp_path / f"nodata.{fmt}")
    if fmt == "hspy":
        with h5py.File(path, "a") as f:
            del f[f"{EXPERIMENT}/data"]
    else:
        shutil.rmtree(path / EXPERIMENT / "data")
    with pytest.raises(FormatError) as info:
        lazyio.load(path)
    assert_lazyio_error(info, path, "no signal")


@FORMATS
@pytest.mark.parametrize("explicit", [False, True], ids=["detect", "format="])
def test_missing_file(tmp_path: Path, fmt: str, explicit: bool) -> None:
    path = tmp_path / f"nothere.{fmt}"
    with pytest.raises(SourceNotFoundError) as info:
        lazyio.load(path, format=fmt if explicit else None)
    assert isinstance(info.value, FileNotFoundError)
    assert_lazyio_error(info, path)
    assert not path.exists()


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "x.abc"
    path.write_bytes(b"some bytes no plugin recognises")
    with pytest.raises(UnknownFormatError) as info:
        lazyio.load(path)
    assert_lazyio_error(info, path, ".abc")
    assert isinstance(info.value, ValueError)


def test_unknown_extension_missing_file_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lazyio.load("x.abc")`` with no such file: the missing file is reported first
    (SourceNotFoundError), not the extension."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceNotFoundError) as info:
        lazyio.load("x.abc")
    assert "x.abc" in str(info.value)


def test_unknown_format_name(tmp_path: Path) -> None:
    path = save(tmp_path / "a.hspy")
    with pytest.raises(UnknownFormatError, match="'tiff'"):
        lazyio.load(path, format="tiff")


def test_save_unknown_extension_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.abc"
    with pytest.raises(UnknownFormatError) as info:
        save(path)
    assert_lazyio_error(info, path, ".abc")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ writing


@pytest.mark.parametrize("kind", HYPERSPY_KINDS)
def test_save_over_existing_without_overwrite(tmp_path: Path, kind: str) -> None:
    fmt = kind[:4]
    extra = {"store_type": "zip"} if kind == "zspy-zip" else {}
    path = save(tmp_path / f"a.{fmt}", **extra)
    before = snapshot(path)
    mtime = path.stat().st_mtime_ns
    with pytest.raises(TargetExistsError) as info:
        save(path, np.ones((5, 6)), **extra)
    assert isinstance(info.value, FileExistsError)
    assert_lazyio_error(info, path, "overwrite")
    assert snapshot(path) == before
    assert path.stat().st_mtime_ns == mtime
    assert debris(tmp_path) == []
    np.testing.assert_array_equal(load_and_compute(path, lazy=False)[0], DATA)


@pytest.mark.parametrize(
    ("first", "second"),
    [("hspy", "hspy"), ("zspy", "zspy"), ("zspy", "zspy-zip"), ("zspy-zip", "zspy-zip"),
     ("zspy-zip", "zspy")],
)
def test_save_with_overwrite_replaces(tmp_path: Path, first: str, second: str) -> None:
    fmt = first[:4]
    kinds = {"hspy": {}, "zspy": {}, "zspy-zip": {"store_type": "zip"}}
    path = save(tmp_path / f"a.{fmt}", **kinds[first])
    # open it lazily first: lazyio's cached handles must not keep the old file alive
    old = lazyio.load(path, lazy=True)[0]["data"]
    np.testing.assert_array_equal(old.compute(), DATA)
    new = np.random.default_rng(7).random((5, 6))
    save(path, new, overwrite=True, **kinds[second])
    assert path.is_dir() is (second == "zspy")
    np.testing.assert_array_equal(load_and_compute(path, lazy=False)[0], new)
    np.testing.assert_array_equal(load_and_compute(path, lazy=True)[0], new)
    assert debris(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == [f"a.{fmt}"]


# ------------------------------------------------------------------------------ chunks


@pytest.fixture
def corrupt_hspy(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    """A gzip .hspy of four chunks whose second chunk (grid index (1, 0, 0)) is damaged."""
    path = tmp_path / "corrupt.hspy"
    data = rng.random((8, 3, 40))
    save(path, data, chunks=(2, 3, 40))
    with h5py.File(path, "r") as f:
        dset = f[f"{EXPERIMENT}/data"]
        assert dset.compression == "gzip"
        assert dset.id.get_num_chunks() == 4
        info = dset.id.get_chunk_info(1)
        assert info.chunk_offset == (2, 0, 0)
        offset, size = info.byte_offset, info.size
    with open(path, "r+b") as fh:
        fh.seek(offset + size // 4)
        fh.write(b"\x00\xff" * 16)
    return path, data


def test_corrupt_chunk_lazy(corrupt_hspy: tuple[Path, np.ndarray]) -> None:
    path, data = corrupt_hspy
    darr = lazyio.load(path, lazy=True, chunks=(2, 3, 40))[0]["data"]
    # the healthy chunks still read
    np.testing.assert_array_equal(darr[:2].compute(), data[:2])
    np.testing.assert_array_equal(darr[4:].compute(), data[4:])
    with pytest.raises(CorruptChunkError) as info:
        darr.compute()
    assert isinstance(info.value, OSError)
    assert_lazyio_error(info, path, "/Experiments/__unnamed__/data", "(1, 0, 0)")
    with pytest.raises(CorruptChunkError):
        darr[2:4].compute()


def test_corrupt_chunk_eager(corrupt_hspy: tuple[Path, np.ndarray]) -> None:
    path, _ = corrupt_hspy
    with pytest.raises(CorruptChunkError) as info:
        lazyio.load(path, lazy=False)
    assert_lazyio_error(info, path, "/Experiments/__unnamed__/data")


@LAZY
def test_corrupt_chunk_zspy(tmp_path: Path, rng: np.random.Generator, lazy: bool) -> None:
    path = save(tmp_path / "corrupt.zspy", rng.random((8, 3, 40)), chunks=(2, 3, 40))
    chunk = path / EXPERIMENT / "data" / "1" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[16:48] = b"\x00\xff" * 16
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError) as info:
        load_and_compute(path, lazy)
    assert_lazyio_error(info, path, "Experiments/__unnamed__/data")


# ------------------------------------------------------------------------------ pickle


class _Payload:
    """Unpickling this creates ``path``: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.path, "w"))


def _pickle_zspy(tmp_path: Path, dtype: str, filters: Any, compressor: Any) -> tuple[Path, Path]:
    sentinel = tmp_path / "UNPICKLED"
    path = save(tmp_path / "pickle.zspy")
    array = path / EXPERIMENT / "data"
    meta = json.loads((array / ".zarray").read_text())
    for child in array.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
    meta.update(dtype=dtype, filters=filters, compressor=compressor,
                chunks=meta["shape"], dimension_separator="/")
    (array / ".zarray").write_text(json.dumps(meta))
    payload = np.empty(DATA.shape, dtype=object)
    payload[...] = 0
    payload[0, 0, 0] = _Payload(str(sentinel))
    (array / "0" / "0").mkdir(parents=True)
    (array / "0" / "0" / "0").write_bytes(pickle.dumps(payload))
    return path, sentinel


@pytest.mark.parametrize(
    ("filters", "compressor"),
    [
        ([{"id": "pickle", "protocol": 5}], None),
        ([{"id": "vlen-array", "dtype": "<f8"}, {"id": "pickle"}], None),
        ([{"id": "vlen-array", "dtype": "<f8"}], {"id": "pickle"}),
    ],
    ids=["filter", "second-filter", "compressor"],
)
@LAZY
def test_pickle_codec_refused(
    tmp_path: Path, filters: Any, compressor: Any, lazy: bool
) -> None:
    path, sentinel = _pickle_zspy(tmp_path, "|O", filters, compressor)
    with pytest.raises(UnsupportedError) as info:
        load_and_compute(path, lazy)
    assert_lazyio_error(info, path, "pickle", "Experiments/__unnamed__/data")
    assert not sentinel.exists()


@LAZY
def test_pickle_codec_on_numeric_array_refused(tmp_path: Path, lazy: bool) -> None:
    path, sentinel = _pickle_zspy(tmp_path, "<f8", [{"id": "pickle"}], None)
    try:
        with pytest.raises(LazyioError) as info:
            load_and_compute(path, lazy)
        assert_lazyio_error(info, path)
    finally:
        assert not sentinel.exists()


# ------------------------------------------------------------------------------ corpus

from malformed import CASES, SENTINEL, outside_snapshot

# eager reads of truncated files take the lazy path's steps: those run lazily only
CORPUS = [pytest.param(c, lazy, id=f"{'lazy' if lazy else 'eager'}-{c.id}")
          for c in CASES for lazy in (True, False) if lazy or "truncated" not in c.name]


@pytest.mark.parametrize(("case", "lazy"), CORPUS)
def test_malformed_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: Any,
                          lazy: bool) -> None:
    """Every malformed file is refused with a lazyio error naming it (and the problem),
    without evaluating anything or touching any other file."""
    monkeypatch.chdir(tmp_path)  # where an injected `touch` would land
    path = case.build(tmp_path)
    before = outside_snapshot(tmp_path, path)
    with pytest.raises(case.error) as info:
        load_and_compute(path, lazy, **case.load_kwds)
    assert_lazyio_error(info, path, *case.words)
    assert not (tmp_path / SENTINEL).exists()
    assert outside_snapshot(tmp_path, path) == before


EXTERNAL = [c for c in CASES if c.error.__name__ == "UnsafeFileError" and c.kind in
            ("hspy", "usid")]
# lazyio finds USID main datasets in the file itself: a main dataset behind an external
# link is not followed even when allowed (its ancillary references live in the other file)
ALLOWED = [c for c in EXTERNAL if c.id != "usid-external-link"]


@pytest.mark.parametrize("case", EXTERNAL, ids=[c.id for c in EXTERNAL])
def test_external_references_are_not_opened(tmp_path: Path, case: Any) -> None:
    """The referenced file is a FIFO: opening it would block, so a load that returns
    (refused) proves lazyio decided before HDF5 resolved the reference."""
    import threading

    path = case.build(tmp_path)
    for name in ("outside.h5", "outside.raw"):
        target = tmp_path / name
        if target.exists():
            target.unlink()
            os.mkfifo(target)
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            lazyio.load(path, format=case.kind)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # blocked in open(): release it, then fail
        for name in ("outside.h5", "outside.raw"):
            if (tmp_path / name).exists():
                os.close(os.open(tmp_path / name, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"{case.id}: lazyio opened the file the reference points at")
    assert isinstance(outcome[0], lazyio.UnsafeFileError), outcome


@pytest.mark.parametrize("case", ALLOWED, ids=[c.id for c in ALLOWED])
def test_external_references_allowed_on_request(tmp_path: Path, case: Any) -> None:
    path = case.build(tmp_path)
    if case.name == "external-storage":
        expected = DATA_F4
    else:
        expected = DATA_F4 * 2  # the outside file holds twice the data
    for lazy in (True, False):
        got = load_and_compute(path, lazy, allow_external=True, format=case.kind)[0]
        np.testing.assert_array_equal(got, expected)


DATA_F4 = np.arange(4 * 5 * 6, dtype="f4").reshape(4, 5, 6)


@pytest.mark.timeout(60)
def test_untrusted_mode(tmp_path: Path) -> None:
    """untrusted=True parses HDF5 in a child first; normal files read as usual, and a
    child killed by a signal (what a crash of the HDF5 library looks like) is refused."""

    good = tmp_path / "good.hspy"
    lazyio.save(good, DATA_F4, show_progressbar=False)
    got = lazyio.load(good, untrusted=True)[0]["data"].compute()
    np.testing.assert_array_equal(got, DATA_F4)
    for name in ("npy", "zspy"):
        p = tmp_path / f"good.{name}"
        lazyio.save(p, DATA_F4, show_progressbar=False)
        np.testing.assert_array_equal(lazyio.load(p, untrusted=True)[0]["data"], DATA_F4)
    # A malformed file still gets its ordinary in-process error after the child's look.
    bad = tmp_path / "bad.hspy"
    bad.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(LazyioError) as info:
        load_and_compute(bad, True, untrusted=True)
    assert_lazyio_error(info, bad)


def test_untrusted_mode_child_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's verdict: death by signal or a hang become UnsafeFileError; the
    caller's process survives. The child is made to crash by running a script that
    aborts (as the HDF5 library does on some malformed files)."""
    import sys

    from lazyio.backends.hdf5 import safety as _inspect

    good = tmp_path / "good.hspy"
    lazyio.save(good, DATA_F4, show_progressbar=False)
    crash = tmp_path / "crash.py"
    crash.write_text("import os\nos.abort()\n")
    real_run = _inspect.subprocess.run

    def run(cmd: list[str], **kw: Any) -> Any:
        return real_run([sys.executable, str(crash)], **kw)

    monkeypatch.setattr(_inspect.subprocess, "run", run)
    with pytest.raises(lazyio.UnsafeFileError) as info:
        lazyio.load(good, untrusted=True)
    assert_lazyio_error(info, good, "SIGABRT", "crashed")
    crash.write_text("import time\ntime.sleep(30)\n")
    with pytest.raises(lazyio.UnsafeFileError) as info:
        _inspect.inspect_untrusted(str(good), timeout=1)
    assert_lazyio_error(info, good, "took over")


# A mutation of lazyio's own small .hspy (found by benchmarks/fuzz.py) on which HDF5 2.0
# loops forever reading a string attribute: a hang no Python code can interrupt.
HDF5_HANG = [("flip", 193488809, 142840088, 42557065),
             ("splice", 1179831475, 1971293444, 621429685)]


@pytest.mark.timeout(60)
def test_untrusted_mode_survives_a_library_hang(tmp_path: Path) -> None:
    from malformed import DATA as CORPUS_DATA
    from malformed import mutate_bytes, write_valid

    raw = write_valid("hspy", tmp_path / "orig.hspy", CORPUS_DATA).read_bytes()
    for mutation in HDF5_HANG:
        raw = mutate_bytes(raw, *mutation)
    path = tmp_path / "hang.hspy"
    path.write_bytes(raw)
    # Either the child is stopped and the file refused, or (a future HDF5 that no longer
    # loops) the file is refused in-process: the caller gets an answer either way.
    with pytest.raises(LazyioError) as info:
        load_and_compute(path, True, untrusted=5)
    assert_lazyio_error(info, path)


# ------------------------------------------------------------ special files, links, dirs



def _refused_promptly(call: Any, fifo: Path | None = None) -> BaseException:
    """Run ``call`` in a thread; it must raise within a few seconds. A reader stuck on a
    FIFO is released by opening its other end, so a failing test cannot hang the suite."""
    import threading

    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            call()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["err"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        if fifo is not None:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        thread.join(5)
        pytest.fail("the call blocked on a special file")
    assert "err" in outcome, "the call did not raise"
    return outcome["err"]


def _special(tmp_path: Path, kind: str, ext: str) -> Path:
    import socket

    path = tmp_path / f"special{ext}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))  # closed with the test's garbage; the file stays
        sock.close()
    elif kind == "link-to-fifo":
        os.mkfifo(tmp_path / "target-fifo")
        os.symlink(tmp_path / "target-fifo", path)
    elif kind == "device":
        os.symlink("/dev/zero", path)  # read whole, it would never end
    return path


@pytest.mark.parametrize("kind", ["fifo", "socket", "link-to-fifo", "device"])
@pytest.mark.parametrize("fmt", NAMES)
def test_special_file_as_input_is_refused_without_blocking(tmp_path: Path, fmt: str,
                                                           kind: str) -> None:
    path = _special(tmp_path, kind, EXT[fmt])
    fifo = tmp_path / "target-fifo" if kind == "link-to-fifo" else path
    calls = {
        "detected": lambda: lazyio.load(path),
        "named": lambda: lazyio.load(path, format=fmt),
        "eager": lambda: lazyio.load(path, format=fmt, lazy=False),
        "untrusted": lambda: lazyio.load(path, untrusted=True),
        "info": lambda: lazyio.info(path),
    }
    expected = {"fifo": "a FIFO", "link-to-fifo": "a FIFO", "socket": "a socket",
                "device": "a character device"}[kind]
    for name, call in calls.items():
        err = _refused_promptly(call, fifo if kind in ("fifo", "link-to-fifo") else None)
        assert isinstance(err, FormatError), f"{name}: {type(err).__name__}: {err}"
        assert str(path) in str(err), str(err)
        assert f"not a regular file ({expected})" in str(err), str(err)


@pytest.mark.parametrize("fmt", NAMES)
def test_symlink_loop_is_named(tmp_path: Path, fmt: str) -> None:
    a, b = tmp_path / f"a{EXT[fmt]}", tmp_path / f"b{EXT[fmt]}"
    os.symlink(b, a)
    os.symlink(a, b)
    for call in (lambda: lazyio.load(a), lambda: lazyio.load(a, format=fmt),
                 lambda: lazyio.info(a)):
        with pytest.raises(SourceNotFoundError) as info:
            call()
        assert_lazyio_error(info, a, "a loop of symbolic links")


def test_dangling_symlink_names_its_target(tmp_path: Path) -> None:
    link = tmp_path / "data.hspy"
    os.symlink(tmp_path / "moved-away.hspy", link)
    with pytest.raises(SourceNotFoundError) as info:
        lazyio.load(link)
    assert_lazyio_error(info, link, "a symbolic link to the missing", "moved-away.hspy")


@pytest.mark.parametrize("fmt", [n for n in NAMES if n != "zspy"])
def test_directory_where_a_file_is_needed(tmp_path: Path, fmt: str) -> None:
    folder = tmp_path / f"folder{EXT[fmt]}"
    folder.mkdir()
    (folder / "inside.txt").write_text("not data")
    for call in (lambda: lazyio.load(folder), lambda: lazyio.load(folder, format=fmt),
                 lambda: lazyio.info(folder)):
        with pytest.raises(FormatError) as info:
            call()
        assert_lazyio_error(info, folder, "not a regular file (a directory)")


def test_socket_errors_of_local_files_are_not_connection_errors(tmp_path: Path) -> None:
    from lazyio.errors import LazyioConnectionError, transport_error

    local = str(tmp_path / "x.npy")
    assert transport_error(BrokenPipeError(32, "Broken pipe"), local) is None
    remote = transport_error(ConnectionResetError(104, "reset"), "https://example.invalid/x")
    assert isinstance(remote, LazyioConnectionError)


def test_new_errors_pickle_with_their_message() -> None:
    # they travel back from dask process workers and distributed workers
    from lazyio.errors import connection_failed, range_not_supported

    for err in (connection_failed("s3://b/k.zspy", "connection refused by 127.0.0.1:9"),
                range_not_supported("http://127.0.0.1:8/x.npy")):
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is type(err)
        assert str(clone) == str(err)
        assert isinstance(clone, ConnectionError | NotImplementedError)
