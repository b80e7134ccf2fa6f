"""h5USID: lazyio against pyUSID, the reference implementation of the schema.

Files written by pyUSID must read in lazyio as pyUSID's ``reshape_to_n_dims`` reshapes
them (dimensions slowest first), and files written by lazyio must pass pyUSID's
``check_if_main`` and reshape to the same data. pyUSID 0.0.12's writer calls
``numpy.product``, removed in numpy 2: the fixtures provide that name while pyUSID writes,
and only there; lazyio itself never needs it.
"""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
import time
import warnings

import dask
import dask.array as da
import h5py
import numpy as np
import pytest
from formats_table import SUITE_KWARGS

import lazyio
import lazyio.formats.usid.schema
from lazyio import usid
from lazyio.errors import (
    FormatError,
    LazyioWarning,
    NonUniformAxisError,
    SourceNotFoundError,
    TargetExistsError,
    UnsupportedError,
)
from lazyio.location import as_location
from lazyio.testing import FormatTests, example_signal

pyUSID = importlib.import_module("pyUSID")
from pyUSID import Dimension


class TestUsid(FormatTests):
    format_name = "usid"
    write_kwargs = SUITE_KWARGS["usid"]

    @pytest.fixture
    def signal(self):
        return example_signal(dtype="<f8")


MAIN = "/Measurement_000/Channel_000/Raw_Data"


# --------------------------------------------------------------------------- file builders


def _pyusid_file(path, datasets):
    """Write ``[(group, name, data, quantity, units, pos_dims, spec_dims, kwargs)]`` with
    pyUSID's ``write_main_dataset``."""
    with h5py.File(path, "w") as f:
        for group, name, data, quantity, units, pos, spec, kwargs in datasets:
            grp = f.require_group(group)
            pyUSID.hdf_utils.write_main_dataset(
                grp, data, name, quantity, units, pos, spec, **kwargs
            )
    return str(path)


def _column_order_file(path, rng):
    """Ancillary columns stored fastest first (as very old writers did): the N-D order
    must come from how fast each index changes, not from the column order."""
    x, y = 5, 3
    data = rng.random((x * y, 4), dtype=np.float32)
    with h5py.File(path, "w") as f:
        grp = f.create_group("Measurement_000/Channel_000")
        yy, xx = np.meshgrid(np.arange(y), np.arange(x), indexing="ij")
        inds = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.uint32)
        vals = (inds * np.array([0.25, 2.0])).astype(np.float32)
        attrs = {"labels": np.array([b"X", b"Y"]), "units": np.array([b"um", b"mm"])}
        pos_i = grp.create_dataset("Position_Indices", data=inds)
        pos_v = grp.create_dataset("Position_Values", data=vals)
        spec_i = grp.create_dataset("Spectroscopic_Indices", data=np.arange(4)[None].astype("u4"))
        spec_v = grp.create_dataset("Spectroscopic_Values", data=np.arange(4)[None] * 1.5)
        for dset in (pos_i, pos_v):
            dset.attrs.update(attrs)
        for dset in (spec_i, spec_v):
            dset.attrs.update({"labels": np.array([b"Time"]), "units": np.array([b"s"])})
        main = grp.create_dataset("Raw_Data", data=data)
        main.attrs.update({"quantity": "Height", "units": "nm"})
        pyUSID.hdf_utils.link_as_main(main, pos_i, pos_v, spec_i, spec_v)
    return str(path), data.reshape(y, x, 4)


def _serpentine_file(path, rng):
    """Rows of a serpentine scan: every other line runs backwards. pyUSID reshapes these
    as if they were C-ordered; lazyio gathers the steps into grid order."""
    x, y, n = 4, 3, 6
    grid = rng.random((y, x, n), dtype=np.float32)
    rows, inds = [], []
    for j in range(y):
        for i in range(x) if j % 2 == 0 else reversed(range(x)):
            rows.append(grid[j, i])
            inds.append((j, i))
    with h5py.File(path, "w") as f:
        grp = f.create_group("Measurement_000/Channel_000")
        inds = np.array(inds, dtype=np.uint32)
        pos_i = grp.create_dataset("Position_Indices", data=inds)
        pos_v = grp.create_dataset("Position_Values", data=inds.astype(np.float32))
        spec_i = grp.create_dataset("Spectroscopic_Indices", data=np.arange(n)[None].astype("u4"))
        spec_v = grp.create_dataset("Spectroscopic_Values", data=np.arange(n)[None] * 1.0)
        for dset, labels in ((pos_i, [b"Y", b"X"]), (pos_v, [b"Y", b"X"]),
                             (spec_i, [b"E"]), (spec_v, [b"E"])):
            dset.attrs["labels"] = np.array(labels)
            dset.attrs["units"] = np.array([b"px"] * len(labels))
        main = grp.create_dataset("Raw_Data", data=np.array(rows), chunks=(4, n))
        main.attrs.update({"quantity": "Counts", "units": "a.u."})
        pyUSID.hdf_utils.link_as_main(main, pos_i, pos_v, spec_i, spec_v)
    return str(path), grid


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small pyUSID-written files, built once for the module."""
    rng = np.random.default_rng(4)
    tmp = tmp_path_factory.mktemp("usid")
    out = {}
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setattr(np, "product", np.prod, raising=False)
        warnings.simplefilter("ignore")  # pyUSID's own deprecation notices
        grp = "Measurement_000/Channel_000"
        # fastest dimension first (pyUSID's default order of arguments)
        pos = [Dimension("X", "um", np.arange(5) * 0.5),
               Dimension("Y", "um", np.linspace(1, 2, 3))]
        spec = [Dimension("Bias", "V", np.linspace(-1, 1, 7)), Dimension("Cycle", "#", [0, 1])]
        out["multi"] = _pyusid_file(tmp / "multi.h5", [
            (grp, "Raw_Data", rng.random((15, 14), dtype=np.float32), "Current", "nA",
             pos, spec, {}),
        ])
        out["three_pos"] = _pyusid_file(tmp / "three_pos.h5", [
            (grp, "Raw_Data", rng.integers(0, 1000, (24, 6), dtype=np.int16), "Counts", "a.u.",
             [Dimension("Z", "nm", 2), Dimension("Y", "nm", 3), Dimension("X", "nm", 4)],
             Dimension("Energy", "eV", np.arange(6) * 0.1 + 100), {"slow_to_fast": True,
                                                                   "chunks": (6, 3)}),
        ])
        out["pos_only"] = _pyusid_file(tmp / "pos_only.h5", [
            (grp, "Raw_Data", rng.random((24, 1)), "Height", "m",
             [Dimension("X", "nm", 6), Dimension("Y", "nm", 4)],
             Dimension("arb", "a.u.", 1), {}),
        ])
        out["spec_only"] = _pyusid_file(tmp / "spec_only.h5", [
            (grp, "Raw_Data", rng.random((1, 24), dtype=np.float32), "Intensity", "counts",
             Dimension("arb", "a.u.", 1),
             [Dimension("Freq", "Hz", np.arange(8) * 10.0), Dimension("Amp", "V", 3)], {}),
        ])
        out["two_main"] = _pyusid_file(tmp / "two_main.h5", [
            (grp, "Raw_Data", rng.random((6, 10), dtype=np.float32), "Current", "nA",
             [Dimension("X", "um", 3), Dimension("Y", "um", 2)],
             Dimension("Bias", "V", 10), {}),
            ("Measurement_001/Channel_000", "Other", rng.integers(0, 9, (4, 3), dtype=np.uint8),
             "Phase", "deg", Dimension("X", "um", 4), Dimension("Cycle", "#", 3), {}),
        ])
        compound = np.zeros((12, 5), dtype=[("amp", "f4"), ("phase (rad)", "f8")])
        compound["amp"] = rng.random((12, 5))
        compound["phase (rad)"] = rng.random((12, 5))
        out["compound"] = _pyusid_file(tmp / "compound.h5", [
            (grp, "Raw_Data", compound, "Response", "a.u.",
             [Dimension("X", "um", 4), Dimension("Y", "um", 3)],
             Dimension("Freq", "kHz", np.arange(5) + 300.0), {}),
        ])
        out["non_uniform"] = _pyusid_file(tmp / "non_uniform.h5", [
            (grp, "Raw_Data", rng.random((6, 5), dtype=np.float32), "Current", "nA",
             [Dimension("X", "um", 3), Dimension("Y", "um", 2)],
             Dimension("Bias", "V", np.array([0.0, 1.0, 3.0, 7.0, 15.0])), {}),
        ])
        out["old"] = _pyusid_file(tmp / "old.h5", [
            (grp, "Raw_Data", rng.random((15, 14), dtype=np.float32), "Current", "nA",
             pos, spec, {}),
        ])
        _add_region_references(out["old"])
        out["column_order"], out["column_order_data"] = _column_order_file(
            tmp / "column_order.h5", rng)
    out["serpentine"], out["serpentine_data"] = _serpentine_file(tmp / "serpentine.h5", rng)
    return out


def _add_region_references(path):
    """What pyUSID < 0.0.7 wrote: one region-reference attribute per dimension label."""
    with h5py.File(path, "r+") as f:
        main = f[MAIN]
        for name, spectroscopic in (("Position", False), ("Spectroscopic", True)):
            for kind in ("Indices", "Values"):
                dset = f[main.attrs[f"{name}_{kind}"]]
                labels = [s.decode() for s in dset.attrs["labels"]]
                for i, label in enumerate(labels):
                    region = (slice(i, i + 1), slice(None)) if spectroscopic else (
                        slice(None), slice(i, i + 1))
                    dset.attrs[label] = dset.regionref[region]
        main.attrs["Bias"] = main.regionref[:, 0:7]


def _reference(path, dataset=MAIN):
    """pyUSID's N-D form (slowest first), its labels, and its per-dimension values."""
    with h5py.File(path, "r") as f:
        h5_main = pyUSID.USIDataset(f[dataset])
        nd, ok, labels = pyUSID.hdf_utils.reshape_to_n_dims(
            h5_main, get_labels=True, sort_dims=True
        )
        assert ok is True
        keep = [i for i, s in enumerate(nd.shape) if s > 1]
        values = {}
        for lab in h5_main.pos_dim_labels:
            values[lab] = np.asarray(h5_main.get_pos_values(lab))
        for lab in h5_main.spec_dim_labels:
            values[lab] = np.asarray(h5_main.get_spec_values(lab))
        npos = len(h5_main.pos_dim_labels)
        navigate = [i < npos for i in keep]
        return nd.reshape([nd.shape[i] for i in keep]), [str(labels[i]) for i in keep], \
            values, navigate


def _check_like_pyusid(signal, path, dataset=MAIN, field=None):
    ref, labels, values, navigate = _reference(path, dataset)
    if field is not None:
        ref = ref[field]
    data = signal["data"]
    got = data.compute() if isinstance(data, da.Array) else data
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)
    assert [a["name"] for a in signal["axes"]] == labels
    assert [a["navigate"] for a in signal["axes"]] == navigate
    for axis in signal["axes"]:
        vals = values[axis["name"]]
        assert axis["size"] == len(vals)
        assert axis["offset"] == pytest.approx(float(vals[0]))
        assert axis["scale"] == pytest.approx((float(vals[-1]) - float(vals[0])) / (len(vals) - 1))


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("name", ["multi", "three_pos", "pos_only", "spec_only", "old"])
def test_reads_pyusid_files_as_pyusid_reshapes_them(files, name, lazy):
    (signal,) = usid.file_reader(files[name], lazy=lazy)
    assert isinstance(signal["data"], da.Array) is lazy
    assert signal["attributes"]["_lazy"] is lazy
    _check_like_pyusid(signal, files[name])


def test_metadata_and_original_metadata(files):
    (signal,) = usid.file_reader(files["multi"])
    assert signal["metadata"]["General"]["title"] == "Raw_Data"
    assert signal["metadata"]["Signal"]["quantity"] == "Current (nA)"
    om = signal["original_metadata"]
    assert (om["quantity"], om["units"], om["dataset_path"]) == ("Current", "nA", MAIN)
    assert om["dataset_attributes"]["pyUSID_version"] == pyUSID.__version__
    assert "Position_Indices" not in om["dataset_attributes"]  # references are dropped
    assert [a["units"] for a in signal["axes"]] == ["um", "um", "#", "V"]


def test_dimension_order_comes_from_the_indices_not_the_columns(files):
    (signal,) = usid.file_reader(files["column_order"], lazy=True)
    assert [a["name"] for a in signal["axes"]] == ["Y", "X", "Time"]
    np.testing.assert_array_equal(signal["data"].compute(), files["column_order_data"])
    _check_like_pyusid(signal, files["column_order"])
    y, x = signal["axes"][:2]
    assert (y["scale"], x["scale"], y["units"], x["units"]) == (2.0, 0.25, "mm", "um")


def test_serpentine_scan_is_gathered_into_grid_order(files):
    for lazy in (True, False):
        (signal,) = usid.file_reader(files["serpentine"], lazy=lazy)
        got = signal["data"].compute() if lazy else signal["data"]
        np.testing.assert_array_equal(got, files["serpentine_data"])


def test_two_main_datasets_and_dataset_path(files):
    signals = usid.file_reader(files["two_main"], lazy=True)
    assert [s["metadata"]["General"]["title"] for s in signals] == ["Raw_Data", "Other"]
    _check_like_pyusid(signals[0], files["two_main"])
    other = "/Measurement_001/Channel_000/Other"
    _check_like_pyusid(signals[1], files["two_main"], other)
    (only,) = usid.file_reader(files["two_main"], dataset_path=other)
    _check_like_pyusid(only, files["two_main"], other)


@pytest.mark.parametrize("lazy", [True, False])
def test_compound_dtype_gives_one_signal_per_field(files, lazy):
    signals = usid.file_reader(files["compound"], lazy=lazy)
    # titled after the dataset, the dataset's quantity as signal_type, as RosettaSciIO
    assert [s["metadata"]["General"]["title"] for s in signals] == ["Raw_Data", "Raw_Data"]
    assert [s["metadata"]["Signal"]["signal_type"] for s in signals] == ["Response"] * 2
    assert [s["original_metadata"]["field"] for s in signals] == ["amp", "phase (rad)"]
    assert signals[1]["metadata"]["Signal"]["quantity"] == "phase (rad)"
    assert signals[1]["original_metadata"]["units"] == "rad"
    for signal in signals:
        field = signal["original_metadata"]["field"]
        _check_like_pyusid(signal, files["compound"], field=field)
    assert signals[0]["data"].dtype == np.float32
    assert signals[1]["data"].dtype == np.float64


def test_non_uniform_dimension_warns_raises_or_becomes_an_axis(files):
    path = files["non_uniform"]
    with pytest.warns(LazyioWarning, match="Ignoring non-uniformity of dimension: Bias"):
        (signal,) = usid.file_reader(path)
    bias = signal["axes"][-1]
    assert (bias["offset"], bias["scale"], bias["size"]) == (0.0, 1.0, 5)
    assert type(bias["scale"]) is int  # RosettaSciIO's number type, kept by a .hspy rewrite
    with pytest.raises(NonUniformAxisError, match="Bias was varied non-uniformly"):
        usid.file_reader(path, ignore_non_uniform_dims=False)
    with pytest.raises(ValueError, match="non-uniformly"):  # RosettaSciIO's exception type
        usid.file_reader(path, ignore_non_uniform_dims=False)
    (signal,) = lazyio.load(path, non_uniform="axis")
    bias = signal["axes"][-1]
    np.testing.assert_array_equal(bias["axis"], [0, 1, 3, 7, 15])
    assert "scale" not in bias
    assert [a["name"] for a in signal["axes"]] == ["Y", "X", "Bias"]
    assert signal["axes"][0]["scale"] == 1.0


def test_matches_rosettasciio_reader(files):
    rsciio_usid = importlib.import_module("rsciio.usid")
    for name in ("multi", "three_pos", "compound", "two_main", "non_uniform"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = usid.file_reader(files[name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = rsciio_usid.file_reader(files[name])
        assert len(ours) == len(ref)
        for mine, theirs in zip(ours, ref, strict=True):
            np.testing.assert_array_equal(mine["data"], theirs["data"])
            for a, b in zip(mine["axes"], theirs["axes"], strict=True):
                assert (a["name"], a["units"], a["size"]) == (b["name"], b["units"], b["size"])
                assert a["offset"] == pytest.approx(b["offset"])
                assert a["scale"] == pytest.approx(b["scale"], rel=1e-4)
            for key in ("title",):
                assert mine["metadata"]["General"][key] == theirs["metadata"]["General"][key]
            assert mine["metadata"]["Signal"]["signal_type"] == (
                theirs["metadata"]["Signal"]["signal_type"]
            )


def test_non_uniform_axis_has_rosettasciio_number_types(files, tmp_path):
    """Issue 14: the ignored non-uniform axis has scale 1 (int) as in RosettaSciIO's
    dictionary, and keeps it through a .hspy rewrite read by RosettaSciIO."""
    from rsciio.hspy import file_reader as hspy_reader

    rsciio_usid = importlib.import_module("rsciio.usid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (ours,) = usid.file_reader(files["non_uniform"])
        (ref,) = rsciio_usid.file_reader(files["non_uniform"])
    for a, b in zip(ours["axes"], ref["axes"], strict=True):
        assert (type(a["scale"]), type(a["offset"])) == (type(b["scale"]), type(b["offset"]))
    assert type(ours["axes"][-1]["scale"]) is type(ref["axes"][-1]["scale"]) is int
    lazyio.save(tmp_path / "nu.hspy", ours, show_progressbar=False)
    back = hspy_reader(str(tmp_path / "nu.hspy"))[0]
    assert back["axes"][-1]["scale"] == 1
    assert np.asarray(back["axes"][-1]["scale"]).dtype.kind == "i"


def test_lazy_array_is_chunk_aligned_and_reads_one_spectrum_cheaply(tmp_path, rng, monkeypatch):
    path = tmp_path / "big.h5"
    data = rng.random((64 * 64, 256), dtype=np.float32)
    with h5py.File(path, "w") as f:
        grp = f.create_group("Measurement_000/Channel_000")
        main = grp.create_dataset("Raw_Data", data=data, chunks=(128, 64), compression="gzip")
        _link_grid(grp, main, (64, 64), (256,))
    with dask.config.set({"array.chunk-size": "1MiB"}):
        (signal,) = lazyio.load(path)
    arr = signal["data"]
    assert arr.shape == (64, 64, 256)
    assert len(arr.dask) == arr.npartitions  # one layer: no reshape or rechunk tasks
    for size in arr.chunks[0][:-1]:  # blocks hold whole storage chunks (128 rows = 2 lines)
        assert (size * 64) % 128 == 0
    assert set(arr.chunks[1]) == {64}
    assert all(c % 64 == 0 for c in arr.chunks[2][:-1])

    reads = []
    read_2d = lazyio.formats.usid.schema.USIDView._read_2d

    def spy(self, rows, cols):
        reads.append((rows, cols))
        return read_2d(self, rows, cols)

    monkeypatch.setattr(lazyio.formats.usid.schema.USIDView, "_read_2d", spy)
    start = time.perf_counter()
    np.testing.assert_array_equal(arr[3, 5].compute(scheduler="sync"), data[3 * 64 + 5])
    assert time.perf_counter() - start < 1.0
    assert reads == [(slice(197, 198), slice(0, 256))]  # one row, not the whole block
    reads.clear()
    image = arr[:, :, 7].compute(scheduler="sync")
    np.testing.assert_array_equal(image, data[:, 7].reshape(64, 64))
    assert all(c.stop - c.start == 1 for _, c in reads)


def _link_grid(grp, main, pos_shape, spec_shape):
    """Ancillary datasets of a C-ordered grid, linked with lazyio's own schema helpers."""
    def anc(prefix, shape, transpose):
        inds = lazyio.formats.usid.schema.grid_indices(shape)
        inds = inds.T if transpose else inds
        labels = np.array([f"{prefix}{i}".encode() for i in range(len(shape))])
        out = []
        for kind, data in (("Indices", inds), ("Values", inds.astype(np.float32))):
            dset = grp.create_dataset(f"{prefix}_{kind}", data=data)
            dset.attrs.update({"labels": labels, "units": np.array([b"px"] * len(shape))})
            out.append(dset)
        return out
    pos = anc("Position", pos_shape, False)
    spec = anc("Spectroscopic", spec_shape, True)
    main.attrs.update({"quantity": "Counts", "units": "a.u."})
    for name, dset in zip(["Position_Indices", "Position_Values", "Spectroscopic_Indices",
                           "Spectroscopic_Values"], pos + spec, strict=True):
        main.attrs[name] = dset.ref


# --------------------------------------------------------------------------- errors and sniffing


def test_sniff_and_format_detection(files, tmp_path):
    def sniff(path):
        with open(path, "rb") as fh:
            return usid.sniff(as_location(str(path)), fh.read(512))

    assert sniff(files["multi"])
    hspy = tmp_path / "signal.hspy"
    lazyio.save(hspy, np.arange(12.0).reshape(3, 4), show_progressbar=False)
    assert not sniff(hspy)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros((3, 4))
    assert not sniff(plain)
    assert lazyio.formats.detect_format(as_location(files["multi"])) == "usid"


def test_clear_errors(files, tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros((3, 4))
    with pytest.raises(FormatError, match=r"plain\.h5: no USID main dataset"):
        usid.file_reader(str(plain))
    with pytest.raises(FormatError, match="is not a USID main dataset: it has no string"):
        usid.file_reader(str(plain), dataset_path="/x")
    with pytest.raises(SourceNotFoundError, match="no dataset at '/nothing'"):
        usid.file_reader(files["multi"], dataset_path="/nothing")
    with pytest.raises(FormatError, match=r"plain\.h5: no USID main dataset"):
        lazyio.load(plain)  # detected as USID by its extension
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(FormatError, match="not an HDF5 file"):
        usid.file_reader(str(text))
    empty = tmp_path / "empty.h5"
    with pytest.raises(UnsupportedError, match="empty data"):
        lazyio.save(empty, np.zeros((0, 4), np.float32))
    with pytest.raises(UnsupportedError, match="hold numbers"):
        lazyio.save(empty, np.array([["a", "b"]]))
    assert not empty.exists()


# --------------------------------------------------------------------------- writing


def _signal(data, nav, names=None, units=None, quantity="Intensity (counts)", title="EELS"):
    axes = []
    for i, size in enumerate(data.shape):
        axes.append({
            "name": names[i] if names else "", "units": units[i] if units else "",
            "size": size, "offset": 0.5 * i, "scale": 1.0 + i, "navigate": i < nav,
        })
    return {"data": data, "axes": axes,
            "metadata": {"General": {"title": title}, "Signal": {"quantity": quantity}}}


def _check_pyusid_reads(path, expected, dataset="/Measurement_000/Channel_000/EELS"):
    with h5py.File(path, "r") as f:
        assert pyUSID.hdf_utils.check_if_main(f[dataset], verbose=True)
        nd = pyUSID.USIDataset(f[dataset]).get_n_dim_form()
        np.testing.assert_array_equal(np.squeeze(nd), expected)
        nd_sorted, ok = pyUSID.hdf_utils.reshape_to_n_dims(f[dataset], sort_dims=True)
        assert ok is True
        np.testing.assert_array_equal(np.squeeze(nd_sorted), expected)


@pytest.mark.parametrize("as_dask", [False, True])
@pytest.mark.parametrize(("shape", "nav"), [
    ((4, 3, 5, 2), 2),  # 2 position and 2 spectroscopic dimensions
    ((6, 10), 1),
    ((2, 3, 4), 3),     # position-only
    ((7, 5), 0),        # spectroscopic-only
])
def test_written_files_are_main_datasets_pyusid_reshapes(tmp_path, rng, shape, nav, as_dask):
    data = rng.random(shape, dtype=np.float32)
    names = [f"d{i}" for i in range(len(shape))]
    units = ["nm"] * nav + ["eV"] * (len(shape) - nav)
    signal = _signal(da.from_array(data, chunks=2) if as_dask else data, nav, names, units)
    path = tmp_path / "out.h5"
    lazyio.save(path, signal, show_progressbar=False)
    assert not hasattr(np, "product")  # lazyio needs no numpy shim to write
    _check_pyusid_reads(path, data)
    with h5py.File(path, "r") as f:
        h5_main = pyUSID.USIDataset(f["/Measurement_000/Channel_000/EELS"])
        assert h5_main.data_descriptor == "Intensity (counts)"
        assert list(h5_main.pos_dim_labels) == (names[:nav] or ["Arb"])
        assert list(h5_main.spec_dim_labels) == (names[nav:] or ["Arb"])
        for i, name in enumerate(names):
            getter = h5_main.get_pos_values if i < nav else h5_main.get_spec_values
            np.testing.assert_allclose(getter(name), 0.5 * i + (1.0 + i) * np.arange(shape[i]))
    (back,) = lazyio.load(path)
    np.testing.assert_array_equal(back["data"].compute(), data)
    assert [a["name"] for a in back["axes"]] == names
    assert [a["navigate"] for a in back["axes"]] == [i < nav for i in range(len(shape))]
    scales = [1.0 + i for i in range(len(shape))]
    assert [a["scale"] for a in back["axes"]] == pytest.approx(scales)
    assert back["metadata"]["General"]["title"] == "EELS"
    assert back["metadata"]["Signal"]["quantity"] == "Intensity (counts)"


def test_write_non_uniform_axis_and_defaults(tmp_path, rng):
    data = rng.random((3, 5), dtype=np.float32)
    signal = {"data": data, "axes": [
        {"name": "", "units": "", "size": 3, "offset": 0, "scale": 1, "navigate": True},
        {"name": "Bias", "units": "V", "axis": np.array([0, 1, 3, 7, 15.0]), "navigate": False},
    ]}
    path = tmp_path / "nu.h5"
    usid.file_writer(str(path), signal)
    with h5py.File(path, "r") as f:
        main = f["/Measurement_000/Channel_000/Raw_Data"]
        assert pyUSID.hdf_utils.check_if_main(main)
        h5_main = pyUSID.USIDataset(main)
        assert h5_main.data_descriptor == "Unknown Quantity (Unknown Units)"
        assert list(h5_main.pos_dim_labels) == ["Pos_Dim_0"]
        np.testing.assert_array_equal(h5_main.get_spec_values("Bias"), [0, 1, 3, 7, 15])
    (back,) = usid.file_reader(str(path), non_uniform="axis")
    np.testing.assert_array_equal(back["axes"][1]["axis"], [0, 1, 3, 7, 15])


def test_write_streams_dask_into_aligned_chunks_and_compression(tmp_path, rng):
    data = rng.random((16, 16, 300), dtype=np.float32)
    signal = _signal(da.from_array(data, chunks=(5, 7, 100)), 2)
    path = tmp_path / "gz.h5"
    usid.write(as_location(str(path)), signal, compression="gzip", show_progressbar=False)
    with h5py.File(path, "r") as f:
        main = f["/Measurement_000/Channel_000/EELS"]
        assert main.compression == "gzip"
        rows, cols = main.chunks
        assert cols == 300  # whole spectra
        assert rows % 16 == 0  # whole scan lines
    _check_pyusid_reads(path, data)


def test_overwrite_append_and_atomicity(tmp_path, rng):
    path = tmp_path / "x.h5"
    first = rng.random((4, 6), dtype=np.float32)
    lazyio.save(path, _signal(first, 1), show_progressbar=False)
    before = path.read_bytes()
    with pytest.raises(TargetExistsError):
        lazyio.save(path, _signal(first, 1), show_progressbar=False)
    assert path.read_bytes() == before
    second = rng.random((2, 3, 5), dtype=np.float32)
    usid.file_writer(str(path), _signal(second, 2, title="Second"))  # replaces, as hspy's
    (back,) = usid.file_reader(str(path))
    np.testing.assert_array_equal(back["data"], second)
    usid.file_writer(str(path), _signal(first, 1), append=True)  # RosettaSciIO's behaviour
    signals = usid.file_reader(str(path))
    assert [s["metadata"]["General"]["title"] for s in signals] == ["Second", "EELS"]
    with h5py.File(path, "r") as f:
        assert set(f) == {"Measurement_000", "Measurement_001"}

    bad = _signal(da.from_array(first, chunks=2).map_blocks(_fail, dtype=first.dtype), 1)
    with pytest.raises(RuntimeError, match="boom"):
        lazyio.save(path, bad, overwrite=True, show_progressbar=False)
    assert len(usid.file_reader(str(path))) == 2  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]


def _fail(block):
    raise RuntimeError("boom")


# --------------------------------------------------------------------------- distributed


def test_lazy_arrays_pickle_and_compute_on_process_cluster(files, client, tmp_path):
    names = ["multi", "compound", "serpentine", "three_pos", "spec_only"]
    lazy = [s["data"] for n in names for s in usid.file_reader(files[n], lazy=True)]
    eager = [s["data"] for n in names for s in usid.file_reader(files[n], lazy=False)]
    results = client.compute([pickle.loads(pickle.dumps(a)) for a in lazy], sync=True)
    for got, ref in zip(results, eager, strict=True):
        np.testing.assert_array_equal(got, ref)
    # writing from the cluster: blocks encoded on the workers, written by this process
    data = np.arange(8 * 6 * 40, dtype=np.float32).reshape(8, 6, 40)
    path = tmp_path / "cluster.h5"
    lazyio.save(path, _signal(da.from_array(data, chunks=(3, 6, 40)), 2),
                show_progressbar=False)
    _check_pyusid_reads(path, data)


def test_rosettasciio_reads_lazyio_files(tmp_path, rng):
    rsciio_usid = importlib.import_module("rsciio.usid")
    data = rng.random((3, 4, 6), dtype=np.float32)
    path = tmp_path / "for_rsciio.h5"
    lazyio.save(path, _signal(data, 2, names=["y", "x", "E"]), show_progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (ref,) = rsciio_usid.file_reader(str(path))
    np.testing.assert_array_equal(ref["data"], data)
    assert [a["name"] for a in ref["axes"]] == ["y", "x", "E"]
    assert [a["scale"] for a in ref["axes"]] == pytest.approx([1.0, 2.0, 3.0])


def test_remote_round_trip_and_explicit_chunks(rng):
    fsspec = importlib.import_module("fsspec")
    data = rng.random((6, 5, 8), dtype=np.float32)
    url = "memory://lazyio-usid-test/remote.h5"
    try:
        lazyio.save(url, _signal(da.from_array(data, chunks=2), 2), show_progressbar=False)
        (signal,) = lazyio.load(url, chunks=(2, -1, -1))
        assert signal["data"].chunks == ((2, 2, 2), (5,), (8,))
        np.testing.assert_array_equal(signal["data"].compute(), data)
    finally:
        fsspec.filesystem("memory").rm("/lazyio-usid-test", recursive=True)


def test_compound_round_trip(tmp_path):
    data = np.zeros((3, 4), dtype=[("amp", "f4"), ("count", "i2")])
    data["amp"] = np.arange(12).reshape(3, 4)
    data["count"] = -np.arange(12).reshape(3, 4)
    path = tmp_path / "compound.h5"
    lazyio.save(path, {"data": da.from_array(data, chunks=2),
                       "axes": [{"navigate": True}, {"navigate": False}]},
                show_progressbar=False)
    _check_pyusid_reads(path, data, "/Measurement_000/Channel_000/Raw_Data")
    amp, count = lazyio.load(path)
    np.testing.assert_array_equal(amp["data"].compute(), data["amp"])
    np.testing.assert_array_equal(count["data"].compute(), data["count"])


def test_runtime_needs_neither_pyusid_nor_sidpy(files):
    code = (
        "import sys, lazyio\n"
        f"signals = lazyio.load({files['multi']!r}, lazy=False)\n"
        "assert signals[0]['data'].shape == (3, 5, 2, 7)\n"
        "assert not {'pyUSID', 'sidpy'} & set(sys.modules), 'pyUSID imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_axes_sharing_a_name_get_unique_labels_and_read_back_alike(tmp_path) -> None:
    # pyUSID finds dimensions by label among positions and spectroscopic values together:
    # two axes named alike (even one on each side) made its reshape fail
    data = np.arange(2 * 3 * 4, dtype="f4").reshape(2, 3, 4)
    axes = [{"name": "x", "size": 2, "navigate": True, "units": "nm"},
            {"name": "x", "size": 3, "navigate": True, "units": "nm"},
            {"name": "x", "size": 4, "navigate": False, "units": "eV"}]
    path = tmp_path / "same-names.h5"
    lazyio.save(path, {"data": data, "axes": axes}, show_progressbar=False)
    with h5py.File(path, "r") as f:
        [main] = pyUSID.hdf_utils.get_all_main(f)
        labels = list(main.pos_dim_labels) + list(main.spec_dim_labels)
        assert len(set(labels)) == 3, labels
        np.testing.assert_array_equal(main.get_n_dim_form(), data)
    got = lazyio.load(path, lazy=False)[0]
    assert [a["name"] for a in got["axes"]] == ["x", "x", "x"]
    assert [a["units"] for a in got["axes"]] == ["nm", "nm", "eV"]
    np.testing.assert_array_equal(got["data"], data)
