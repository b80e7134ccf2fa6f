"""lazyio's .zspy against plain zarr-python 3 + dask, TensorStore, and RosettaSciIO on zarr 2.

RosettaSciIO's .zspy plugin needs zarr 2; it runs, in a fresh process per repetition, in
the separate environment ``/tmp/rsciio-zarr2-venv`` when that exists (see
``tests/data/make_rsciio_fixtures.py`` for how to create it; it is never committed).
TensorStore (``pip install lazyio[bench]``) writes through dask.array.store and reads
through dask.array.from_array, on the same chunks; without it those rows say so.
Writes are measured for several source chunkings (whole-signal chunks of ~1 MB and 8 MB,
small chunks, chunks that cut signals). Sharded Zarr v3 is measured against the unsharded
store of the same small chunks: files created, write, full read, one signal.
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


def _source_chunkings(quick: bool) -> dict[str, list[int] | None]:
    """Source chunkings of the detector stack (None: RosettaSciIO's ~1 MB default)."""
    if quick:  # (8, 8, 32, 32); one chunking keeps the smoke test short
        return {"small chunks": [2, 2, 8, 8]}
    return {"1 MB whole signals": None, "8 MB whole signals": [8, 8, 256, 256],
            "small chunks (16,384)": [4, 4, 32, 32],
            "chunks cutting signals": [8, 8, 128, 128]}


def _files(path: str) -> int:
    return sum(len(fs) for _, _, fs in os.walk(path))


def _has_tensorstore() -> bool:
    try:
        import tensorstore  # noqa: F401
    except ImportError:
        return False
    return True


class _TensorStoreBlocks:
    """A TensorStore array as dask.array.from_array reads it."""

    def __init__(self, arr) -> None:
        self.arr, self.shape = arr, tuple(arr.shape)
        self.dtype, self.ndim = np.dtype(arr.dtype.numpy_dtype), len(self.shape)

    def __getitem__(self, key):
        return self.arr[key].read().result()


def _tensorstore_rows(ctx: Context, det: str, lz: str, chunks: tuple[int, ...], lim: dict,
                      points: list) -> list[Row]:
    import dask.array as da
    import tensorstore as ts

    import lazyio

    sides = {"lazyio": ("lazyio", {}, "lz-ts.zspy"),
             "tensorstore": ("tensorstore", {"chunks": list(chunks)}, "ts.zarr")}
    w = write_pair(ctx, "zspy", sides, det)
    rows = [
        Row("write, vs TensorStore", w["lazyio"]["seconds"], w["tensorstore"]["seconds"],
            baseline_name="TensorStore + dask", limit=lim["encode"], targets=[("ratio", 1.0)]),
        rss_row("write peak RSS, vs TensorStore", w, "lazyio", "tensorstore",
                baseline_name="TensorStore + dask"),
    ]

    def ours():
        lazyio.close_all()
        return lazyio.load(lz, format="zspy")[0]["data"]

    def theirs():
        arr = ts.open({"driver": "zarr", "kvstore": {"driver": "file",
                                                     "path": os.path.join(lz, DATA)}},
                      read=True).result()
        return da.from_array(_TensorStoreBlocks(arr), chunks=chunks)

    r = compare_reads({"lazyio": ours, "tensorstore": theirs}, points, ctx.repeat)
    rows += [
        Row("open, vs TensorStore", r["lazyio"]["open"] * 1e3, r["tensorstore"]["open"] * 1e3,
            unit="ms", baseline_name="TensorStore + dask"),
        Row("full sum, vs TensorStore", r["lazyio"]["sum"], r["tensorstore"]["sum"],
            baseline_name="TensorStore + dask", limit=lim["decode+sum"],
            targets=[("ratio", 1.0)]),
        Row("one signal, vs TensorStore", r["lazyio"]["one"] * 1e3,
            r["tensorstore"]["one"] * 1e3, unit="ms", baseline_name="TensorStore + dask"),
    ]
    return rows


def _sharded_rows(ctx: Context, det: str, shape: tuple[int, ...], points: list) -> list[Row]:
    """Zarr v3 in small chunks (one signal each), unsharded against sharded."""
    import lazyio

    chunks = [1, 1, *shape[2:]]
    shards = [4, 4, *shape[2:]] if ctx.quick else [8, 8, *shape[2:]]
    sides = {"sharded": ("lazyio", {"zarr_format": 3, "chunks": chunks, "shards": shards},
                         "sharded.zspy"),
             "unsharded": ("lazyio", {"zarr_format": 3, "chunks": chunks}, "unsharded.zspy")}
    w = write_pair(ctx, "zspy", sides, det)
    paths = {k: ctx.path(v[2]) for k, v in sides.items()}
    files = {k: _files(os.path.join(p, DATA)) for k, p in paths.items()}

    def opener(path: str):
        def run():
            lazyio.close_all()
            return lazyio.load(path, format="zspy")[0]["data"]
        return run

    r = compare_reads({k: opener(p) for k, p in paths.items()}, points, ctx.repeat)
    base = "lazyio, unsharded v3"
    note = (f"chunks {tuple(chunks)}, shards {tuple(shards)}; lazyio column: sharded")
    return [
        Row("v3 files created, sharded", files["sharded"], files["unsharded"], unit="files",
            baseline_name=base, note=note),
        Row("v3 write, sharded", w["sharded"]["seconds"], w["unsharded"]["seconds"],
            baseline_name=base),
        Row("v3 full sum, sharded", r["sharded"]["sum"], r["unsharded"]["sum"],
            baseline_name=base),
        Row("v3 one signal, sharded", r["sharded"]["one"] * 1e3, r["unsharded"]["one"] * 1e3,
            unit="ms", baseline_name=base),
        Row("v3 tasks, sharded", r["sharded"]["tasks"], r["unsharded"]["tasks"], unit="tasks",
            baseline_name=base),
    ]


def _chunking_rows(ctx: Context, det: str, lim: dict) -> list[Row]:
    """Writes of every source chunking: against RosettaSciIO on zarr 2 where its
    environment exists, else against zarr 3 + dask."""
    zarr2 = _zarr2_python()
    rows = []
    for label, source in _source_chunkings(ctx.quick).items():
        if source is None and zarr2 is not None:
            continue  # the default chunking has its own rows below
        if zarr2 is not None:
            sides = {"lazyio": ("lazyio", {}, "lz-src.zspy"),
                     "other": ("rsciio", {}, "rs-src.zspy")}
            base, python = "RosettaSciIO, zarr 2", {"other": zarr2}
        else:
            chunks = list(_storage_chunks(ctx))
            sides = {"lazyio": ("lazyio", {}, "lz-src.zspy"),
                     "other": ("zarr", {"chunks": chunks}, "plain-src.zarr")}
            base, python = "zarr 3 + dask", {}
        try:
            w = write_pair(ctx, "zspy", sides, det, python=python,
                           extra={"source_chunks": source})
        except RuntimeError as err:  # one side failing must not lose the other rows
            rows.append(Row(f"write, {label}", None, baseline_name=base,
                            note=f"failed: {str(err).splitlines()[0][:200]}"))
            continue
        rows += [
            Row(f"write, {label}", w["lazyio"]["seconds"], w["other"]["seconds"],
                baseline_name=base, limit=lim["encode"],
                targets=[("ratio", 1.0), ("limit", 1.2)]),
            rss_row(f"write peak RSS, {label}", w, "lazyio", "other", baseline_name=base),
        ]
    return rows


def _storage_chunks(ctx: Context) -> tuple[int, ...]:
    return ctx.cache["zspy-chunks"]


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
    ctx.cache["zspy-chunks"] = tuple(chunks)
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
    if _has_tensorstore():
        rows += _tensorstore_rows(ctx, det, lz, tuple(chunks), lim, points)
    else:
        rows.append(Row("TensorStore", None, note="tensorstore is not installed "
                        "(pip install lazyio[bench]): its rows are skipped"))
    rows += _sharded_rows(ctx, det, shape, points)
    if ctx.quick:  # fresh writer processes per chunking: the smoke test keeps to the above
        rows.append(Row("source chunkings", None, note="skipped in --quick"))
    else:
        rows += _chunking_rows(ctx, det, lim)
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
