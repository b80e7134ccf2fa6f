"""Files being written live in writer registries, never in the bounded read-handle LRU."""

from __future__ import annotations

import os
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest

import lazyio
from lazyio import handles
from lazyio.backends.hdf5 import target
from lazyio.backends.raw import npy_target


def _sources(tmp_path, rng, n):
    arrays = [rng.integers(0, 1000, (4, 6, 5)).astype("<u2") for _ in range(n)]
    for i, a in enumerate(arrays):
        lazyio.save(tmp_path / f"in{i}.hspy", a, chunks=(2, 6, 5), show_progressbar=False)
    lazyio.close_all()
    return arrays


@pytest.mark.parametrize("maxsize", [None, 64])
def test_stacking_60_lazy_hspy_files_into_one(tmp_path, rng, monkeypatch, maxsize):
    """More source files than the read cache holds (two handles each, so 64 slots are
    too few): the file being written used to be evicted ('... is not open for writing
    in this process')."""
    if maxsize is not None:
        monkeypatch.setattr(handles.default_cache, "maxsize", maxsize)
    arrays = _sources(tmp_path, rng, 60)
    lazy = [lazyio.load(tmp_path / f"in{i}.hspy")[0]["data"] for i in range(60)]
    stacked = da.concatenate(lazy, axis=0)
    for fmt in ("hspy", "npy"):
        out = tmp_path / f"stacked.{fmt}"
        lazyio.save(out, stacked, show_progressbar=False)
        got = lazyio.load(out, lazy=False)[0]["data"]
        np.testing.assert_array_equal(got, np.concatenate(arrays))
    assert len(target.WRITERS) == 0
    assert len(npy_target.WRITE_MAPS) == 0
    lazyio.close_all()


def test_tiny_read_cache_copy(tmp_path, rng, monkeypatch):
    arrays = _sources(tmp_path, rng, 2)
    monkeypatch.setattr(handles.default_cache, "maxsize", 3)
    for fmt in ("hspy", "npy"):
        lazy = lazyio.load(tmp_path / "in0.hspy")[0]["data"]
        lazyio.save(tmp_path / f"copy.{fmt}", lazy, show_progressbar=False)
        np.testing.assert_array_equal(lazyio.load(tmp_path / f"copy.{fmt}", lazy=False)[0]["data"],
                                      arrays[0])
    lazyio.close_all()


def test_max_open_files_3_in_a_fresh_process(tmp_path, rng):
    """LAZYIO_MAX_OPEN_FILES=3, set before lazyio is imported: a plain .hspy -> .hspy copy."""
    arrays = _sources(tmp_path, rng, 3)
    script = (
        "import sys, numpy as np, dask.array as da, lazyio\n"
        "assert lazyio.handles.default_cache.maxsize == 3\n"
        "d = sys.argv[1]\n"
        "lazyio.save(d + '/copy.hspy', lazyio.load(d + '/in0.hspy')[0], show_progressbar=False)\n"
        "many = da.concatenate([lazyio.load(f'{d}/in{i}.hspy')[0]['data'] for i in range(3)])\n"
        "lazyio.save(d + '/many.hspy', many, show_progressbar=False)\n"
        "lazyio.save(d + '/many.npy', many, show_progressbar=False)\n"
    )
    env = {**os.environ, "LAZYIO_MAX_OPEN_FILES": "3"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(lazyio.load(tmp_path / "copy.hspy", lazy=False)[0]["data"],
                                  arrays[0])
    for name in ("many.hspy", "many.npy"):
        np.testing.assert_array_equal(lazyio.load(tmp_path / name, lazy=False)[0]["data"],
                                      np.concatenate(arrays))
    lazyio.close_all()


def _close_all_then(block):
    lazyio.close_all()
    return block


@pytest.mark.parametrize("fmt", ["hspy", "npy"])
@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_close_all_during_a_write(tmp_path, rng, fmt, scheduler):
    arrays = _sources(tmp_path, rng, 1)
    lazy = lazyio.load(tmp_path / "in0.hspy")[0]["data"]
    closing = lazy.map_blocks(_close_all_then, dtype=lazy.dtype)
    import dask

    with dask.config.set(scheduler=scheduler):
        lazyio.save(tmp_path / f"out.{fmt}", closing, show_progressbar=False)
    np.testing.assert_array_equal(lazyio.load(tmp_path / f"out.{fmt}", lazy=False)[0]["data"],
                                  arrays[0])
    lazyio.close_all()


def test_writer_not_open_is_a_lazyio_error():
    from lazyio.errors import LazyioError

    t = target.H5ChunkTarget("nowhere#1", "/x", (2,), np.dtype("u1"), (2,), ())
    with pytest.raises(LazyioError, match="not open for writing in this process"):
        t[(slice(0, 2),)] = np.zeros(2, "u1")
    with pytest.raises(RuntimeError):  # what it raised before, still caught as such
        t[(slice(0, 2),)] = np.zeros(2, "u1")


def test_writer_registry_survives_close_all_and_location_closes(tmp_path):
    import h5py

    with h5py.File(tmp_path / "w.h5", "w") as f, target.open_for_targets(f) as key:
        assert target.WRITERS.get(key) is f
        lazyio.close_all()
        handles.close_location(lazyio.location.as_location(str(tmp_path / "w.h5")))
        handles.default_cache.maxsize, old = 0, handles.default_cache.maxsize
        try:
            handles.read_map(lazyio.location.as_location(str(tmp_path / "w.h5")), "")
        finally:
            handles.default_cache.maxsize = old
        assert target.WRITERS.get(key) is f
        assert f.id.valid
    assert target.WRITERS.get(key) is None
