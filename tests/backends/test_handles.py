"""The handle cache: open files only, under typed keys; derived values in the memo;
files being written in writer registries."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

import lazyio
from lazyio import handles
from lazyio.backends.hdf5.files import H5FileKey, RawFileKey, open_h5, open_raw
from lazyio.backends.hdf5.index import ChunkIndexKey, chunk_index
from lazyio.location import as_location


def _file(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(100, dtype="u2"), chunks=(10,))
    return as_location(str(path))


def test_cache_holds_open_files_under_typed_keys(tmp_path):
    lazyio.close_all()
    loc = _file(tmp_path)
    token = loc.modified_token()
    open_h5(loc, token=token)
    open_raw(loc, token)
    handles.read_map(loc, token)
    chunk_index(loc, "/x", token)
    keys = handles.default_cache.keys()
    assert {type(k) for k in keys} == {H5FileKey, RawFileKey, handles.MapKey}
    assert sorted(k.kind for k in keys) == ["fd", "h5py", "mmap"]
    assert all(isinstance(k, handles.FileKey) and k.location == loc for k in keys)
    # the chunk index is a derived value: in the memo, not in a file slot
    assert any(isinstance(k, ChunkIndexKey) for k in handles.default_memo._values)
    assert handles.close_location(loc) == 3
    assert len(handles.default_cache) == 0
    assert not any(isinstance(k, ChunkIndexKey) for k in handles.default_memo._values)


def test_keys_differ_by_kind_and_version():
    loc = as_location("/nowhere/f.h5")
    assert H5FileKey(loc, "r", "t1") != H5FileKey(loc, "r", "t2")
    assert RawFileKey(loc, "t") != handles.MapKey(loc, "t")  # same fields, other kind
    assert hash(H5FileKey(loc, "r", "t")) == hash(H5FileKey(loc, "r", "t"))


def test_close_location_still_closes_tuple_keys(tmp_path):
    """Rooms whose keys are not typed yet (tuples holding the location) are closed too."""
    loc = _file(tmp_path)
    closed = []

    class Handle:
        def close(self):
            closed.append(1)

    handles.acquire(("legacy", loc, "r"), Handle)
    assert handles.close_location(loc) >= 1
    assert closed == [1]


def test_writer_registry(tmp_path):
    reg: handles.WriterRegistry[str, object] = handles.WriterRegistry("test")
    opened = []

    def opener():
        f = open(tmp_path / "w.bin", "wb")  # noqa: SIM115 - the registry owns it
        opened.append(f)
        return f

    f = reg.acquire("a", opener)
    assert reg.acquire("a", opener) is f
    assert len(opened) == 1
    lazyio.close_all()
    handles.default_cache.close_all()
    assert not f.closed
    assert reg.keys() == ["a"]
    assert reg.close("a")
    assert f.closed
    assert len(reg) == 0
    assert not reg.close("a")
    owned = object()
    with reg.registered("b", owned) as key:
        assert reg.get(key) is owned
    assert reg.get("b") is None


def test_writer_registry_is_per_process(tmp_path):
    reg: handles.WriterRegistry[str, int] = handles.WriterRegistry("test")
    reg.acquire("a", lambda: 1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        os._exit(0 if reg.get("a") is None and len(reg) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reg.get("a") == 1


def test_handles_released_by_a_full_cache_stay_valid_for_their_readers(tmp_path, monkeypatch):
    """A cache of one slot, four threads reading four files at once: each eviction used to
    close a handle another thread was reading through (h5py: 'invalid identifier'; a raw
    descriptor's number could be reused by the next open file and read silently)."""
    import dask
    import dask.array as da

    import lazyio

    rng = np.random.default_rng(7)
    arrays, lazy = [], []
    for i in range(4):
        data = rng.integers(0, 2**16, size=(16, 32, 64), dtype="u2")
        for fmt, kwds in (("hspy", {"compression": "gzip"}), ("hspy", {"compression": None})):
            path = tmp_path / f"f{i}-{kwds['compression']}.hspy"
            lazyio.save(path, data, format=fmt, chunks=(1, 32, 64), show_progressbar=False,
                        **kwds)
            arrays.append(data)
            lazy.append(lazyio.load(path, chunks=(1, 32, 64))[0]["data"])
    monkeypatch.setattr(handles.default_cache, "maxsize", 1)
    stacked = da.concatenate(lazy)
    for _ in range(3):
        with dask.config.set(scheduler="threads", num_workers=4):
            np.testing.assert_array_equal(stacked.compute(), np.concatenate(arrays))
    lazyio.close_all()


def test_memo_builds_a_value_once_while_other_threads_wait():
    """Threads asking at once for a missing value wait for one build (a chunk index built
    by every thread at once doubled the CPU of a small-chunk read); other keys build
    meanwhile."""
    import threading
    import time

    memo = handles.Memo()
    calls: list[str] = []

    def build(key: str):
        def run():
            calls.append(key)
            time.sleep(0.05)
            return key.upper()
        return run

    results: list[str] = []
    threads = [threading.Thread(target=lambda k=k: results.append(memo.get(k, build(k))))
               for k in ["a"] * 6 + ["b"] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == ["a", "b"]
    assert sorted(results) == ["A"] * 6 + ["B"] * 2


def test_memo_build_that_fails_is_retried():
    memo = handles.Memo()

    def broken():
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        memo.get("k", broken)
    assert memo.get("k", lambda: 3) == 3
