"""The HDF5 filter table: decoding, encoding, labels, bounds, and that it is the only one."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import textwrap
import zlib

import h5py
import hdf5plugin
import numpy as np
import pytest

import lazyio
from lazyio.backends.hdf5 import filters
from lazyio.backends.hdf5.sources import H5Source
from lazyio.backends.hdf5.target import encodable_pipeline
from lazyio.errors import CorruptChunkError
from lazyio.location import as_location

PLUGINS = {
    "gzip": {"compression": "gzip", "compression_opts": 6},
    "gzip+shuffle+fletcher32": {"compression": "gzip", "shuffle": True, "fletcher32": True},
    "bzip2": dict(hdf5plugin.BZip2()),
    "blosc": dict(hdf5plugin.Blosc(cname="zstd", clevel=3)),
    "zstd": dict(hdf5plugin.Zstd()),
    "shuffle+zstd+fletcher32": {**hdf5plugin.Zstd(), "shuffle": True, "fletcher32": True},
}


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_table_decodes_what_hdf5_wrote(tmp_path, rng, name):
    data = (rng.random((30, 50)) * 100).astype("<f4")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("x", data=data, chunks=(7, 50), **PLUGINS[name])
    with h5py.File(tmp_path / "f.h5", "r") as f:
        source = H5Source.from_dataset(as_location(str(tmp_path / "f.h5")), f["x"])
    assert source.filters is not None
    np.testing.assert_array_equal(source[...], data)
    np.testing.assert_array_equal(source[3:20, 4:9], data[3:20, 4:9])
    lazyio.close_all()


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_table_encodes_what_hdf5_reads(tmp_path, rng, name):
    data = (rng.random((14, 50)) * 100).astype("<f4")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        dset = f.create_dataset("x", shape=data.shape, dtype=data.dtype, chunks=(7, 50),
                                **PLUGINS[name])
        pipeline = encodable_pipeline(dset)
        assert pipeline is not None
        for row in (0, 7):
            buf = data[row:row + 7].tobytes()
            for fid, values in pipeline:
                buf = filters.encoder(fid, values, 4)(buf)
            dset.id.write_direct_chunk((row, 0), bytes(buf))
    with h5py.File(tmp_path / "f.h5", "r") as f:
        np.testing.assert_array_equal(f["x"][...], data)


def test_filters_without_decoder_read_through_h5py(tmp_path, rng):
    data = (rng.random((30, 50)) * 100).astype("<f4")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        dset = f.create_dataset("x", data=data, chunks=(7, 50), compression="lzf")
        assert encodable_pipeline(dset) is None
    with h5py.File(tmp_path / "f.h5", "r") as f:
        source = H5Source.from_dataset(as_location(str(tmp_path / "f.h5")), f["x"])
    assert source.filters is None
    assert source.offset is None
    np.testing.assert_array_equal(source[2:9], data[2:9])
    lazyio.close_all()


def test_hdf5plugin_is_imported_only_for_a_dataset_that_needs_it(tmp_path, rng):
    # hdf5plugin costs 0.25 s to import: lazyio's own decoders (gzip) and metadata reads
    # need none of it; h5py reading an LZ4 dataset (no lazyio decoder) registers it first
    data = (rng.random((30, 50)) * 100).astype("<f4")
    path = str(tmp_path / "f.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("gz", data=data, chunks=(7, 50), compression="gzip")
        f.create_dataset("lz4", data=data, chunks=(7, 50), **hdf5plugin.LZ4())
    np.save(tmp_path / "expected.npy", data)
    script = textwrap.dedent(f"""
        import sys
        import h5py, numpy as np
        from lazyio.backends.hdf5.sources import H5Source
        from lazyio.location import as_location
        expected = np.load({str(tmp_path / "expected.npy")!r})
        loc = as_location({path!r})
        with h5py.File({path!r}, "r") as f:
            gz, lz4 = (H5Source.from_dataset(loc, f[n]) for n in ("gz", "lz4"))
        assert (gz[...] == expected).all()
        print("after gzip", "hdf5plugin" in sys.modules)
        assert lz4.filters is None  # no lazyio decoder: h5py reads it
        assert (lz4[2:9] == expected[2:9]).all()
        print("after lz4", "hdf5plugin" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["after gzip False", "after lz4 True"]


def test_labels():
    assert filters.pipeline_label(((2, (4,)), (1, (4,)), (3, ()))) == "shuffle+gzip(4)+fletcher32"
    assert filters.label(32015, (3,)) == "zstd(3)"
    assert filters.label(32001, (2, 2, 4, 0, 5, 1, 5)) == "blosc(zstd,5)"
    assert filters.label(32000, (4, 261, 40)) == "lzf"
    assert filters.label(4) == "szip"
    assert filters.label(40000, (), b"my filter") == "my filter"
    assert filters.label(40000) == "40000"
    assert filters.pipeline_label(()) is None


def test_dataset_layout_labels_from_the_table(tmp_path):
    from lazyio.backends.hdf5.layout import dataset_layout

    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("x", shape=(10, 10), dtype="u2", chunks=(5, 5), compression="gzip",
                         compression_opts=7, shuffle=True, fletcher32=True)
    layout = dataset_layout(as_location(str(tmp_path / "f.h5")), "/x")
    assert layout.compression == "shuffle+gzip(7)+fletcher32"
    lazyio.close_all()


def test_creation_options():
    assert filters.creation_options({"compression": "gzip"}) == {"compression": "gzip",
                                                                 "shuffle": True}
    assert filters.creation_options({"compression": None, "fletcher32": True}) == {
        "fletcher32": True}
    blosc = hdf5plugin.Blosc()
    assert filters.creation_options({"compression": blosc}) == {"compression": blosc}
    assert filters.creation_options({"compression": "gzip", "shuffle": False})["shuffle"] is False


def _decode(pipeline, raw, nbytes):
    buf = raw
    for step in filters.decoders(pipeline, 1, nbytes):
        buf = step(buf)
    return bytes(buf)


def test_decompression_is_bounded_to_the_chunk():
    bomb = zlib.compress(bytes(200 * 2**20), 9)  # 200 MB of zeros in ~200 kB
    with pytest.raises(filters.FilterError, match="longer than the chunk"):
        _decode(((1, (4,)),), bomb, 4096)
    with pytest.raises(filters.FilterError, match="decoded to 10 bytes"):
        _decode(((1, (4,)),), zlib.compress(bytes(10)), 4096)
    with pytest.raises((filters.FilterError, zlib.error), match="truncated"):
        _decode(((1, (4,)),), zlib.compress(bytes(range(256)) * 64)[:-9], 4096 * 4)
    long_random = np.random.default_rng(0).integers(0, 256, 2**21, dtype=np.uint8).tobytes()
    with pytest.raises(filters.FilterError, match="truncated"):  # the bounded path
        _decode(((1, (4,)),), zlib.compress(long_random)[:-9], 2**21)
    assert _decode(((1, (4,)),), zlib.compress(b"x" * 4096), 4096) == b"x" * 4096


def test_zstd_and_blosc_sizes_are_checked_before_decoding():
    import numcodecs

    frame = numcodecs.Zstd().encode(bytes(2**20))
    with pytest.raises(filters.FilterError, match="declares 1048576 bytes"):
        _decode(((32015, (3,)),), frame, 4096)
    blosc = numcodecs.Blosc().encode(bytes(2**20))
    with pytest.raises(filters.FilterError, match="header says 1048576"):
        _decode(((32001, (2, 2, 1, 0, 5, 1, 0)),), blosc, 4096)


def _small_chunk_file(path, rng, shape=(64, 64), chunks=(4, 4)):
    data = rng.integers(0, 1000, shape).astype("<u2")
    with h5py.File(path, "w") as f:
        f.attrs["file_format"] = "HyperSpy"
        f.attrs["file_format_version"] = "3.3"
        g = f.create_group("Experiments/s")
        g.create_dataset("data", data=data, chunks=chunks, compression="gzip")
        for i, n in enumerate(shape):
            g.create_group(f"axis-{i}").attrs.update({"name": f"a{i}", "size": n,
                                                       "navigate": i == 0})
        g.create_group("metadata")
        g.create_group("original_metadata")
    return data


@pytest.mark.parametrize("payload", [zlib.compress(b"\x07"), zlib.compress(bytes(64)),
                                     zlib.compress(bytes(2 * 2**20), 9)])
def test_batched_small_chunks_refuse_a_chunk_of_the_wrong_size(tmp_path, rng, payload):
    """A gzip chunk decoding to 1 byte was broadcast over the chunk; a long one is a bomb."""
    path = tmp_path / "small.hspy"
    data = _small_chunk_file(path, rng)
    with h5py.File(path, "a") as f:
        f["Experiments/s/data"].id.write_direct_chunk((8, 8), payload)
    lazy = lazyio.load(path)[0]["data"]
    with pytest.raises(CorruptChunkError, match=r"chunk \(2, 2\) of dataset"):
        lazy.compute()
    with pytest.raises(CorruptChunkError, match=r"chunk \(2, 2\)"):
        lazy[0:16, 0:16].compute()  # several small chunks: the batched path
    np.testing.assert_array_equal(lazy[16:].compute(), data[16:])
    lazyio.close_all()


def test_no_other_module_holds_filter_ids():
    """The filter table is the only place that names HDF5 filter ids."""
    root = pathlib.Path(lazyio.__file__).parent
    pattern = re.compile(r"\b(32000|32001|32004|32008|32015)\b|\b(DEFLATE|SHUFFLE|FLETCHER32)\s*=")
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "filters.py" and pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("fmt", ["hspy", "usid"])
@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"compression": "bogus"}, ValueError, "unknown compression 'bogus'"),
        ({"compression": 12345}, ValueError, "neither a gzip level"),
        ({"compression": 1.5}, TypeError, "compression must be"),
        ({"shuffle": "maybe"}, TypeError, "shuffle must be True or False"),
        ({"fletcher32": 1}, TypeError, "fletcher32 must be True or False"),
        ({"compression": "gzip", "compression_opts": "x"}, ValueError, "level 0-9"),
    ],
)
def test_bad_dataset_options_are_refused_before_writing(tmp_path, fmt, options, error, words):
    """h5py would raise its own error half-way through the write; lazyio names the target
    and the option, and writes nothing."""
    target = tmp_path / ("out.hspy" if fmt == "hspy" else "out.h5")
    with pytest.raises(error, match=words) as info:
        lazyio.save(target, np.zeros((4, 6), dtype="f4"), format=fmt, show_progressbar=False,
                    **options)
    assert str(target) in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compression", [None, "gzip", "lzf", 4, 32015])
def test_good_dataset_options_are_accepted(tmp_path, compression):
    data = np.arange(24, dtype="f4").reshape(4, 6)
    target = tmp_path / "out.hspy"
    lazyio.save(target, data, compression=compression, shuffle=True, show_progressbar=False)
    np.testing.assert_array_equal(lazyio.load(target, lazy=False)[0]["data"], data)
