"""Store specs (lazyio.backends.zarr.stores) and direct Zarr v2 chunk files
(lazyio.backends.zarr.direct)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import numcodecs
import numpy as np
import pytest
import zarr
from dask.base import tokenize

import lazyio
from lazyio.backends.zarr.direct import (
    DirectPlan,
    chunk_overlaps,
    is_aligned,
    local_v2_layout,
    write_region,
)
from lazyio.backends.zarr.stores import (
    DirSpec,
    InstanceSpec,
    StoreSpec,
    ZipSpec,
    open_store,
    read_json,
    set_bytes,
    store_spec,
)
from lazyio.errors import CorruptChunkError, FormatError
from lazyio.location import Location

# ------------------------------------------------------------------------- store specs


def test_kinds_are_separate_classes(tmp_path):
    loc = Location(str(tmp_path / "a.zspy"))
    d, z = StoreSpec("dir", loc), StoreSpec("zip", loc)
    i = StoreSpec("instance", instance={})
    assert isinstance(d, DirSpec)
    assert isinstance(z, ZipSpec)
    assert isinstance(i, InstanceSpec)
    assert all(isinstance(s, StoreSpec) for s in (d, z, i))
    assert (d.kind, z.kind, i.kind) == ("dir", "zip", "instance")
    assert d.location == loc
    assert z.location == loc
    assert i.location is None
    assert d == DirSpec(loc)
    assert d != z
    assert store_spec("dir", loc) == d


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(("dir",), {}), (("zip",), {"instance": {}}), (("instance",), {}),
     (("instance", Location("x")), {"instance": {}}), (("tar", Location("x")), {})],
)
def test_invalid_specs_are_refused(args, kwargs):
    with pytest.raises(ValueError, match="store"):
        StoreSpec(*args, **kwargs)


def test_specs_are_frozen(tmp_path):
    spec = DirSpec(Location(str(tmp_path)))
    with pytest.raises(AttributeError):
        spec.location = Location("elsewhere")  # type: ignore[misc]


def test_specs_pickle_and_tokenize_by_value(tmp_path):
    spec = StoreSpec("dir", Location(str(tmp_path / "a.zspy")))
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec
    assert hash(again) == hash(spec)
    assert type(again) is DirSpec
    assert tokenize(again) == tokenize(spec) == tokenize(DirSpec(Location(str(tmp_path / "a.zspy"))))
    assert tokenize(spec) != tokenize(ZipSpec(spec.location))
    assert tokenize(spec) != tokenize(DirSpec(Location(str(tmp_path / "b.zspy"))))


def test_instance_specs_compare_by_identity():
    store, other = {}, {}
    a, b = InstanceSpec(store), StoreSpec("instance", instance=store)
    assert a == b
    assert hash(a) == hash(b)
    assert tokenize(a) == tokenize(b)
    assert a != InstanceSpec(other)
    assert tokenize(a) != tokenize(InstanceSpec(other))


def test_same_file_same_dask_name_in_another_process(tmp_path):
    path = tmp_path / "a.zspy"
    lazyio.save(path, {"data": np.arange(600.0).reshape(20, 30)}, show_progressbar=False)
    name = lazyio.load(path)[0]["data"].name
    assert lazyio.load(path)[0]["data"].name == name
    code = textwrap.dedent(f"""
        import lazyio
        print(lazyio.load({str(path)!r})[0]["data"].name)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    assert out.stdout.strip() == name


def test_metadata_that_is_not_an_object_is_damaged(tmp_path):
    store = open_store(DirSpec(Location(str(tmp_path))), read_only=False, cached=False)
    set_bytes(store, ".zattrs", b"[1, 2]")
    with pytest.raises(FormatError, match=r"damaged Zarr metadata '.zattrs' \(not a JSON"):
        read_json(store, ".zattrs")
    set_bytes(store, ".zattrs", b"{not json")
    with pytest.raises(FormatError, match="damaged Zarr metadata"):
        read_json(store, ".zattrs")
    assert read_json(store, "missing.json") is None


def test_node_modules_import_only_their_library():
    code = textwrap.dedent("""
        import sys
        import lazyio.formats.hyperspy.zarr_node
        assert "h5py" not in sys.modules, "zarr_node imported h5py"
        import lazyio.formats.hyperspy.node as node
        assert node.ZarrNode is lazyio.formats.hyperspy.zarr_node.ZarrNode
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    code = textwrap.dedent("""
        import sys
        import lazyio.formats.hyperspy.hdf5_node
        assert "zarr" not in sys.modules, "hdf5_node imported zarr"
    """)
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


# ------------------------------------------------------------------- direct chunk files


def test_chunk_overlaps():
    got = list(chunk_overlaps((slice(3, 9), slice(0, 2)), (4, 2)))
    assert got == [
        ((0, 0), (slice(3, 4), slice(0, 2)), (slice(0, 1), slice(0, 2))),
        ((1, 0), (slice(0, 4), slice(0, 2)), (slice(1, 5), slice(0, 2))),
        ((2, 0), (slice(0, 1), slice(0, 2)), (slice(5, 6), slice(0, 2))),
    ]


def test_alignment():
    assert is_aligned((slice(4, 8), slice(0, 10)), (4, 4), (10, 10))
    assert not is_aligned((slice(2, 8), slice(0, 10)), (4, 4), (10, 10))
    assert not is_aligned((slice(4, 7), slice(0, 10)), (4, 4), (10, 10))
    assert not is_aligned((), (), ())


def _plain_array(tmp_path, **kwargs):
    root = str(tmp_path / "arr")
    arr = zarr.create_array(root, shape=(10, 7), chunks=(4, 3), dtype="<i4", zarr_format=2,
                            chunk_key_encoding={"name": "v2", "separator": "/"},
                            fill_value=-5, **kwargs)
    return root, arr


@pytest.mark.parametrize("compressor", [None, numcodecs.Blosc(), numcodecs.Zlib()])
def test_direct_read_matches_zarr_and_fills_missing_chunks(tmp_path, compressor):
    root, arr = _plain_array(tmp_path, compressors=compressor)
    data = np.arange(70, dtype="<i4").reshape(10, 7)
    arr[:8, :] = data[:8]  # chunks of rows 8-9 never written: the fill value
    layout = local_v2_layout(root)
    assert layout is not None
    assert layout.chunks == (4, 3)
    assert layout.fill_value == -5
    box = (slice(1, 10), slice(2, 7))
    got = DirectPlan(layout).read(box, np.dtype("<i4"), "w")
    np.testing.assert_array_equal(got, arr[box])
    assert (got[-2:] == -5).all()


def test_direct_write_round_trips_through_zarr(tmp_path):
    root, _arr = _plain_array(tmp_path, compressors=numcodecs.Zstd(level=1))
    layout = local_v2_layout(root)
    data = np.arange(70, dtype="<i4").reshape(10, 7)
    write_region(layout, (slice(0, 10), slice(0, 7)), data)
    np.testing.assert_array_equal(zarr.open_array(root, mode="r")[...], data)


def test_damaged_chunk_file_is_named(tmp_path):
    root, arr = _plain_array(tmp_path, compressors=numcodecs.Zlib())
    arr[...] = 1
    with open(os.path.join(root, "1", "2"), "wb") as f:
        f.write(b"not zlib")
    with pytest.raises(CorruptChunkError, match=r"f\.zspy: array a: chunk \(1, 2\)"):
        DirectPlan(local_v2_layout(root)).read((slice(0, 10), slice(0, 7)),
                                                np.dtype("<i4"), "f.zspy: array a")


def test_arrays_that_are_not_plain_are_left_to_zarr(tmp_path):
    root, _ = _plain_array(tmp_path, filters=[numcodecs.Delta(dtype="<i4")])
    assert local_v2_layout(root) is None
    root3 = str(tmp_path / "v3")
    zarr.create_array(root3, shape=(4,), chunks=(2,), dtype="u1", zarr_format=3)
    assert local_v2_layout(root3) is None
    assert local_v2_layout(str(tmp_path / "nothing")) is None
