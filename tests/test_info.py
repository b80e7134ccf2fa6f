"""``lazyio.info``: format, layout and axes of each format, from metadata alone."""

from __future__ import annotations

import json
import os
import re

import h5py
import numpy as np
import pytest
from formats_table import EXT as FORMATS
from formats_table import HYPERSPY

import lazyio
from lazyio.info import FileInfo


def make_signal(rng: np.random.Generator) -> dict:
    data = rng.integers(0, 1000, size=(4, 6, 8, 10), dtype=np.uint16)
    names, units = ["y", "x", "ky", "kx"], ["nm", "nm", "1/nm", "1/nm"]
    axes = [{"name": n, "units": u, "size": s, "scale": 0.5 * (i + 1), "offset": float(i),
             "navigate": i < 2}
            for i, (n, u, s) in enumerate(zip(names, units, data.shape, strict=True))]
    return {"data": data, "axes": axes, "metadata": {"General": {"title": "scan"}},
            "original_metadata": {"detector": {"gain": 2}}}


@pytest.fixture(params=list(FORMATS))
def written(request, tmp_path, rng):
    fmt = request.param
    path = str(tmp_path / f"scan{FORMATS[fmt]}")
    signal = make_signal(rng)
    lazyio.save(path, signal, show_progressbar=False)
    return fmt, path, signal


def test_info_describes_every_format(written):
    fmt, path, signal = written
    result = lazyio.info(path)
    assert isinstance(result, FileInfo)
    assert result.format == fmt
    assert result.url == os.path.abspath(path)
    assert result.size_on_disk > 0
    [sig] = result.signals
    data = signal["data"]
    assert sig.shape == data.shape
    assert sig.dtype == "uint16"
    assert sig.nbytes == data.nbytes
    assert sig.stored_nbytes > 0
    assert sig.npartitions >= 1
    assert len(sig.dask_chunks) == data.ndim
    if fmt == "npy":
        assert sig.storage_chunks is None
        assert sig.compression is None
        assert sig.stored_nbytes == data.nbytes
        assert result.spec_version == "1.0"
        assert [a.scale for a in sig.axes] == [1.0] * 4  # .npy holds no calibration
    else:
        assert sig.title == "scan"
        assert [a.name for a in sig.axes] == ["y", "x", "ky", "kx"]
        assert [a.units for a in sig.axes] == ["nm", "nm", "1/nm", "1/nm"]
        assert [a.scale for a in sig.axes] == [0.5, 1.0, 1.5, 2.0]
        assert [a.offset for a in sig.axes] == [0.0, 1.0, 2.0, 3.0]
        assert [a.navigate for a in sig.axes] == [True, True, False, False]
    if fmt in HYPERSPY:
        assert result.spec_version.endswith("3.3")
        assert sig.dataset == "/Experiments/scan/data"
    if fmt == "hspy":
        with h5py.File(path) as f:
            dset = f[sig.dataset]
            assert sig.storage_chunks == dset.chunks
            assert sig.stored_nbytes == dset.id.get_storage_size()
        assert "gzip(4)" in sig.compression
        assert "shuffle" in sig.compression
    if fmt == "zspy":
        with open(os.path.join(path, "Experiments", "scan", "data", ".zarray")) as f:
            meta = json.load(f)
        assert sig.storage_chunks == tuple(meta["chunks"])
        assert sig.compression.startswith("blosc(cname=zstd, clevel=1")
    if fmt == "usid":
        with h5py.File(path) as f:
            assert sig.storage_chunks == f[sig.dataset].chunks
            assert len(sig.storage_chunks) == 2  # the 2-D main dataset's own chunks


def test_outputs_text_html_and_json(written):
    _, path, _ = written
    result = lazyio.info(path)
    text = str(result)
    assert path in text
    assert "storage chunks" in text
    assert "dask chunks" in text
    assert repr(result) == text
    html = result._repr_html_()
    assert html.startswith("<div>")
    assert "<table>" in html
    assert "storage chunks" in html
    sig = result.signals[0]
    assert "storage chunks" in str(sig)
    assert repr(sig) == str(sig)
    assert "<table>" in sig._repr_html_()
    assert json.loads(json.dumps(sig.to_dict())) == sig.to_dict()
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()
    assert result.to_dict()["signals"][0]["shape"] == [4, 6, 8, 10]


def _corrupt_hdf5_chunks(path: str, dataset: str) -> None:
    with h5py.File(path) as f:
        dset = f[dataset]
        spans = [(c.byte_offset, c.size) for c in
                 (dset.id.get_chunk_info(i) for i in range(dset.id.get_num_chunks()))]
    with open(path, "r+b") as f:
        for offset, size in spans:
            f.seek(offset)
            f.write(b"\xff" * size)


@pytest.mark.parametrize("fmt", HYPERSPY)
def test_reads_no_data(tmp_path, rng, fmt):
    # Every data chunk is garbage: reading any would fail; info must still answer.
    path = str(tmp_path / f"scan.{fmt}")
    lazyio.save(path, make_signal(rng), chunks=(2, 3, 8, 10), show_progressbar=False)
    if fmt == "hspy":
        _corrupt_hdf5_chunks(path, "/Experiments/scan/data")
    else:
        folder = os.path.join(path, "Experiments", "scan", "data")
        for root, _, files in os.walk(folder):
            for name in files:
                if not name.startswith("."):
                    with open(os.path.join(root, name), "wb") as f:
                        f.write(b"garbage")
    [sig] = lazyio.info(path).signals
    assert sig.storage_chunks == (2, 3, 8, 10)
    with pytest.raises(lazyio.CorruptChunkError):
        lazyio.load(path)[0]["data"].compute()


def test_compression_and_zarr_v3_sharding(tmp_path, rng):
    signal = make_signal(rng)
    raw = str(tmp_path / "raw.hspy")
    lazyio.save(raw, signal, compression=None, show_progressbar=False)
    assert lazyio.info(raw).signals[0].compression is None
    sharded = str(tmp_path / "v3.zspy")
    lazyio.save(sharded, signal, zarr_format=3, chunks=(2, 6, 8, 10), shards=(4, 6, 8, 10),
                show_progressbar=False)
    [sig] = lazyio.info(sharded).signals
    assert sig.storage_chunks == (4, 6, 8, 10)
    assert sig.compression.startswith("sharding(chunks=(2, 6, 8, 10)")


def test_non_uniform_axis(tmp_path, rng):
    signal = make_signal(rng)
    signal["axes"][3] = {"name": "energy", "units": "eV", "size": 10, "navigate": False,
                         "axis": np.geomspace(1, 100, 10)}
    path = str(tmp_path / "nu.hspy")
    lazyio.save(path, signal, show_progressbar=False)
    axis = lazyio.info(path).signals[0].axes[3]
    assert axis.non_uniform
    assert axis.scale is None
    assert (axis.low, axis.high) == pytest.approx((1.0, 100.0))
    assert "non-uniform" in str(lazyio.info(path))


@pytest.mark.parametrize("fmt", ["hspy", "zspy", "npy"])
def test_remote_url(rng, fmt):
    url = f"memory://lazyio-info-test/scan{FORMATS[fmt]}"
    lazyio.save(url, make_signal(rng), overwrite=True, show_progressbar=False)
    result = lazyio.info(url)
    assert result.url == url
    assert result.format == fmt
    assert result.signals[0].shape == (4, 6, 8, 10)
    assert result.size_on_disk > 0


def test_missing_file_and_bad_format(tmp_path):
    with pytest.raises(lazyio.SourceNotFoundError, match="nothere"):
        lazyio.info(tmp_path / "nothere.hspy")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an array file")
    with pytest.raises(lazyio.UnknownFormatError, match=r"junk\.bin"):
        lazyio.info(junk)


@pytest.mark.parametrize("fmt", HYPERSPY)
def test_metadata_trees(tmp_path, rng, fmt):
    signal = make_signal(rng)
    signal["original_metadata"] = {"detector": {"gain": 2, "offsets": np.arange(3.0),
                                                "map": np.arange(100).reshape(10, 10)},
                                   "notes": "a\nb"}
    path = str(tmp_path / f"meta.{fmt}")
    lazyio.save(path, signal, show_progressbar=False)
    [sig] = lazyio.info(path).signals
    assert sig.metadata["General"]["title"] == "scan"
    assert sig.original_metadata["detector"]["gain"] == 2
    doc = sig.to_dict()
    assert json.loads(json.dumps(doc)) == doc
    detector = doc["original_metadata"]["detector"]
    # a short array in memory is listed; a lazy one is described, never read
    assert detector["offsets"] in ([0.0, 1.0, 2.0], "<lazy array (3,) float64>")
    assert re.fullmatch(r"<(lazy )?array \(10, 10\) int64>", detector["map"])  # summarised
    assert "metadata" not in sig.to_dict(metadata=False)
    text = lazyio.info(path).to_text(metadata=True)
    assert re.search(r"[├└]── map = <(lazy )?array \(10, 10\) int64>$", text, re.MULTILINE)
    assert "notes = a b" in text  # one line per leaf
    assert "map" not in str(lazyio.info(path))  # printing shows the tables only


@pytest.mark.parametrize(("written_as", "named"), [("npy", "hspy"), ("hspy", "npy"),
                                                   ("zspy", "hspy")])
def test_content_decides_over_the_extension(tmp_path, rng, written_as, named):
    # the format named like the extension sniffs first; when it says no, the others do
    path = str(tmp_path / f"scan.{written_as}")
    lazyio.save(path, make_signal(rng), show_progressbar=False)
    renamed = str(tmp_path / f"misnamed.{named}")
    os.rename(path, renamed)
    assert lazyio.info(renamed).format == written_as


# --- info plans, load builds: the same blocks, axes and metadata without dask ----------


def _serpentine_usid(path, rng):
    """A USID file whose scan lines alternate direction: lazyio gathers its steps into
    grid order with dask indexing, the one read info plans by building the dask array."""
    y, x, n = 3, 4, 6
    steps = [(j, i) for j in range(y) for i in (range(x) if j % 2 == 0 else
                                                   reversed(range(x)))]
    inds = np.array(steps, dtype=np.uint32)
    with h5py.File(path, "w") as f:
        grp = f.create_group("Measurement_000/Channel_000")
        anc = {"Position_Indices": inds, "Position_Values": inds.astype(np.float32),
               "Spectroscopic_Indices": np.arange(n, dtype="u4")[None],
               "Spectroscopic_Values": np.arange(n, dtype="f4")[None]}
        main = grp.create_dataset("Raw_Data", data=rng.random((y * x, n), dtype="f4"),
                                  chunks=(4, n))
        main.attrs.update({"quantity": "Counts", "units": "a.u."})
        for name, values in anc.items():
            dset = grp.create_dataset(name, data=values)
            labels = [b"Y", b"X"] if name.startswith("Position") else [b"E"]
            dset.attrs["labels"] = np.array(labels)
            dset.attrs["units"] = np.array([b"px"] * len(labels))
            main.attrs[name] = dset.ref
    return str(path)


@pytest.mark.parametrize("chunk_size", ["128MiB", "2KiB"])
@pytest.mark.parametrize("case", ["hspy", "zspy", "npy", "usid", "usid-serpentine"])
def test_info_plans_what_load_builds(tmp_path, rng, case, chunk_size):
    # info reads through the loaders with planned arrays instead of dask arrays: the
    # blocks, shapes, axes and metadata it reports must be those load() gives
    import dask

    if case == "usid-serpentine":
        path = _serpentine_usid(tmp_path / "serp.h5", rng)
    else:
        path = str(tmp_path / f"scan{FORMATS[case]}")
        signal = make_signal(rng)
        signal["metadata"]["Sample"] = {"map": rng.random((5, 7)), "tags": ["a", "b"]}
        chunks = {"npy": None, "usid": (2, 80)}.get(case, (1, 2, 8, 10))  # USID: 2-D
        lazyio.save(path, signal, chunks=chunks, show_progressbar=False)
    with dask.config.set({"array.chunk-size": chunk_size}):
        described = lazyio.info(path)
        loaded = lazyio.load(path)
    assert len(described.signals) == len(loaded) >= 1
    for sig, got in zip(described.signals, loaded, strict=True):
        data = got["data"]
        assert sig.shape == data.shape
        assert sig.dtype == str(data.dtype)
        assert sig.dask_chunks == data.chunksize
        assert sig.npartitions == data.npartitions
        # the loaded signal described in memory: all but the storage layout must agree
        expected = lazyio.info(got).to_dict()
        layout = ("dataset", "storage_chunks", "compression", "stored_nbytes")
        assert {k: v for k, v in sig.to_dict().items() if k not in layout} == {
            k: v for k, v in expected.items() if k not in layout}
    if chunk_size == "2KiB" and case != "usid-serpentine":
        assert described.signals[0].npartitions > 1  # the setting reached the plan
