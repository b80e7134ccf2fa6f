"""Benchmark lazyio's ``.npy`` support against RosettaSciIO 0.15 and plain numpy.

Measures, as medians of a few runs on the same files:

1. graph construction of a million-chunk ``memmap_distributed`` (RosettaSciIO's is timed
   at 100 000 chunks and extrapolated linearly: at a million it takes half a minute);
2. full-read throughput of a ``sum`` over a file in the page cache: lazyio's lazy array,
   RosettaSciIO's ``memmap_distributed``, and a plain ``numpy.memmap``;
3. latency of opening a file and reading one signal;
4. peak memory (RSS) of writing a dask array: lazyio's streamed write versus
   ``numpy.save`` of the computed array, each in a fresh process (peak = ``VmHWM`` after
   resetting it: ``ru_maxrss`` would include the parent's peak, carried across exec).

Usage::

    .venv/bin/python benchmarks/bench_npy.py [--size-mib 512] [--runs 3] [--dir /tmp]

Prints a table; a ratio above 1 means lazyio is better by that factor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

import lazyio
import lazyio.npy

warnings.filterwarnings("ignore", module="rsciio")
warnings.filterwarnings("ignore", message=".*rsciio.*")


def timed(fn: Callable[[], Any], runs: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``runs`` runs after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rsciio_memmap() -> Callable[..., Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from rsciio.utils.distributed import memmap_distributed

    return memmap_distributed


# -- 1. graph construction ---------------------------------------------------------------


def bench_graph(workdir: str, runs: int) -> list[tuple[str, str, str, str, str]]:
    path = os.path.join(workdir, "million.raw")
    with open(path, "wb") as f:
        f.truncate(1000 * 1000 * 16)  # sparse: only the graph is measured
    ours = timed(
        lambda: lazyio.memmap_distributed(
            path, np.uint8, shape=(1000, 1000, 4, 4), chunks=(1, 1, 4, 4)
        ),
        runs=max(runs, 5),
    )
    rsciio_md = _rsciio_memmap()
    start = time.perf_counter()
    rsciio_md(path, np.dtype(np.uint8), shape=(316, 316, 4, 4), chunks=(1, 1, 4, 4))
    theirs = (time.perf_counter() - start) * 1_000_000 / (316 * 316)
    # What dask itself then spends turning the lazy layer into tasks, at compute time.
    small = lazyio.memmap_distributed(path, np.uint8, shape=(316, 316, 4, 4), chunks=(1, 1, 4, 4))
    start = time.perf_counter()
    dict(small.__dask_graph__())
    materialise = (time.perf_counter() - start) * 1_000_000 / (316 * 316)
    return [
        ("graph build, 1e6 chunks (s)", f"{ours:.4f}", f"{theirs:.1f} (extrap.)", "-",
         f"{theirs / ours:,.0f}x"),
        ("  dask materialisation, 1e6 tasks (s)", f"{materialise:.1f} (extrap.)", "-", "-",
         "dask's own cost"),
    ]


# -- 2. throughput and 3. latency ----------------------------------------------------------


def make_file(path: str, size_mib: int) -> tuple[int, ...]:
    frames = max(1, size_mib * 2**20 // (256 * 256 * 4))
    side = int(np.sqrt(frames))
    shape = (side, frames // side, 256, 256)
    out = np.lib.format.open_memmap(path, mode="w+", dtype="<f4", shape=shape)
    rng = np.random.default_rng(0)
    for i in range(shape[0]):
        out[i] = rng.random(shape[1:], dtype=np.float32)
    out.flush()
    del out
    return shape


def bench_read(path: str, shape: tuple[int, ...], runs: int) -> list[tuple[str, ...]]:
    header_offset = np.load(path, mmap_mode="r").offset
    nbytes = os.path.getsize(path) - header_offset
    rsciio_md = _rsciio_memmap()

    def ours() -> float:
        return lazyio.load(path)[0]["data"].sum(dtype=np.float64).compute()

    def theirs() -> float:
        data = rsciio_md(path, np.dtype("<f4"), offset=header_offset, shape=shape)
        return data.sum(dtype=np.float64).compute()

    def plain() -> float:
        return np.load(path, mmap_mode="r").sum(dtype=np.float64)

    assert np.isclose(ours(), plain())
    assert np.isclose(theirs(), plain())
    t_ours, t_theirs, t_plain = (timed(f, runs) for f in (ours, theirs, plain))
    gbs = [nbytes / t / 1e9 for t in (t_ours, t_theirs, t_plain)]

    eager_ours = timed(lambda: lazyio.load(path, lazy=False)[0]["data"], runs)
    eager_np = timed(lambda: np.load(path), runs)

    import rsciio.numpy

    rng = np.random.default_rng(1)
    points = [tuple(int(rng.integers(0, s)) for s in shape[:2]) for _ in range(runs * 3 + 1)]

    def one_signal(reader: Callable[[tuple[int, int]], Any]) -> float:
        it = iter(points)
        return timed(lambda: reader(next(it)), runs * 3)

    lat_plugin = one_signal(
        lambda ij: lazyio.npy.file_reader(path, lazy=True)[0]["data"][ij].compute()
    )
    lat_load = one_signal(lambda ij: lazyio.load(path)[0]["data"][ij].compute())
    lat_theirs = one_signal(
        lambda ij: rsciio.numpy.file_reader(path, lazy=True)[0]["data"][ij].compute()
    )
    lat_np = one_signal(lambda ij: np.load(path, mmap_mode="r")[ij].copy())
    size = f"{nbytes / 2**20:.0f} MiB"
    return [
        (f"lazy sum, {size} (GB/s)", f"{gbs[0]:.2f}", f"{gbs[1]:.2f}", f"{gbs[2]:.2f}",
         f"{gbs[0] / gbs[1]:.2f}x / {gbs[0] / gbs[2]:.2f}x vs numpy"),
        (f"eager read, {size} (s)", f"{eager_ours:.3f}", "-", f"{eager_np:.3f}",
         f"{eager_np / eager_ours:.2f}x vs numpy"),
        ("open + one signal, file_reader (ms)", f"{lat_plugin * 1e3:.2f}",
         f"{lat_theirs * 1e3:.2f}", f"{lat_np * 1e3:.2f}",
         f"{lat_theirs / lat_plugin:.2f}x / {lat_np / lat_plugin:.2f}x vs numpy"),
        ("  the same through lazyio.load (ms)", f"{lat_load * 1e3:.2f}", "-", "-",
         f"{lat_theirs / lat_load:.2f}x"),
    ]


# -- 4. streamed writes ----------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import json, os, sys, threading, time
    import dask.array as da
    import numpy as np
    import psutil
    import lazyio

    def rows(block, block_info=None):
        lo = block_info[None]["array-location"][0][0]
        r = np.arange(lo, lo + block.shape[0], dtype=np.uint32)[:, None]
        return r * np.uint32(block.shape[1]) + np.arange(block.shape[1], dtype=np.uint32)

    def vm_hwm():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return None

    method, path, size_mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cols = 2**20 // 4
    data = da.empty((size_mib, cols), dtype=np.uint32, chunks=(16, cols)).map_blocks(
        rows, dtype=np.uint32)
    proc = psutil.Process()
    baseline = proc.memory_info().rss
    # ru_maxrss would include the parent's peak (Linux carries it across exec); reset the
    # high-water mark instead, or sample where that is not possible.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        sampled = None
    except OSError:
        sampled = [baseline]
        def sample():
            while sampled[-1] >= 0:
                sampled[0] = max(sampled[0], proc.memory_info().rss)
                time.sleep(0.005)
        threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    if method == "lazyio":
        lazyio.save(path, data, overwrite=True, show_progressbar=False)
    else:
        np.save(path, data.compute())
    seconds = time.perf_counter() - start
    peak = vm_hwm() if sampled is None else sampled[0]
    print(json.dumps({"peak": peak, "baseline": baseline, "seconds": seconds}))
    """
)


def bench_write(workdir: str, size_mib: int, runs: int) -> list[tuple[str, ...]]:
    script = os.path.join(workdir, "writer.py")
    with open(script, "w") as f:
        f.write(_WRITER)
    results: dict[str, list[dict[str, float]]] = {"lazyio": [], "numpy": []}
    for _ in range(max(1, runs - 1)):
        for method, runs_of_method in results.items():
            out = subprocess.run(
                [sys.executable, script, method, os.path.join(workdir, f"w-{method}.npy"),
                 str(size_mib)],
                check=True, capture_output=True, text=True,
            ).stdout
            runs_of_method.append(json.loads(out.strip().splitlines()[-1]))
    assert np.array_equal(
        np.load(os.path.join(workdir, "w-lazyio.npy"), mmap_mode="r")[-3:],
        np.load(os.path.join(workdir, "w-numpy.npy"), mmap_mode="r")[-3:],
    )

    def med(method: str, key: str) -> float:
        return statistics.median(r[key] for r in results[method])

    above = {m: (med(m, "peak") - med(m, "baseline")) / 2**20 for m in results}
    peak = {m: med(m, "peak") / 2**20 for m in results}
    secs = {m: med(m, "seconds") for m in results}
    return [
        (f"write {size_mib} MiB dask: peak RSS (MiB)", f"{peak['lazyio']:.0f}", "-",
         f"{peak['numpy']:.0f}", f"{peak['numpy'] / peak['lazyio']:.2f}x vs numpy"),
        ("  peak RSS above imports (MiB)", f"{above['lazyio']:.0f}", "-",
         f"{above['numpy']:.0f}", f"{above['numpy'] / max(above['lazyio'], 1):.1f}x vs numpy"),
        ("  time incl. fsync (s) / np.save (s)", f"{secs['lazyio']:.2f}", "-",
         f"{secs['numpy']:.2f}", f"{secs['numpy'] / secs['lazyio']:.2f}x vs numpy"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512, help="file size for reads")
    parser.add_argument("--write-mib", type=int, default=1024, help="array size for writes")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement")
    parser.add_argument("--dir", default=None, help="where to put the files")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="lazyio-bench-npy-", dir=args.dir)
    started = time.perf_counter()
    try:
        rows = bench_graph(workdir, args.runs)
        path = os.path.join(workdir, "read.npy")
        shape = make_file(path, args.size_mib)
        rows += bench_read(path, shape, args.runs)
        os.remove(path)
        rows += bench_write(workdir, args.write_mib, args.runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    header = ("measurement", "lazyio", "rsciio 0.15", "numpy", "lazyio better by")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    print(f"\n{os.cpu_count()} CPUs; medians of {args.runs} runs; "
          f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
