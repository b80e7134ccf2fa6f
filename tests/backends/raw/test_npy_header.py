"""The .npy header and target: every header version, UTF-8 field names, and writes that
are byte for byte what numpy.save writes."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from npy_arrays import DTYPES, SHAPES, STRUCT, assert_same, leftovers, random_array

import lazyio


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_header_versions(tmp_path, rng, version, order):
    a = random_array(rng, (4, 3, 2), STRUCT, order)
    path = tmp_path / "v.npy"
    with open(path, "wb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "stored in format 3.0"
        np.lib.format.write_array(f, a, version=version)
    assert_same(lazyio.load(path)[0]["data"].compute(), np.load(path))
    assert_same(lazyio.load(path, lazy=False)[0]["data"], np.load(path))


def test_utf8_field_names_round_trip(tmp_path, rng):
    dt = np.dtype([("電流", "<f4"), ("µ", ">i2")])
    a = random_array(rng, (3, 2), dt)
    path = tmp_path / "u.npy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        np.save(tmp_path / "ref.npy", a)
    lazyio.save(path, a, show_progressbar=False)
    assert path.read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert path.read_bytes()[6:8] == b"\x03\x00"
    assert_same(lazyio.load(path, key="電流")[0]["data"].compute(), a["電流"])


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_numpy_writes_match_numpy_save(tmp_path, rng, dtype, shape, order):
    a = random_array(rng, shape, dtype, order)
    np.save(tmp_path / "ref.npy", a)
    lazyio.save(tmp_path / "out.npy", {"data": a}, show_progressbar=False)
    assert (tmp_path / "out.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()


@pytest.mark.parametrize(
    ("dtype", "shape", "chunks"),
    [
        ("<f4", (9, 7, 5), (4, 3, 2)),
        (">i2", (9, 7, 5), (9, 1, 5)),
        ("<c16", (3, 1000), (2, 333)),
        (STRUCT, (5, 4), (2, 3)),
        ("u1", (), ()),
        ("<f8", (0, 4), (1, 2)),
        ("?", (2, 3, 2, 3, 2), 1),
    ],
    ids=str,
)
def test_dask_writes_load_with_numpy(tmp_path, rng, dtype, shape, chunks):
    a = random_array(rng, shape, dtype)
    path = tmp_path / "d.npy"
    lazyio.save(path, da.from_array(a, chunks=chunks), show_progressbar=False)
    assert_same(np.load(path), a)
    if a.size:
        assert_same(np.load(path, mmap_mode="r"), a)
    np.save(tmp_path / "ref.npy", a)
    assert path.read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert leftovers(tmp_path) == []
