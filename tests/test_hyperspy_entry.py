"""HyperSpy as an entry point: signals into lazyio (save, convert, to_xarray, info) with
everything they carry and without computing lazy data; lazyio.hyperspy.load/save for paths
and URLs; register() making "lazyio" a file format HyperSpy's own hs.load / s.save use."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from formats_table import EXT as FORMATS

import lazyio
import lazyio.hyperspy as lh
from lazyio.signals import as_signal_dict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hs():
    import hyperspy.api

    return hyperspy.api


@pytest.fixture
def registered(hs):
    lh.register()
    yield
    lh.unregister()


def lazy_signal(hs, rng, *, blocks=(2, 4, 6, 7)):
    data = da.from_array(rng.random((4, 4, 6, 7)).astype(np.float32), chunks=blocks)
    s = hs.signals.Signal2D(data).as_lazy()
    s.metadata.General.title = "scan"
    s.metadata.Signal.quantity = "Intensity (counts)"
    for axis, (name, units) in zip(s.axes_manager._axes,
                                   [("y", "nm"), ("x", "nm"), ("ky", "1/nm"), ("kx", "1/nm")],
                                   strict=True):
        axis.name, axis.units = name, units
    s.axes_manager["kx"].scale = 0.5
    s.original_metadata.set_item("detector.gain", 2)
    return s


def test_import_lazyio_does_not_import_hyperspy_and_register_is_explicit():
    code = textwrap.dedent("""
        import sys, lazyio, lazyio.hyperspy
        assert lazyio.hyperspy is sys.modules["lazyio.hyperspy"]
        assert "hyperspy" not in sys.modules, "import lazyio imported HyperSpy"
        import lazyio.formats.hyperspy  # the file tree: another module, no clash
        assert lazyio.hyperspy.__name__ != lazyio.formats.hyperspy.__name__
        from rsciio import IO_PLUGINS
        assert not [p for p in IO_PLUGINS if p["name"] == "lazyio"], "registered on import"
        lazyio.hyperspy.register(); lazyio.hyperspy.register()
        assert len([p for p in IO_PLUGINS if p["name"] == "lazyio"]) == 1
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_missing_hyperspy_is_a_clear_error(monkeypatch, tmp_path):
    lazyio.save(tmp_path / "a.npy", np.zeros(3), show_progressbar=False)
    monkeypatch.setitem(sys.modules, "hyperspy.io", None)
    for call in (lh.register, lambda: lh.load(tmp_path / "a.npy")):
        with pytest.raises(ImportError, match="pip install hyperspy"):
            call()


def test_normalising_a_lazy_signal_keeps_its_dask_array(hs, rng):
    s = lazy_signal(hs, rng)
    d = as_signal_dict(s)
    assert d["data"] is s.data  # not computed, not copied
    assert [a["name"] for a in d["axes"]] == ["y", "x", "ky", "kx"]
    assert [a["navigate"] for a in d["axes"]] == [True, True, False, False]
    assert d["metadata"]["Signal"]["quantity"] == "Intensity (counts)"
    assert d["original_metadata"] == {"detector": {"gain": 2}}
    assert (d["package"], d["attributes"]["_lazy"]) == ("hyperspy", True)
    assert "tmp_parameters" not in d


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_save_a_lazy_signal_to_every_format(hs, rng, tmp_path, fmt):
    s = lazy_signal(hs, rng)
    calls = []
    # each block is computed exactly once, by the streamed write (never a whole compute)
    s.data = s.data.map_blocks(lambda b: calls.append(b.shape) or b, dtype=s.data.dtype,
                               meta=np.empty((0,) * 4, s.data.dtype))
    path = tmp_path / f"out{FORMATS[fmt]}"
    lazyio.save(path, s, show_progressbar=False)
    blocks = [shape for shape in calls if 0 not in shape]  # dask may probe with empty blocks
    assert blocks == [(2, 4, 6, 7)] * s.data.npartitions
    [back] = lazyio.load(path)
    np.testing.assert_array_equal(back["data"].compute(), s.data.compute())
    if fmt != "npy":
        assert [a["name"] for a in back["axes"]] == ["y", "x", "ky", "kx"]
        assert [a["navigate"] for a in back["axes"]] == [True, True, False, False]
        assert back["axes"][3]["scale"] == 0.5
        assert back["metadata"]["General"]["title"] == "scan"


def test_models_learning_results_and_markers_survive_lazyio_save(hs, rng, tmp_path):
    s = hs.signals.Signal1D(rng.random((3, 4, 32)) + 1.0)
    s.metadata.General.title = "spectra"
    s.add_marker(hs.plot.markers.Points(offsets=np.array([[1.0, 2.0]])), permanent=True)
    m = s.create_model()
    m.append(hs.model.components1D.Offset())
    m.store("fit")
    s.decomposition(output_dimension=2, print_info=False)
    for fmt in ("hspy", "zspy"):
        path = tmp_path / f"all.{fmt}"
        lazyio.save(path, s, show_progressbar=False)
        back = hs.load(path)
        assert back.models.fit.restore().components.Offset.offset.map.shape == (3, 4)
        assert "Points" in back.metadata.Markers
        np.testing.assert_allclose(back.learning_results.factors, s.learning_results.factors)
        again = lh.load(path, lazy=False)
        np.testing.assert_allclose(again.learning_results.factors,
                                   s.learning_results.factors)
        assert "fit" in again.models._models.as_dictionary()


def test_to_xarray_info_and_convert_take_a_hyperspy_signal(hs, rng, tmp_path):
    s = lazy_signal(hs, rng)
    arr = lazyio.to_xarray(s)
    assert arr.dims == ("y", "x", "ky", "kx")
    assert isinstance(arr.data, da.Array)
    assert (arr.attrs["long_name"], arr.attrs["units"]) == ("Intensity", "counts")
    described = lazyio.info(s)
    assert described.shape == (4, 4, 6, 7)
    assert described.dask_chunks == (2, 4, 6, 7)
    assert [a.name for a in described.axes] == ["y", "x", "ky", "kx"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        [written] = lazyio.convert(s, tmp_path / "c.npy", show_progressbar=False)
    assert any("the signal 'scan'" in str(w.message) for w in caught)
    np.testing.assert_array_equal(np.load(written), s.data.compute())
    [hspy] = lazyio.convert(s, tmp_path / "c.hspy", show_progressbar=False)
    assert lazyio.info(hspy).signals[0].axes[0].name == "y"


def test_load_returns_one_signal_or_a_list(hs, rng, tmp_path):
    s = lazy_signal(hs, rng)
    path = tmp_path / "one.zspy"
    lh.save(s, path, show_progressbar=False)
    one = lh.load(path)
    assert type(one).__name__ == "LazySignal2D"
    assert one.axes_manager.navigation_shape == (4, 4)
    assert one.metadata.Signal.quantity == "Intensity (counts)"
    assert one.tmp_parameters.filename == "one"  # s.save() without a name works as after hs.load
    eager = lh.load(path, lazy=False)
    assert not eager._lazy
    np.testing.assert_array_equal(eager.data, s.data.compute())
    multi = tmp_path / "two.hspy"
    lh.save(s, multi, show_progressbar=False)
    import h5py

    with h5py.File(multi, "r+") as f:  # a second experiment: a file with two signals
        f.copy("Experiments/scan", "Experiments/again")
    both = lh.load(multi)
    assert isinstance(both, list)
    assert [b.data.shape for b in both] == [(4, 4, 6, 7)] * 2


def test_load_from_s3_and_memory(hs, rng, s3_server):
    s = lazy_signal(hs, rng)
    url = f"s3://{s3_server.bucket}/entry/scan.hspy"
    lh.save(s, url, storage_options=s3_server.storage_options, overwrite=True,
            show_progressbar=False)
    remote = lh.load(url, storage_options=s3_server.storage_options)
    assert remote._lazy
    assert not remote.tmp_parameters.has_item("folder")  # no local folder to save beside
    np.testing.assert_array_equal(remote.inav[1, 2].data.compute(), s.inav[1, 2].data.compute())
    lh.save(s, "memory://entry/scan.hspy", overwrite=True, show_progressbar=False)
    assert lh.load("memory://entry/scan.hspy").metadata.General.title == "scan"


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_hs_load_and_save_with_file_format_lazyio(hs, rng, tmp_path, fmt):
    s = lazy_signal(hs, rng)
    path = tmp_path / f"by_hs{FORMATS[fmt]}"
    s.save(path, file_format="lazyio")
    assert path.exists()
    [written] = lazyio.load(path)  # lazyio wrote it, in the format of the extension
    np.testing.assert_array_equal(written["data"].compute(), s.data.compute())
    back = hs.load(path, file_format="lazyio", lazy=True)
    assert back._lazy
    assert back.metadata.General.FileIO["0"].io_plugin == "lazyio.hyperspy"
    np.testing.assert_array_equal(back.data.compute(), s.data.compute())
    if fmt != "npy":
        assert back.axes_manager.navigation_shape == (4, 4)
        assert back.axes_manager["kx"].scale == 0.5
    # a keyword of the detected format goes through; an unknown one is refused by name
    with pytest.raises(TypeError, match="no_such_option"):
        hs.load(path, file_format="lazyio", no_such_option=1)


@pytest.mark.usefixtures("registered")
def test_register_leaves_hyperspy_choice_by_extension_alone(hs, rng, tmp_path):
    s = lazy_signal(hs, rng)
    s.save(tmp_path / "plain.hspy")
    loaded = hs.load(tmp_path / "plain.hspy")
    assert loaded.metadata.General.FileIO["0"].io_plugin == "rsciio.hspy"
    s.save(tmp_path / "named", file_format="LazyIO")  # the alias, and no extension
    [made] = tmp_path.glob("named.*")
    assert lazyio.info(made).format == "hspy"
    lh.unregister()
    from hyperspy.io import _format_name_to_reader

    with pytest.raises(ValueError, match="does not match any format"):
        _format_name_to_reader("lazyio")  # how hs.load looks a file_format name up
    assert not lh.is_registered()


def test_peak_memory_of_a_lazy_signal_save_stays_bounded(tmp_path):
    """A 256 MiB lazy signal written through lazyio.save in a fresh process: the peak RSS
    grows by far less than the array (the issue saw 2.3 GB for a 1 GiB signal). Its dask
    blocks are the .zspy default storage chunks (16, 16, 128, 64), so the write streams
    block by block."""
    code = textwrap.dedent(f"""
        import json, resource, dask, dask.array as da, numpy as np
        import hyperspy.api as hs, lazyio
        dask.config.set(scheduler="threads", num_workers=2)
        data = da.random.default_rng(0).random((128, 64, 128, 64), chunks=(16, 16, 128, 64))
        s = hs.signals.Signal2D(data.astype("f4")).as_lazy()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        lazyio.save({str(tmp_path / "big.zspy")!r}, s, show_progressbar=False)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"before": before, "after": after, "nbytes": int(s.data.nbytes)}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                         text=True, cwd=ROOT, timeout=240)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    grown = (figures["after"] - figures["before"]) * 1024
    assert figures["nbytes"] == 256 * 2**20
    assert grown < figures["nbytes"] / 4, figures
