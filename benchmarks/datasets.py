"""Seeded benchmark data, generated once per run as .npy files.

- ``detector``: a detector-like uint16 4-D stack, Poisson counts with a bright central
  disk (``lazyio.demo.make_dataset``), (64, 64, 256, 256) = 512 MiB at full size;
- ``floats``: float32 uniform random numbers, (64, 64, 256, 256) = 1 GiB at full size;
- ``many``: a 2-D float32 array (4096, 1024) that the format benchmarks store in 16,384
  chunks of (32, 8) (1,024 chunks with ``--quick``);
- ``small``: a 2-D float32 array (4096, 4096), the source of writes in 16,384 dask chunks
  of (32, 32) (1,024 chunks with ``--quick``).

:data:`SOURCES` are the source chunkings every write is measured on (issue 17):
:func:`write_rows` writes each with lazyio and RosettaSciIO, in fresh processes.

This module does not import lazyio at the top (the zarr 2 worker imports it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Datasets", "make", "signal_dict"]


@dataclass(frozen=True)
class Datasets:
    detector: str
    floats: str
    many: str
    many_chunks: tuple[int, int]
    small: str = ""


#: Source chunkings of the writes: name -> (dataset, dask chunks, --quick dask chunks).
SOURCES: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    "signals 1 MiB": ("detector", (4, 2, 256, 256), (4, 2, 32, 32)),
    "signals 8 MiB": ("detector", (8, 8, 256, 256), (8, 8, 32, 32)),
    "16,384 small": ("small", (32, 32), (8, 8)),
    "cut signals": ("detector", (16, 16, 128, 128), (4, 4, 16, 16)),
}


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"detector": (8, 8, 32, 32), "floats": (8, 8, 32, 32), "many": (128, 64),
                "many_chunks": (4, 2), "small": (256, 256)}
    return {"detector": (64, 64, 256, 256), "floats": (64, 64, 256, 256),
            "many": (4096, 1024), "many_chunks": (32, 8), "small": (4096, 4096)}


def make(workdir: str, quick: bool) -> Datasets:
    """Write the datasets into ``workdir`` (kept if already there with the right shape)."""
    import lazyio
    from lazyio.demo import make_dataset

    size = sizes(quick)
    paths = {k: os.path.join(workdir, f"{k}.npy")
             for k in ("detector", "floats", "many", "small")}
    if not _ok(paths["detector"], size["detector"]):
        lazyio.save(paths["detector"], make_dataset(size["detector"], seed=0), overwrite=True,
                    show_progressbar=False)
    if not _ok(paths["floats"], size["floats"]):
        _random(paths["floats"], size["floats"], seed=1)
    if not _ok(paths["many"], size["many"]):
        _random(paths["many"], size["many"], seed=2)
    if not _ok(paths["small"], size["small"]):
        _random(paths["small"], size["small"], seed=3)
    return Datasets(paths["detector"], paths["floats"], paths["many"], size["many_chunks"],
                    paths["small"])


def _ok(path: str, shape: tuple[int, ...]) -> bool:
    try:
        return np.load(path, mmap_mode="r").shape == tuple(shape)
    except (OSError, ValueError):
        return False


def _random(path: str, shape: tuple[int, ...], seed: int) -> None:
    out = np.lib.format.open_memmap(path + ".tmp.npy", mode="w+", dtype="<f4", shape=shape)
    rng = np.random.default_rng(seed)
    for i in range(shape[0]):
        out[i] = rng.random(shape[1:], dtype=np.float32)
    out.flush()
    del out
    os.replace(path + ".tmp.npy", path)


def signal_dict(data: Any, lazy: bool = True, title: str = "bench") -> dict[str, Any]:
    """A signal dictionary as HyperSpy passes it to RosettaSciIO (and lazyio accepts).

    The last two axes (the last one for 2-D data) are signal axes.
    """
    nsig = 2 if data.ndim > 2 else 1
    names = "yxvu"[: data.ndim] if data.ndim <= 4 else [f"a{i}" for i in range(data.ndim)]
    axes = [
        {"_type": "UniformDataAxis", "name": n, "units": "", "size": int(s), "scale": 1.0,
         "offset": 0.0, "navigate": i < data.ndim - nsig, "is_binned": False}
        for i, (n, s) in enumerate(zip(names, data.shape, strict=True))
    ]
    return {
        "data": data, "axes": axes,
        "metadata": {"General": {"title": title}, "Signal": {"signal_type": ""}},
        "original_metadata": {}, "attributes": {"_lazy": lazy}, "tmp_parameters": {},
        "learning_results": {}, "models": {},
        "package_info": {"name": "benchmark", "version": "0"},
    }


def copy_limit(src: str, dst: str, threads: int, repeat: int = 3) -> float:
    """Seconds to copy ``src`` to a new file ``dst`` in ``threads`` parallel ranges (read
    into memory, write): the floor of any uncompressed write of the same bytes."""
    import statistics
    import time
    from concurrent.futures import ThreadPoolExecutor

    size = os.path.getsize(src)
    piece = 16 * 2**20

    def part(i: int, fin: int, fout: int) -> None:
        buf = bytearray(piece)
        lo, hi = size * i // threads, size * (i + 1) // threads
        for start in range(lo, hi, piece):
            n = os.preadv(fin, [memoryview(buf)[: min(piece, hi - start)]], start)
            os.pwrite(fout, memoryview(buf)[:n], start)

    times = []
    for _ in range(repeat):
        fin = os.open(src, os.O_RDONLY)
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(part, range(threads), [fin] * threads, [fout] * threads))
        times.append(time.perf_counter() - start)
        os.close(fin)
        os.close(fout)
        os.remove(dst)
    return statistics.median(times)


def write_rows(ctx: Any, fmt: str, label: str, kwargs: dict[str, Any], ext: str,
               limit: Any = None) -> list[Any]:
    """Write rows (time, peak RSS) of one format on every source chunking of
    :data:`SOURCES`: lazyio against RosettaSciIO, each write in a fresh process.

    ``limit(source_path, lazyio_file)`` gives the row's limit in seconds; by default the
    copy of the source's bytes on all cores (:func:`copy_limit`). Targets (issue 17): at
    least as fast as RosettaSciIO, within 1.2x of the limit, no more memory.
    """
    from benchmarks.common import CORES, MiB, Row, rss_row, write_pair

    rows = []
    # --quick is a smoke test: one source chunking (the merged small blocks)
    chosen = {k: SOURCES[k] for k in ("16,384 small",)} if ctx.quick else SOURCES
    for name, (dataset, full, quick) in chosen.items():
        src = getattr(ctx.data, dataset)
        chunks = list(quick if ctx.quick else full)
        lz, rs = f"lz-src.{ext}", f"rs-src.{ext}"
        # the small blocks come from an array in memory, as in issue 17 (read from the
        # .npy file, 16,384 reads of 32 rows cost more than the write itself)
        w = write_pair(ctx, fmt, {"lazyio": ("lazyio", kwargs, lz),
                                  "rsciio": ("rsciio", kwargs, rs)}, src,
                       extra={"chunks": chunks, "in_memory": dataset == "small"})
        if limit is None:
            lim = ctx.once(f"copy:{src}", lambda s=src: copy_limit(
                s, ctx.path("copy.tmp"), CORES))
        else:
            lim = limit(src, ctx.path(lz))
        nbytes = os.path.getsize(src) / MiB
        rows += [
            Row(f"{label} write, {name}", w["lazyio"]["seconds"], w["rsciio"]["seconds"],
                limit=lim, targets=[("ratio", 1.0), ("limit", 1.2)],
                note=f"{nbytes:,.0f} MiB in dask blocks of {tuple(chunks)}"),
            rss_row(f"{label} write peak RSS, {name}", w, "lazyio", "rsciio",
                    targets=[("ratio", 1.0)]),
        ]
    return rows
