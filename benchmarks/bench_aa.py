"""A/A run: lazyio on both sides of the same measures, to show the noise band.

Ratios that differ from 1 here only by noise; in the format tables, ratios within this
band (±15% in this VM) are not differences.
"""

from __future__ import annotations

from benchmarks.common import (
    CORES,
    Context,
    Row,
    compare_reads,
    fresh,
    random_points,
    rss_row,
    write_pair,
)

NAME = "aa"


def run(ctx: Context) -> list[Row]:
    import numpy as np

    import lazyio

    det = ctx.data.detector
    w = write_pair(ctx, "hspy", {"A": ("lazyio", {}, "aa-a.hspy"),
                                 "B": ("lazyio", {}, "aa-b.hspy")}, det)
    gz = ctx.path("aa-a.hspy")
    fresh("write", {"impl": "lazyio", "fmt": "hspy", "src": det, "dst": gz, "workers": CORES})

    def opener(path: str, fmt: str):
        def open_():
            lazyio.close_all()
            return lazyio.load(path, format=fmt)[0]["data"]
        return open_

    points = random_points(np.load(det, mmap_mode="r").shape[:2], 50)
    h = compare_reads({"A": opener(gz, "hspy"), "B": opener(gz, "hspy")}, points, ctx.repeat)
    n = compare_reads({"A": opener(ctx.data.floats, "npy"), "B": opener(ctx.data.floats, "npy")},
                      points, ctx.repeat)
    a = "lazyio (A)"
    return [
        Row("hspy gzip write", w["A"]["seconds"], w["B"]["seconds"], baseline_name=a),
        rss_row("hspy gzip write peak RSS", w, "A", "B", baseline_name=a),
        Row("hspy gzip open", h["A"]["open"] * 1e3, h["B"]["open"] * 1e3, unit="ms",
            baseline_name=a),
        Row("hspy gzip full sum", h["A"]["sum"], h["B"]["sum"], baseline_name=a),
        Row("hspy gzip one signal", h["A"]["one"] * 1e3, h["B"]["one"] * 1e3, unit="ms",
            baseline_name=a),
        Row("npy full sum", n["A"]["sum"], n["B"]["sum"], baseline_name=a),
        Row("npy one signal", n["A"]["one"] * 1e3, n["B"]["one"] * 1e3, unit="ms",
            baseline_name=a),
    ]
