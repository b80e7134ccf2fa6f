"""Shared fixtures: a seeded random generator and one process-based dask cluster."""

from __future__ import annotations

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
