"""xarray and HyperSpy interop: lazyio's signal dicts in, and out, of both."""

from __future__ import annotations

import sys

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from formats_table import EXT as FORMATS
from formats_table import HYPERSPY

import lazyio
from lazyio import interop


def make_signal(rng: np.random.Generator) -> dict:
    data = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    names, units = ["y", "x", "ky", "kx"], ["nm", "nm", "1/nm", "1/nm"]
    axes = [{"name": n, "units": u, "size": s, "scale": 0.25 * (i + 1), "offset": -1.0 * i,
             "navigate": i < 2}
            for i, (n, u, s) in enumerate(zip(names, units, data.shape, strict=True))]
    return {"data": data, "axes": axes,
            "metadata": {"General": {"title": "pattern"}, "Signal": {"quantity": "I (a.u.)"}},
            "original_metadata": {"detector": {"gain": 2}}}


@pytest.fixture(scope="module")
def hs():
    """HyperSpy's API, imported once for the module (it takes seconds)."""
    import hyperspy.api

    return hyperspy.api


@pytest.fixture(params=list(FORMATS))
def stored(request, tmp_path, rng):
    fmt = request.param
    path = str(tmp_path / f"in{FORMATS[fmt]}")
    signal = make_signal(rng)
    lazyio.save(path, signal, show_progressbar=False)
    return fmt, path, signal


def test_to_xarray_keeps_lazy_data_and_calibration(stored):
    fmt, path, signal = stored
    [loaded] = lazyio.load(path)
    arr = lazyio.to_xarray(loaded)
    assert isinstance(arr, xr.DataArray)
    assert isinstance(arr.data, da.Array)  # nothing was read
    if fmt == "npy":
        assert arr.dims == ("axis_0", "axis_1", "axis_2", "axis_3")
        np.testing.assert_array_equal(arr.coords["axis_2"].values, np.arange(5.0))
    else:
        assert arr.dims == ("y", "x", "ky", "kx")
        assert arr.name == "pattern"
        np.testing.assert_allclose(arr.coords["kx"].values, -3.0 + 1.0 * np.arange(6))
        assert arr.coords["ky"].attrs["units"] == "1/nm"
        assert arr.coords["y"].attrs["navigate"] == 1  # netCDF has no booleans
        assert arr.coords["kx"].attrs["navigate"] == 0
        assert arr.coords["kx"].attrs["long_name"] == "kx"
        assert (arr.attrs["long_name"], arr.attrs["units"]) == ("I", "a.u.")
        metadata, _ = interop.metadata_from_json(arr.attrs[interop.METADATA_ATTR])
        assert metadata["General"]["title"] == "pattern"
    np.testing.assert_array_equal(arr.sel(x=-0.5).values if fmt != "npy"
                                  else arr.isel(axis_1=1).values, signal["data"][:, 1])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_from_xarray_saves_to_every_format(tmp_path, rng, fmt):
    signal = make_signal(rng)
    arr = lazyio.to_xarray(signal).chunk({"y": 1})  # dask-backed, written streamed
    back = lazyio.from_xarray(arr)
    assert isinstance(back["data"], da.Array)
    path = str(tmp_path / f"from_xr{FORMATS[fmt]}")
    lazyio.save(path, back, show_progressbar=False)
    [loaded] = lazyio.load(path)
    np.testing.assert_array_equal(loaded["data"].compute(), signal["data"])
    if fmt != "npy":
        for got, want in zip(loaded["axes"], signal["axes"], strict=True):
            assert got["name"] == want["name"]
            assert got["units"] == want["units"]
            assert got["navigate"] == want["navigate"]
            assert got["scale"] == pytest.approx(want["scale"])
            assert got["offset"] == pytest.approx(want["offset"])
        assert loaded["metadata"]["General"]["title"] == "pattern"
    if fmt in HYPERSPY:
        assert loaded["original_metadata"] == {"detector": {"gain": 2}}
        assert lazyio.to_xarray(loaded).identical(
            lazyio.to_xarray(lazyio.load(path, lazy=False)[0]))


def test_dims_are_unique_and_non_uniform_axes_round_trip():
    data = np.zeros((2, 3, 4))
    energy = np.array([1.0, 2.0, 4.0, 8.0])
    signal = {"data": data, "axes": [
        {"name": "", "size": 2}, {"name": "axis_0", "size": 3},
        {"name": "E", "units": "eV", "size": 4, "axis": energy}]}
    arr = lazyio.to_xarray(signal)
    assert len(set(arr.dims)) == 3
    assert arr.dims[1] == "axis_0"
    np.testing.assert_array_equal(arr.coords["E"].values, energy)
    back = lazyio.from_xarray(arr)
    assert back["axes"][0]["name"] == ""
    assert back["axes"][1]["name"] == "axis_0"
    np.testing.assert_array_equal(back["axes"][2]["axis"], energy)
    assert back["axes"][2]["units"] == "eV"


def test_from_plain_dataarray():
    arr = xr.DataArray(
        np.arange(12.0).reshape(3, 4), dims=("time", "label"),
        coords={"time": [0.0, 0.5, 1.0], "label": list("abcd")},
        attrs={"instrument": "x"}, name="counts",
    )
    signal = lazyio.from_xarray(arr)
    time, label = signal["axes"]
    assert (time["name"], time["scale"], time["offset"]) == ("time", 0.5, 0.0)
    assert (label["scale"], label["offset"]) == (1.0, 0.0)  # labels: an index axis
    assert signal["metadata"]["General"]["title"] == "counts"
    assert signal["original_metadata"] == {"xarray_attrs": {"instrument": "x"}}
    with pytest.raises(TypeError, match="DataArray"):
        lazyio.from_xarray(np.zeros(3))


def test_missing_xarray_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r"lazyio\[xarray\]"):
        lazyio.to_xarray(np.zeros(3))


@pytest.mark.parametrize("lazy", [True, False])
def test_hyperspy_builds_and_saves_every_signal(stored, tmp_path, hs, lazy):
    from hyperspy.io import dict2signal

    fmt, path, signal = stored
    [loaded] = lazyio.load(path, lazy=lazy)
    s = dict2signal(loaded, lazy=lazy)
    assert s._lazy is lazy
    assert s.data.shape == signal["data"].shape
    if fmt != "npy":
        assert s.axes_manager.navigation_shape == (4, 3)  # HyperSpy orders x first
        assert s.axes_manager["kx"].scale == pytest.approx(1.0)
        assert s.metadata.General.title == "pattern"
    # BaseSignal(**dict) works too
    assert hs.signals.BaseSignal(**{k: v for k, v in loaded.items()
                                    if k in ("data", "axes", "metadata")}).data.shape == (
        signal["data"].shape)
    out = tmp_path / f"by_hyperspy_{fmt}.hspy"
    s.save(out, overwrite=True)
    [again] = lazyio.load(out)
    np.testing.assert_array_equal(again["data"].compute(), signal["data"])
    assert [a["name"] for a in again["axes"]] == [a["name"] for a in loaded["axes"]]
