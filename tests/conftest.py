"""Shared fixtures: a seeded random generator, one process-based dask cluster, and real
S3 (moto) and HTTP (Range) servers on loopback."""

from __future__ import annotations

# lazyio imports dask.array on the first lazy read only (lazyio info never does); the
# suite imports it once here, so tests that time a read do not time that import
import dask.array  # noqa: F401
import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261121)


@pytest.fixture(scope="session")
def cluster():
    """A real ``distributed`` cluster with two worker processes (not threads)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        host="127.0.0.1",
        silence_logs=40,
    ) as lc:
        yield lc


@pytest.fixture
def client(cluster):
    """A client of :func:`cluster`, set as the default scheduler while the test runs."""
    from distributed import Client

    with Client(cluster, set_as_default=True) as c:
        yield c


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a subprocess) with the bucket ``lazyio-test``.

    Its ``storage_options`` hold the endpoint and credentials, so they travel to the
    cluster's workers inside each Location. A server that fails to start fails the tests.
    """
    import fsspec
    from servers import S3Server

    with pytest.MonkeyPatch.context() as mp, S3Server() as server:
        # botocore looks these up even when credentials are given explicitly
        mp.setenv("AWS_ACCESS_KEY_ID", server.key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        fsspec.filesystem("s3", **server.storage_options).mkdir(server.bucket)
        yield server


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    """A threaded HTTP server on 127.0.0.1 honouring ``Range``, serving a temp folder
    (``.root``), counting requests and bytes (``.stats()``, ``.reset_stats()``)."""
    from servers import RangeHTTPServer

    with RangeHTTPServer(str(tmp_path_factory.mktemp("http-root"))) as server:
        yield server


@pytest.fixture
def remote_base(s3_server):
    """The writable remote folder of :class:`lazyio.testing.FormatTests`: the S3 server."""
    return f"s3://{s3_server.bucket}/conformance", s3_server.storage_options
