"""The chunk index: offsets, sizes and masks per grid position, memoised per file version."""

from __future__ import annotations

import h5py
import numpy as np

import lazyio
from lazyio import handles
from lazyio.backends.hdf5.index import ChunkIndexKey, chunk_index
from lazyio.backends.hdf5.sources import Chunked, Contiguous, H5Source, ViaLibrary
from lazyio.location import as_location


def test_index_matches_h5py(tmp_path, rng):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", shape=(10, 9), dtype="<f4", chunks=(4, 3),
                             compression="gzip")
        d[0:4, :] = rng.random((4, 9))
        d[8:10, 6:9] = 1
    loc = as_location(str(path))
    index = chunk_index(loc, "/x", loc.modified_token())
    assert index.offsets.shape == (3, 3)
    written = {(0, 0), (0, 1), (0, 2), (2, 2)}
    for pos in np.ndindex(3, 3):
        assert (index.offsets[pos] >= 0) == (pos in written)
    with h5py.File(path, "r") as f:
        info = f["x"].id.get_chunk_info_by_coord((8, 6))
    assert index.offsets[2, 2] == info.byte_offset
    assert index.sizes[2, 2] == info.size
    assert chunk_index(loc, "/x", loc.modified_token()) is index  # memoised
    assert ChunkIndexKey(loc, "/x", loc.modified_token()) in handles.default_memo._values
    lazyio.close_all()


def test_read_strategy_is_explicit(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("contiguous", data=np.arange(10))
        f.create_dataset("chunked", data=np.arange(10), chunks=(5,), compression="gzip")
        f.create_dataset("lzf", data=np.arange(10), chunks=(5,), compression="lzf")
        f.create_dataset("strings", data=["a", "b"])
    loc = as_location(str(path))
    with h5py.File(path, "r") as f:
        s = {n: H5Source.from_dataset(loc, f[n]) for n in f}
    assert isinstance(s["contiguous"].strategy, Contiguous)
    assert s["contiguous"].offset
    assert isinstance(s["chunked"].strategy, Chunked)
    assert s["chunked"].filters == ((1, (4,)),)
    assert isinstance(s["lzf"].strategy, ViaLibrary)
    assert s["lzf"].filters is None
    assert isinstance(s["strings"].strategy, ViaLibrary)
    for name in ("contiguous", "chunked", "lzf"):
        np.testing.assert_array_equal(s[name][2:8], np.arange(2, 8))
    lazyio.close_all()
