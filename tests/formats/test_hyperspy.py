"""The HyperSpy tree both .hspy (HDF5) and .zspy (Zarr) hold: dtypes, shapes, metadata,
models, ragged data, chunks and laziness, run over both formats."""

from __future__ import annotations

import pickle

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
from formats_table import HYPERSPY

import lazyio
from lazyio.errors import TargetExistsError

DTYPES = ["bool", "u1", "i2", "u4", "i8", "f4", "f8", "c8", "c16", ">f4", ">i2"]


def _random(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) > 0.5
    if dtype.kind == "c":
        return (rng.random(shape) + 1j * rng.random(shape)).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 100, shape).astype(dtype)
    return rng.random(shape).astype(dtype)


def _signal(data, nav=0):
    axes = [
        {"name": f"ax{i}", "units": "nm", "scale": 0.5 + i, "offset": -1.0 * i,
         "navigate": i < nav, "size": s}
        for i, s in enumerate(np.shape(data))
    ]
    return {"data": data, "axes": axes, "metadata": {"General": {"title": "sig"}},
            "original_metadata": {}}


@pytest.fixture(params=HYPERSPY)
def fmt(request):
    return request.param


def _path(tmp_path, fmt, name="f"):
    return str(tmp_path / f"{name}.{fmt}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_round_trip(tmp_path, rng, fmt, dtype):
    data = _random(rng, (6, 5, 7), dtype)
    path = _path(tmp_path, fmt)
    lazyio.save(path, _signal(data, nav=1), show_progressbar=False)
    lazy = lazyio.load(path)[0]
    eager = lazyio.load(path, lazy=False)[0]
    assert isinstance(lazy["data"], da.Array)
    assert isinstance(eager["data"], np.ndarray)
    assert eager["data"].dtype == data.dtype
    assert lazy["data"].dtype == data.dtype
    np.testing.assert_array_equal(eager["data"], data)
    np.testing.assert_array_equal(lazy["data"].compute(), data)


@pytest.mark.parametrize("shape", [(), (7,), (4, 9), (3, 4, 5), (2, 3, 4, 5), (0, 3)])
@pytest.mark.parametrize("source", ["numpy", "dask"])
def test_shapes_and_sources(tmp_path, rng, fmt, shape, source):
    data = _random(rng, shape, "f4")
    sig = da.from_array(data, chunks=2) if source == "dask" and shape else data
    path = _path(tmp_path, fmt)
    lazyio.save(path, _signal(sig, nav=len(shape) // 2), show_progressbar=False)
    out = lazyio.load(path)[0]
    assert out["data"].shape == shape
    np.testing.assert_array_equal(out["data"].compute(), data)
    assert [a["navigate"] for a in out["axes"]] == [i < len(shape) // 2 for i in range(len(shape))]
    assert [a["scale"] for a in out["axes"]] == [0.5 + i for i in range(len(shape))]
    assert all(a["units"] == "nm" for a in out["axes"])


METADATA = {
    "General": {"title": "meta", "notes": "µm – Å unicode"},
    "Misc": {
        "int": 3,
        "float": 2.5,
        "bool": True,
        "none": None,
        "text": "hello",
        "bytes_nul": b"ab\x00cd",
        "bytes_plain": b"plain",
        "empty_list": [],
        "empty_tuple": (),
        "numbers": [1, 2, 3],
        "strings": ["a", "bc"],
        "mixed": [1, 2.0, "a name"],
        "tuple": (1.5, 2.5),
        "nested": [[1, 2], [3, 4, 5]],
        "dicts": [{"k": i} for i in range(12)],
        "array": np.arange(6.0).reshape(2, 3),
        "deep": {"a": {"b": {"c": {"d": 1}}}},
    },
}


def test_metadata_round_trip(tmp_path, rng, fmt):
    path = _path(tmp_path, fmt)
    sig = _signal(_random(rng, (3, 4), "f8"))
    sig["metadata"] = METADATA
    sig["original_metadata"] = {"Instrument": {"name": "X", "values": [1, 2]}}
    lazyio.save(path, sig, show_progressbar=False)
    md = lazyio.load(path, lazy=False)[0]["metadata"]
    misc = md["Misc"]
    assert md["General"] == METADATA["General"]
    assert misc["int"] == 3
    assert misc["float"] == 2.5
    assert misc["bool"] is True
    assert misc["none"] is None
    assert misc["text"] == "hello"
    assert misc["bytes_nul"] == b"ab\x00cd"
    assert misc["bytes_plain"] == "plain"  # HyperSpy stores NUL-free bytes as text
    assert misc["empty_list"] == []
    assert misc["empty_tuple"] == ()
    assert misc["numbers"] == [1, 2, 3]
    assert misc["strings"] == ["a", "bc"]
    assert misc["mixed"] == ["1", "2.0", "a name"]  # numpy's safe casting, as documented
    assert misc["tuple"] == (1.5, 2.5)
    assert misc["nested"] == [[1, 2], [3, 4, 5]]
    assert misc["dicts"] == [{"k": i} for i in range(12)]  # numeric order past 10
    np.testing.assert_array_equal(misc["array"], METADATA["Misc"]["array"])
    assert misc["deep"] == {"a": {"b": {"c": {"d": 1}}}}


def test_signals_in_metadata_models_learning_results(tmp_path, rng, fmt):
    path = _path(tmp_path, fmt)
    inner = _signal(np.arange(5.0))
    inner["metadata"]["General"]["title"] = "inner"
    sig = _signal(_random(rng, (3, 8), "f4"), nav=1)
    sig["metadata"]["Sample"] = {"_sig_intensity": inner}
    sig["learning_results"] = {"factors": np.ones((8, 2)), "decomposition_algorithm": "SVD"}
    sig["models"] = {"m1": {"components": {"c0": {"parameters": {"A": {"value": 2.0}}}}}}
    lazyio.save(path, sig, show_progressbar=False)
    out = lazyio.load(path, lazy=False)[0]
    stored = out["metadata"]["Sample"]["_sig_intensity"]
    np.testing.assert_array_equal(stored["data"], inner["data"])
    assert stored["metadata"]["General"]["title"] == "inner"
    assert len(stored["axes"]) == 1
    learning = out["attributes"]["learning_results"]
    np.testing.assert_array_equal(learning["factors"], np.ones((8, 2)))
    assert learning["decomposition_algorithm"] == "SVD"
    assert out["models"] == {"m1": {"components": {"c0": {"parameters": {"A": {"value": 2.0}}}}}}


def test_non_uniform_axis_and_binned(tmp_path, rng, fmt):
    path = _path(tmp_path, fmt)
    axis = np.array([0.0, 0.1, 0.5, 2.0])
    sig = _signal(_random(rng, (3, 4), "f4"), nav=1)
    sig["axes"][1] = {"name": "E", "units": "eV", "axis": axis, "navigate": False,
                      "is_binned": True}
    lazyio.save(path, sig, show_progressbar=False)
    axes = lazyio.load(path)[0]["axes"]
    np.testing.assert_array_equal(np.asarray(axes[1]["axis"]), axis)
    assert axes[1]["is_binned"] is True
    assert axes[1]["name"] == "E"


def test_ragged_round_trip(tmp_path, fmt):
    path = _path(tmp_path, fmt)
    data = np.empty((2, 2), dtype=object)
    for i, idx in enumerate(np.ndindex(2, 2)):
        data[idx] = np.arange(i * 2, dtype=np.float64).reshape(-1, 2) if i else np.zeros((0, 2))
    sig = {"data": data, "axes": [{"name": "x", "navigate": True}, {"name": "y", "navigate": True}],
           "metadata": {"General": {"title": "r"}}, "attributes": {"ragged": True}}
    lazyio.save(path, sig, show_progressbar=False)
    for lazy in (False, True):
        out = lazyio.load(path, lazy=lazy)[0]["data"]
        out = out.compute() if lazy else out
        assert out.dtype == object
        assert out.shape == (2, 2)
        for idx in np.ndindex(2, 2):
            np.testing.assert_array_equal(out[idx], data[idx])


def test_write_dataset_false_updates_metadata_in_place(tmp_path, rng, fmt):
    path = _path(tmp_path, fmt)
    data = _random(rng, (4, 6), "f4")
    lazyio.save(path, _signal(data), show_progressbar=False)
    sig = _signal(data)
    sig["metadata"]["General"]["notes"] = "updated"
    sig["axes"][1]["units"] = "eV"
    getattr(lazyio, fmt).file_writer(path, sig, write_dataset=False)
    out = lazyio.load(path, lazy=False)[0]
    assert out["metadata"]["General"]["notes"] == "updated"
    assert out["axes"][1]["units"] == "eV"
    np.testing.assert_array_equal(out["data"], data)


def test_overwrite_refused_then_allowed(tmp_path, rng, fmt):
    path = _path(tmp_path, fmt)
    first = _random(rng, (3, 3), "f4")
    lazyio.save(path, first, show_progressbar=False)
    with pytest.raises(TargetExistsError, match=r"overwrite=True"):
        lazyio.save(path, first + 1, show_progressbar=False)
    np.testing.assert_array_equal(lazyio.load(path, lazy=False)[0]["data"], first)
    lazyio.save(path, first + 1, overwrite=True, show_progressbar=False)
    np.testing.assert_array_equal(lazyio.load(path, lazy=False)[0]["data"], first + 1)
    debris = [p.name for p in tmp_path.iterdir() if ".lazyio-tmp-" in p.name]
    assert debris == []


def test_bare_array_gets_default_signal(tmp_path, rng, fmt):
    path = _path(tmp_path, fmt)
    data = _random(rng, (2, 3), "i4")
    lazyio.save(path, data, show_progressbar=False)
    out = lazyio.load(path, lazy=False)[0]
    np.testing.assert_array_equal(out["data"], data)
    assert [a["size"] for a in out["axes"]] == [2, 3]
    assert out["metadata"]["General"]["title"] == ""


# ----------------------------------------------------------------------- chunks and laziness


def test_default_chunks_group_small_storage_chunks(tmp_path, rng, fmt):
    path = _path(tmp_path, fmt)
    data = rng.integers(0, 1000, (512, 512)).astype("u2")
    lazyio.save(path, data, chunks=(4, 4), show_progressbar=False)
    arr = lazyio.load(path)[0]["data"]
    assert arr.npartitions < 16, arr.chunks  # 16,384 storage chunks, a handful of tasks
    np.testing.assert_array_equal(arr.compute(), data)
    assert int(arr.sum().compute()) == int(data.sum(dtype=np.int64))


@pytest.mark.parametrize("request_chunks", [(64, 64), (10, 30), {0: 8}, -1, 128])
def test_requested_chunks_are_whole_storage_chunks(tmp_path, rng, fmt, request_chunks):
    path = _path(tmp_path, fmt)
    data = rng.random((100, 90)).astype("f4")
    lazyio.save(path, data, chunks=(8, 16), show_progressbar=False)
    arr = lazyio.load(path, chunks=request_chunks)[0]["data"]
    for sizes, storage in zip(arr.chunks, (8, 16), strict=True):
        assert all(s % storage == 0 for s in sizes[:-1]), arr.chunks
    np.testing.assert_array_equal(arr.compute(), data)


def test_single_signal_access(tmp_path, rng, fmt):
    path = _path(tmp_path, fmt)
    data = rng.random((16, 16, 128)).astype("f4")
    lazyio.save(path, _signal(data, nav=2), show_progressbar=False)
    arr = lazyio.load(path)[0]["data"]
    np.testing.assert_array_equal(arr[3, 7].compute(), data[3, 7])
    np.testing.assert_array_equal(arr[::-3, 2, 5:60:7].compute(), data[::-3, 2, 5:60:7])


def test_graph_holds_no_open_handle_and_pickles(tmp_path, rng, fmt):
    path = _path(tmp_path, fmt)
    data = rng.random((20, 30)).astype("f8")
    lazyio.save(path, data, chunks=(5, 30), show_progressbar=False)
    arr = lazyio.load(path, chunks=(5, 30))[0]["data"]
    restored = pickle.loads(cloudpickle.dumps(arr))
    lazyio.close_all()  # the restored graph must reopen what it needs
    np.testing.assert_array_equal(restored.compute(scheduler="sync"), data)
    assert arr.name == lazyio.load(path, chunks=(5, 30))[0]["data"].name  # stable names


def test_lazy_compute_on_process_cluster(tmp_path, rng, fmt, client):
    path = _path(tmp_path, fmt)
    data = rng.random((40, 30, 16)).astype("f4")
    lazyio.save(path, _signal(data, nav=2), chunks=(10, 10, 16), show_progressbar=False)
    arr = lazyio.load(path, chunks=(10, 10, 16))[0]["data"]
    np.testing.assert_allclose(arr.sum(axis=(0, 1)).compute(), data.sum(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_array_equal(arr.compute(), data)


def test_write_from_process_cluster(tmp_path, rng, fmt, client):
    path = _path(tmp_path, fmt)
    data = rng.random((40, 30, 16)).astype("f4")
    lazy = da.from_array(data, chunks=(7, 11, 16))
    lazyio.save(path, _signal(lazy, nav=2), chunks=(10, 10, 16), show_progressbar=True)
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(lazyio.load(path, lazy=False)[0]["data"], data)


def test_read_then_write_other_format_streams(tmp_path, rng, fmt):
    src = _path(tmp_path, fmt, "src")
    other = "zspy" if fmt == "hspy" else "hspy"
    dst = _path(tmp_path, other, "dst")
    data = rng.random((12, 10, 8)).astype("f4")
    lazyio.save(src, _signal(data, nav=2), show_progressbar=False)
    lazyio.save(dst, lazyio.load(src)[0], show_progressbar=False)
    out = lazyio.load(dst, lazy=False)[0]
    np.testing.assert_array_equal(out["data"], data)
    assert [a["name"] for a in out["axes"]] == ["ax0", "ax1", "ax2"]
