"""Zarr v2 chunk files read without zarr-python: edges, missing chunks, fill value."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("separator", ["/", "."])
@pytest.mark.parametrize("chunks", [(4, 5, 6), (4, 13, 6)])
def test_direct_zarr_reads_equal_zarr(tmp_path, rng, separator, chunks):
    """Local Zarr v2 chunks read without zarr-python: edges, missing chunks, fill value."""
    import numcodecs
    import numpy as np
    import zarr

    from lazyio.backends.zarr.sources import ZarrSource
    from lazyio.backends.zarr.stores import StoreSpec
    from lazyio.location import as_location

    data = (rng.random((19, 13, 6)) * 100).astype("<f4")
    data[:8] = 7  # whole chunks equal to the fill value are not written
    z = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=data.shape, chunks=chunks, dtype=data.dtype,
        zarr_format=2, fill_value=7, compressors=numcodecs.Blosc(cname="zstd", clevel=1),
        chunk_key_encoding={"name": "v2", "separator": separator},
    )
    z[...] = data
    source = ZarrSource(StoreSpec("dir", as_location(str(tmp_path / "a.zarr"))), "",
                        data.shape, data.dtype, chunks)
    assert source._plan() is not None  # the direct path, not zarr-python
    boxes = [(slice(0, 19), slice(0, 13), slice(0, 6)), (slice(4, 12), slice(0, 13))]
    for _ in range(20):
        lo = [int(rng.integers(0, s)) for s in data.shape]
        hi = [int(rng.integers(a + 1, s + 1)) for a, s in zip(lo, data.shape, strict=True)]
        boxes.append(tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)))
    for box in boxes:
        np.testing.assert_array_equal(source[box], data[box])
