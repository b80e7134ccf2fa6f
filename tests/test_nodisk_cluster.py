"""Every format on a cluster that shares no disk with its client (issue 18).

The scheduler and two workers are started by the ``dask`` CLI, each in a mount namespace
of its own where the client's working directory, repository and test data are empty
tmpfs mounts (:mod:`nodisk_cluster`, ``ci/nodisk-node.sh``). The data live on the moto S3
server on 127.0.0.1. After every test, no worker tried to open a client path (an audit hook)
and no task the scheduler was given holds one (its pickled bytes are searched).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from nodisk_cluster import (
    NoDiskCluster,
    armed,
    graph_leaks,
    hidden_accesses,
    node_facts,
)
from remote_cases import CASES, FORMATS, Placer, eager, write_example

import lazyio


@pytest.fixture(scope="module")
def nodisk(tmp_path_factory, s3_server):
    base = str(tmp_path_factory.getbasetemp())
    client_tmp = tmp_path_factory.mktemp("client-tmp")
    hidden = [os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(__file__))), base]
    old_tempdir = tempfile.tempdir
    # the client's own temporaries (the .hspy upload) go to a folder the nodes cannot see
    tempfile.tempdir = str(client_tmp)
    try:
        with NoDiskCluster(str(tmp_path_factory.mktemp("nodisk")), hidden) as cluster:
            yield cluster
    finally:
        tempfile.tempdir = old_tempdir


@pytest.fixture
def client(nodisk):
    from distributed import Client

    with Client(nodisk.address, set_as_default=True, timeout=30) as c:
        yield c
        # the guard of every test: nothing reached for the client's files
        accesses = {w: a for w, a in c.run(hidden_accesses).items() if a}
        assert not accesses, f"workers reached for client paths: {accesses}"
        scan = c.run_on_scheduler(graph_leaks)
        assert not scan["leaks"], f"tasks hold client paths: {scan['leaks'][:5]}"


@pytest.fixture(scope="module")
def s3_examples(tmp_path_factory, s3_server):
    # written and read eagerly on the client, placed on S3 for the cluster
    folder = tmp_path_factory.mktemp("nodisk-examples")
    placer = Placer(s3_server, None)
    files: dict[str, dict[str, Any]] = {}
    for fmt, case in CASES.items():
        local = str(folder / f"example{case.ext}")
        write_example(local, fmt)
        files[fmt] = {"s3": placer.place(local, "s3", f"nodisk/example{case.ext}"),
                      "expected": eager(local)}
    return files


def test_nodes_see_no_client_file(nodisk, client):
    facts = client.run(node_facts)
    assert len(facts) == 2
    for fact in facts.values():
        assert fact["lazyio"].startswith("/tmp/node/code/")  # their own copy of the code
        # every hidden folder is absent or an empty mount
        assert all(not listing for listing in fact["hidden"].values()), fact
    assert os.listdir(os.getcwd())  # while the client sees its files


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_from_s3(s3_examples, client, fmt):
    url, options = s3_examples[fmt]["s3"]
    data = lazyio.load(url, storage_options=options)[0]["data"]
    np.testing.assert_array_equal(client.compute(data, sync=True),
                                  s3_examples[fmt]["expected"])
    assert client.run_on_scheduler(graph_leaks)["scanned"] > 0  # the guard looked


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_to_s3(s3_examples, s3_server, client, fmt):
    # the source is a lazy read from S3: the workers read, compute, and write or encode
    url, options = s3_examples[fmt]["s3"]
    signal = lazyio.load(url, storage_options=options)[0]
    signal["data"] = (signal["data"] + 1).astype(signal["data"].dtype)
    target = f"s3://{s3_server.bucket}/nodisk-written/out{CASES[fmt].ext}"
    lazyio.save(target, signal, storage_options=options, overwrite=True,
                show_progressbar=False, **CASES[fmt].write_kwargs)
    np.testing.assert_array_equal(eager(target, options), s3_examples[fmt]["expected"] + 1)


@pytest.mark.parametrize("fmt", ["hspy", "usid"])
def test_hdf5_written_through_the_client(s3_examples, client, tmp_path, fmt):
    # the workers compress chunks read from S3; the client, which alone sees the target,
    # writes them into its local file
    url, options = s3_examples[fmt]["s3"]
    signal = lazyio.load(url, storage_options=options)[0]
    target = str(tmp_path / f"local{CASES[fmt].ext}")
    lazyio.save(target, signal, show_progressbar=False, **CASES[fmt].write_kwargs)
    np.testing.assert_array_equal(eager(target), s3_examples[fmt]["expected"])
    assert os.listdir(tmp_path) == [os.path.basename(target)]


def test_worker_killed_mid_write(s3_server, client):
    # 16 write tasks of one storage chunk each (dask's chunk size set below a chunk's 12
    # KiB); every worker kills itself (SIGKILL) right after its 3rd write task finished, a
    # seeded point, not a time (which worker gets how many tasks is the scheduler's
    # choice, but one of the two gets at least 8): the scheduler gives the lost work to
    # the other worker or to the next process that the dead one's nanny starts
    options = s3_server.storage_options
    expected = np.random.default_rng(18).integers(0, 60000, size=(16, 6, 32, 32),
                                                  dtype=np.uint16)
    signal = {"data": da.from_array(expected, chunks=(1, 6, 32, 32))}
    target = f"s3://{s3_server.bucket}/nodisk-kill/target.zspy"
    with dask.config.set({"array.chunk-size": "16KiB"}), armed(client, "*", "store-map", 3):
        lazyio.save(target, signal, storage_options=options, overwrite=True,
                    show_progressbar=False, chunks=(1, 6, 32, 32))
    client.wait_for_workers(2, timeout=60)  # a nanny's new worker process included
    killed = [f["killed"] for f in client.run(node_facts).values()]
    assert any(killed), "no worker was killed"
    np.testing.assert_array_equal(eager(target, options), expected)
