"""Writes stay bounded in memory whatever the source's blocks (DESIGN: bounded memory).

Each case writes a 256 MiB dask array in a fresh subprocess with two threads and reads
the process's peak resident memory (``VmHWM``, reset first) against its memory before the write.
Before write blocks were chosen by :func:`lazyio.backends.chunking.write_chunks` and
signals without navigation got bounded storage chunks, the first case grew by 212 MiB
(.zspy) and 209 MiB (.hspy), and the image and the stack by 730 MiB; now by 92-99 MiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import dask
import dask.array as da
import numpy as np
import pytest

import lazyio

MiB = 2**20

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import dask, dask.array as da, psutil
    import lazyio
    from lazyio.backends.chunking import regular_chunks

    shape, blocks, fmt, chunks, navigate, path = json.loads(sys.argv[1])
    dask.config.set(scheduler="threads", num_workers=2)
    opts = {"compression": None} if fmt == "hspy" else {}
    # imports and first-use allocations outside the measure
    lazyio.save(path + ".warm." + fmt, da.zeros((64, 64), chunks=16),
                show_progressbar=False, **opts)
    data = da.random.default_rng(0).random(shape, chunks=tuple(blocks), dtype="float32")
    axes = [{"size": n, "navigate": i < navigate} for i, n in enumerate(shape)]
    def high_water():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f
                        if line.startswith("VmHWM:"))

    # getrusage's maximum survives exec (a parent's peak showed through): the mm's own
    # high-water mark, reset here, does not
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = psutil.Process().memory_info().rss
    assert high_water() <= before + 16 * 2**20
    lazyio.save(path + "." + fmt, {"data": data, "axes": axes},
                chunks=None if chunks is None else tuple(chunks),
                show_progressbar=False, **opts)
    peak = high_water()
    print(json.dumps({"growth": peak - before, "nbytes": int(data.nbytes)}))
    """
)


def _peak_growth(tmp_path, shape, blocks, fmt, chunks, navigate) -> tuple[int, int]:
    arg = json.dumps([shape, blocks, fmt, chunks, navigate, str(tmp_path / "out")])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(lazyio.__file__)), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _SCRIPT, arg], capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return int(out["growth"]), int(out["nbytes"])


@pytest.mark.parametrize("fmt", ["zspy", "hspy", "npy"])
def test_source_blocks_finer_than_storage_chunks(tmp_path, fmt):
    # blocks of 4 rows, storage chunks of 16 x 16: each storage row needs 4 source blocks
    chunks = None if fmt == "npy" else [16, 16, 128, 64]
    growth, nbytes = _peak_growth(tmp_path, [128, 64, 128, 64], [4, 64, 128, 64], fmt,
                                  chunks, navigate=2)
    assert nbytes == 256 * MiB
    assert growth < 0.5 * nbytes, f"grew by {growth / MiB:.0f} MiB"


@pytest.mark.parametrize(("shape", "blocks"), [([8192, 8192], [1024, 8192]),
                                          ([64, 1024, 1024], [8, 1024, 1024])])
def test_signal_without_navigation_is_not_one_chunk(tmp_path, shape, blocks):
    growth, nbytes = _peak_growth(tmp_path, shape, blocks, "zspy", None, navigate=0)
    assert growth < 0.5 * nbytes, f"grew by {growth / MiB:.0f} MiB"
    import zarr

    group = zarr.open_group(str(tmp_path / "out.zspy"), mode="r")
    stored = group["Experiments/__unnamed__/data"]
    assert np.prod(stored.chunks) * 4 <= 8 * MiB


@pytest.mark.parametrize("fmt", ["npy", "zspy", "hspy"])
def test_many_small_source_blocks_are_merged(tmp_path, fmt):
    # 4096 blocks of (32, 32): the write must not cost much more than computing them
    data = da.from_array(np.random.default_rng(0).random((2048, 2048), dtype="float32"),
                         chunks=(32, 32))
    opts = {"compression": "gzip"} if fmt == "hspy" else {}
    with dask.config.set(scheduler="threads"):
        start = time.perf_counter()
        values = data.compute()
        lazyio.save(tmp_path / f"ref.{fmt}", values, show_progressbar=False, **opts)
        reference = time.perf_counter() - start
        start = time.perf_counter()
        lazyio.save(tmp_path / f"out.{fmt}", data, show_progressbar=False, **opts)
        lazy = time.perf_counter() - start
    assert lazy < 2.5 * reference + 1.0, f"{lazy:.1f} s against {reference:.1f} s"
    back = lazyio.load(tmp_path / f"out.{fmt}", lazy=False)
    np.testing.assert_array_equal(back[0]["data"], values)
