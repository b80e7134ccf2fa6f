"""The measured inputs of docs/scale.md: what a 10 TB .zspy / .hspy on S3 costs per task
and per request, and the estimate for 64 workers that follows from them.

Measured here (2-core machine, loopback; medians of ``--repeat`` runs):

1. client, per task: building lazyio's read graph of a sparse store with ``n`` blocks
   (``lazyio.load``), then what ``client.compute`` does before anything runs (optimise,
   fuse, materialise, pickle: ``dask.optimize`` + ``pickle.dumps``);
2. scheduler + workers, per task: computing that graph (each task makes a 32-byte block
   of fill values, so the time is the cluster's own overhead) on a ``LocalCluster`` of 2
   process workers, minus the client's part; and as many tasks of ``dask.array.zeros``
   (dask's own overhead per task);
3. S3, per chunk: a seeded .zspy (its default codec) and .hspy (gzip), ``--chunks`` chunks
   of 1 MiB, written to and read back from the moto S3 server of tests/servers.py,
   counting requests: PUTs per chunk written, GETs per chunk read, bytes per GET.

Then the 10 TB estimate (the shape of tests/test_scale.py, 64 workers) is printed from
these and from the graph sizes lazyio builds for it.

Usage: ``.venv/bin/python benchmarks/bench_scale.py [--quick] [--repeat N]``
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for extra in (ROOT, os.path.join(ROOT, "tests")):
    if extra not in sys.path:
        sys.path.insert(0, extra)

SHAPE_10TB = (2048, 2400, 1024, 1024)  # uint16, as tests/test_scale.py
WORKERS = 64


def _median(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sparse_zspy(path: str, n: int) -> None:
    """A .zspy of ``n`` blocks of 16 uint16 values written by lazyio with its data never
    computed (``dask.array.store`` builds the graph only): metadata, no chunk."""
    import dask.array as da

    import lazyio

    real = da.store
    da.store = lambda s, t, *a, compute=True, **k: real(s, t, *a, compute=False, **k)
    try:
        lazyio.save(path, {"data": da.zeros((n, 16), dtype="uint16", chunks=(1, 16))},
                    chunks=(1, 16), show_progressbar=False, overwrite=True)
    finally:
        da.store = real


def per_task(n: int, repeat: int) -> dict[str, float]:
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    import lazyio

    folder = tempfile.mkdtemp(prefix="bench-scale-")
    path = os.path.join(folder, "sparse.zspy")
    _sparse_zspy(path, n)

    def load() -> Any:
        return lazyio.load(path, chunks="storage")[0]["data"]

    data = load()
    assert data.npartitions == n, data.npartitions
    build = _median(load, repeat)

    def submit_side() -> None:
        (optimised,) = dask.optimize(data)
        pickle.dumps(dict(optimised.__dask_graph__()))

    client_side = _median(submit_side, repeat)
    with dask.config.set({"distributed.worker.daemon": False}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=":0", host="127.0.0.1", silence_logs=40) as lc, \
            Client(lc) as client:
        client.compute(data[:64], sync=True)  # warm: imports, handles

        def scheduler_cpu() -> float:
            # the CPU time of the scheduler's event loop thread: what bounds how many
            # tasks a second one scheduler can handle, whatever else loads the machine
            return float(client.run_on_scheduler(time.thread_time))

        cpu = scheduler_cpu()
        total = _median(lambda: client.compute(data, sync=True), repeat)
        sched = (scheduler_cpu() - cpu) / repeat
        # the same number of tasks doing nothing of lazyio's: dask's own overhead
        noop = da.zeros((n, 16), dtype="uint16", chunks=(1, 16))
        cpu = scheduler_cpu()
        bare = _median(lambda: client.compute(noop, sync=True), repeat)
        sched_bare = (scheduler_cpu() - cpu) / repeat
    return {
        "sched_cpu_us": sched / n * 1e6,
        "sched_cpu_bare_us": sched_bare / n * 1e6,
        "dask_us": bare / n * 1e6,
        "tasks": n,
        "build_us": build / n * 1e6,
        "client_us": client_side / n * 1e6,
        "cluster_us": max(0.0, total - client_side) / n * 1e6,
        "total_us": total / n * 1e6,
    }


def _s3_round(server: Any, fs: Any, frames: np.ndarray, fmt: str, name: str) -> dict[str, float]:
    import dask.array as da

    import lazyio

    options = server.storage_options
    url = f"s3://{server.bucket}/bench/{name}.{fmt}"
    signal = {"data": da.from_array(frames, chunks=(1, 512, 1024))}
    kwargs = {"compression": "gzip"} if fmt == "hspy" else {}  # zspy: its default codec
    server.reset_stats()
    lazyio.save(url, signal, storage_options=options, chunks=(1, 512, 1024),
                show_progressbar=False, **kwargs)
    written = server.stats()
    stored = sum(fs.du(url, total=False).values()) if fmt == "zspy" else fs.size(url)
    server.reset_stats()
    data = lazyio.load(url, storage_options=options)[0]["data"]
    opened = server.stats()
    server.reset_stats()
    data.compute(scheduler="threads")
    read = server.stats()
    return {"puts": written["puts"], "write_requests": written["requests"],
            "open_requests": opened["requests"], "gets": read["gets"], "stored": stored}


def s3_requests(chunks: int) -> dict[str, dict[str, float]]:
    """Requests per chunk, as the slope between ``chunks // 2`` and ``chunks`` chunks (the
    metadata documents of the HyperSpy tree are a fixed cost, reported apart)."""
    import fsspec
    from servers import S3Server

    rng = np.random.default_rng(18)
    # 1 MiB uint16 chunks of noise over a ramp: compressed to about 60%
    frames = (rng.integers(0, 256, size=(chunks, 512, 1024)) + np.arange(1024)).astype("u2")
    half = chunks // 2
    out: dict[str, dict[str, float]] = {}
    with S3Server() as server:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", server.key)
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", server.secret)
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        fs = fsspec.filesystem("s3", **server.storage_options)
        fs.mkdir(server.bucket)
        for fmt in ("zspy", "hspy"):
            small = _s3_round(server, fs, frames[:half], fmt, "half")
            big = _s3_round(server, fs, frames, fmt, "full")
            per = {k: (big[k] - small[k]) / (chunks - half) for k in big}
            out[fmt] = {
                "puts_per_chunk": per["puts"],
                "fixed_write_requests": big["write_requests"] - chunks * per["write_requests"],
                "open_requests": big["open_requests"],
                "gets_per_chunk": per["gets"],
                "bytes_per_get": per["stored"] / max(per["gets"], 1e-9),
                "stored_per_chunk": per["stored"],
            }
    return out


# lazyio's default storage chunks for SHAPE_10TB (what a save without ``chunks`` picks:
# .zspy 8 MiB chunks of whole frames, .hspy about 1 MB, half frames)
DEFAULT_STORAGE = {"zspy": (1, 4, 1024, 1024), "hspy": (1, 1, 488, 1024)}


def graph_10tb() -> dict[str, dict[str, int]]:
    """lazyio's 10 TB graphs from its chunk rules (no file): blocks read from S3, write
    blocks of a copy, storage chunks."""
    from lazyio.backends.chunking import REMOTE_BLOCK_BYTES, aligned_chunks, write_chunks

    out = {}
    for fmt, storage in DEFAULT_STORAGE.items():
        remote = aligned_chunks(SHAPE_10TB, storage, "uint16", "auto",
                                limit=REMOTE_BLOCK_BYTES)
        written = write_chunks(remote, storage, 2)
        out[fmt] = {
            "read_blocks": math.prod(len(a) for a in remote),
            "read_block_bytes": math.prod(a[0] for a in remote) * 2,
            "write_blocks": math.prod(len(a) for a in written),
            "storage_chunks": math.prod(-(-s // c) for s, c in zip(SHAPE_10TB, storage,
                                                                      strict=True)),
        }
    return out


def estimate(tasks: dict[str, float], s3: dict[str, dict[str, float]],
             graph: dict[str, dict[str, int]], worker_mbps: float,
             client_mbps: float) -> list[str]:
    """Rows of the 10 TB table: tasks, requests, and the minutes each part needs."""
    nbytes = math.prod(SHAPE_10TB) * 2
    rows = []
    for fmt in ("zspy", "hspy"):
        g = graph[fmt]
        transfer = nbytes / (WORKERS * worker_mbps * 1e6) / 60
        for op in ("read", "write"):
            n = g["read_blocks"] if op == "read" else g["read_blocks"] + g["write_blocks"]
            client = n * (tasks["build_us"] + tasks["client_us"]) / 1e6 / 60
            sched = n * tasks["sched_cpu_us"] / 1e6 / 60  # one event loop: its CPU bounds
            per_chunk = s3[fmt]["gets_per_chunk" if op == "read" else "puts_per_chunk"]
            requests = g["storage_chunks"] * per_chunk
            if fmt == "hspy" and op == "write":
                # every compressed byte reaches the client, goes to its local temporary,
                # then is uploaded (multipart): twice through the client's link and disk
                stored = nbytes * s3[fmt]["stored_per_chunk"] / 2**20
                transfer = 2 * stored / (client_mbps * 1e6) / 60
                requests = stored / (50 * 2**20)  # s3fs uploads in parts of 50 MiB
            rows.append(f"| {fmt} {op} | {n:,} | {requests:,.0f} | {client:.1f} | "
                        f"{sched:.1f} | {transfer:.1f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--worker-mbps", type=float, default=200.0,
                        help="assumed S3 throughput of one worker, MB/s (not measurable here)")
    parser.add_argument("--client-mbps", type=float, default=1250.0,
                        help="assumed throughput of the client (.hspy writes), MB/s")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.chunks, args.repeat = 500, 4, 1
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    tasks = per_task(args.tasks, args.repeat)
    print("| per task (n = {tasks:,}) | µs |".format(tasks=int(tasks["tasks"])))
    print("|---|---|")
    for key, label in (("build_us", "lazyio.load graph build"),
                       ("client_us", "client: optimise + materialise + pickle"),
                       ("cluster_us", "scheduler + 2 workers: run lazyio's read tasks"),
                       ("dask_us", "scheduler + 2 workers: run as many empty tasks"),
                       ("sched_cpu_us", "scheduler CPU (its event loop thread), read tasks"),
                       ("sched_cpu_bare_us", "scheduler CPU, empty tasks"),
                       ("total_us", "client.compute end to end")):
        print(f"| {label} | {tasks[key]:.1f} |")
    s3 = s3_requests(args.chunks)
    print(f"\n| S3 (slope {args.chunks // 2} -> {args.chunks} chunks of 1 MiB) | zspy | hspy |")
    print("|---|---|---|")
    for key in ("puts_per_chunk", "fixed_write_requests", "open_requests", "gets_per_chunk",
                "bytes_per_get", "stored_per_chunk"):
        print(f"| {key} | {s3['zspy'][key]:,.2f} | {s3['hspy'][key]:,.2f} |")
    graph = graph_10tb()
    print("\n10 TB graph:", graph)
    print(f"\n| 10 TB, {WORKERS} workers | tasks | requests | client min | scheduler min "
          f"| transfer min at {args.worker_mbps:.0f} MB/s/worker (assumed) |")
    print("|---|---|---|---|---|---|")
    for line in estimate(tasks, s3, graph, args.worker_mbps, args.client_mbps):
        print(line)


if __name__ == "__main__":
    main()
