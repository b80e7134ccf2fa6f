"""Sharded .zspy (Zarr format 3 with ``shards=``): written by shard-aligned tasks, one file
per shard, read back by lazyio and by plain zarr-python 3."""

from __future__ import annotations

import os
import threading

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

import lazyio
from lazyio.backends.zarr import targets

DATA = "Experiments/__unnamed__/data"


@pytest.fixture
def regions(monkeypatch):
    """Every region a Zarr region target is asked to write, from any thread."""
    seen: list[tuple[slice, ...]] = []
    lock = threading.Lock()
    real = targets.ZarrRegionTarget.__setitem__

    def spy(self, region, block):
        with lock:
            seen.append(region)
        real(self, region, block)

    monkeypatch.setattr(targets.ZarrRegionTarget, "__setitem__", spy)
    return seen


def _files(root: str) -> list[str]:
    return [os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs]


def test_sharded_write_tasks_are_shard_aligned(tmp_path, regions):
    """Write blocks smaller than a shard would let two tasks rewrite one shard; with
    8 KiB write blocks and 32 KiB shards every task still writes whole shards."""
    data = np.arange(16 * 16 * 8 * 8, dtype="<u2").reshape(16, 16, 8, 8)
    source = da.from_array(data, chunks=(2, 2, 8, 8))  # 256 source blocks of 256 B
    path = tmp_path / "sharded.zspy"
    shards = (8, 4, 8, 8)
    with dask.config.set({"array.chunk-size": "8KiB", "scheduler": "threads",
                          "num_workers": 4}):
        lazyio.save(path, source, zarr_format=3, chunks=(2, 2, 8, 8), shards=shards,
                    show_progressbar=False)
    main = [r for r in regions if len(r) == 4]
    covered = []
    for region in main:  # whole shards only
        assert all(s.start % n == 0 and (s.stop - s.start) % n == 0
                   for s, n in zip(region, shards, strict=True)), region
        covered += [(i, j) for i in range(region[0].start // 8, region[0].stop // 8)
                    for j in range(region[1].start // 4, region[1].stop // 4)]
    assert sorted(covered) == sorted(set(covered))  # no shard written by two tasks
    assert len(covered) == 8
    assert len(main) > 1
    array_dir = os.path.join(path, *DATA.split("/"))
    chunk_files = [f for f in _files(array_dir) if not f.endswith("zarr.json")]
    assert len(chunk_files) == 8  # one file per shard, not 64 chunk files

    plain = zarr.open_array(str(path), path=DATA, mode="r")
    assert plain.chunks == (2, 2, 8, 8)
    assert plain.shards == shards
    np.testing.assert_array_equal(plain[:], data)
    loaded = lazyio.load(path)[0]["data"]
    np.testing.assert_array_equal(loaded.compute(), data)
    # lazyio reads whole shards: one request per shard file
    assert all(c % s == 0 or c == n for cs, s, n in
               zip(loaded.chunks, shards, data.shape, strict=True) for c in cs)


def test_sharded_write_on_partial_edge_shards(tmp_path, rng):
    """Shards that overhang the array's end are written whole (zarr pads them)."""
    data = rng.integers(0, 1000, (10, 7, 6), dtype="<i4")
    path = tmp_path / "edge.zspy"
    with dask.config.set({"array.chunk-size": "1KiB"}):
        lazyio.save(path, da.from_array(data, chunks=(3, 3, 6)), zarr_format=3,
                    chunks=(2, 2, 6), shards=(4, 4, 6), show_progressbar=False)
    np.testing.assert_array_equal(
        zarr.open_array(str(path), path=DATA, mode="r")[:], data)
    np.testing.assert_array_equal(lazyio.load(path, lazy=False)[0]["data"], data)


def test_shards_must_hold_whole_chunks(tmp_path, rng):
    """zarr refuses shards that are no multiple of the chunks: lazyio says so first,
    naming the target, and writes nothing."""
    path = tmp_path / "bad.zspy"
    with pytest.raises(ValueError, match=r"bad\.zspy.*whole number of chunks"):
        lazyio.save(path, rng.random((8, 8)), zarr_format=3, chunks=(3, 8),
                    shards=(4, 8), show_progressbar=False)
    assert not path.exists()


def test_default_chunks_fit_the_shards(tmp_path, rng):
    """Without ``chunks``, lazyio's default storage chunks shrink to divide the shards;
    only the main data is sharded (axes and metadata arrays are not)."""
    data = rng.integers(0, 100, (6, 10, 12), dtype="<u2")
    path = tmp_path / "fit.zspy"
    lazyio.save(path, data, zarr_format=3, shards=(4, 10, 12), show_progressbar=False)
    plain = zarr.open_array(str(path), path=DATA, mode="r")
    assert plain.shards == (4, 10, 12)
    assert all(s % c == 0 for s, c in zip(plain.shards, plain.chunks, strict=True))
    np.testing.assert_array_equal(plain[:], data)


def test_shards_need_one_length_per_axis(tmp_path, rng):
    with pytest.raises(ValueError, match="one length per axis"):
        lazyio.save(tmp_path / "n.zspy", rng.random((4, 4)), zarr_format=3, shards=(4,),
                    show_progressbar=False)
