"""The ``lazyio`` xarray engine: every format, lazy, coordinates from the axes, CF
attributes that netCDF and Zarr writers take, and round trips that xarray.testing calls
identical."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from formats_table import EXT as FORMATS

import lazyio
from lazyio.interop import METADATA_ATTR, metadata_from_json
from lazyio.xarray_backend import LazyioBackendEntrypoint

ROOT = Path(__file__).resolve().parent.parent
ENGINE = LazyioBackendEntrypoint  # what the entry point names; xarray takes the class too
ENERGY = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])


def make_signal(rng: np.random.Generator) -> dict:
    data = rng.normal(size=(4, 5, 3, 6)).astype(np.float32)
    axes = [{"name": n, "units": u, "size": s, "scale": 0.5, "offset": 1.0, "navigate": i < 2}
            for i, (n, u, s) in enumerate(zip(["y", "x", "q", "E"], ["nm", "nm", "1/nm", "eV"],
                                              data.shape, strict=True))]
    return {"data": data, "axes": axes,
            "metadata": {"General": {"title": "scan"},
                         "Signal": {"quantity": "Intensity (counts)"},
                         "Acquisition": {"dwell": 1e-3, "tags": np.array([1, 2], "u2")}},
            "original_metadata": {"detector": {"gain": 2}}}


@pytest.fixture(params=list(FORMATS))
def stored(request, tmp_path, rng):
    fmt = request.param
    signal = make_signal(rng)
    if fmt in ("hspy", "zspy"):  # the formats that keep a non-uniform axis
        signal["axes"][3] = {**signal["axes"][3], "axis": ENERGY}
        del signal["axes"][3]["scale"], signal["axes"][3]["offset"]
    path = tmp_path / f"scan{FORMATS[fmt]}"
    lazyio.save(path, signal, chunks=(2, 5, 3, 6) if fmt != "usid" else None,
                show_progressbar=False)
    return fmt, path, signal


def test_entry_point_is_declared_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["xarray.backends"]["lazyio"]
    module, _, name = target.partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is LazyioBackendEntrypoint
    assert any(dep.startswith("h5netcdf") for dep in project["optional-dependencies"]["test"])


def test_entry_point_found_by_xarray(tmp_path, rng):
    """xarray's own discovery, through an installed distribution's entry_points.txt (a
    temporary dist-info on the path of a child process; the venv is left alone)."""
    site = tmp_path / "site"
    info = site / "lazyio_engine_probe-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lazyio-engine-probe\n"
                                   "Version: 1.0\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [f"{k} = {v}" for k, v in project["entry-points"]["xarray.backends"].items()]
    (info / "entry_points.txt").write_text("[xarray.backends]\n" + "\n".join(lines) + "\n")
    path = tmp_path / "scan.hspy"
    lazyio.save(path, make_signal(rng), show_progressbar=False)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        import xarray as xr
        assert "lazyio" in xr.backends.list_engines(), sorted(xr.backends.list_engines())
        arr = xr.open_dataarray({str(path)!r}, engine="lazyio", chunks={{}})
        print(type(arr.data).__module__.split(".")[0], arr.dims, arr.attrs["units"])
    """)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "dask ('y', 'x', 'q', 'E') counts"


def test_open_dataarray_every_format_lazily(stored):
    fmt, path, signal = stored
    arr = xr.open_dataarray(path, engine=ENGINE, chunks={})
    [loaded] = lazyio.load(path)
    assert isinstance(arr.data, da.Array)
    assert arr.data.chunks == loaded["data"].chunks  # xarray's tasks are lazyio's blocks
    np.testing.assert_array_equal(arr.values, signal["data"])
    if fmt == "npy":
        assert arr.dims == ("axis_0", "axis_1", "axis_2", "axis_3")
        return
    assert arr.dims == ("y", "x", "q", "E")
    assert arr.name == "scan"
    assert (arr.attrs["long_name"], arr.attrs["units"]) == ("Intensity", "counts")
    np.testing.assert_allclose(arr.coords["q"].values, 1.0 + 0.5 * np.arange(3))
    assert arr.coords["q"].attrs == {"long_name": "q", "units": "1/nm", "navigate": 0,
                                     "scale": 0.5, "offset": 1.0}
    assert arr.coords["y"].attrs["navigate"] == 1
    if fmt in ("hspy", "zspy"):
        np.testing.assert_array_equal(arr.coords["E"].values, ENERGY)  # non-uniform
        metadata, original = metadata_from_json(arr.attrs[METADATA_ATTR])
        assert metadata["Acquisition"]["dwell"] == 1e-3
        assert metadata["Acquisition"]["tags"].dtype == np.uint16
        assert original == {"detector": {"gain": 2}}
    # selection by coordinates reads only what it needs
    np.testing.assert_array_equal(arr.sel(x=1.5, y=slice(1.0, 1.5)).values,
                                  signal["data"][0:2, 1])


def test_without_chunks_it_is_xarray_lazy_indexing(stored):
    _, path, signal = stored
    arr = xr.open_dataarray(path, engine=ENGINE)
    assert not arr.variable._in_memory  # nothing read on opening
    np.testing.assert_array_equal(arr[1:3, ::2, 0].values, signal["data"][1:3, ::2, 0])


def test_netcdf_and_zarr_write_it_unchanged_and_read_back_identical(stored, tmp_path):
    fmt, path, _ = stored
    arr = xr.open_dataarray(path, engine=ENGINE, chunks={})
    arr.to_netcdf(tmp_path / "out.nc", engine="h5netcdf")
    with xr.open_dataarray(tmp_path / "out.nc", engine="h5netcdf") as nc:
        xr.testing.assert_identical(nc, arr)
    arr.to_dataset(name=arr.name or "signal").to_zarr(tmp_path / "out.zarr", mode="w",
                                                    consolidated=False)
    with xr.open_dataarray(tmp_path / "out.zarr", engine="zarr", consolidated=False) as zr:
        xr.testing.assert_identical(zr.rename(arr.name), arr)
        # from_xarray reads the CF attributes and the JSON back: a signal lazyio writes
        back = lazyio.from_xarray(zr)
    if fmt != "npy":
        assert back["metadata"]["Signal"]["quantity"] == "Intensity (counts)"
        assert [a["navigate"] for a in back["axes"]] == [True, True, False, False]
        assert [a["name"] for a in back["axes"]] == ["y", "x", "q", "E"]
    again = tmp_path / f"again{FORMATS[fmt]}"
    lazyio.save(again, back, show_progressbar=False)
    reopened = xr.open_dataarray(again, engine=ENGINE, chunks={})
    if fmt in ("hspy", "zspy"):  # they keep all metadata: the very same DataArray
        xr.testing.assert_identical(reopened, arr)
    else:  # .npy names the signal after the file; h5USID adds its file name to metadata
        xr.testing.assert_equal(reopened, arr)


def test_open_dataset_one_variable_per_signal(tmp_path, rng):
    import h5py

    path = tmp_path / "two.hspy"
    lazyio.save(path, make_signal(rng), show_progressbar=False)
    other = make_signal(rng)
    other["data"] = other["data"][:, :2]
    other["axes"][1] = {**other["axes"][1], "size": 2}
    other["metadata"]["General"]["title"] = "part/two"
    lazyio.save(tmp_path / "other.hspy", other, show_progressbar=False)
    with h5py.File(path, "r+") as f, h5py.File(tmp_path / "other.hspy", "r") as g:
        g.copy("Experiments/part-two", f["Experiments"])
    ds = xr.open_dataset(path, engine=ENGINE, chunks={})
    assert sorted(ds.data_vars) == ["part-two", "scan"]
    # the two x axes differ: the signal read second gets its own dim
    assert {ds["scan"].dims[1], ds["part-two"].dims[1]} == {"x", "x_1"}
    assert ds.sizes["x"] + ds.sizes["x_1"] == 7
    np.testing.assert_array_equal(ds["part-two"].values, other["data"])
    assert list(xr.open_dataset(path, engine=ENGINE, drop_variables="scan").data_vars) == [
        "part-two"]
    with pytest.raises(ValueError, match=r"exactly one data variable|more than one"):
        xr.open_dataarray(path, engine=ENGINE)


def test_guess_can_open_by_extension_and_content(stored, tmp_path):
    _, path, _ = stored
    engine = LazyioBackendEntrypoint()
    assert engine.guess_can_open(str(path))
    renamed = tmp_path / "no_extension"
    if path.is_file():
        renamed.write_bytes(path.read_bytes())
        assert engine.guess_can_open(renamed)  # recognised by its content alone
    nc = tmp_path / "plain.h5"
    xr.DataArray(np.zeros(3), dims="t", name="v").to_netcdf(nc, engine="h5netcdf")
    assert not engine.guess_can_open(nc)  # an HDF5 file, but not one lazyio reads
    assert not engine.guess_can_open(tmp_path / "missing.h5")
    assert not engine.guess_can_open(object())


def test_storage_options_pass_through(s3_server, rng):
    url = f"s3://{s3_server.bucket}/xarray/scan.hspy"
    signal = make_signal(rng)
    lazyio.save(url, signal, storage_options=s3_server.storage_options, overwrite=True,
                show_progressbar=False)
    arr = xr.open_dataarray(url, engine=ENGINE, chunks={},
                            backend_kwargs={"storage_options": s3_server.storage_options})
    np.testing.assert_array_equal(arr.sel(y=1.5).values, signal["data"][1])
    arr2 = xr.open_dataarray(url, engine=ENGINE, storage_options=s3_server.storage_options)
    assert arr2.dims == arr.dims


def test_from_xarray_navigation_dims_and_cf_attrs():
    arr = xr.DataArray(np.zeros((2, 3, 4)), dims=("t", "x", "E"),
                       coords={"E": ("E", np.arange(4.0), {"units": "eV"})},
                       attrs={"long_name": "Counts", "units": "1/s", "source": "x"})
    signal = lazyio.from_xarray(arr, navigation_dims=["t", "x"])
    assert [a["navigate"] for a in signal["axes"]] == [True, True, False]
    assert signal["axes"][2]["units"] == "eV"
    assert signal["metadata"]["Signal"]["quantity"] == "Counts (1/s)"
    assert signal["original_metadata"] == {"xarray_attrs": {"source": "x"}}
    with pytest.raises(ValueError, match="nope"):
        lazyio.from_xarray(arr, navigation_dims=["nope"])
    # and back: to_xarray(from_xarray(...)) keeps what xarray had
    again = lazyio.to_xarray(signal)
    assert again.coords["t"].attrs["navigate"] == 1
    assert (again.attrs["long_name"], again.attrs["units"]) == ("Counts", "1/s")


def test_engine_data_computes_on_a_cluster(client, tmp_path, rng):
    """Each xarray task reads its lazyio block on the worker (the BackendArray travels
    pickled and reads on the synchronous scheduler there, never submitting from a
    worker)."""
    signal = make_signal(rng)
    path = tmp_path / "cluster.zspy"
    lazyio.save(path, signal, chunks=(1, 5, 3, 6), show_progressbar=False)
    with warnings.catch_warnings():  # y=1 splits lazyio's (whole-array) block: intended
        warnings.simplefilter("ignore", UserWarning)
        arr = xr.open_dataarray(path, engine=ENGINE, chunks={"y": 1})
    assert arr.data.npartitions == 4
    total = client.compute(arr.sum("E").data).result()
    np.testing.assert_allclose(total, signal["data"].sum(axis=3), rtol=1e-5)
