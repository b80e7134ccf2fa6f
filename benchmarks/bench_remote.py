"""Remote .hspy reads over a loopback HTTP server that honours ``Range``: lazyio's range-read
path against the naive path (h5py on an fsspec file object).

The file is a seeded, gzip-compressed, chunked .hspy (about 134 MB of uint16 detector-like
counts; 8 MB with ``--quick``) served by ``tests/servers.py``'s HTTP server, which
counts requests and bytes, in a subprocess of its own, once as is and once behind a simulated link (10 ms latency per
request, 1 Gbit/s shared bandwidth). Each path reads the whole dataset; medians of 3.

- lazyio: ``lazyio.load(url)[0]["data"].compute()`` (threaded scheduler): the chunk index
  is read once through h5py, then each task fetches its chunks' byte ranges concurrently
  (``fs.cat_ranges``) and decodes them outside the HDF5 lock.
- naive: ``h5py.File(fs.open(url))[dataset][()]``, fsspec's default file (5 MB read-ahead
  blocks): HDF5 issues its reads one at a time through the file object.

RosettaSciIO cannot take part: its .hspy reader opens a path with ``h5py.File`` and has no
fsspec support.

Usage::

    .venv/bin/python benchmarks/bench_remote.py [--quick]

``run(quick)`` returns rows ``{"measure", "lazyio", "baseline", "baseline_name", "unit"}``
for ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
DATASET = "/Experiments/bench/data"
# The same server, as is and behind a simulated link (10 ms to first byte per request,
# 1 Gbit/s shared): loopback flatters whoever moves more bytes or waits on more
# round trips one after the other.
LINKS: dict[str, dict[str, Any]] = {
    "loopback": {},
    "10 ms + 1 Gbit/s link": {"latency": 0.010, "bandwidth": 125e6},
}


def _make_file(path: str, shape: tuple[int, ...]) -> int:
    """A seeded detector-like 4-D stack (Poisson counts with a bright disk) as gzip .hspy."""
    import dask.array as da

    import lazyio

    rng = np.random.default_rng(20261121)
    ky, kx = np.mgrid[: shape[2], : shape[3]]
    disk = ((ky - shape[2] / 2) ** 2 + (kx - shape[3] / 2) ** 2) < (shape[2] / 6) ** 2
    lam = np.where(disk, 200.0, 2.0)
    data = np.empty(shape, dtype=np.uint16)
    for i in range(shape[0]):
        data[i] = rng.poisson(lam, size=shape[1:]).astype(np.uint16)
    signal = {
        "data": da.from_array(data, chunks=(4, shape[1], *shape[2:])),
        "metadata": {"General": {"title": "bench"}},
    }
    # chunks of one scan row of whole patterns (~2 MB): HyperSpy-like, gzip + shuffle
    lazyio.save(path, signal, chunks=(1, shape[1] // 2, *shape[2:]), show_progressbar=False,
                overwrite=True)
    return data.nbytes


def _lazyio_read(url: str) -> np.ndarray:
    import lazyio

    lazyio.close_all()  # every run reads the index again, as a fresh process would
    return lazyio.load(url)[0]["data"].compute(scheduler="threads")


def _naive_read(url: str) -> np.ndarray:
    import fsspec
    import h5py

    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as fobj, h5py.File(fobj, "r") as f:
        return f[DATASET][()]


def _measure(server: Any, fn: Any, url: str, expected_sum: int, runs: int
             ) -> dict[str, float]:
    times, stats = [], []
    for _ in range(runs):
        server.reset_stats()
        start = time.perf_counter()
        out = fn(url)
        times.append(time.perf_counter() - start)
        stats.append(server.stats())
        if int(out.sum(dtype=np.int64)) != expected_sum:
            raise AssertionError(f"{fn.__name__} read wrong data")
    return {
        "seconds": statistics.median(times),
        "requests": statistics.median(s["requests"] for s in stats),
        "bytes": statistics.median(s["bytes"] for s in stats),
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure both paths; return the benchmark rows."""
    if _TESTS not in sys.path:
        sys.path.insert(0, _TESTS)
    from servers import HTTPServerProcess

    shape = (32, 32, 64, 64) if quick else (64, 64, 128, 128)
    with tempfile.TemporaryDirectory(prefix="lazyio-bench-remote-") as root:
        path = os.path.join(root, "bench.hspy")
        nbytes = _make_file(path, shape)
        import h5py

        with h5py.File(path) as f:
            expected_sum = int(f[DATASET][()].sum(dtype=np.int64))
            stored = f[DATASET].id.get_storage_size()
        results = {}
        for label, link in LINKS.items():
            with HTTPServerProcess(root, **link) as server:
                url = server.url("bench.hspy")
                results[label] = (_measure(server, _lazyio_read, url, expected_sum, 3),
                                  _measure(server, _naive_read, url, expected_sum, 3))
    mb = nbytes / 1e6
    name = "h5py on fsspec file"
    rows = []
    for label, (lz, nv) in results.items():
        rows.append({"measure": f"remote .hspy full read, {mb:.0f} MB gzip, {label}",
                     "lazyio": mb / lz["seconds"], "baseline": mb / nv["seconds"],
                     "baseline_name": name, "unit": "MB/s"})
    lz, nv = results["loopback"]
    rows += [
        {"measure": "remote .hspy full read: requests", "lazyio": lz["requests"],
         "baseline": nv["requests"], "baseline_name": name, "unit": "requests"},
        {"measure": f"remote .hspy full read: MB transferred ({stored / 1e6:.0f} MB stored)",
         "lazyio": lz["bytes"] / 1e6, "baseline": nv["bytes"] / 1e6,
         "baseline_name": name, "unit": "MB"},
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 MB instead of 134 MB")
    args = parser.parse_args()
    rows = run(args.quick)
    print(f"| measurement | lazyio | {rows[0]['baseline_name']} | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        better = r["lazyio"] / r["baseline"] if r["unit"] == "MB/s" else (
            r["baseline"] / r["lazyio"] if r["lazyio"] else float("inf"))
        print(f"| {r['measure']} ({r['unit']}) | {r['lazyio']:.4g} | {r['baseline']:.4g} "
              f"| {better:.2f}x |")


if __name__ == "__main__":
    main()
