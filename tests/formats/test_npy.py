"""The .npy format: the conformance suite, lazy == eager == numpy.load, scans, structured
dtypes, remote reads, and a cluster (header bytes and memmap_distributed: tests/backends/raw/)."""

from __future__ import annotations

import io
import os
import pickle
import time
from pathlib import Path

import dask
import dask.array as da
import fsspec
import numpy as np
import pytest
from formats_table import SUITE_KWARGS
from npy_arrays import DTYPES, SHAPES, STRUCT, assert_same, leftovers, random_array

import lazyio
from lazyio import npy
from lazyio.backends.raw.memmap import memmap_distributed
from lazyio.errors import FormatError, SourceNotFoundError, TargetExistsError, UnsupportedError
from lazyio.testing import FormatTests, example_signal


class TestNpy(FormatTests):
    format_name = "npy"
    write_kwargs = SUITE_KWARGS["npy"]

    @pytest.fixture
    def signal(self):
        return example_signal(dtype=">i4")


# -- reading -----------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lazy_equals_eager_equals_numpy(tmp_path, rng, dtype, shape, order):
    a = random_array(rng, shape, dtype, order)
    path = tmp_path / "data.npy"
    np.save(path, a)
    expected = np.load(path)
    [lazy] = lazyio.load(path)
    [eager] = npy.file_reader(path)
    assert isinstance(lazy["data"], da.Array)
    assert lazy["attributes"]["_lazy"]
    assert not eager["attributes"]["_lazy"]
    assert_same(lazy["data"].compute(), expected)
    assert_same(eager["data"], expected)
    # Graphs hold no handle: they pickle and compute elsewhere.
    assert_same(pickle.loads(pickle.dumps(lazy["data"])).compute(), expected)
    assert lazy["metadata"]["General"]["title"] == "data"
    assert [ax["size"] for ax in lazy["axes"]] == list(a.shape)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize(
    "chunks",
    ["auto", 1, 2, (2, 5, 1, 3), {0: 1, 3: 1}, -1, ((1, 5), (2, 3), (4,), (1, 1, 1)),
     ("auto", 2, -1, "auto")],
    ids=str,
)
def test_chunkings(tmp_path, rng, chunks, order):
    a = random_array(rng, (6, 5, 4, 3), "<f4", order)
    path = tmp_path / "c.npy"
    np.save(path, a)
    data = lazyio.load(path, chunks=chunks, block_size_limit=64)[0]["data"]
    assert_same(data.compute(), a)
    assert_same(data[1:5:2, ::-1, 2, [0, 2]].compute(), a[1:5:2, ::-1, 2, [0, 2]])
    if chunks == 2:
        assert data.chunks[0] == (2, 2, 2)


def test_structured_key_and_subarray_chunks(tmp_path, rng):
    dt = np.dtype([("img", "<u2", (4, 6)), ("sec", ">u4"), ("tag", "S2")])
    a = random_array(rng, (5, 3), dt)
    path = tmp_path / "s.npy"
    np.save(path, a)
    img = lazyio.load(path, key="img", chunks=(2, 3, 3, 2))[0]["data"]
    assert img.shape == (5, 3, 4, 6)
    assert img.chunks == ((2, 2, 1), (3,), (3, 1), (2, 2, 2))
    assert_same(img.compute(), a["img"])
    assert_same(lazyio.load(path, key="sec")[0]["data"].compute(), a["sec"])
    assert_same(npy.file_reader(path, key="tag")[0]["data"], a["tag"])
    with pytest.raises(ValueError, match="not a field"):
        lazyio.load(path, key="nope")


def test_positions_structured_frames_and_npy_reader(tmp_path, rng):
    dt = np.dtype([("img", ">u2", (4, 5)), ("sec", "<u4")])
    records = random_array(rng, (6,), dt)
    pos = np.array([[1, 0], [0, 0], [0, 1], [1, 1], [2, 1], [2, 0]])
    expected = np.zeros((3, 2, 4, 5), ">u2")
    expected[tuple(pos.T)] = records["img"]
    path = tmp_path / "scan.npy"
    np.save(path, records)
    data = memmap_distributed(path, dt, positions=pos, shape=(3, 2), key="img",
                              offset=128, chunks=(2, 1, 4, 3))
    assert_same(data.compute(), expected)
    # The .npy reader: frames along the first axis, the scan from the positions.
    frames_path = tmp_path / "frames.npy"
    np.save(frames_path, records["img"])
    lazy = lazyio.load(frames_path, positions=pos, chunks=(1, 2, 4, 5))[0]["data"]
    eager = npy.file_reader(frames_path, positions=pos)[0]["data"]
    assert_same(lazy.compute(), expected)
    assert_same(eager, expected)
    wide = lazyio.load(frames_path, positions=pos, navigation_shape=(4, 3))[0]["data"]
    assert wide.shape == (4, 3, 4, 5)
    assert not wide[3].any().compute()


def test_signal_dict(tmp_path):
    path = tmp_path / "my scan.npy"
    np.save(path, np.zeros((2, 3, 4)))
    [sig] = npy.file_reader(path, navigation_axes=[0, 1])
    assert [a["navigate"] for a in sig["axes"]] == [True, True, False]
    assert sig["metadata"]["General"]["title"] == "my scan"
    assert isinstance(sig["data"], np.ndarray)
    assert isinstance(npy.file_reader(path, lazy=True)[0]["data"], da.Array)
    memmapped = npy.file_reader(path, mmap_mode="r")[0]["data"]
    assert isinstance(memmapped, np.memmap)


def test_format_detection_by_content(tmp_path):
    path = tmp_path / "no_extension"
    np.save(tmp_path / "x.npy", np.arange(3))
    os.replace(tmp_path / "x.npy", path)
    assert_same(lazyio.load(path)[0]["data"].compute(), np.arange(3))


def test_rewritten_file_is_not_read_through_a_stale_map(tmp_path):
    path = tmp_path / "r.npy"
    np.save(path, np.zeros(1000))
    assert lazyio.load(path)[0]["data"].sum().compute() == 0
    np.save(path, np.ones(1000))  # same size, in place
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # coarse clocks
    assert lazyio.load(path)[0]["data"].sum().compute() == 1000
    lazyio.save(path, np.full(1000, 2.0), overwrite=True, show_progressbar=False)
    assert lazyio.load(path)[0]["data"].sum().compute() == 2000


# -- bad input ---------------------------------------------------------------------------


def test_truncated_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "cut.npy"
    np.save(path, np.arange(100, dtype="<f8"))
    path.write_bytes(path.read_bytes()[:-8])
    for lazy in (True, False):
        with pytest.raises(FormatError, match=r"cut\.npy.*800 bytes"):
            lazyio.load(path, lazy=lazy)
    with pytest.raises(FormatError, match=r"cut\.npy"):
        memmap_distributed(path, "<f8", offset=128, shape=(100,))


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    for lazy in (True, False):
        with pytest.raises(UnsupportedError, match="never unpickles"):
            lazyio.load(path, lazy=lazy)
    np.save(path, np.zeros(2, [("x", "<f4"), ("o", "O")]), allow_pickle=True)
    with pytest.raises(UnsupportedError):
        lazyio.load(path)
    with pytest.raises(UnsupportedError):
        lazyio.load(tmp_path / "obj.npy", lazy=False, allow_pickle=True)
    with pytest.raises(UnsupportedError):
        lazyio.save(tmp_path / "w.npy", np.array([None, 1], dtype=object))
    assert not (tmp_path / "w.npy").exists()


def test_bad_files(tmp_path):
    path = tmp_path / "bad.npy"
    path.write_bytes(b"not numpy at all")
    with pytest.raises(FormatError, match=r"bad\.npy.*not a \.npy file"):
        lazyio.load(path, format="npy")
    path.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'")
    with pytest.raises(FormatError, match=r"bad\.npy"):
        lazyio.load(path)
    with pytest.raises(SourceNotFoundError):
        lazyio.load(tmp_path / "missing.npy", format="npy")
    with pytest.raises(SourceNotFoundError):
        memmap_distributed(tmp_path / "missing.raw", "u1")
    np.save(path, np.zeros(3))
    with pytest.raises(TypeError, match="unexpected"):
        lazyio.load(path, colour="blue")


# -- remote ------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["C", "F"])
def test_remote_range_reads(rng, order):
    fs = fsspec.filesystem("memory")
    a = random_array(rng, (6, 5, 4, 3), STRUCT, order)
    buf = io.BytesIO()
    np.save(buf, a)
    fs.pipe("/lazyio-test/remote.npy", buf.getvalue())
    url = "memory:///lazyio-test/remote.npy"
    for chunks in ["auto", (1, 5, 4, 3), (6, 1, 1, 3), (2, 3, 2, 1), 1]:
        assert_same(lazyio.load(url, chunks=chunks)[0]["data"].compute(), a)
    assert_same(lazyio.load(url, lazy=False)[0]["data"], a)
    assert_same(lazyio.load(url, key="b", chunks=(2, 2, 2, 1, 2, 3))[0]["data"].compute(), a["b"])
    frames = a["b"].reshape(-1, 2, 3)[:7]
    buf = io.BytesIO()
    np.save(buf, frames)
    fs.pipe("/lazyio-test/frames.npy", buf.getvalue())
    pos = np.array([[0, 0], [2, 1], [1, 1], [0, 2], [1, 0], [2, 2], [0, 1]])
    expected = np.zeros((3, 3, 2, 3), frames.dtype)
    expected[tuple(pos.T)] = frames
    got = lazyio.load("memory:///lazyio-test/frames.npy", positions=pos, chunks=(2, 2, 1, 3))
    assert_same(got[0]["data"].compute(), expected)


@pytest.mark.parametrize("lazy", [False, True])
def test_remote_write(rng, lazy):
    a = random_array(rng, (40, 7, 3), ">f8")
    data = da.from_array(a, chunks=(7, 3, 2)) if lazy else a
    url = f"memory:///lazyio-test/written-{lazy}.npy"
    lazyio.save(url, data, show_progressbar=False)
    with fsspec.open(url, "rb") as f:
        assert_same(np.load(io.BytesIO(f.read())), a)
    with pytest.raises(TargetExistsError):
        lazyio.save(url, data)


# -- writing -----------------------------------------------------------------------------


def test_lazy_read_to_write_round_trip(tmp_path, rng):
    a = random_array(rng, (6, 5, 4), ">u2", "F")
    np.save(tmp_path / "in.npy", a)
    [sig] = lazyio.load(tmp_path / "in.npy", chunks=(2, 5, 1))
    lazyio.save(tmp_path / "out.npy", sig, chunks=(3, 5, 4), show_progressbar=False)
    assert_same(np.load(tmp_path / "out.npy"), a)


def test_overwrite_rules(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(3))
    before = path.read_bytes()
    with pytest.raises(TargetExistsError):
        lazyio.save(path, da.ones(5, chunks=2))
    with pytest.raises(TargetExistsError):
        lazyio.save(path, np.ones(5))
    assert path.read_bytes() == before
    lazyio.save(path, da.ones(5, chunks=2), overwrite=True, show_progressbar=False)
    assert_same(np.load(path), np.ones(5))
    npy.file_writer(path, {"data": np.zeros(2), "axes": [{"size": 2, "scale": 2.0}]})
    assert_same(np.load(path), np.zeros(2))
    lazyio.save(tmp_path / "y.data", np.ones(2), format="npy")
    assert_same(np.load(tmp_path / "y.data"), np.ones(2))


def _fail_on_block(block, block_info=None):
    if block_info[0]["chunk-location"] == (3,):
        raise RuntimeError("disk on fire")
    return block


def _check_nothing_visible(block, final=None):
    # While blocks are written: no file under the final name, and the temporary sibling
    # is not a .npy file to any reader (its magic string is still blank).
    assert not os.path.exists(final)
    [tmp] = leftovers(Path(final).parent)
    with open(Path(final).parent / tmp, "rb") as f:
        assert f.read(6) == bytes(6)
    return block


def test_interrupted_write_leaves_nothing(tmp_path):
    path = tmp_path / "i.npy"
    data = da.ones(100, chunks=10).map_blocks(_fail_on_block, dtype=float)
    with pytest.raises(RuntimeError, match="disk on fire"):
        lazyio.save(path, data, show_progressbar=False)
    assert list(tmp_path.iterdir()) == []
    np.save(path, np.arange(4))
    with pytest.raises(RuntimeError, match="disk on fire"):
        lazyio.save(path, data, overwrite=True, show_progressbar=False)
    assert_same(np.load(path), np.arange(4))  # the old file survives a failed overwrite
    assert leftovers(tmp_path) == []
    final = str(tmp_path / "j.npy")
    watched = da.ones(50, chunks=10).map_blocks(_check_nothing_visible, final=final, dtype=float)
    lazyio.save(final, watched, show_progressbar=False)
    assert_same(np.load(final), np.ones(50))


# -- distributed -------------------------------------------------------------------------


def test_lazy_arrays_compute_on_process_workers(tmp_path, rng, client):
    """Every dtype, shape and order of the tests above, scans and fields, in one compute."""
    a = random_array(rng, (6, 5, 4), ">f8", "F")
    np.save(tmp_path / "f.npy", a)
    s = random_array(rng, (4, 3), STRUCT)
    np.save(tmp_path / "s.npy", s)
    frames = random_array(rng, (5, 3, 2), "<i4")
    np.save(tmp_path / "frames.npy", frames)
    pos = np.array([[0, 1], [1, 1], [2, 0], [0, 0], [1, 0]])
    scan = np.zeros((3, 2, 3, 2), "<i4")
    scan[tuple(pos.T)] = frames
    np.save(tmp_path / "zero_d.npy", np.array(7, ">u2"))
    arrays = {}
    for i, (dtype, shape, order) in enumerate(
        (d, sh, o) for d in DTYPES for sh in SHAPES for o in "CF"
    ):
        every = random_array(rng, shape, dtype, order)
        np.save(tmp_path / f"every-{i}.npy", every)
        arrays[f"every-{i}"] = (lazyio.load(tmp_path / f"every-{i}.npy", chunks=2)[0]["data"],
                                every)
    arrays |= {
        "fortran": (lazyio.load(tmp_path / "f.npy", chunks=2)[0]["data"], a),
        "struct": (lazyio.load(tmp_path / "s.npy", chunks=2)[0]["data"], s),
        "key": (lazyio.load(tmp_path / "s.npy", key="b", chunks=2)[0]["data"], s["b"]),
        "scan": (lazyio.load(tmp_path / "frames.npy", positions=pos, chunks=1)[0]["data"], scan),
        "0-d": (lazyio.load(tmp_path / "zero_d.npy")[0]["data"], np.array(7, ">u2")),
    }
    pids = set(client.run(os.getpid).values())
    results = dask.compute(*(lazy for lazy, _ in arrays.values()))
    for (_, expected), got in zip(arrays.values(), results, strict=True):
        assert_same(got, expected)
    # The blocks were read by the worker processes, not by this one.
    worker_keys = client.run(lambda: sorted({k.kind for k in lazyio.handles.default_cache.keys()}))  # noqa: SIM118 - HandleCache is not a dict
    assert len(pids) == 2
    assert all("mmap" in keys for keys in worker_keys.values())


def test_streamed_write_from_process_workers(tmp_path, client):
    data = da.arange(60 * 70, chunks=700, dtype="<i8").reshape(60, 70).rechunk((7, 30))
    path = tmp_path / "w.npy"
    lazyio.save(path, data, show_progressbar=True)
    assert_same(np.load(path), np.arange(60 * 70, dtype="<i8").reshape(60, 70))
    assert leftovers(tmp_path) == []
    # Worker write maps are closed after the write.
    open_writers = client.run(lambda: lazyio.backends.raw.npy_target.WRITE_MAPS.keys())
    assert all(not keys for keys in open_writers.values())


def _rows(block, block_info=None):
    lo = block_info[None]["array-location"][0][0]
    rows = np.arange(lo, lo + block.shape[0], dtype=np.uint32)[:, None]
    return rows * np.uint32(block.shape[1]) + np.arange(block.shape[1], dtype=np.uint32)


def test_write_larger_than_worker_memory(tmp_path):
    """A 1.75 GiB array, written by two workers limited to 400 MiB each (~200 MiB of
    which an idle worker already uses), completes without a worker being restarted, and
    reads back on the same workers."""
    from distributed import Client, LocalCluster

    limit = 400 * 2**20
    cols = 2**20 // 4  # one MiB per row
    rows = 1792  # 1.75 GiB: over 4x a worker's limit and over 2x the whole cluster's
    data = da.empty((rows, cols), dtype=np.uint32, chunks=(16, cols)).map_blocks(
        _rows, dtype=np.uint32
    )
    path = tmp_path / "big.npy"
    # A paused worker (at 80% of its limit) waits for memory to be freed and the write
    # would hang; without pausing, a write that outgrew its memory is killed at 95% and
    # the assertions below fail instead.
    no_pause = {"distributed.worker.memory.pause": False}
    with dask.config.set(no_pause), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        host="127.0.0.1", memory_limit=limit, silence_logs=40,
    ) as lc, Client(lc, set_as_default=True) as c:
        pids = c.run(os.getpid)
        lazyio.save(path, data, show_progressbar=False)
        assert c.run(os.getpid) == pids, "a worker was restarted (out of memory?)"
        # Reading it back lazily on the same workers is bounded too: blocks are views of
        # a cached map whose pages are released when the blocks are.
        total = lazyio.load(path, block_size_limit="32MiB")[0]["data"].sum(dtype=np.uint64)
        n = rows * cols
        assert int(total.compute()) == n * (n - 1) // 2
        assert c.run(os.getpid) == pids, "a worker was restarted (out of memory?)"
    assert data.nbytes >= 4 * limit
    out = np.load(path, mmap_mode="r")
    assert out.shape == (rows, cols)
    step = 128
    expected_row = np.arange(cols, dtype=np.uint32)
    for lo in range(0, rows, step):
        block = out[lo : lo + step]
        first = np.arange(lo, lo + block.shape[0], dtype=np.uint32)[:, None] * np.uint32(cols)
        assert np.array_equal(block, first + expected_row)
    del out
