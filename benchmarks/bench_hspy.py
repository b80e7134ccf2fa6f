"""lazyio's .hspy against RosettaSciIO 0.15, on files RosettaSciIO wrote.

- gzip (level 4 + shuffle, both libraries' default): write time and peak RSS, open,
  full sum, one diffraction pattern (also through ``lazyio.fetch``, without the dask
  scheduler), tasks; limits: the codec's per-core rate x cores;
- RosettaSciIO's ``compression=None`` (which still shuffles): full sum; limit: unshuffle;
- lazyio's ``compression=None`` (no shuffle): full sum against a memory-mapped sum;
- 16,384 small chunks (gzip): full sum and one spectrum;
- writes (gzip; ``compression=None``, which RosettaSciIO still shuffles) of every source
  chunking of ``datasets.SOURCES``; limits: the codec's encode rate x cores on lazyio's
  chunks, a parallel copy of the bytes.
"""

from __future__ import annotations

import h5py
import numpy as np

from benchmarks import limits
from benchmarks.common import (
    CORES,
    Context,
    MiB,
    Row,
    compare_reads,
    fresh,
    median_latency,
    random_points,
    rss_row,
    write_pair,
)
from benchmarks.datasets import write_rows

NAME = "hspy"


def _rsciio_open(path: str):
    from rsciio.hspy import file_reader

    return lambda: file_reader(path, lazy=True)[0]["data"]


def _lazyio_open(path: str):
    import lazyio

    def opener():
        lazyio.close_all()
        return lazyio.load(path, format="hspy")[0]["data"]

    return opener


def _chunks(path: str) -> tuple[int, ...]:
    with h5py.File(path, "r") as f:
        return f["Experiments/bench/data"].chunks


def _codec_limit(ctx: Context, src: str, chunks: tuple[int, ...], codec: str) -> dict:
    data = np.load(src, mmap_mode="r")
    sample = limits.sample_chunks(data, chunks, 16 * MiB if ctx.quick else 64 * MiB)
    rates = limits.codec_rates(limits.codecs(data.itemsize)[codec], sample)
    return {k: data.nbytes / (v * CORES) if k != "ratio" else v for k, v in rates.items()}


def run(ctx: Context) -> list[Row]:
    det = ctx.data.detector
    rows: list[Row] = []

    # -- gzip write, then reads of RosettaSciIO's file ---------------------------------
    w = write_pair(ctx, "hspy", {"lazyio": ("lazyio", {}, "lz-gzip.hspy"),
                                 "rsciio": ("rsciio", {}, "rs-gzip.hspy")}, det)
    gz = ctx.path("rs-gzip.hspy")
    lim = _codec_limit(ctx, det, _chunks(gz), "gzip-4+shuffle")
    rows += [
        Row("gzip write", w["lazyio"]["seconds"], w["rsciio"]["seconds"],
            limit=lim["encode"], targets=[("ratio", 1.8)]),
        rss_row("gzip write peak RSS", w, "lazyio", "rsciio"),
    ]
    nav = np.load(det, mmap_mode="r").shape[:2]
    points = random_points(nav, 20 if ctx.quick else 50)
    r = compare_reads({"lazyio": _lazyio_open(gz), "rsciio": _rsciio_open(gz)}, points,
                      ctx.repeat)
    rows += _read_rows("gzip", r, lim["decode+sum"], [("ratio", 1.6), ("limit", 1.15)])
    import lazyio

    loaded = _lazyio_open(gz)()
    fetched = median_latency(lambda p: lazyio.fetch(loaded, p), points)
    rows.append(Row("gzip one signal, lazyio.fetch", fetched * 1e3, r["rsciio"]["one"] * 1e3,
                    unit="ms", note="no dask scheduler: the chunk source reads the selection"))

    # -- RosettaSciIO's "uncompressed" (shuffled) and lazyio's unshuffled files ----------
    for impl, dst in (("rsciio", "rs-none.hspy"), ("lazyio", "lz-none.hspy")):
        fresh("write", {"impl": impl, "fmt": "hspy", "src": det, "dst": ctx.path(dst),
                        "kwargs": {"compression": None}, "workers": CORES})
    rs_none, lz_none = ctx.path("rs-none.hspy"), ctx.path("lz-none.hspy")
    lim_sh = _codec_limit(ctx, det, _chunks(rs_none), "shuffle")
    r = compare_reads({"lazyio": _lazyio_open(rs_none), "rsciio": _rsciio_open(rs_none)},
                      points[:5], ctx.repeat)
    rows.append(Row("shuffled (rsciio None) sum", r["lazyio"]["sum"], r["rsciio"]["sum"],
                    limit=lim_sh["decode+sum"], targets=[("ratio", 1.4)]))
    mm = ctx.once(f"mmap:{det}", lambda: limits.mmap_sum(det))
    r = compare_reads({"lazyio": _lazyio_open(lz_none), "rsciio": _rsciio_open(lz_none)},
                      points[:5], ctx.repeat)
    rows.append(Row("lazyio None (unshuffled) sum", r["lazyio"]["sum"], r["rsciio"]["sum"],
                    limit=mm, targets=[("limit", 1.5)], note="limit: memory-mapped sum"))

    # -- 16,384 small chunks ---------------------------------------------------------------
    many = ctx.path("rs-many.hspy")
    fresh("write", {"impl": "rsciio", "fmt": "hspy", "src": ctx.data.many, "dst": many,
                    "kwargs": {"chunks": list(ctx.data.many_chunks)}, "workers": CORES})
    lim_m = _codec_limit(ctx, ctx.data.many, _chunks(many), "gzip-4+shuffle")
    rows_many = np.load(ctx.data.many, mmap_mode="r").shape[:1]
    r = compare_reads({"lazyio": _lazyio_open(many), "rsciio": _rsciio_open(many)},
                      [(p[0],) for p in random_points(rows_many, 20)], max(1, ctx.repeat // 2))
    n_chunks = int(np.prod([-(-s // c) for s, c in zip(
        np.load(ctx.data.many, mmap_mode="r").shape, ctx.data.many_chunks, strict=True)]))
    rows += [
        Row(f"{n_chunks:,}-chunk sum", r["lazyio"]["sum"], r["rsciio"]["sum"],
            limit=lim_m["decode+sum"], targets=[("ratio", 20)]),
        Row(f"{n_chunks:,}-chunk one spectrum", r["lazyio"]["one"] * 1e3,
            r["rsciio"]["one"] * 1e3, unit="ms", targets=[("max", 5)]),
        Row(f"{n_chunks:,}-chunk tasks", r["lazyio"]["tasks"], r["rsciio"]["tasks"],
            unit="tasks"),
    ]
    rows += write_rows(ctx, "hspy", "gzip", {}, "hspy", limit=lambda src, lz: _codec_limit(
        ctx, src, _chunks(lz), "gzip-4+shuffle")["encode"])
    if not ctx.quick:  # the smoke test keeps to the gzip rows
        rows += write_rows(ctx, "hspy", "uncompressed", {"compression": None}, "hspy")
    return rows


def _read_rows(label: str, r: dict, limit: float | None, sum_targets: list) -> list[Row]:
    return [
        Row(f"{label} open", r["lazyio"]["open"] * 1e3, r["rsciio"]["open"] * 1e3, unit="ms"),
        Row(f"{label} full sum", r["lazyio"]["sum"], r["rsciio"]["sum"], limit=limit,
            targets=sum_targets),
        Row(f"{label} one signal", r["lazyio"]["one"] * 1e3, r["rsciio"]["one"] * 1e3,
            unit="ms"),
        Row(f"{label} tasks", r["lazyio"]["tasks"], r["rsciio"]["tasks"], unit="tasks"),
    ]
