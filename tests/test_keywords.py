"""One keyword policy: every public reader and writer refuses an unknown keyword with a
``TypeError`` naming it, refuses an option it cannot honour, and validates values."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest

import lazyio
from lazyio.formats import format_names, get_plugin

FORMATS = format_names()[:4]  # the built-ins; the registry is the format table
DATA = np.arange(4 * 6 * 10, dtype="f4").reshape(4, 6, 10)
AXES = [{"size": 4, "navigate": True}, {"size": 6, "navigate": True},
        {"size": 10, "navigate": False}]
TYPOS = ["lazzy", "chnks", "compresor", "overwirte"]


def path_for(folder: Path, fmt: str, stem: str = "a") -> Path:
    return folder / f"{stem}{get_plugin(fmt).extensions[0]}"


@pytest.fixture(params=FORMATS)
def written(request, tmp_path):
    fmt = request.param
    path = path_for(tmp_path, fmt)
    lazyio.save(path, {"data": DATA, "axes": AXES}, show_progressbar=False)
    return fmt, path


def namespace(fmt: str):
    return importlib.import_module(f"lazyio.{fmt}")


def test_the_issue_reproduction(tmp_path):
    path = tmp_path / "x.hspy"
    lazyio.save(path, DATA, show_progressbar=False)
    with pytest.raises(TypeError) as info:
        lazyio.load(path, lazzy=False)
    message = str(info.value)
    assert message.startswith("load() got an unexpected keyword argument 'lazzy' "
                              "(hspy accepts: ")
    assert "lazy" in message
    assert "mode" in message


@pytest.mark.parametrize("typo", TYPOS)
def test_readers_refuse_unknown_keywords(written, typo):
    fmt, path = written
    for call, name in ((lambda **k: lazyio.load(path, **k), "load"),
                       (lambda **k: namespace(fmt).file_reader(str(path), **k), "file_reader")):
        with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword "
                                            rf"argument '{typo}' \({fmt} accepts: "):
            call(**{typo: False})


@pytest.mark.parametrize("typo", TYPOS)
def test_writers_refuse_unknown_keywords_and_write_nothing(tmp_path, typo):
    for fmt in FORMATS:
        for name, write in (
            ("save", lambda p, **k: lazyio.save(p, DATA, show_progressbar=False, **k)),
            ("file_writer", lambda p, fmt=fmt, **k: namespace(fmt).file_writer(
                str(p), {"data": DATA, "axes": AXES}, **k)),
        ):
            target = path_for(tmp_path, fmt, name)
            with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword "
                                                rf"argument '{typo}' \({fmt} accepts: "):
                write(target, **{typo: None})
            assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_convert_refuses_unknown_keywords_before_reading(tmp_path):
    src = tmp_path / "src.npy"
    np.save(src, DATA)
    for fmt in FORMATS:
        dst = path_for(tmp_path, fmt, "dst")
        with pytest.raises(TypeError, match=rf"^convert\(\) got .* 'compresor' \({fmt}"):
            lazyio.convert(src, dst, compresor=None, show_progressbar=False)
        assert not dst.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_compute_false_is_refused_and_nothing_written(tmp_path, fmt):
    # lazyio.save(compute=False) returns a delayed write (tests/test_save_many.py); the
    # RosettaSciIO-style writers and convert return nothing, so they refuse it
    import dask.array as da

    data = da.from_array(DATA, chunks=(2, 6, 10))
    calls = (
        lambda p: namespace(fmt).file_writer(str(p), {"data": data, "axes": AXES},
                                             compute=False),
        lambda p: lazyio.convert(src, p, compute=False, show_progressbar=False),
    )
    src = tmp_path / "src.npy"
    np.save(src, DATA)
    for i, call in enumerate(calls):
        target = path_for(tmp_path, fmt, f"t{i}")
        with pytest.raises(lazyio.UnsupportedError, match="compute=False") as info:
            call(target)
        assert str(target) in str(info.value)
        assert not target.exists()
    assert sorted(os.listdir(tmp_path)) == ["src.npy"]
    lazyio.save(path_for(tmp_path, fmt), data, compute=True, show_progressbar=False)


def test_compatibility_keywords_stay_accepted(tmp_path):
    for fmt in ("hspy", "zspy"):
        path = path_for(tmp_path, fmt)
        namespace(fmt).file_writer(str(path), {"data": DATA, "axes": AXES}, close_file=True)
        lazyio.save(path, DATA, overwrite=True, close_file=False, show_progressbar=False)
        assert namespace(fmt).file_reader(str(path), mode="r")[0]["data"].shape == DATA.shape
        assert lazyio.load(path, mode="r")[0]["data"].shape == DATA.shape
    path = path_for(tmp_path, "npy")
    lazyio.save(path, DATA, allow_pickle=False, fix_imports=True, show_progressbar=False)
    assert lazyio.load(path, fix_imports=True, encoding="ASCII")[0]["data"].shape == DATA.shape
    with pytest.raises(lazyio.UnsupportedError, match="unpickles"):
        lazyio.load(path, allow_pickle=True)


@pytest.mark.parametrize(
    ("fmt", "options", "error", "words"),
    [
        ("hspy", {"write_dataset": "yes"}, TypeError, "write_dataset"),
        ("hspy", {"write_dataset": "unsupported_type"}, ValueError, "write_dataset"),
        ("hspy", {"close_file": "yes"}, ValueError, "close_file"),
        ("hspy", {"mode": "r"}, ValueError, "mode must be one of 'w', 'a'"),
        ("hspy", {"mode": "w", "write_dataset": False}, ValueError, "mode='a' is required"),
        ("hspy", {"mode": "a"}, lazyio.UnsupportedError, "mode='a' with write_dataset=True"),
        ("hspy", {"compression": "zip"}, ValueError, "compression"),
        ("zspy", {"write_dataset": 0}, TypeError, "write_dataset"),
        ("zspy", {"write_dataset": 0}, ValueError, "write_dataset"),
        ("zspy", {"compressor": "zstd"}, ValueError, "compressor must be a numcodecs codec"),
        ("zspy", {"filters": "delta"}, TypeError, "filters"),
        ("zspy", {"fill_value": "zero"}, TypeError, "fill_value"),
        ("zspy", {"zarr_format": 3, "shards": (0, 6, 10)}, ValueError, "positive integers"),
        ("zspy", {"close_file": 1}, TypeError, "close_file"),
        ("usid", {"append": "yes"}, ValueError, "append"),
        ("usid", {"fletcher32": "yes"}, TypeError, "fletcher32"),
        ("usid", {"scaleoffset": "3"}, ValueError, "scaleoffset"),
        ("hspy", {"scaleoffset": -1}, ValueError, "scaleoffset"),
        ("npy", {"allow_pickle": "no"}, ValueError, "allow_pickle"),
        ("zspy", {"store_type": "tar"}, ValueError, "store_type"),
        ("zspy", {"zarr_format": 4}, ValueError, "zarr_format"),
        ("zspy", {"shards": (2, 6, 10)}, ValueError, "zarr_format=3"),
        ("usid", {"append": "yes"}, TypeError, "append"),
        ("npy", {"overwrite": "no"}, TypeError, "overwrite"),
        ("npy", {"verify": 1}, TypeError, "verify"),
    ],
)
def test_option_values_are_validated_before_writing(tmp_path, fmt, options, error, words):
    target = path_for(tmp_path, fmt)
    with pytest.raises(error, match=words):
        lazyio.save(target, {"data": DATA, "axes": AXES}, show_progressbar=False, **options)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary either: refused before writing


@pytest.mark.parametrize(
    ("fmt", "options", "error", "words"),
    [
        ("npy", {"mmap_mode": "w+"}, ValueError, "mmap_mode"),
        ("usid", {"non_uniform": "sometimes"}, ValueError, "non_uniform"),
        ("usid", {"dataset_path": 3}, TypeError, "dataset_path"),
        ("hspy", {"lazy": "no"}, TypeError, "lazy"),
        ("hspy", {"untrusted": -1}, ValueError, "untrusted"),
        ("hspy", {"mode": "w"}, ValueError, "mode must be one of 'r', 'r\\+', 'a'"),
        ("zspy", {"mode": "w-"}, ValueError, "mode must be one of"),
        ("hspy", {"chunks": "store"}, ValueError, "chunks must be 'auto', 'storage'"),
        ("zspy", {"chunks": True}, TypeError, "chunks"),
        ("npy", {"chunks": 2.5}, TypeError, "chunks"),
        ("npy", {"key": 3}, ValueError, "key must be the name of a field"),
        ("npy", {"max_header_size": -1}, ValueError, "max_header_size"),
        ("npy", {"navigation_axes": ["x"]}, TypeError, "navigation_axes"),
        ("npy", {"fix_imports": "yes"}, TypeError, "fix_imports"),
        ("usid", {"ignore_non_uniform_dims": "no"}, ValueError, "ignore_non_uniform_dims"),
    ],
)
def test_read_option_values_are_validated(tmp_path, fmt, options, error, words):
    path = path_for(tmp_path, fmt)
    lazyio.save(path, {"data": DATA, "axes": AXES}, show_progressbar=False)
    with pytest.raises(error, match=words):
        lazyio.load(path, **options)


def test_rsciio_file_reader_runs_the_untrusted_check(tmp_path, monkeypatch):
    """The reproduction of the issue: file_reader(untrusted=True) used to skip the
    child-process check that load(untrusted=True) performs."""
    from lazyio.backends.hdf5 import safety

    path = tmp_path / "x.hspy"
    lazyio.save(path, DATA, show_progressbar=False)
    seen: list[tuple[str, float]] = []
    monkeypatch.setattr(safety, "inspect_untrusted",
                        lambda p, timeout=60.0: seen.append((p, timeout)))
    lazyio.load(path, untrusted=True)
    lazyio.hspy.file_reader(str(path), untrusted=True)
    lazyio.hspy.file_reader(str(path), untrusted=5)
    assert seen == [(str(path), 60.0), (str(path), 60.0), (str(path), 5.0)]

    def refuse(p, timeout=60.0):
        raise lazyio.UnsafeFileError(f"{p}: the HDF5 library crashed parsing it")

    monkeypatch.setattr(safety, "inspect_untrusted", refuse)
    for read in (lambda: lazyio.load(path, untrusted=True),
                 lambda: lazyio.hspy.file_reader(str(path), untrusted=True),
                 lambda: lazyio.usid.file_reader(str(path), untrusted=True)):
        with pytest.raises(lazyio.UnsafeFileError, match="crashed"):
            read()
    lazyio.hspy.file_reader(str(path))  # without untrusted: no check


def test_file_reader_and_writer_positional_arguments(tmp_path):
    path = tmp_path / "a.hspy"
    # RosettaSciIO's order: filename, signal, chunks, compression, close_file, ...
    lazyio.hspy.file_writer(str(path), {"data": DATA, "axes": AXES}, (1, 6, 10), None)
    [sig] = lazyio.info(path).signals
    assert sig.storage_chunks == (1, 6, 10)
    assert sig.compression is None
    npy = tmp_path / "a.npy"
    np.save(npy, DATA)
    [lazy] = lazyio.npy.file_reader(str(npy), True, (2, 6, 10), [0])  # lazy, chunks, nav
    assert lazy["data"].chunksize == (2, 6, 10)
    assert lazy["axes"][0]["navigate"]
    with pytest.raises(TypeError, match="multiple values for argument 'chunks'"):
        lazyio.npy.file_reader(str(npy), True, (2, 6, 10), chunks=(1, 6, 10))
