"""lazyio's .npy against RosettaSciIO 0.15 (``memmap_distributed`` and its .npy plugin).

- full sum of the 1 GiB float32 stack; limit: a memory-mapped sum on all cores;
- open, one signal (median over random positions), tasks; one signal through
  ``lazyio.fetch`` (the chunk source called directly, no dask scheduler) against a copy
  out of a numpy memory map;
- graph construction of a million-chunk memory map (RosettaSciIO's is timed at 1e5
  chunks and extrapolated linearly: at 1e6 it takes tens of seconds);
- streamed write of a dask array: time and peak RSS in a fresh process, against
  RosettaSciIO's compute-then-save (its writer cannot take a dask array), on the
  default source and on every source chunking of ``datasets.SOURCES``.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings

import numpy as np

from benchmarks import limits
from benchmarks.common import (
    Context,
    MiB,
    Row,
    compare_reads,
    median_latency,
    random_points,
    rss_row,
    write_pair,
)
from benchmarks.datasets import write_rows

NAME = "npy"


def _graph_build(ctx: Context) -> tuple[float, float, int]:
    """Seconds to build a 1e6-chunk memmap graph: lazyio, RosettaSciIO (extrapolated)."""
    import lazyio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from rsciio.utils.distributed import memmap_distributed

    side = 1000
    path = ctx.path("million.raw")
    with open(path, "wb") as f:
        f.truncate(side * side * 16)  # sparse: only the graph is measured
    times = []
    for _ in range(max(3, ctx.repeat)):
        start = time.perf_counter()
        lazyio.memmap_distributed(path, np.uint8, shape=(side, side, 4, 4), chunks=(1, 1, 4, 4))
        times.append(time.perf_counter() - start)
    small = 32 if ctx.quick else 316  # ~1e3 / 1e5 chunks
    start = time.perf_counter()
    memmap_distributed(path, np.dtype(np.uint8), shape=(small, small, 4, 4), chunks=(1, 1, 4, 4))
    theirs = (time.perf_counter() - start) * side * side / (small * small)
    os.remove(path)
    return statistics.median(times), theirs, small * small


def run(ctx: Context) -> list[Row]:
    import dask.array as da
    from rsciio.numpy import file_reader

    import lazyio

    path = ctx.data.floats
    shape = np.load(path, mmap_mode="r").shape

    def ours():
        lazyio.close_all()
        return lazyio.load(path, format="npy")[0]["data"]

    def theirs():
        return file_reader(path, lazy=True)[0]["data"]

    mm = ctx.once(f"mmap:{path}", lambda: limits.mmap_sum(path))
    r = compare_reads({"lazyio": ours, "rsciio": theirs},
                      random_points(shape[:2], 50 if ctx.quick else 200), ctx.repeat)
    # The floor of a dask compute of one signal: dask over a plain numpy memory map.
    plain = da.from_array(np.load(path, mmap_mode="r"), chunks=ours().chunks)
    floor = median_latency(lambda p: plain[p].compute(), random_points(shape[:2], 50))
    # Without the scheduler: lazyio.fetch against the copy of one signal out of a memmap.
    mapped, loaded = np.load(path, mmap_mode="r"), ours()
    spots = random_points(shape[:2], 200 if ctx.quick else 1000)
    fetched = median_latency(lambda p: np.array(lazyio.fetch(loaded, p)), spots)
    copied = median_latency(lambda p: np.array(mapped[p]), spots)
    ours_build, theirs_build, n_small = _graph_build(ctx)
    w = write_pair(ctx, "npy", {"lazyio": ("lazyio", {}, "lz-w.npy"),
                                "rsciio": ("rsciio", {}, "rs-w.npy")}, path)
    size = os.path.getsize(path) / MiB
    return [
        Row("full sum", r["lazyio"]["sum"], r["rsciio"]["sum"], limit=mm,
            targets=[("ratio", 2)],
            note=f"float32, {size:,.1f} MiB; limit: memory-mapped sum on all cores"),
        Row("open", r["lazyio"]["open"] * 1e3, r["rsciio"]["open"] * 1e3, unit="ms"),
        Row("one signal", r["lazyio"]["one"] * 1e3, r["rsciio"]["one"] * 1e3, unit="ms",
            limit=floor * 1e3, targets=[("limit", 2)],
            note="limit: the same through dask.array.from_array(numpy memmap), same chunks"),
        Row("one signal, lazyio.fetch", fetched * 1e3, r["rsciio"]["one"] * 1e3, unit="ms",
            limit=copied * 1e3, targets=[("max", 0.5)],
            note="no dask scheduler (the chunk source reads the selection); limit: "
                 "np.array(memmap[position])"),
        Row("tasks", r["lazyio"]["tasks"], r["rsciio"]["tasks"], unit="tasks"),
        Row("1e6-chunk memmap graph", ours_build, theirs_build, targets=[("max", 1.0)],
            note=f"RosettaSciIO timed at {n_small:,} chunks, extrapolated linearly"),
        Row("streamed write", w["lazyio"]["seconds"], w["rsciio"]["seconds"],
            note="RosettaSciIO: compute, then save"),
        rss_row("streamed write peak RSS", w, "lazyio", "rsciio", targets=[("ratio", 4)],
                note="target: ≤ 25% of RosettaSciIO's"),
        *write_rows(ctx, "npy", "streamed", {}, "npy"),
    ]
