"""lazyio as a drop-in for RosettaSciIO's hspy/zspy/usid plugins inside HyperSpy itself.

HyperSpy 2.4 looks its plugins up in ``hyperspy.io.IO_PLUGINS`` (a list of dicts whose
``"api"`` names the module with ``file_reader``/``file_writer``). The ``dropin`` fixture
points the HSPY, ZSPY and USID entries at ``lazyio.hspy``, ``lazyio.zspy`` and
``lazyio.usid`` for one test, so ``hs.load`` and ``s.save`` run lazyio's pipelines; the
``rsciio`` fixture keeps RosettaSciIO's own plugins, to compare with.
"""

from __future__ import annotations

import logging
import warnings

import h5py
import numpy as np
import pytest

import lazyio
from lazyio.errors import FormatError, LazyioWarning
from lazyio.rsciio import namespace

hs = pytest.importorskip("hyperspy.api")
hio = pytest.importorskip("hyperspy.io")

REPLACED = {"HSPY": "lazyio.hspy", "ZSPY": "lazyio.zspy", "USID": "lazyio.usid"}


@pytest.fixture
def dropin(monkeypatch):
    """HyperSpy's hspy/zspy/usid plugins replaced by lazyio's, for one test."""
    seen = set()
    for plugin in hio.IO_PLUGINS:
        if plugin["name"] in REPLACED:
            monkeypatch.setitem(plugin, "api", REPLACED[plugin["name"]])
            seen.add(plugin["name"])
    assert seen == set(REPLACED), "HyperSpy's plugin list changed shape"
    return hs


def _signal(shape=(4, 5)):
    s = hs.signals.Signal1D(np.arange(np.prod(shape), dtype="f4").reshape(shape))
    s.axes_manager[0].name = "x"
    s.axes_manager[0].scale = 2.0
    s.axes_manager[0].units = "nm"
    s.axes_manager[-1].name = "E"
    s.axes_manager[-1].offset = 10.0
    return s


def _replace_hspy_data(path, data):
    with h5py.File(path, "a") as f:
        group = f["Experiments/__unnamed__"]
        del group["data"]
        group["data"] = data


# ------------------------------------------------------------------ "not a valid file"


def test_not_a_hyperspy_file_is_an_oserror_as_in_rosettasciio(tmp_path, dropin):
    plain = tmp_path / "plain.hspy"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    damaged = tmp_path / "damaged.hspy"
    _signal().save(damaged)
    damaged.write_bytes(damaged.read_bytes()[:600])
    for path in (plain, damaged):
        with pytest.raises(OSError, match=path.name) as info:  # what HyperSpy code catches
            dropin.load(path)
        assert isinstance(info.value, FormatError)
        assert isinstance(info.value, ValueError)  # lazyio's own contract still holds


def test_rosettasciio_raises_oserror_for_the_same_file(tmp_path):
    """The reference behaviour the test above matches."""
    plain = tmp_path / "plain.hspy"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(OSError, match="not a valid HyperSpy"):
        hs.load(plain)


# ------------------------------------------------------- data replaced in place (read)


@pytest.mark.parametrize("lazy", [False, True])
def test_data_replaced_in_place_reads_with_the_data_shape(tmp_path, dropin, lazy):
    path = tmp_path / "a.hspy"
    _signal().save(path)
    _replace_hspy_data(path, np.ones((6, 7), dtype="f4"))
    with pytest.warns(LazyioWarning, match=r"axis-0 says 4; axis-1 says 5") as record:
        s = dropin.load(path, lazy=lazy)
    assert "a.hspy" in str(record[0].message)
    assert s.data.shape == (6, 7)
    x, e = s.axes_manager[0], s.axes_manager[1]
    assert (x.size, x.name, x.scale, x.units) == (6, "x", 2.0, "nm")
    assert (e.size, e.name, e.offset) == (7, "E", 10.0)
    assert float(np.asarray(s.data).sum()) == 42.0


def test_added_and_dropped_dimensions_get_default_or_lose_axes(tmp_path, dropin):
    path = tmp_path / "a.hspy"
    _signal().save(path)
    _replace_hspy_data(path, np.ones((6, 7, 3), dtype="f4"))
    with pytest.warns(LazyioWarning, match="axis-2 missing"):
        s = dropin.load(path)
    assert s.data.shape == (6, 7, 3)
    assert [a.size for a in s.axes_manager._axes] == [6, 7, 3]
    assert s.axes_manager._axes[0].name == "x"
    _replace_hspy_data(path, np.ones(6, dtype="f4"))
    with pytest.warns(LazyioWarning, match="1 surplus axis group"):
        [sig] = lazyio.load(path, lazy=False)
    assert [a["size"] for a in sig["axes"]] == [6]
    assert sig["axes"][0]["name"] == "x"


def test_zspy_data_replaced_in_place_reads_too(tmp_path, dropin):
    import zarr

    path = tmp_path / "a.zspy"
    _signal().save(path)
    group = zarr.open_group(str(path / "Experiments" / "__unnamed__"), mode="a",
                            zarr_format=2)
    del group["data"]
    group.create_array("data", data=np.ones((3, 5), dtype="f4"), chunks=(3, 5))
    with pytest.warns(LazyioWarning, match="axis-0 says 4"):
        s = dropin.load(path)
    assert s.data.shape == (3, 5)
    assert s.axes_manager[0].size == 3


def test_a_file_whose_axes_fit_reads_without_warning(tmp_path, dropin):
    path = tmp_path / "a.hspy"
    _signal().save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LazyioWarning)
        assert dropin.load(path).data.shape == (4, 5)


# ------------------------------------------------------------- axes checked at write


@pytest.mark.parametrize("fmt", ["hspy", "zspy", "usid", "npy"])
def test_axes_contradicting_the_data_are_refused_at_write(tmp_path, fmt):
    """An axis of size 7 for 4 rows used to be written, giving a file lazyio then
    refused to read."""
    target = tmp_path / f"a.{lazyio.formats.get_plugin(fmt).extensions[0].lstrip('.')}"
    axes = [{"name": "rows", "size": 7, "navigate": True}, {"name": "E", "size": 5}]
    signal = {"data": np.zeros((4, 5), dtype="f4"), "axes": axes}
    for write in (lambda: lazyio.save(target, signal, show_progressbar=False),
                  lambda: namespace(fmt).file_writer(str(target), signal)):
        with pytest.raises(FormatError, match=r"axis 0 \('rows'\) says size 7 .* 4") as info:
            write()
        assert isinstance(info.value, ValueError)
        assert str(target) in str(info.value)
        assert not target.exists()
    bad_vector = [{"name": "rows", "axis": np.arange(3.0), "navigate": True}, {"size": 5}]
    with pytest.raises(FormatError, match="has 3 values"):
        lazyio.save(target, {"data": signal["data"], "axes": bad_vector},
                    show_progressbar=False)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------- option validation


@pytest.mark.parametrize("ext", ["hspy", "zspy"])
def test_write_dataset_of_the_wrong_type_is_a_valueerror(tmp_path, dropin, ext):
    path = tmp_path / f"a.{ext}"
    with pytest.raises(ValueError, match="write_dataset") as info:
        _signal().save(path, write_dataset="unsupported_type")
    assert isinstance(info.value, TypeError)
    assert not path.exists()


def test_write_dataset_false_with_mode_w_is_refused(tmp_path, dropin):
    path = tmp_path / "a.hspy"
    s = _signal()
    s.save(path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="mode='a' is required"):
        s.save(path, overwrite=True, write_dataset=False, mode="w")
    assert path.read_bytes() == before
    s.axes_manager[0].units = "um"
    s.save(path, overwrite=True, write_dataset=False, mode="a")  # as RosettaSciIO
    back = dropin.load(path)
    assert back.axes_manager[0].units == "um"
    np.testing.assert_array_equal(back.data, s.data)


def test_read_modes_that_would_truncate_are_refused(tmp_path, dropin):
    for ext in ("hspy", "zspy"):
        path = tmp_path / f"a.{ext}"
        _signal().save(path)
        with pytest.raises(ValueError, match="mode"):
            dropin.load(path, mode="w")
        assert dropin.load(path, mode="r+").data.shape == (4, 5)


# ------------------------------------------------------------------ ragged signals


def test_lazy_ragged_signal_with_one_navigation_axis_round_trips(tmp_path, dropin):
    """RosettaSciIO refuses to write it to .hspy; lazyio stores it, and HyperSpy reads
    it back through lazyio and through RosettaSciIO's own reader."""
    data = np.empty(3, dtype=object)
    for i in range(3):
        data[i] = np.arange(i + 1, dtype="f8") * 1.5
    s = hs.signals.BaseSignal(data, ragged=True).as_lazy()
    path = tmp_path / "r.hspy"
    s.save(path)
    back = dropin.load(path, lazy=True)
    assert back.ragged
    for got, want in zip(back.data.compute(), data, strict=True):
        np.testing.assert_array_equal(got, want)
    from rsciio.hspy import file_reader

    [theirs] = file_reader(str(path), lazy=False)
    for got, want in zip(theirs["data"], data, strict=True):
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------- chunks and handles


@pytest.mark.parametrize("ext", ["hspy", "zspy"])
def test_chunks_storage_gives_the_storage_chunks(tmp_path, dropin, ext):
    path = tmp_path / f"a.{ext}"
    s = hs.signals.Signal2D(np.arange(16 * 8 * 8, dtype="f4").reshape(16, 8, 8))
    s.save(path, chunks=(2, 8, 8))
    [layout] = lazyio.info(path).signals
    assert layout.storage_chunks == (2, 8, 8)
    grouped = dropin.load(path, lazy=True)
    assert grouped.data.chunksize != (2, 8, 8)  # "auto" groups storage chunks
    exact = dropin.load(path, lazy=True, chunks="storage")
    assert exact.data.chunksize == (2, 8, 8)
    assert exact.data.numblocks == (8, 1, 1)
    np.testing.assert_array_equal(exact.data.compute(), s.data)
    lazyio.close_all()


def test_chunks_storage_without_storage_chunks_is_auto(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((64, 32), dtype="f4"))
    [auto] = lazyio.load(path)
    [storage] = lazyio.load(path, chunks="storage")
    assert storage["data"].chunks == auto["data"].chunks


def test_no_file_handle_in_the_graph_close_all_instead(tmp_path, dropin, caplog):
    from rsciio.utils.file import get_file_handle

    path = tmp_path / "a.hspy"
    _signal().save(path)
    s = dropin.load(path, lazy=True)
    assert get_file_handle(s.data, warn=False) is None
    with caplog.at_level(logging.WARNING):
        s.close_file()  # HyperSpy logs that there is nothing to close
    lazyio.close_all()
    np.testing.assert_array_equal(s.data.compute(), _signal().data)  # reopened on demand
    lazyio.close_all()


def test_a_gap_in_the_axis_groups_is_damage_not_a_resize(tmp_path, dropin):
    path = tmp_path / "a.hspy"
    hs.signals.Signal2D(np.zeros((2, 3, 4), dtype="f4")).save(path)
    with h5py.File(path, "a") as f:
        del f["Experiments/__unnamed__/axis-1"]
    with pytest.raises(OSError, match="axis-1 is missing while axis-2 is stored"):
        dropin.load(path)


def test_an_absurd_shape_under_stale_axes_is_still_refused(tmp_path):
    """A header edited to claim 2**38 rows under axes that say 4 is refused, not read as
    replaced data."""
    import json

    path = tmp_path / "a.zspy"
    lazyio.save(path, np.zeros((4, 5), dtype="f4"), show_progressbar=False)
    zarray = path / "Experiments" / "__unnamed__" / "data" / ".zarray"
    meta = json.loads(zarray.read_text())
    meta["shape"] = [2**38, 5]  # just over 2**40 elements: the grid stays cheap to build
    zarray.write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=r"axis-0 says 4.*more than 2\*\*40 elements"):
        lazyio.load(path)


def test_a_non_uniform_axis_of_the_wrong_length_becomes_an_index_axis(tmp_path, dropin):
    path = tmp_path / "a.hspy"
    axes = [{"name": "x", "size": 4, "navigate": True},
            {"name": "E", "units": "eV", "axis": np.array([1.0, 2.0, 4.0, 8.0, 16.0])}]
    lazyio.save(path, {"data": np.zeros((4, 5), dtype="f4"), "axes": axes},
                show_progressbar=False)
    _replace_hspy_data(path, np.ones((4, 7), dtype="f4"))
    with pytest.warns(LazyioWarning, match="axis-1 says 5"):
        s = dropin.load(path)
    e = s.axes_manager[-1]
    assert (e.size, e.name, e.units, e.is_uniform) == (7, "E", "eV", True)
    np.testing.assert_array_equal(e.axis, np.arange(7.0))
    # the same file written by HyperSpy itself (its axis dict says "_type": "DataAxis")
    t = hs.signals.Signal1D(np.zeros((4, 5), dtype="f4"))
    t.axes_manager[-1].convert_to_non_uniform_axis()
    t.save(path, overwrite=True)
    _replace_hspy_data(path, np.ones((4, 7), dtype="f4"))
    with pytest.warns(LazyioWarning, match="axis-1 says 5"):
        u = dropin.load(path)
    assert u.axes_manager[-1].size == 7
    assert u.axes_manager[-1].is_uniform


def test_usid_through_hyperspy(tmp_path, dropin):
    path = tmp_path / "a.h5"
    s = _signal((3, 4, 5))
    s.save(path)
    back = dropin.load(path, lazy=True, chunks="storage", file_format="USID")
    assert back.data.shape == (3, 4, 5)
    assert back.axes_manager[-1].offset == 10.0
    np.testing.assert_array_equal(back.data.compute(), s.data)
    with pytest.raises(ValueError, match="fletcher32"):
        s.save(path, overwrite=True, fletcher32="yes")
    lazyio.close_all()
