"""The HyperSpy-in-HDF5 (.hspy) format: the conformance suite and what only hspy does."""

from __future__ import annotations

import numpy as np
import pytest
from formats_table import SUITE_KWARGS

import lazyio
from lazyio.testing import FormatTests, example_signal


class TestHspy(FormatTests):
    format_name = "hspy"
    write_kwargs = SUITE_KWARGS["hspy"]

    @pytest.fixture
    def signal(self):
        return example_signal(dtype="<u2")


@pytest.mark.parametrize("compression", [None, "lzf", "gzip", "blosc"])
def test_hspy_compression_options(tmp_path, rng, compression):
    import h5py
    import hdf5plugin

    data = rng.integers(0, 50, (20, 30)).astype("u2")
    comp = hdf5plugin.Blosc() if compression == "blosc" else compression
    path = tmp_path / "c.hspy"
    lazyio.save(path, data, compression=comp, chunks=(5, 30), show_progressbar=False)
    with h5py.File(path) as f:
        dset = f["Experiments/__unnamed__/data"]
        filters = dset.id.get_create_plist()
        ids = [filters.get_filter(i)[0] for i in range(filters.get_nfilters())]
    expected = {None: [], "lzf": [2, 32000], "gzip": [2, 1], "blosc": [32001]}[compression]
    assert ids == expected  # no shuffle without compression, unlike RosettaSciIO
    np.testing.assert_array_equal(lazyio.load(path)[0]["data"].compute(), data)
