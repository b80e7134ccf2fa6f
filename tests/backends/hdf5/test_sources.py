"""HDF5 chunk sources read without h5py: every box, edges included, as h5py reads it."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "options",
    [{"compression": "gzip", "shuffle": True}, {"compression": "gzip"}, {"shuffle": True},
     {}, {"fletcher32": True, "shuffle": True, "compression": "gzip"}],
)
@pytest.mark.parametrize("dtype", ["<u2", ">f4", "<f8", "i1"])
@pytest.mark.parametrize(("shape", "chunks"), [((37, 23, 5), (4, 3, 5)),
                                               ((45, 33, 1100), (8, 7, 1100))])
def test_chunk_reads_equal_h5py(tmp_path, rng, options, dtype, shape, chunks):
    """Small chunks are decoded together, large ones unshuffled in place; every box,
    edges included, reads as h5py does."""
    import h5py
    import numpy as np

    import lazyio

    data = (rng.random(shape) * 100).astype(dtype)
    path = tmp_path / "chunks.hspy"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, chunks=chunks, **options)
        f.attrs["file_format"] = "HyperSpy"
    from lazyio.backends.hdf5.sources import H5Source
    from lazyio.location import as_location

    with h5py.File(path, "r") as f:
        source = H5Source.from_dataset(as_location(str(path)), f["x"])
    assert source.filters is not None  # the direct path, not h5py
    for _ in range(30):
        lo = [int(rng.integers(0, s)) for s in data.shape]
        hi = [int(rng.integers(a + 1, s + 1)) for a, s in zip(lo, data.shape, strict=True)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        np.testing.assert_array_equal(source[box], data[box])
    lazyio.close_all()
