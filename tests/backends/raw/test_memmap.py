"""memmap_distributed: raw files read as numpy.memmap reads them, chunked in storage order,
scans gathered by positions, and million-chunk graphs built fast."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
from npy_arrays import assert_same, random_array

from lazyio.backends.raw.memmap import memmap_distributed


def test_auto_chunks_follow_storage_order(tmp_path):
    path = tmp_path / "raw.bin"
    np.zeros((100, 50, 40), "<f4").tofile(path)
    limit = 2 * 50 * 40 * 4  # two C rows
    c = memmap_distributed(path, "<f4", shape=(100, 50, 40), block_size_limit=limit)
    assert c.chunks == ((2,) * 50, (50,), (40,))
    f = memmap_distributed(path, "<f4", shape=(100, 50, 40), order="F", block_size_limit=limit)
    assert f.chunks == ((100,), (25, 25), (1,) * 40)


@pytest.mark.parametrize("order", ["C", "F"])
def test_memmap_distributed_matches_numpy_memmap(tmp_path, rng, order):
    """A raw detector dump: a header of N bytes, then frames, read like numpy.memmap."""
    dt = np.dtype([("frame", "<u2", (4, 5)), ("time", "<f8")])
    records = random_array(rng, (3, 2), dt, order)
    path = tmp_path / "dump.raw"
    path.write_bytes(b"HEADER-17-BYTES!!" + records.tobytes(order="A"))
    mm = np.memmap(path, dt, "r", offset=17, shape=(3, 2), order=order)
    for key in ("frame", "time"):
        lazy = memmap_distributed(path, dt, offset=17, shape=(3, 2), order=order, key=key,
                                  chunks=2)
        assert_same(lazy.compute(), np.asarray(mm[key]))
    # Sub-array dtypes expand as in numpy.memmap; a 1-D shape is inferred from the size.
    sub = np.dtype(("<u2", (4, 5)))
    path.write_bytes(b"H" * 8 + random_array(rng, (6, 4, 5), "<u2").tobytes())
    lazy = memmap_distributed(path, sub, offset=8, order=order, chunks=(4, 3, 2))
    assert lazy.shape == (6, 4, 5)
    assert_same(lazy.compute(), np.asarray(np.memmap(path, sub, "r", 8, (6,), order)))


def test_positions(tmp_path, rng):
    frames = random_array(rng, (7, 4, 5), "<f4")
    path = tmp_path / "scan.raw"
    frames.tofile(path)
    pos = np.array([[0, 0], [0, 1], [1, 0], [2, 2], [1, 1], [0, 0], [2, 0]])  # (0,0) twice
    expected = np.zeros((3, 4, 4, 5), "<f4")
    for i, p in enumerate(pos):
        expected[tuple(p)] = frames[i]  # the last frame at a position wins
    for chunks in ["auto", (2, 2, 4, 5), (1, 3, 2, 3), (3, 4, 1, 1)]:
        data = memmap_distributed(path, "<f4", positions=pos, shape=(3, 4, 4, 5), chunks=chunks)
        assert_same(data.compute(), expected)
        assert_same(pickle.loads(pickle.dumps(data)).compute(), expected)
    assert_same(data[1:, 3].compute(), expected[1:, 3])  # no frame there: zeros
    with pytest.raises(ValueError, match="outside"):
        memmap_distributed(path, "<f4", positions=pos + 3, shape=(3, 4, 4, 5))
    with pytest.raises(ValueError, match="shape"):
        memmap_distributed(path, "<f4", positions=pos)


def test_million_chunk_graph_builds_fast(tmp_path):
    path = tmp_path / "big.raw"
    with open(path, "wb") as f:
        f.truncate(1000 * 1000 * 16)
    start = time.perf_counter()
    data = memmap_distributed(path, "u1", shape=(1000, 1000, 4, 4), chunks=(1, 1, 4, 4))
    elapsed = time.perf_counter() - start
    assert data.npartitions == 1_000_000
    assert elapsed < 1.0, f"building a million-chunk graph took {elapsed:.2f} s"
    assert (data[999, 999].compute() == 0).all()
