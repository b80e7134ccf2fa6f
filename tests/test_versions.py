"""Files of every HyperSpy spec version (1.0-3.3), built by hand with h5py, read as today.

Each fixture imitates what an old HyperSpy wrote; the tests check that lazyio returns what
HyperSpy makes of such a file today: RosettaSciIO's dictionaries (its reader is the oracle
where it applies) plus what HyperSpy itself derives from them (axes ``navigate`` from
``record_by``, ``is_binned`` from ``metadata.Signal.binned``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import h5py
import numpy as np
import pytest

import lazyio
from lazyio.errors import FormatError, LazyioError, LazyioWarning
from lazyio.formats.hyperspy.versions import parse_version

pytestmark = pytest.mark.timeout(30)

LAZY = pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "eager"])


# ------------------------------------------------------------------------------ builders


def put_tree(group: h5py.Group, tree: dict[str, Any]) -> None:
    """Write a dict as HyperSpy did: dicts are groups, arrays datasets, the rest attributes."""
    for key, value in tree.items():
        if isinstance(value, dict):
            put_tree(group.require_group(key), value)
        elif isinstance(value, np.ndarray):
            group.create_dataset(key, data=value)
        else:
            group.attrs[key] = value


def write_axes(
    group: h5py.Group,
    shape: tuple[int, ...],
    navigate: list[bool] | None = None,
    **extra: Any,
) -> list[dict[str, Any]]:
    """``axis-i`` groups (without ``navigate`` unless given); return what was written."""
    written = []
    for i, size in enumerate(shape):
        attrs: dict[str, Any] = {
            "name": f"axis{i}",
            "size": size,
            "scale": 0.5 * (i + 1),
            "offset": float(i),
            "units": ["nm", "um", "eV", "s"][i % 4],
            "index_in_array": i,
            **extra,
        }
        if navigate is not None:
            attrs["navigate"] = navigate[i]
        group.create_group(f"axis-{i}").attrs.update(attrs)
        written.append(attrs)
    return written


def write_file(
    path: Path,
    version: Any,
    experiments: dict[str, dict[str, Any]],
    *,
    old_names: bool = False,
) -> None:
    """One HDF5 file; ``experiments`` maps a group name to data, axes and trees."""
    md_name, omd_name = (
        ("mapped_parameters", "original_parameters") if old_names
        else ("metadata", "original_metadata")
    )
    with h5py.File(path, "w") as f:
        if version is not None:
            f.attrs["file_format"] = "HyperSpy"
            f.attrs["file_format_version"] = version
        for name, spec in experiments.items():
            group = f.create_group(f"Experiments/{name}")
            group.create_dataset("data", data=spec["data"], chunks=spec.get("chunks"))
            if spec.get("axes", True):
                write_axes(group, spec["data"].shape, spec.get("navigate"))
            put_tree(group.create_group(md_name), spec.get("metadata", {}))
            put_tree(group.create_group(omd_name), spec.get("original_metadata", {}))
            for extra, tree in spec.get("groups", {}).items():
                put_tree(group.create_group(extra), tree)


def load_one(path: Path, lazy: bool) -> dict[str, Any]:
    signals = lazyio.load(path, lazy=lazy)
    assert len(signals) == 1
    return signals[0]


def as_numpy(data: Any) -> np.ndarray:
    return data.compute() if isinstance(data, da.Array) else np.asarray(data)


def check_data(signal: dict[str, Any], expected: np.ndarray, lazy: bool) -> None:
    data = signal["data"]
    assert isinstance(data, da.Array) is lazy
    assert signal["attributes"]["_lazy"] is lazy
    np.testing.assert_array_equal(as_numpy(data), expected)
    assert as_numpy(data).dtype == expected.dtype


def assert_tree_equal(actual: Any, expected: Any, where: str = "") -> None:
    """Equal nested dicts/lists, arrays compared by value, container types kept."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert set(actual) == set(expected), f"{where}: {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_tree_equal(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_tree_equal(a, e, f"{where}[{i}]")
    elif isinstance(expected, np.ndarray | da.Array):
        np.testing.assert_array_equal(as_numpy(actual), as_numpy(expected), err_msg=where)
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
        assert isinstance(actual, bool) == isinstance(expected, bool), where


def rsciio_read(path: Path) -> list[dict[str, Any]]:
    """RosettaSciIO's reading of the file (the reference for the dictionaries)."""
    rsciio_hspy = pytest.importorskip("rsciio.hspy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rsciio_hspy.file_reader(str(path), lazy=False)


def assert_same_as_rsciio(path: Path, *, ignore_axis_keys: tuple[str, ...] = ()) -> None:
    """lazyio (eager) returns RosettaSciIO's dictionaries, axes apart from HyperSpy's
    own derivations (``ignore_axis_keys``)."""
    ours, theirs = lazyio.load(path, lazy=False), rsciio_read(path)
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours, theirs, strict=True):
        if "data" not in ref:  # a standalone model
            assert_tree_equal(mine, ref, "model")
            continue
        for key in ("metadata", "original_metadata", "attributes", "models"):
            assert_tree_equal(mine[key], ref[key], key)
        assert mine["package"] == ref["package"]
        assert mine["package_version"] == ref["package_version"]
        np.testing.assert_array_equal(mine["data"], ref["data"])
        trimmed = [{k: v for k, v in a.items() if k not in ignore_axis_keys}
                   for a in mine["axes"]]
        assert_tree_equal(trimmed, ref["axes"], "axes")


@pytest.fixture
def v1_0_file(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    """A file of HyperSpy 0.x (spec 1.0): no version attribute, ``mapped_parameters``."""
    data = rng.random((3, 4, 5))
    path = tmp_path / "v1_0.hdf5"
    metadata = {
        "name": "EELS map",  # < 1.1: General.title
        "signal": "EELS",  # < 1.1: Signal.signal_type
        "record_by": "spectrum",
        "signal_origin": "experiment",
        "original_filename": "map.dm3",
        "_datetime_date": "datetime.date(2014, 5, 1)",
        "_datetime_time": "datetime.time(12, 3, 4)",
        "TEM": {
            "beam_energy": 200.0,
            "convergence_angle": 10.0,
            "dwell_time": 0.1,
            "dwell_time_units": "s",
            "exposure": 2.5,
            "tilt_stage": 15.0,
            "EELS": {"collection_angle": 20.0, "aperture_size": 5.0},
            "EDS": {"azimuth_angle": 45.0},
        },
        "SEM": {"tilt_stage": 3.0, "EDS": {"live_time": 4.0}},
        "Sample": {"Xray_lines": np.array([b"Fe_Ka", b"O_Ka"]), "thickness": 30.0},
        "Variance_estimation": {"gain_factor": 1.5, "gain_offset": 0.0},
        "_internal_parameters": {
            "stacking_history": {"axis": 1, "step_sizes": 2},
            "folding": {"signal_unfolded": False, "unfolded": False},
        },
    }
    original = {"DM": {"version": 3, "tags": {"exposure": 2.5, "name": "raw"}}}
    mva = {"factors": rng.random((5, 2)), "loadings": rng.random((12, 2)),
           "decomposition_algorithm": "svd"}
    write_file(path, None, {"EELS map": {
        "data": data, "metadata": metadata, "original_metadata": original,
        "groups": {"mva_results": mva},
    }}, old_names=True)
    return path, data


# ------------------------------------------------------------------------------ v1.0


@LAZY
def test_v1_0_file(v1_0_file: tuple[Path, np.ndarray], lazy: bool) -> None:
    path, data = v1_0_file
    signal = load_one(path, lazy)
    check_data(signal, data, lazy)
    md = signal["metadata"]
    assert md["General"] == {
        "title": "EELS map",
        "date": "2014-05-01",
        "time": "12:03:04",
        "original_filename": "map.dm3",
    }
    assert md["Signal"] == {
        "signal_type": "EELS", "record_by": "spectrum", "signal_origin": "experiment",
    }
    tem = md["Acquisition_instrument"]["TEM"]
    assert tem["beam_energy"] == 200.0
    assert tem["convergence_angle"] == 10.0
    # with an EELS node, the EELS settings moved into it, and EELS became the Detector
    assert tem["Detector"] == {
        "collection_angle": 20.0, "aperture_size": 5.0, "dwell_time": 0.1,
        "dwell_time_units": "s", "exposure": 2.5, "EDS": {"azimuth_angle": 45.0},
    }
    assert tem["Stage"] == {"tilt_alpha": 15.0}  # tilt_stage, pre 3.0
    assert set(tem) == {"beam_energy", "convergence_angle", "Detector", "Stage"}
    sem = md["Acquisition_instrument"]["SEM"]
    assert sem == {"Detector": {"EDS": {"live_time": 4.0}}, "Stage": {"tilt_alpha": 3.0}}
    lines = md["Sample"]["xray_lines"]
    assert isinstance(lines, np.ndarray)  # a string dataset: read eagerly, as text
    assert lines.dtype.kind == "U"
    assert lines.tolist() == ["Fe_Ka", "O_Ka"]
    assert "Xray_lines" not in md["Sample"]
    assert md["Noise_properties"] == {
        "Variance_linear_model": {"gain_factor": 1.5, "gain_offset": 0.0}
    }
    assert md["_HyperSpy"] == {
        "Stacking_history": {"axis": 1, "step_sizes": 2},
        "Folding": {"signal_unfolded": False, "unfolded": False},
    }
    for old in ("name", "signal", "record_by", "title", "TEM", "SEM", "Variance_estimation",
                "_internal_parameters", "date", "time", "_datetime_date"):
        assert old not in md, old
    # original_parameters -> original_metadata, unchanged
    assert signal["original_metadata"] == {
        "DM": {"version": 3, "tags": {"exposure": 2.5, "name": "raw"}}
    }
    # mva_results -> learning_results
    learning = signal["attributes"]["learning_results"]
    assert learning["decomposition_algorithm"] == "svd"
    assert learning["factors"].shape == (5, 2)
    assert learning["loadings"].shape == (12, 2)
    # record_by="spectrum": the last axis is the signal
    assert [a["navigate"] for a in signal["axes"]] == [True, True, False]
    assert [a["size"] for a in signal["axes"]] == [3, 4, 5]
    assert [a["name"] for a in signal["axes"]] == ["axis0", "axis1", "axis2"]
    assert signal["package"] == ""
    assert signal["package_version"] == ""
    assert signal["models"] == {}


def test_v1_0_file_matches_rsciio(v1_0_file: tuple[Path, np.ndarray]) -> None:
    path, _ = v1_0_file
    assert_same_as_rsciio(path, ignore_axis_keys=("navigate",))


@pytest.mark.parametrize(("version", "moved"), [("1.0", True), ("1.1", False)])
def test_name_and_signal_move_only_before_1_1(
    tmp_path: Path, rng: np.random.Generator, version: str, moved: bool
) -> None:
    path = tmp_path / f"v{version}.hdf5"
    metadata = {"name": "old name", "signal": "EDS_TEM", "title": "the title",
                "signal_type": "EELS"}
    write_file(path, version, {"s": {
        "data": rng.random(4), "metadata": metadata,
        "groups": {"mva_results": {"factors": rng.random(3)}},
    }}, old_names=True)
    signal = load_one(path, lazy=False)
    md = signal["metadata"]
    # "title" (< 1.2) is moved after "name" (< 1.1), so it wins in both versions
    assert md["General"]["title"] == "the title"
    assert md["Signal"]["signal_type"] == "EELS"
    if moved:
        assert "name" not in md
        assert "signal" not in md
        assert "learning_results" in signal["attributes"]
    else:
        assert md["name"] == "old name"
        assert md["signal"] == "EDS_TEM"
        assert "learning_results" not in signal["attributes"]  # mva_results only < 1.1
    assert_same_as_rsciio(path, ignore_axis_keys=("navigate",))


def test_v1_tem_without_eels_keeps_its_settings(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """dwell_time/exposure moved into EELS only where an EELS node existed."""
    path = tmp_path / "v1_noeels.hdf5"
    metadata = {"TEM": {"dwell_time": 0.1, "exposure": 2.5, "beam_energy": 300.0}}
    write_file(path, "1.0", {"s": {"data": rng.random(4), "metadata": metadata}},
               old_names=True)
    tem = load_one(path, lazy=False)["metadata"]["Acquisition_instrument"]["TEM"]
    assert tem == {"dwell_time": 0.1, "beam_energy": 300.0,
                   "Detector": {"Camera": {"exposure": 2.5}}}
    assert_same_as_rsciio(path, ignore_axis_keys=("navigate",))


# ------------------------------------------------------------------------------ versions


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float64(1.2), (1, 2)),
        (np.float64(2.2), (2, 2)),
        (np.float32(2.2), (2, 2)),
        (np.float64(3.0), (3, 0)),
        (1.1, (1, 1)),
        ("3.3", (3, 3)),
        (b"3.1", (3, 1)),
        (np.bytes_(b"2.1"), (2, 1)),
        ("1.3.1", (1, 3)),
    ],
)
def test_parse_version(value: Any, expected: tuple[int, int]) -> None:
    assert parse_version(value, "f.hspy") == expected


@pytest.mark.parametrize("value", ["", "abc", "v3", b"x.y"])
def test_parse_version_garbage(value: Any) -> None:
    with pytest.raises(FormatError, match=r"f\.hspy: unreadable file_format_version"):
        parse_version(value, "f.hspy")


@pytest.mark.parametrize(
    ("version", "old_names", "tilt_moved", "binned_moved"),
    [
        (np.float64(1.2), False, True, True),  # "metadata" group from 1.2 on
        (np.float64(1.1), True, True, True),  # "mapped_parameters" before
        (np.float64(2.2), False, True, True),
        (np.float32(2.2), False, True, True),
        (np.float64(3.0), False, False, True),
        (np.float64(3.1), False, False, False),
    ],
    ids=["f1.2", "f1.1", "f2.2", "f32-2.2", "f3.0", "f3.1"],
)
def test_float_version_attribute(
    tmp_path: Path,
    rng: np.random.Generator,
    version: Any,
    old_names: bool,
    tilt_moved: bool,
    binned_moved: bool,
) -> None:
    path = tmp_path / "float.hspy"
    data = rng.random((2, 6))
    metadata = {
        "General": {"title": "t"},
        "Signal": {"binned": True, "signal_type": ""},
        "Acquisition_instrument": {"TEM": {"tilt_stage": 7.5}},
    }
    write_file(path, version, {"t": {"data": data, "metadata": metadata,
                                     "navigate": [True, False]}}, old_names=old_names)
    with h5py.File(path) as f:
        assert f.attrs["file_format_version"].dtype == np.dtype(version).newbyteorder("=")
    signal = load_one(path, lazy=False)
    np.testing.assert_array_equal(signal["data"], data)
    md = signal["metadata"]
    assert md["General"]["title"] == "t"  # the right metadata group was chosen
    tem = md["Acquisition_instrument"]["TEM"]
    if tilt_moved:
        assert tem == {"Stage": {"tilt_alpha": 7.5}}
    else:
        assert tem == {"tilt_stage": 7.5}
    signal_axis = signal["axes"][1]
    if binned_moved:
        assert signal_axis["is_binned"] is True
    else:
        assert "is_binned" not in signal_axis
    assert "is_binned" not in signal["axes"][0]  # a navigation axis


# ------------------------------------------------------------------------------ datetime


@LAZY
def test_old_datetime_attributes(tmp_path: Path, lazy: bool) -> None:
    path = tmp_path / "dt.hspy"
    general = {"title": "t", "_datetime_date": "datetime.date(2014, 5, 1)",
               "_datetime_time": "datetime.time(12, 3, 4)"}
    write_file(path, "1.3", {"t": {"data": np.arange(3.0),
                                   "metadata": {"General": general}}})
    md = load_one(path, lazy)["metadata"]
    assert md["General"] == {"title": "t", "date": "2014-05-01", "time": "12:03:04"}
    assert_same_as_rsciio(path, ignore_axis_keys=("navigate",))


@pytest.mark.parametrize("key", ["_datetime_date", "_datetime_time"])
@pytest.mark.parametrize(
    "payload",
    [
        "__import__('os').system('echo x')",
        "__import__('pathlib').Path({sentinel!r}).touch()",
        "open({sentinel!r}, 'w')",
        "datetime.date(2014, 5, 1); open({sentinel!r}, 'w')",
        "nonsense",
    ],
    ids=["os.system", "touch", "open", "suffix", "nonsense"],
)
@LAZY
def test_malicious_datetime_is_never_evaluated(
    tmp_path: Path, key: str, payload: str, lazy: bool
) -> None:
    sentinel = tmp_path / "SENTINEL"
    value = payload.format(sentinel=str(sentinel))
    path = tmp_path / "evil.hspy"
    write_file(path, "1.3", {"t": {"data": np.arange(3.0),
                                   "metadata": {"General": {key: value}}}})
    with pytest.raises(FormatError) as info:
        lazyio.load(path, lazy=lazy)
    message = str(info.value)
    assert str(path) in message
    assert key in message
    assert not sentinel.exists()


# ------------------------------------------------------------------------------ axes


@pytest.mark.parametrize(
    ("record_by", "expected"),
    [
        ("spectrum", [True, True, False]),
        ("image", [True, False, False]),
        (None, [False, False, False]),  # as HyperSpy: no record_by, every axis is signal
    ],
)
@LAZY
def test_record_by_sets_navigate(
    tmp_path: Path, rng: np.random.Generator, record_by: str | None, expected: list[bool],
    lazy: bool,
) -> None:
    path = tmp_path / "rb.hspy"
    data = rng.integers(0, 100, (2, 3, 4), dtype=np.uint16)
    signal_md = {"signal_type": ""} | ({"record_by": record_by} if record_by else {})
    write_file(path, "2.0", {"s": {"data": data, "metadata": {"Signal": signal_md}}})
    signal = load_one(path, lazy)
    check_data(signal, data, lazy)
    assert [a["navigate"] for a in signal["axes"]] == expected
    assert all(type(a["navigate"]) is bool for a in signal["axes"])


@pytest.mark.parametrize("version", ["2.1", "2.2", "3.1"])
def test_navigate_attribute_takes_precedence(
    tmp_path: Path, rng: np.random.Generator, version: str
) -> None:
    path = tmp_path / "nav.hspy"
    data = rng.random((2, 3, 4))
    write_file(path, version, {"s": {
        "data": data, "navigate": [True, False, False],
        "metadata": {"Signal": {"record_by": "spectrum", "signal_type": ""}},
    }})
    signal = load_one(path, lazy=False)
    assert [a["navigate"] for a in signal["axes"]] == [True, False, False]
    assert all(type(a["navigate"]) is bool for a in signal["axes"])
    assert_same_as_rsciio(path)


@pytest.mark.parametrize(
    ("version", "binned", "expected"),
    [("2.2", True, True), ("3.0", False, False), ("3.1", True, None)],
)
@LAZY
def test_binned_moves_to_signal_axes(
    tmp_path: Path, rng: np.random.Generator, version: str, binned: bool,
    expected: bool | None, lazy: bool,
) -> None:
    path = tmp_path / "binned.hspy"
    data = rng.random((2, 3, 4))
    write_file(path, version, {"s": {
        "data": data, "navigate": [True, False, False],
        "metadata": {"Signal": {"binned": binned, "signal_type": "EDS"}},
    }})
    axes = load_one(path, lazy)["axes"]
    assert "is_binned" not in axes[0]
    for axis in axes[1:]:
        if expected is None:  # 3.1 files store is_binned on the axes themselves
            assert "is_binned" not in axis
        else:
            assert axis["is_binned"] is expected


def test_binned_stored_on_axes_is_kept(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "binned31.hspy"
    with h5py.File(path, "w") as f:
        f.attrs["file_format_version"] = "3.1"
        g = f.create_group("Experiments/s")
        g["data"] = rng.random((2, 5))
        write_axes(g, (2, 5), [True, False], is_binned=False)
        put_tree(g.create_group("metadata"), {"Signal": {"binned": True}})
        g.create_group("original_metadata")
    axes = load_one(path, lazy=False)["axes"]
    assert [a["is_binned"] for a in axes] == [False, False]


@pytest.mark.parametrize(
    ("version", "moved"), [("2.2", True), ("3.0", False), ("3.3", False)]
)
def test_tilt_stage_and_exposure_before_3_0(
    tmp_path: Path, rng: np.random.Generator, version: str, moved: bool
) -> None:
    path = tmp_path / "stage.hspy"
    instrument = {
        "TEM": {"tilt_stage": 12.5, "exposure": 0.5, "beam_energy": 300.0},
        "SEM": {"tilt_stage": -4.0},
    }
    write_file(path, version, {"s": {
        "data": rng.random((2, 3)), "navigate": [True, False],
        "metadata": {"Acquisition_instrument": instrument, "General": {"title": "s"}},
    }})
    md = load_one(path, lazy=False)["metadata"]["Acquisition_instrument"]
    if moved:
        assert md["TEM"] == {"Stage": {"tilt_alpha": 12.5}, "beam_energy": 300.0,
                             "Detector": {"Camera": {"exposure": 0.5}}}
        assert md["SEM"] == {"Stage": {"tilt_alpha": -4.0}}
    else:
        assert md == instrument
    assert_same_as_rsciio(path)


def test_exposure_time_wins_over_exposure(tmp_path: Path) -> None:
    """The DigitalMicrograph reader wrote exposure_time; HyperSpy prefers it."""
    path = tmp_path / "exposure.hspy"
    instrument = {"TEM": {"exposure_time": 3.0, "exposure": 4.0}}
    write_file(path, "2.2", {"s": {"data": np.arange(3.0), "navigate": [False],
                                   "metadata": {"Acquisition_instrument": instrument}}})
    tem = load_one(path, lazy=False)["metadata"]["Acquisition_instrument"]["TEM"]
    assert tem["Detector"] == {"Camera": {"exposure": 3.0}}
    assert "exposure_time" not in tem


@LAZY
def test_list_axes_group(tmp_path: Path, rng: np.random.Generator, lazy: bool) -> None:
    """Axes stored as a ``_list_<N>_axes`` group (children named by position)."""
    path = tmp_path / "listaxes.hspy"
    data = rng.random((3, 4, 5)).astype(np.float32)
    axes = [
        {"name": n, "size": s, "scale": 0.1 * (i + 1), "offset": -1.0, "units": "nm",
         "navigate": i < 2}
        for i, (n, s) in enumerate(zip("xyz", data.shape, strict=True))
    ]
    with h5py.File(path, "w") as f:
        f.attrs["file_format_version"] = "1.3"
        g = f.create_group("Experiments/s")
        g["data"] = data
        lst = g.create_group("_list_3_axes")
        for i, axis in enumerate(axes):
            lst.create_group(str(i)).attrs.update(axis)
        put_tree(g.create_group("metadata"), {"General": {"title": "s"}})
        g.create_group("original_metadata")
    signal = load_one(path, lazy)
    check_data(signal, data, lazy)
    assert_tree_equal(signal["axes"], axes, "axes")
    assert all(type(a["navigate"]) is bool for a in signal["axes"])
    assert_same_as_rsciio(path)


@LAZY
def test_axes_manager_in_metadata(tmp_path: Path, lazy: bool) -> None:
    """``_hspy_AxesManager_<key>`` groups (folding history) decode to axis-dict lists."""
    path = tmp_path / "am.hspy"
    with h5py.File(path, "w") as f:
        f.attrs["file_format_version"] = "3.0"
        g = f.create_group("Experiments/s")
        g["data"] = np.arange(6.0).reshape(2, 3)
        write_axes(g, (2, 3), [True, False])
        folding = g.create_group("metadata/_HyperSpy/Folding")
        folding.attrs.update({"unfolded": True, "signal_unfolded": False})
        am = folding.create_group("_hspy_AxesManager_original_axes_manager")
        for i, (name, size) in enumerate([("x", 2), ("y", 3), ("E", 7)]):
            am.create_group(f"axis-{i}").attrs.update(
                {"name": name, "size": size, "navigate": i < 2, "scale": 1.0, "offset": 0.0}
            )
        g.create_group("original_metadata")
    folding_md = load_one(path, lazy)["metadata"]["_HyperSpy"]["Folding"]
    manager = folding_md["_hspy_AxesManager_original_axes_manager"]
    assert isinstance(manager, list)
    assert [a["name"] for a in manager] == ["x", "y", "E"]
    assert [a["size"] for a in manager] == [2, 3, 7]
    assert [a["navigate"] for a in manager] == [True, True, False]
    assert folding_md["unfolded"] is True
    assert_same_as_rsciio(path)


@LAZY
def test_v1_3_lists_tuples_and_binary_strings(tmp_path: Path, lazy: bool) -> None:
    """The encodings added in 1.3 (and ``None``, bools, byte attributes, ``_sig_``)."""
    path = tmp_path / "v1_3.hspy"
    with h5py.File(path, "w") as f:
        f.attrs["file_format_version"] = "1.3"
        g = f.create_group("Experiments/s")
        g["data"] = np.arange(3.0)
        write_axes(g, (3,), [False])
        m = g.create_group("metadata/Misc")
        m.attrs.update({
            "none": "_None_", "_list_empty_el": "_None_", "_tuple_empty_et": "_None_",
            "_bs_blob": np.void(b"ab\x00cd"), "flag": np.bool_(True),
            "text": b"hello", "numbers": np.array([1, 2, 3]),
        })
        m.create_dataset("_list_nums", data=np.array([1.0, 2.0, 3.0]))
        m.create_dataset("_tuple_strs", data=np.array(["a", "bb"], dtype=object),
                         dtype=h5py.string_dtype())
        m.create_dataset("_list_bstrs", data=np.array([b"x", b"yy"]))
        mixed = m.create_group("_list_3_mixed")
        mixed.attrs.update({"0": 1, "1": "two"})
        mixed.create_group("2").attrs["k"] = 3.0
        pair = m.create_group("_tuple_2_pair")
        pair.attrs["0"] = 1.5
        pair.create_group("1").attrs["k"] = "v"
        inner = m.create_group("_sig_inner")
        inner["data"] = np.arange(2.0)
        write_axes(inner, (2,), [False])
        inner.create_group("metadata/General").attrs["title"] = "inner"
        inner.create_group("original_metadata")
        g.create_group("original_metadata")
    misc = load_one(path, lazy)["metadata"]["Misc"]
    assert misc["none"] is None
    assert misc["el"] == []
    assert misc["et"] == ()
    assert misc["blob"] == b"ab\x00cd"
    assert misc["flag"] is True
    assert misc["text"] == "hello"
    np.testing.assert_array_equal(misc["numbers"], [1, 2, 3])
    assert misc["nums"] == [1.0, 2.0, 3.0]
    assert misc["strs"] == ("a", "bb")
    assert misc["bstrs"] == ["x", "yy"]
    assert misc["mixed"] == [1, "two", {"k": 3.0}]
    assert misc["pair"] == (1.5, {"k": "v"})
    assert misc["_sig_inner"]["metadata"]["General"]["title"] == "inner"
    np.testing.assert_array_equal(as_numpy(misc["_sig_inner"]["data"]), [0.0, 1.0])
    if not lazy:
        assert_same_as_rsciio(path)


# ------------------------------------------------------------------------------ ragged


def ragged_items(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    items = np.empty(shape, dtype=object)
    for idx in np.ndindex(shape):
        items[idx] = rng.random((int(rng.integers(1, 5)), 2))
    return items


@pytest.mark.parametrize(
    ("version", "shapes_name"), [("3.2", "ragged_shapes"), ("3.3", "_ragged_shapes_data")]
)
@LAZY
def test_ragged_data(
    tmp_path: Path, rng: np.random.Generator, version: str, shapes_name: str, lazy: bool
) -> None:
    path = tmp_path / "ragged.hspy"
    items = ragged_items(rng, (2, 3))
    flat = np.empty(items.shape, dtype=object)
    shapes = np.empty(items.shape, dtype=object)
    for idx in np.ndindex(items.shape):
        flat[idx] = items[idx].ravel()
        shapes[idx] = np.array(items[idx].shape, dtype=np.int64)
    with h5py.File(path, "w") as f:
        f.attrs["file_format_version"] = version
        g = f.create_group("Experiments/ragged")
        g.create_dataset("data", data=flat, dtype=h5py.vlen_dtype(np.float64), chunks=(1, 3))
        g.create_dataset(shapes_name, data=shapes, dtype=h5py.vlen_dtype(np.int64),
                         chunks=(1, 3))
        write_axes(g, (2, 3), [True, True])
        put_tree(g.create_group("metadata"), {"General": {"title": "ragged"}})
        g.create_group("original_metadata")
    signal = load_one(path, lazy)
    data = signal["data"]
    assert isinstance(data, da.Array) is lazy
    values = as_numpy(data)
    assert values.shape == (2, 3)
    assert values.dtype == object
    for idx in np.ndindex(items.shape):
        np.testing.assert_array_equal(values[idx], items[idx])
        assert values[idx].shape == items[idx].shape
    # the shapes dataset is an implementation detail, not metadata
    assert shapes_name not in signal["metadata"]
    assert shapes_name not in signal["attributes"]


@LAZY
def test_ragged_array_in_metadata(
    tmp_path: Path, rng: np.random.Generator, lazy: bool
) -> None:
    """Ragged arrays inside metadata (markers' offsets) keep ``_ragged_shapes_<key>``."""
    path = tmp_path / "ragged_md.hspy"
    items = ragged_items(rng, (3,))
    flat = np.empty(3, dtype=object)
    shapes = np.empty(3, dtype=object)
    for i in range(3):
        flat[i] = items[i].ravel()
        shapes[i] = np.array(items[i].shape, dtype=np.int64)
    with h5py.File(path, "w") as f:
        f.attrs["file_format_version"] = "3.3"
        g = f.create_group("Experiments/s")
        g["data"] = np.arange(3.0)
        write_axes(g, (3,), [True])
        markers = g.create_group("metadata/Markers/points")
        markers.create_dataset("offsets", data=flat, dtype=h5py.vlen_dtype(np.float64))
        markers.create_dataset("_ragged_shapes_offsets", data=shapes,
                               dtype=h5py.vlen_dtype(np.int64))
        markers.attrs["_class"] = "Points"
        g.create_group("original_metadata")
    points = load_one(path, lazy)["metadata"]["Markers"]["points"]
    assert set(points) == {"offsets", "_class"}
    offsets = as_numpy(points["offsets"])
    for i in range(3):
        np.testing.assert_array_equal(offsets[i], items[i])


# ------------------------------------------------------------------------------ newer


@pytest.mark.parametrize("version", ["4.0", "3.4", np.float64(5.1)], ids=str)
@LAZY
def test_newer_version_warns_and_reads(
    tmp_path: Path, rng: np.random.Generator, version: Any, lazy: bool
) -> None:
    path = tmp_path / "future.hspy"
    data = rng.random((2, 3))
    write_file(path, version, {"s": {"data": data, "navigate": [True, False],
                                     "metadata": {"General": {"title": "future"}}}})
    with pytest.warns(LazyioWarning, match="newer than 3.3") as record:
        signal = load_one(path, lazy)
    assert any(str(path) in str(w.message) for w in record)
    check_data(signal, data, lazy)
    assert signal["metadata"]["General"]["title"] == "future"


@pytest.mark.parametrize("version", ["3.3", "3.0", "1.3", None], ids=str)
def test_known_versions_do_not_warn(
    tmp_path: Path, rng: np.random.Generator, version: str | None
) -> None:
    path = tmp_path / "known.hspy"
    write_file(path, version, {"s": {"data": rng.random(3), "navigate": [False]}},
               old_names=version is None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_one(path, lazy=False)


# ------------------------------------------------------------------------------ models


@pytest.fixture
def models_file(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    path = tmp_path / "models.hspy"
    data = rng.random((2, 10))
    write_file(path, "3.3", {"spec": {"data": data, "navigate": [True, False],
                                      "metadata": {"General": {"title": "spec"}}}})
    with h5py.File(path, "a") as f:
        models = f.create_group("Analysis/models")
        fitted = models.create_group("fit")
        fitted.attrs["_signal"] = "/Experiments/spec"
        fitted.attrs["dof"] = 4
        gauss = fitted.create_group("components/Gaussian")
        gauss.attrs["name"] = "Gaussian"
        gauss.create_dataset("A", data=rng.random(2))
        alone = models.create_group("alone")
        alone.attrs["note"] = "no signal"
        orphan = models.create_group("orphan")
        orphan.attrs["_signal"] = "/Experiments/gone"
        orphan.attrs["dof"] = 1
    return path, data


@LAZY
def test_models(models_file: tuple[Path, np.ndarray], lazy: bool) -> None:
    path, data = models_file
    result = lazyio.load(path, lazy=lazy)
    assert len(result) == 3
    signal, *standalone = result
    check_data(signal, data, lazy)
    assert set(signal["models"]) == {"fit"}
    fit = signal["models"]["fit"]
    assert "_signal" not in fit
    assert fit["dof"] == 4
    assert fit["components"]["Gaussian"]["name"] == "Gaussian"
    assert as_numpy(fit["components"]["Gaussian"]["A"]).shape == (2,)
    # a model without _signal, then one whose signal is not in the file: standalone dicts
    assert standalone == [{"alone": {"note": "no signal"}}, {"orphan": {"dof": 1}}]


def test_models_match_rsciio(models_file: tuple[Path, np.ndarray]) -> None:
    assert_same_as_rsciio(models_file[0])


def test_only_standalone_models(tmp_path: Path) -> None:
    path = tmp_path / "onlymodels.hspy"
    with h5py.File(path, "w") as f:
        f.attrs["file_format_version"] = "3.3"
        f.create_group("Analysis/models/m").attrs["x"] = 1.5
    assert lazyio.load(path, format="hspy", lazy=False) == [{"m": {"x": 1.5}}]


# ------------------------------------------------------------------------------ several


@LAZY
def test_several_experiments(tmp_path: Path, rng: np.random.Generator, lazy: bool) -> None:
    path = tmp_path / "several.hspy"
    arrays = {
        "__unnamed__": rng.random((2, 3)),
        "alpha": rng.integers(0, 9, (4,), dtype=np.int32),
        "beta": rng.random((2, 2, 2)).astype(np.float32),
    }
    experiments = {
        name: {"data": arr, "navigate": [False] * arr.ndim,
               "metadata": {"General": {"title": name}}}
        for name, arr in arrays.items()
    }
    write_file(path, "3.3", experiments)
    with h5py.File(path, "a") as f:
        f.create_group("Experiments/empty")  # no data: not a signal
        f["Experiments/stray"] = np.arange(3)  # a dataset, not a group
    signals = lazyio.load(path, lazy=lazy)
    assert len(signals) == 3
    titles = [s["metadata"]["General"]["title"] for s in signals]
    assert sorted(titles) == ["", "alpha", "beta"]  # "__unnamed__" -> ""
    for signal in signals:
        name = signal["metadata"]["General"]["title"] or "__unnamed__"
        check_data(signal, arrays[name], lazy)
        assert len(signal["axes"]) == arrays[name].ndim
    if not lazy:
        ours = [s["metadata"]["General"]["title"] for s in signals]
        assert ours == [s["metadata"]["General"]["title"] for s in rsciio_read(path)]


def test_v1_0_unnamed_title(tmp_path: Path) -> None:
    path = tmp_path / "unnamed.hdf5"
    write_file(path, None, {"__unnamed__": {
        "data": np.arange(4.0), "metadata": {"title": "__unnamed__"},
    }}, old_names=True)
    assert load_one(path, lazy=False)["metadata"]["General"]["title"] == ""


def test_file_without_signal_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "nosignal.hspy"
    with h5py.File(path, "w") as f:
        f.attrs["file_format_version"] = "3.3"
        f.create_group("Experiments/empty")
    with pytest.raises(FormatError, match="holds no signal") as info:
        lazyio.load(path, format="hspy")
    assert str(path) in str(info.value)
    assert isinstance(info.value, LazyioError)
