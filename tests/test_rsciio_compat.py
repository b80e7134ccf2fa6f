"""Compatibility with RosettaSciIO, the reference: its files read the same in lazyio, and
lazyio's .hspy files read the same in RosettaSciIO.

The fixtures in ``tests/data/rsciio`` were written by RosettaSciIO 0.15 with zarr 2
(``tests/data/make_rsciio_fixtures.py``), with what RosettaSciIO itself read back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

import lazyio

sys.path.insert(0, str(Path(__file__).parent / "data"))
from rsciio_expected import fixture_names, fixture_path, load_expected

# RosettaSciIO sorts the children of a `_list_N_` group as strings, so a list of more than
# ten dicts comes back as 0, 1, 10, 11, 2, ...; lazyio keeps the written order.
_LIST_ORDER_BUG = {"long_dict_list"}


def _reorder_like_rsciio(value):
    order = sorted(range(len(value)), key=str)
    return [value[i] for i in order]


def assert_same(ours, ref, where="signal"):
    """Deep comparison: same structure, same values (numpy vs Python scalars allowed)."""
    if isinstance(ref, dict):
        assert isinstance(ours, dict), where
        assert set(ours) == set(ref), f"{where}: keys {sorted(ours)} != {sorted(ref)}"
        for key in ref:
            if key in _LIST_ORDER_BUG:
                assert_same(_reorder_like_rsciio(ours[key]), ref[key], f"{where}.{key}")
            else:
                assert_same(ours[key], ref[key], f"{where}.{key}")
    elif isinstance(ref, list | tuple):
        assert type(ours) is type(ref), f"{where}: {type(ours)} != {type(ref)}"
        assert len(ours) == len(ref), where
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(ref, np.ndarray):
        if isinstance(ours, da.Array):
            ours = ours.compute()
        ours = np.asarray(ours)
        assert ours.shape == ref.shape, f"{where}: shape {ours.shape} != {ref.shape}"
        if ref.dtype == object:
            for idx in np.ndindex(ref.shape):
                assert_same(np.asarray(ours[idx]), np.asarray(ref[idx]), f"{where}{idx}")
            return
        assert ours.dtype == ref.dtype, f"{where}: dtype {ours.dtype} != {ref.dtype}"
        np.testing.assert_array_equal(ours, ref, err_msg=where)
    elif isinstance(ref, float) and np.isnan(ref):
        assert np.isnan(ours), where
    else:
        assert ours == ref, f"{where}: {ours!r} != {ref!r}"
        if isinstance(ref, bool):
            assert isinstance(ours, bool | np.bool_), where


NAMES = fixture_names()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lazy", [False, True])
def test_reads_rosettasciio_files_as_rosettasciio_does(name, lazy):
    expected = load_expected(name)
    ours = lazyio.load(fixture_path(name), lazy=lazy)
    assert len(ours) == len(expected)
    for mine, ref in zip(ours, expected, strict=True):
        ref = dict(ref)
        ref["attributes"] = {**ref["attributes"], "_lazy": lazy}
        mine = dict(mine)
        data = mine.pop("data")
        if lazy:
            assert isinstance(data, da.Array) or data.dtype == object
            data = data.compute() if isinstance(data, da.Array) else data
        assert_same(data, np.asarray(ref.pop("data")), f"{name}.data")
        assert_same(mine, ref, name)


@pytest.mark.parametrize("name", [n for n in NAMES if n.endswith(".hspy")])
def test_rosettasciio_reads_lazyio_rewrite_of_its_files(tmp_path, name):
    from rsciio.hspy import file_reader

    original = lazyio.load(fixture_path(name), lazy=False)
    target = tmp_path / "rewritten.hspy"
    for sig in original[:1]:
        lazyio.save(target, sig, show_progressbar=False)
        theirs = file_reader(str(target), lazy=False)[0]
        assert_same(theirs["data"], np.asarray(sig["data"]), f"{name}.data")
        # arguments swapped: RosettaSciIO, not lazyio, reorders lists of more than ten items
        assert_same(sig["metadata"], theirs["metadata"], f"{name}.metadata")
        assert_same(theirs["original_metadata"], sig["original_metadata"], f"{name}.om")
        assert len(theirs["axes"]) == len(sig["axes"])
        for a, b in zip(theirs["axes"], sig["axes"], strict=True):
            assert_same({k: v for k, v in a.items() if k in b}, b, f"{name}.axes")
        assert_same(theirs["models"], sig["models"], f"{name}.models")


def test_lazyio_zspy_layout_matches_hyperspy(tmp_path):
    """HyperSpy (zarr 2) opens what lazyio writes: Zarr v2, nested keys, Blosc(zstd)."""
    data = np.arange(24, dtype="f4").reshape(2, 3, 4)
    lazyio.save(tmp_path / "x.zspy", data, show_progressbar=False)
    root = tmp_path / "x.zspy"
    assert json.loads((root / ".zgroup").read_text())["zarr_format"] == 2
    assert json.loads((root / ".zattrs").read_text()) == {
        "file_format": "ZSpy", "file_format_version": "3.3"
    }
    meta = json.loads((root / "Experiments" / "__unnamed__" / "data" / ".zarray").read_text())
    assert meta["dimension_separator"] == "/"
    assert meta["compressor"]["id"] == "blosc"
    assert meta["compressor"]["cname"] == "zstd"
    assert meta["compressor"]["clevel"] == 1
    reference = json.loads(
        (fixture_path("basic.zspy") / "Experiments" / "basic" / "data" / ".zarray").read_text()
    )
    assert set(meta) >= set(reference) - {"dimension_separator"}


def test_lazyio_ragged_zspy_uses_hyperspy_codecs(tmp_path):
    data = np.empty(3, dtype=object)
    for i in range(3):
        data[i] = np.arange(i + 1, dtype="i8")
    sig = {"data": data, "axes": [{"name": "x", "navigate": True}],
           "attributes": {"ragged": True}}
    lazyio.save(tmp_path / "r.zspy", sig, show_progressbar=False)
    group = tmp_path / "r.zspy" / "Experiments" / "__unnamed__"
    ours = json.loads((group / "data" / ".zarray").read_text())
    ref = json.loads(
        (fixture_path("ragged.zspy") / "Experiments" / "ragged" / "data" / ".zarray").read_text()
    )
    assert ours["filters"] == ref["filters"]
    assert (group / "_ragged_shapes_data" / ".zarray").exists()
