"""Direct chunk-file writes into local Zarr v2 arrays (lazyio.backends.zarr.targets)."""

import os

import dask.array as da
import numcodecs
import numpy as np
import pytest
import zarr

import lazyio
from lazyio.backends.zarr.targets import zarr_target


def _array_dir(path):
    (title,) = [n for n in os.listdir(path / "Experiments") if not n.startswith(".")]
    return path / "Experiments" / title / "data"


@pytest.mark.parametrize("dtype", ["<u2", ">f8", "i1"])
def test_edge_chunks_are_padded_and_read_back(tmp_path, rng, dtype):
    data = (rng.random((10, 7, 5)) * 100).astype(dtype)
    path = tmp_path / "edges.zspy"
    lazyio.save(path, da.from_array(data, chunks=(4, 3, 5)), chunks=(4, 3, 5),
                show_progressbar=False)
    root = _array_dir(path)
    arr = zarr.open_array(root, mode="r")
    np.testing.assert_array_equal(arr[:], data)
    np.testing.assert_array_equal(lazyio.load(path)[0]["data"].compute(), data)
    codec = numcodecs.get_codec(arr.metadata.compressor.get_config())
    edge = np.frombuffer(codec.decode((root / "2" / "2" / "0").read_bytes()), dtype=dtype)
    assert edge.size == 4 * 3 * 5  # stored whole, as Zarr v2 requires
    np.testing.assert_array_equal(edge.reshape(4, 3, 5)[:2, :1], data[8:, 6:])


def test_target_choice(tmp_path):
    v2 = zarr.create_array(tmp_path / "v2", shape=(8, 8), chunks=(4, 4), dtype="f4",
                           zarr_format=2)
    v3 = zarr.create_array(tmp_path / "v3", shape=(8, 8), chunks=(4, 4), dtype="f4",
                           zarr_format=3)
    assert zarr_target(v2).layout is not None
    assert zarr_target(v3).layout is None


def test_unaligned_region_goes_through_zarr(tmp_path):
    arr = zarr.create_array(tmp_path / "v2", shape=(8, 8), chunks=(4, 4), dtype="f4",
                            zarr_format=2, fill_value=0)
    target = zarr_target(arr)
    target[(slice(0, 4), slice(0, 8))] = np.ones((4, 8), "f4")
    target[(slice(5, 7), slice(1, 3))] = np.full((2, 2), 2, "f4")  # not chunk-aligned
    expected = np.zeros((8, 8), "f4")
    expected[:4] = 1
    expected[5:7, 1:3] = 2
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "v2", mode="r")[:], expected)
