"""10 TB on paper: the read and write graphs of a 10 TB sparse dataset are built, not
computed, in seconds and with a bounded number of tasks (issue 18; docs/scale.md).

The sparse files are written by lazyio itself with ``dask.array.store`` replaced by its
``compute=False`` form: the whole write pipeline runs (metadata, storage chunks, write
blocks) and the graph that would write the data is kept, not computed, so the files hold
metadata only (no chunk is written; reads of them would give the fill value).
"""

from __future__ import annotations

import math
import time
from typing import Any

import dask.array as da
import fsspec
import pytest

import lazyio
from lazyio.backends.chunking import (
    GRAPH_BLOCKS,
    GRAPH_MAX_BLOCK,
    MAX_BLOCKS,
    REMOTE_BLOCK_BYTES,
    aligned_chunks,
    scaled_block_bytes,
)

SHAPE = (2048, 2400, 1024, 1024)  # 2048 x 2400 scan of 1024 x 1024 uint16 frames
NBYTES = math.prod(SHAPE) * 2  # 10.3 TB
# a task per block, a few per write block (source, write); at most about GRAPH_BLOCKS
# blocks (rounding to whole storage chunks adds a little)
MAX_READ_TASKS = 2 * GRAPH_BLOCKS
MAX_WRITE_TASKS = 3 * 2 * GRAPH_BLOCKS
# generous: building these graphs takes well under a second on an idle machine; the
# S3 metadata requests to moto dominate. Misaligned 10 TB writes took over 10 minutes.
BUILD_SECONDS = 30.0


class Captured:
    """``dask.array.store`` that builds its graph and never computes it."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.graphs: list[Any] = []

    def __call__(self, sources: Any, targets: Any, *args: Any, compute: bool = True,
                 **kwargs: Any) -> None:
        self.graphs.append(self.real(sources, targets, *args, compute=False, **kwargs))

    def tasks(self) -> int:
        [graph] = self.graphs  # one store call per write
        self.graphs.clear()
        return len(graph.__dask_graph__())  # layer lengths: nothing is materialised


@pytest.fixture
def captured(monkeypatch):
    store = Captured(da.store)
    monkeypatch.setattr(da, "store", store)
    return store


def _timed(func: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - start


@pytest.mark.parametrize("fmt", ["zspy", "hspy"])
def test_10tb_graphs_are_built_not_computed(tmp_path, s3_server, captured, fmt):
    assert NBYTES > 10 * 10**12
    zeros = da.zeros(SHAPE, dtype="uint16", chunks=(1, 8, 1024, 1024))  # 16 MiB blocks
    local = str(tmp_path / f"big.{fmt}")
    _, seconds = _timed(lazyio.save, local, {"data": zeros}, show_progressbar=False)
    assert captured.tasks() <= MAX_WRITE_TASKS
    assert seconds < BUILD_SECONDS

    # on S3: the 10 TB file is a few KB of metadata
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    url = f"s3://{s3_server.bucket}/scale/big.{fmt}"
    fs.put(local, url, recursive=True)
    [signal], seconds = _timed(lazyio.load, url, storage_options=s3_server.storage_options)
    data = signal["data"]
    assert data.shape == SHAPE
    assert data.nbytes == NBYTES
    # 4 MiB remote blocks would be 2.4 million, beyond MAX_BLOCKS (refused as a hostile
    # header before the blocks grew for huge arrays)
    assert data.npartitions <= MAX_READ_TASKS < MAX_BLOCKS
    assert len(data.__dask_graph__()) <= MAX_READ_TASKS
    assert seconds < BUILD_SECONDS

    # a conversion S3 -> S3 into the other format: the write's graph, bounded
    other = "hspy" if fmt == "zspy" else "zspy"
    target = f"s3://{s3_server.bucket}/scale/converted.{other}"
    _, seconds = _timed(lazyio.save, target, signal, storage_options=s3_server.storage_options,
                        overwrite=True, show_progressbar=False)
    assert captured.tasks() <= MAX_WRITE_TASKS
    assert seconds < BUILD_SECONDS


def test_blocks_grow_for_huge_arrays_only_up_to_a_bound():
    # 10 TB in 4 MiB remote blocks would be 2.4 million: they grow to ~2**18 blocks
    chunks = aligned_chunks(SHAPE, (1, 1, 488, 1024), "uint16", "auto",
                            limit=REMOTE_BLOCK_BYTES)
    assert GRAPH_BLOCKS <= math.prod(len(c) for c in chunks) <= MAX_READ_TASKS
    # a small array keeps its budget
    small = aligned_chunks((64, 1024, 1024), (1, 1024, 1024), "uint16", "auto",
                           limit=REMOTE_BLOCK_BYTES)
    assert small[0][0] * 2 * 2**20 == REMOTE_BLOCK_BYTES
    # blocks stop growing at GRAPH_MAX_BLOCK: a hostile header's shape is still refused
    assert scaled_block_bytes(4 * 2**20, 10**18) == GRAPH_MAX_BLOCK
    with pytest.raises(ValueError, match=f"more than {MAX_BLOCKS}"):
        aligned_chunks((10**9, 1024, 1024), (1, 1024, 1024), "uint16", "auto",
                       limit=REMOTE_BLOCK_BYTES)
