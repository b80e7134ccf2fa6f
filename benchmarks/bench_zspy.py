"""lazyio's .zspy against plain zarr-python 3 + dask, and RosettaSciIO on zarr 2.

RosettaSciIO's .zspy plugin needs zarr 2; it runs, in a fresh process per repetition, in
the separate environment ``/tmp/rsciio-zarr2-venv`` when that exists (see
``tests/data/make_rsciio_fixtures.py`` for how to create it; it is never committed).
Limits: Blosc(zstd, clevel 1, shuffle) per-core rate x cores on the file's chunks.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from benchmarks import limits
from benchmarks.common import (
    CORES,
    Context,
    MiB,
    Row,
    compare_reads,
    fresh,
    random_points,
    rss_row,
    write_pair,
)

NAME = "zspy"
ZARR2_PYTHON = "/tmp/rsciio-zarr2-venv/bin/python"
DATA = "Experiments/bench/data"


def _zarr2_python() -> str | None:
    return ZARR2_PYTHON if os.path.exists(ZARR2_PYTHON) else None


def _limit(ctx: Context, src: str, chunks: tuple[int, ...]) -> dict:
    data = np.load(src, mmap_mode="r")
    sample = limits.sample_chunks(data, chunks, 16 * MiB if ctx.quick else 64 * MiB)
    rates = limits.codec_rates(limits.codecs(data.itemsize)["blosc-zstd-1"], sample)
    return {k: data.nbytes / (v * CORES) for k, v in rates.items() if k != "ratio"}


def run(ctx: Context) -> list[Row]:
    import dask.array as da
    import zarr

    import lazyio

    det = ctx.data.detector
    shape = np.load(det, mmap_mode="r").shape
    lz = ctx.path("lz.zspy")
    # lazyio's storage chunks first, so plain zarr writes the same layout
    fresh("write", {"impl": "lazyio", "fmt": "zspy", "src": det, "dst": lz, "workers": CORES})
    chunks = zarr.open_array(os.path.join(lz, DATA), mode="r").chunks
    lim = _limit(ctx, det, chunks)
    sides = {"lazyio": ("lazyio", {}, "lz.zspy"),
             "zarr": ("zarr", {"chunks": list(chunks)}, "plain.zarr")}
    w = write_pair(ctx, "zspy", sides, det)
    rows = [
        Row("write", w["lazyio"]["seconds"], w["zarr"]["seconds"], baseline_name="zarr 3 + dask",
            limit=lim["encode"], targets=[("ratio", 1.0), ("limit", 1.2)]),
        rss_row("write peak RSS", w, "lazyio", "zarr", baseline_name="zarr 3 + dask"),
    ]

    def ours(path: str):
        def opener():
            lazyio.close_all()
            return lazyio.load(path, format="zspy")[0]["data"]
        return opener

    def plain():
        return da.from_zarr(zarr.open_array(os.path.join(lz, DATA), mode="r"))

    points = random_points(shape[:2], 20 if ctx.quick else 50)
    r = compare_reads({"lazyio": ours(lz), "zarr": plain}, points, ctx.repeat)
    rows += [
        Row("open", r["lazyio"]["open"] * 1e3, r["zarr"]["open"] * 1e3, unit="ms",
            baseline_name="zarr 3 + dask"),
        Row("full sum", r["lazyio"]["sum"], r["zarr"]["sum"], baseline_name="zarr 3 + dask",
            limit=lim["decode+sum"], targets=[("ratio", 1.0), ("limit", 1.2)]),
        Row("one signal", r["lazyio"]["one"] * 1e3, r["zarr"]["one"] * 1e3, unit="ms",
            baseline_name="zarr 3 + dask"),
        Row("tasks", r["lazyio"]["tasks"], r["zarr"]["tasks"], unit="tasks",
            baseline_name="zarr 3 + dask"),
    ]
    zarr2 = _zarr2_python()
    if zarr2 is None:
        rows.append(Row("RosettaSciIO on zarr 2", None, note=f"{ZARR2_PYTHON} not found"))
        return rows
    rs = ctx.path("rs.zspy")
    w = write_pair(ctx, "zspy", {"lazyio": ("lazyio", {}, "lz2.zspy"),
                                 "rsciio": ("rsciio", {}, "rs.zspy")}, det,
                   python={"rsciio": zarr2})
    rows += [
        Row("write, vs zarr 2", w["lazyio"]["seconds"], w["rsciio"]["seconds"],
            baseline_name="RosettaSciIO, zarr 2", limit=lim["encode"], targets=[("ratio", 1.0)]),
        rss_row("write peak RSS, vs zarr 2", w, "lazyio", "rsciio",
                baseline_name="RosettaSciIO, zarr 2"),
    ]
    # Reads of RosettaSciIO's own file, alternating with a fresh zarr 2 process per round.
    rs_chunks = zarr.open_array(os.path.join(rs, DATA), mode="r").chunks
    lim_rs = _limit(ctx, det, rs_chunks)
    opener = ours(rs)
    opener().sum().compute()
    got: dict[str, list[dict]] = {"lazyio": [], "rsciio": []}
    spec = {"fmt": "zspy", "path": rs, "points": [list(p) for p in points[:20]],
            "workers": CORES}
    for _ in range(ctx.repeat):
        got["rsciio"].append(fresh("read", spec, python=zarr2))
        start = time.perf_counter()
        arr = opener()
        opened = time.perf_counter() - start
        start = time.perf_counter()
        arr.sum().compute()
        got["lazyio"].append({"open": opened, "sum": time.perf_counter() - start})

    def med(side: str, key: str) -> float:
        return statistics.median(g[key] for g in got[side])

    one = compare_reads({"lazyio": opener}, points[:20], 1)["lazyio"]
    rows += [
        Row("open, rsciio's file", med("lazyio", "open") * 1e3, med("rsciio", "open") * 1e3,
            unit="ms", baseline_name="RosettaSciIO, zarr 2"),
        Row("full sum, rsciio's file", med("lazyio", "sum"), med("rsciio", "sum"),
            baseline_name="RosettaSciIO, zarr 2", limit=lim_rs["decode+sum"],
            targets=[("ratio", 1.0), ("limit", 1.2)]),
        Row("one signal, rsciio's file", one["one"] * 1e3, med("rsciio", "one") * 1e3,
            unit="ms", baseline_name="RosettaSciIO, zarr 2"),
        Row("tasks, rsciio's file", one["tasks"], got["rsciio"][0]["tasks"], unit="tasks",
            baseline_name="RosettaSciIO, zarr 2"),
    ]
    return rows
