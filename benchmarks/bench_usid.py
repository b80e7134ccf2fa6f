"""lazyio's h5USID reader against RosettaSciIO 0.15 (pyUSID) on the 4-D detector stack.

The file is written by lazyio (uncompressed, as pyUSID writes; RosettaSciIO's USID writer
cannot write under numpy 2). Measures: open time and one spectrum (one diffraction
pattern at a random scan position), median over positions; writes (time, peak RSS) of
the default source and of every source chunking of ``datasets.SOURCES``, against
RosettaSciIO's writer given back ``numpy.product`` (pyUSID 0.0.12 calls it).
"""

from __future__ import annotations

import warnings

import numpy as np

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
from benchmarks.datasets import write_rows

NAME = "usid"


def run(ctx: Context) -> list[Row]:
    import lazyio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from rsciio.usid import file_reader

    det = ctx.data.detector
    shape = np.load(det, mmap_mode="r").shape
    path = ctx.path("lz-usid.h5")
    fresh("write", {"impl": "lazyio", "fmt": "usid", "src": det, "dst": path, "workers": CORES})

    def ours():
        lazyio.close_all()
        return lazyio.load(path, format="usid")[0]["data"]

    def theirs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return file_reader(path, lazy=True)[0]["data"]

    # the sum is not a target here; one round keeps RosettaSciIO's slow path short
    r = compare_reads({"lazyio": ours, "rsciio": theirs},
                      random_points(shape[:2], 10 if ctx.quick else 30), 1)
    opens = _open_times(ours, theirs, 5 if ctx.quick else 3 * ctx.repeat)
    w = write_pair(ctx, "usid", {"lazyio": ("lazyio", {}, "lz-w.h5"),
                                 "rsciio": ("rsciio", {}, "rs-w.h5")}, det)
    return [
        Row("write", w["lazyio"]["seconds"], w["rsciio"]["seconds"],
            targets=[("ratio", 1.0)], note="RosettaSciIO given numpy.product back"),
        rss_row("write peak RSS", w, "lazyio", "rsciio", targets=[("ratio", 1.0)]),
        *write_rows(ctx, "usid", "usid", {}, "h5"),
        Row("open", opens["lazyio"] * 1e3, opens["rsciio"] * 1e3, unit="ms",
            targets=[("max", 20)]),
        Row("one spectrum", r["lazyio"]["one"] * 1e3, r["rsciio"]["one"] * 1e3, unit="ms",
            targets=[("max", 5)]),
        Row("full sum", r["lazyio"]["sum"], r["rsciio"]["sum"], note="one run"),
        Row("tasks", r["lazyio"]["tasks"], r["rsciio"]["tasks"], unit="tasks"),
    ]


def _open_times(ours, theirs, n: int) -> dict[str, float]:
    from benchmarks.common import interleaved

    return interleaved({"lazyio": ours, "rsciio": theirs}, n)
