"""The HyperSpy-in-Zarr (.zspy) format: the conformance suite and what only zspy does."""

from __future__ import annotations

import numpy as np
import pytest
from formats_table import SUITE_KWARGS

import lazyio
from lazyio.testing import FormatTests, example_signal


class TestZspy(FormatTests):
    format_name = "zspy"
    write_kwargs = SUITE_KWARGS["zspy"]

    @pytest.fixture
    def signal(self):
        return example_signal(dtype="<f4")


@pytest.mark.parametrize("shards", [None, (8, 30)])
def test_zarr_format_3(tmp_path, rng, shards):
    path = tmp_path / "v3.zspy"
    data = rng.random((16, 30)).astype("f4")
    lazyio.save(path, data, chunks=(4, 30), zarr_format=3, shards=shards,
                show_progressbar=False)
    assert (path / "zarr.json").exists()
    out = lazyio.load(path)[0]["data"]
    np.testing.assert_array_equal(out.compute(), data)


def test_zip_store_detected_and_fsspec_mapping(tmp_path, rng):
    import fsspec

    data = rng.random((6, 7)).astype("f8")
    lazyio.save(tmp_path / "z.zspy", data, store_type="zip", show_progressbar=False)
    with open(tmp_path / "z.zspy", "rb") as f:
        assert f.read(2) == b"PK"
    np.testing.assert_array_equal(lazyio.load(tmp_path / "z.zspy")[0]["data"].compute(), data)
    lazyio.save(tmp_path / "d.zspy", data, show_progressbar=False)
    mapping = fsspec.get_mapper(str(tmp_path / "d.zspy"))
    np.testing.assert_array_equal(lazyio.load(mapping, lazy=False)[0]["data"], data)


def test_zspy_with_dot_chunk_keys(tmp_path, rng):
    """Flat ``.``-separated chunk keys (zarr 2's DirectoryStore) read like nested ones."""
    import json
    import os

    data = rng.random((8, 6)).astype("f4")
    path = tmp_path / "dots.zspy"
    lazyio.save(path, data, chunks=(2, 3), show_progressbar=False)
    array_dir = path / "Experiments" / "__unnamed__" / "data"
    meta = json.loads((array_dir / ".zarray").read_text())
    meta["dimension_separator"] = "."
    (array_dir / ".zarray").write_text(json.dumps(meta))
    for row in [d for d in os.listdir(array_dir) if d.isdigit()]:
        for col in os.listdir(array_dir / row):
            os.replace(array_dir / row / col, array_dir / f"{row}.{col}")
        os.rmdir(array_dir / row)
    np.testing.assert_array_equal(lazyio.load(path)[0]["data"].compute(), data)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_reads_each_metadata_document_once(tmp_path, monkeypatch, zarr_format):
    # a load asked for a node's kind when listing its parent, again to open it, and
    # zarr-python read the array's document once more: 112 reads for this tree (12 nodes)
    from lazyio.backends.zarr.stores import SafeLocalStore

    path = tmp_path / f"once{zarr_format}.zspy"
    data = np.arange(4 * 4 * 8 * 8, dtype="<u2").reshape(4, 4, 8, 8)
    lazyio.save(path, data, zarr_format=zarr_format, show_progressbar=False)
    lazyio.close_all()
    reads: list[str] = []
    original = SafeLocalStore.read_key

    def counting(self, key, byte_range=None):
        reads.append(key)
        return original(self, key, byte_range)

    monkeypatch.setattr(SafeLocalStore, "read_key", counting)
    signal = lazyio.load(path)[0]
    docs = [k for k in reads if k.rsplit("/", 1)[-1] in
            (".zarray", ".zgroup", ".zattrs", "zarr.json")]
    assert len(docs) == len(set(docs)), sorted(docs)
    nodes = {k.rsplit("/", 1)[0] if "/" in k else "" for k in docs}
    # one document per node in format 3; .zarray (missing on a group), .zgroup, .zattrs
    # in 2 (a local open does not trust .zmetadata: a document changed after it, as the
    # hostile stores of tests/backends/zarr do, must be the one read)
    assert len(docs) <= (1 if zarr_format == 3 else 3) * len(nodes) + 1, sorted(docs)
    np.testing.assert_array_equal(signal["data"].compute(), data)


@pytest.mark.parametrize("url", [False, True])
def test_consolidated_metadata_matches_every_document(tmp_path, url):
    # written last (locally after the tree, remotely after the root documents): every
    # .zgroup/.zattrs/.zarray of the store, as its own document says
    import json

    import fsspec

    target = "memory://zcons/x.zspy" if url else str(tmp_path / "x.zspy")
    lazyio.save(target, {"data": np.zeros((4, 4, 8, 8), "u2"),
                         "metadata": {"General": {"title": "t", "notes": "n"}}},
                show_progressbar=False)
    fs, root = fsspec.core.url_to_fs(target)
    docs = {k.split("x.zspy/", 1)[1]: json.loads(fs.cat(k)) for k in fs.find(root)
            if k.rsplit("/", 1)[-1] in (".zgroup", ".zattrs", ".zarray")}
    consolidated = json.loads(fs.cat(f"{root}/.zmetadata"))
    assert consolidated["zarr_consolidated_format"] == 1
    assert consolidated["metadata"] == docs
    assert lazyio.load(target)[0]["metadata"]["General"]["notes"] == "n"
    if url:
        fs.rm(root, recursive=True)
