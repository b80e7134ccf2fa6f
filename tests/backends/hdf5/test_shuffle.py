"""The byte shuffle of the HDF5 backend against numcodecs' (HDF5's own filter)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("dtype", ["u1", "<u2", ">i2", "<f4", ">f4", "<f8", "c16", "V3"])
def test_numpy_shuffle_matches_numcodecs(dtype, rng):
    """The GIL-free shuffle of the HDF5 engine is byte-for-byte numcodecs' (HDF5's)."""
    import numcodecs
    import numpy as np

    from lazyio.backends.hdf5.shuffle import shuffle, unshuffle

    raw = rng.integers(0, 256, size=np.dtype(dtype).itemsize * 1001, dtype=np.uint8).tobytes()
    k = np.dtype(dtype).itemsize
    codec = numcodecs.Shuffle(elementsize=k)
    assert bytes(shuffle(raw, k)) == bytes(codec.encode(raw))
    assert bytes(unshuffle(codec.encode(raw), k)) == raw
