"""``lazyio.save`` owns the write pipeline: the overwrite decision, temporaries, uploads,
in-place updates; plugins only write where they are told."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

import lazyio
from lazyio.backends.atomic import TMP_TAG
from lazyio.errors import FormatError, SourceNotFoundError, TargetExistsError
from lazyio.formats import format_names, get_plugin
from lazyio.signals import as_signal_dict

FORMATS = format_names()[:4]
DATA = np.arange(4 * 6 * 10, dtype="f4").reshape(4, 6, 10)
AXES = [{"size": 4, "navigate": True}, {"size": 6, "navigate": True},
        {"size": 10, "navigate": False}]


def path_for(folder: Path, fmt: str, stem: str = "a") -> Path:
    return folder / f"{stem}{get_plugin(fmt).extensions[0]}"


def snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.fixture
def spy_writes(monkeypatch):
    """Record the target every plugin's write is given (and still write)."""
    seen: list[tuple[str, Any]] = []
    for name in FORMATS:
        plugin = get_plugin(name)
        original = type(plugin).write

        def write(self, target, signal, _original=original, **kwds):
            seen.append((self.name, target))
            return _original(self, target, signal, **kwds)

        monkeypatch.setattr(type(plugin), "write", write)
    return seen


@pytest.mark.parametrize("fmt", FORMATS)
def test_refused_overwrite_leaves_the_target_byte_identical(tmp_path, fmt, spy_writes):
    path = path_for(tmp_path, fmt)
    lazyio.save(path, {"data": DATA, "axes": AXES}, show_progressbar=False)
    before = snapshot(path)
    mtime = path.stat().st_mtime_ns
    spy_writes.clear()
    for write in (lambda: lazyio.save(path, DATA + 1, show_progressbar=False),
                  lambda: lazyio.save(path, DATA + 1, overwrite=False,
                                      show_progressbar=False),
                  lambda: getattr(lazyio, fmt).file_writer(
                      str(path), {"data": DATA + 1, "axes": AXES}, overwrite=False)):
        with pytest.raises(TargetExistsError, match="overwrite=True"):
            write()
    assert spy_writes == []  # the plugin was never asked
    assert snapshot(path) == before
    assert path.stat().st_mtime_ns == mtime
    assert [n for n in os.listdir(tmp_path) if TMP_TAG in n] == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_local_writes_go_to_a_temporary_sibling(tmp_path, fmt, spy_writes):
    path = path_for(tmp_path, fmt)
    lazyio.save(path, {"data": DATA, "axes": AXES}, show_progressbar=False)
    lazyio.save(path, {"data": DATA * 2, "axes": AXES}, overwrite=True,
                show_progressbar=False)
    targets = [t for _, t in spy_writes]
    assert len(targets) == 2
    for target in targets:
        assert target.local_path != str(path)
        assert os.path.dirname(target.local_path) == str(tmp_path)
        assert TMP_TAG in os.path.basename(target.local_path)
    np.testing.assert_array_equal(lazyio.load(path, lazy=False)[0]["data"], DATA * 2)


@pytest.mark.parametrize("fmt", ["hspy", "zspy"])
def test_metadata_update_is_routed_to_a_copy_or_in_place(tmp_path, fmt, spy_writes):
    path = path_for(tmp_path, fmt)
    missing = path_for(tmp_path, fmt, "missing")
    with pytest.raises(SourceNotFoundError, match="write_dataset=False"):
        lazyio.save(missing, {"data": DATA, "axes": AXES}, write_dataset=False,
                    show_progressbar=False)
    assert not missing.exists()
    lazyio.save(path, {"data": DATA, "axes": AXES}, show_progressbar=False)
    spy_writes.clear()
    signal = {"data": DATA, "axes": AXES, "metadata": {"General": {"notes": "updated"}}}
    # an existing target is updated, not replaced: no overwrite needed
    lazyio.save(path, signal, write_dataset=False, show_progressbar=False)
    [(_, target)] = spy_writes
    if fmt == "hspy":  # a file: a copy is updated and renamed over it
        assert TMP_TAG in target.local_path
    else:  # a directory store: its metadata tree staged beside it, then moved in
        assert os.path.dirname(target.local_path) == str(tmp_path)
        assert os.path.basename(target.local_path).startswith(".a.zspy.lazyio-update-")
    assert [n for n in os.listdir(tmp_path) if TMP_TAG in n] == []
    [out] = lazyio.load(path, lazy=False)
    assert out["metadata"]["General"]["notes"] == "updated"
    np.testing.assert_array_equal(out["data"], DATA)


def test_usid_append_is_routed_to_a_copy(tmp_path, spy_writes):
    path = path_for(tmp_path, "usid")
    lazyio.save(path, {"data": DATA, "axes": AXES}, append=True, show_progressbar=False)
    lazyio.save(path, {"data": DATA + 1, "axes": AXES}, append=True, show_progressbar=False)
    first, second = (t for _, t in spy_writes)
    assert TMP_TAG in first.local_path  # created through a temporary
    assert TMP_TAG in second.local_path  # appended to a copy renamed over the file
    assert len(lazyio.load(path)) == 2


def test_errors_name_the_target_not_the_temporary(tmp_path, monkeypatch):
    plugin = get_plugin("hspy")

    def failing(self, target, signal, **kwds):
        raise FormatError(f"{target}: cannot store this")

    monkeypatch.setattr(type(plugin), "write", failing)
    path = tmp_path / "a.hspy"
    with pytest.raises(FormatError) as info:
        lazyio.save(path, DATA, show_progressbar=False)
    assert str(info.value) == f"{path}: cannot store this"
    assert os.listdir(tmp_path) == []


def test_plugins_write_where_they_are_told(tmp_path):
    # no overwrite decision in the plugin: it writes into the path it is given
    for fmt in FORMATS:
        plugin = get_plugin(fmt)
        path = path_for(tmp_path, fmt)
        signal = as_signal_dict({"data": DATA, "axes": AXES})
        plugin.write(lazyio.Location(str(path)), signal, chunks=None, show_progressbar=False)
        plugin.write(lazyio.Location(str(path)), signal, chunks=None, show_progressbar=False)
        np.testing.assert_array_equal(lazyio.load(path, lazy=False)[0]["data"], DATA)


@pytest.mark.parametrize("fmt", ["hspy", "usid"])
def test_remote_hdf5_goes_through_a_local_temporary_and_an_upload(
        s3_server, fmt, spy_writes, monkeypatch):
    from lazyio.backends import atomic

    uploads: list[str] = []
    original = atomic.upload_temporary

    def upload_temporary(target):
        uploads.append(target.url)
        return original(target)

    monkeypatch.setattr(atomic, "upload_temporary", upload_temporary)
    url = f"s3://{s3_server.bucket}/pipeline/upload{get_plugin(fmt).extensions[0]}"
    options = s3_server.storage_options
    lazyio.save(url, {"data": DATA, "axes": AXES}, storage_options=options, overwrite=True,
                show_progressbar=False)
    [(_, target)] = spy_writes
    assert target.local_path is not None  # written locally ...
    assert not os.path.exists(target.local_path)  # ... in a temporary now gone
    assert uploads == [url]  # ... then uploaded
    np.testing.assert_array_equal(
        lazyio.load(url, storage_options=options, lazy=False)[0]["data"], DATA)
    with pytest.raises(TargetExistsError, match="upload"):
        lazyio.save(url, DATA, storage_options=options, show_progressbar=False)


def test_remote_npy_goes_through_a_temporary_object(s3_server, spy_writes):
    url = f"s3://{s3_server.bucket}/pipeline/moved.npy"
    options = s3_server.storage_options
    lazyio.save(url, DATA, storage_options=options, overwrite=True, show_progressbar=False)
    [(_, target)] = spy_writes
    assert target.url.startswith(f"s3://{s3_server.bucket}/pipeline/.moved.npy{TMP_TAG}")
    fs = fsspec.filesystem("s3", **options)
    fs.invalidate_cache()
    assert [p for p in fs.ls(f"{s3_server.bucket}/pipeline") if TMP_TAG in p] == []
    np.testing.assert_array_equal(
        lazyio.load(url, storage_options=options, lazy=False)[0]["data"], DATA)


def test_remote_zspy_is_written_in_place(s3_server, spy_writes):
    url = f"s3://{s3_server.bucket}/pipeline/inplace.zspy"
    options = s3_server.storage_options
    lazyio.save(url, DATA, storage_options=options, overwrite=True, show_progressbar=False)
    lazyio.save(url, DATA + 1, storage_options=options, overwrite=True,
                show_progressbar=False)
    assert [t.url for _, t in spy_writes] == [url, url]
    np.testing.assert_array_equal(
        lazyio.load(url, storage_options=options, lazy=False)[0]["data"], DATA + 1)
