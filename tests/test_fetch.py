"""``lazyio.fetch``: small basic selections read by the chunk source, without dask's
scheduler; everything else through dask, with the same results and errors."""

from __future__ import annotations

import dask
import h5py
import numpy as np
import pytest
from dask.callbacks import Callback
from formats_table import EXT as FORMATS

import lazyio

KEYS = [(3, 5), (3,), -1, (slice(1, 6, 2), -2, Ellipsis, 7), (Ellipsis, 4),
        (0, 0, slice(None, None, -1), slice(2, 9)), (np.int64(2), slice(None), 1), ()]


class Tasks(Callback):
    """Counts the graphs dask's local schedulers start."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0

    def _start(self, dsk):
        self.started += 1


@pytest.fixture(scope="module", params=list(FORMATS))
def stored(request, tmp_path_factory):
    fmt = request.param
    path = str(tmp_path_factory.mktemp("fetch") / f"scan{FORMATS[fmt]}")
    data = np.random.default_rng(3).random((6, 7, 10, 12), dtype=np.float32)
    axes = [{"size": n, "navigate": i < 2} for i, n in enumerate(data.shape)]
    # storage chunks that cut signals, so a selection spans several chunks
    chunks = {"npy": None, "usid": (5, 60)}.get(fmt, (2, 3, 5, 12))
    lazyio.save(path, {"data": data, "axes": axes}, chunks=chunks, show_progressbar=False)
    return fmt, path, data


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_fetch_reads_what_compute_reads_without_the_scheduler(stored, key):
    _fmt, path, data = stored
    array = lazyio.load(path)[0]["data"]
    with Tasks() as tasks:
        got = lazyio.fetch(array, key)
    assert tasks.started == 0  # the direct path: no graph was scheduled
    expected = array[key].compute()
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape == data[key].shape
    np.testing.assert_array_equal(got, data[key])


@pytest.mark.parametrize("fmt", ["npy", "hspy"])
def test_fetch_leaves_other_selections_to_dask(tmp_path, fmt):
    path = str(tmp_path / f"scan{FORMATS[fmt]}")
    data = np.arange(16 * 5 * 64 * 64, dtype=np.float64).reshape(16, 5, 64, 64)
    lazyio.save(path, data, show_progressbar=False)
    array = lazyio.load(path)[0]["data"]
    derived = array + 1
    cases = [(array, ([0, 2], 1)), (array, (array.shape[0] > 2,)), (derived, (1, 2))]
    for arr, key in cases:
        with Tasks() as tasks:
            got = lazyio.fetch(arr, key)
        assert tasks.started == 1
        np.testing.assert_array_equal(got, arr[key].compute())
    with dask.config.set({"array.chunk-size": "64KiB"}):  # 2 MiB: above one block
        with Tasks() as tasks:
            got = lazyio.fetch(array, (slice(None), slice(0, 4)))
        assert tasks.started == 1
    np.testing.assert_array_equal(got, data[:, :4])
    with pytest.raises(IndexError):
        lazyio.fetch(array, (16, 0))
    plain = np.ones((2, 3))
    assert lazyio.fetch(plain, 1).tolist() == [1.0, 1.0, 1.0]


def test_fetch_verifies_what_a_task_verifies(tmp_path):
    # a damaged chunk read directly is reported as a task would report it
    path = str(tmp_path / "scan.hspy")
    data = np.random.default_rng(0).random((4, 4, 16, 16))
    lazyio.save(path, data, chunks=(2, 2, 16, 16), show_progressbar=False)
    with h5py.File(path) as f:
        dset = f["/Experiments/__unnamed__/data"]
        info = dset.id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    array = lazyio.load(path)[0]["data"]
    with pytest.raises(lazyio.CorruptChunkError) as direct:
        lazyio.fetch(array, (0, 0))
    with pytest.raises(lazyio.CorruptChunkError) as scheduled:
        array[0, 0].compute()
    assert str(direct.value) == str(scheduled.value)
    np.testing.assert_array_equal(lazyio.fetch(array, (3, 3)), data[3, 3])
