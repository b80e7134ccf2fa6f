"""Every format on a real ``distributed`` cluster of process workers: lazy reads from local
files, S3 and HTTP, writes to local files and S3 from the cluster, and closing the
workers' files with ``lazyio.close_all(client=...)``."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import psutil
import pytest
from remote_cases import (
    BACKENDS,
    CASES,
    FORMATS,
    Placer,
    eager,
    example_data,
    make_example_files,
)

import lazyio
from lazyio import handles


@pytest.fixture(scope="module")
def example_files(tmp_path_factory, s3_server, http_server):
    return make_example_files(tmp_path_factory.mktemp("cluster-examples"),
                              Placer(s3_server, http_server))


def _worker_handle_count() -> int:
    return len(handles.default_cache)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_lazy_read_on_process_cluster(example_files, client, fmt, backend):
    url, options = example_files[fmt][backend]
    data = lazyio.load(url, storage_options=options)[0]["data"]
    threaded = data.compute(scheduler="threads")
    on_cluster = client.compute(data, sync=True)
    np.testing.assert_array_equal(on_cluster, threaded)
    np.testing.assert_array_equal(on_cluster, example_files[fmt]["expected"])
    if fmt != "npy" or backend == "local":  # remote .npy reads need no handle
        assert sum(client.run(_worker_handle_count).values()) > 0


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_memmap_distributed_on_process_cluster(tmp_path, client, s3_server, http_server,
                                               backend):
    raw = example_data()
    local = str(tmp_path / "frames.raw")
    with open(local, "wb") as f:
        f.write(b"H" * 64)  # a detector header before the frames
        f.write(raw.tobytes())
    url, options = Placer(s3_server, http_server).place(local, backend,
                                                        f"{tmp_path.name}/frames.raw")
    data = lazyio.memmap_distributed(lazyio.Location(url, options), raw.dtype, offset=64,
                                     shape=raw.shape, chunks=(2, 5, 16, 12))
    np.testing.assert_array_equal(client.compute(data, sync=True), raw)


@pytest.mark.parametrize("backend", ["local", "s3"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_write_from_process_cluster(example_files, tmp_path, client, s3_server, http_server,
                                    fmt, backend):
    # the source is itself a lazy read: the workers read, compute and write (or encode)
    signal = lazyio.load(example_files[fmt]["local"][0])[0]
    signal["data"] = (signal["data"] + 1).astype(signal["data"].dtype)
    target, target_options = Placer(s3_server, http_server).target(
        backend, f"{tmp_path.name}-written{CASES[fmt].ext}", tmp_path)
    lazyio.save(target, signal, storage_options=target_options, show_progressbar=False,
                **CASES[fmt].write_kwargs)
    np.testing.assert_array_equal(eager(target, target_options),
                                  example_files[fmt]["expected"] + 1)
    if backend == "local":
        assert os.listdir(tmp_path) == [os.path.basename(target)]  # no temporary debris


def _open_paths() -> list[str]:
    return [f.path for f in psutil.Process().open_files()]


def test_close_all_on_workers(tmp_path, client):
    path = str(tmp_path / "held.hspy")
    lazyio.save(path, da.from_array(example_data(), chunks=(1, 5, 16, 12)),
                chunks=(1, 5, 16, 12), show_progressbar=False)
    data = lazyio.load(path)[0]["data"]
    np.testing.assert_array_equal(client.compute(data, sync=True), example_data())
    holding = client.run(_open_paths)
    assert any(path in paths for paths in holding.values()), holding

    closed = lazyio.close_all(client=client)
    assert set(closed) == {"local", *client.scheduler_info()["workers"]}
    assert sum(n for k, n in closed.items() if k != "local") > 0
    assert sum(client.run(_worker_handle_count).values()) == 0
    assert not any(path in paths for paths in client.run(_open_paths).values())
    assert path not in _open_paths()
    # the lazy array stays valid: tasks reopen what they need
    np.testing.assert_array_equal(client.compute(data, sync=True), example_data())
    # without a client: this process only, an int as before
    assert isinstance(lazyio.close_all(), int)
