"""Writing .hspy from a ``distributed`` cluster: lazyio's compress-on-workers + one writer
against the alternative, every worker writing its region under a ``distributed.Lock``.

An ad-hoc measurement behind the README's choice (the Lock variant is not library code).
Both write the same seeded gzip+shuffle chunked dataset from a LocalCluster of 2 process
workers (1 thread each); medians of 3.

- lazyio: ``lazyio.save(path, signal)`` under the client: workers compress chunks with the
  dataset's filter pipeline; the client writes the bytes (``write_direct_chunk``).
- lock: the file and dataset are created first; then ``da.store`` with a
  ``distributed.Lock``: each task opens the file, writes its region through h5py (which
  compresses inside the lock) and closes it so the next writer sees a consistent file.

Usage: ``.venv/bin/python benchmarks/bench_cluster_write.py [--quick]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any, Self

import numpy as np

DATASET = "/Experiments/bench/data"


class LockedH5Target:
    """A region target that opens, writes and closes the file on each (locked) write."""

    def __init__(self, path: str, dataset: str) -> None:
        self.path, self.dataset = path, dataset

    def __setitem__(self, region: Any, block: np.ndarray) -> None:
        import h5py

        with h5py.File(self.path, "r+") as f:
            f[self.dataset][region] = block


def _data(shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(20261121)
    ky, kx = np.mgrid[: shape[2], : shape[3]]
    disk = ((ky - shape[2] / 2) ** 2 + (kx - shape[3] / 2) ** 2) < (shape[2] / 6) ** 2
    return rng.poisson(np.where(disk, 200.0, 2.0), size=shape).astype(np.uint16)


def _lazyio(path: str, array: Any, chunks: tuple[int, ...]) -> None:
    import lazyio

    lazyio.save(path, {"data": array, "metadata": {"General": {"title": "bench"}}},
                chunks=chunks, overwrite=True, show_progressbar=False)


def _locked(path: str, array: Any, chunks: tuple[int, ...]) -> None:
    import dask.array as da
    import h5py
    from distributed import Lock

    with h5py.File(path, "w") as f:
        f.create_dataset(DATASET, shape=array.shape, dtype=array.dtype, chunks=chunks,
                         compression="gzip", compression_opts=4, shuffle=True)
    da.store(array, LockedH5Target(path, DATASET), lock=Lock("bench-hspy-write"))


def _ceilings(data: np.ndarray, chunks: tuple[int, ...], root: str) -> tuple[float, float]:
    """MB/s (of raw data) of encoding on one core (the Lock variant's ceiling, whatever the
    number of workers) and of writing encoded chunks with write_direct_chunk (the single
    writer's ceiling)."""
    import h5py

    from lazyio.backends.hdf5.target import H5ChunkTarget, encodable_pipeline

    path = os.path.join(root, "ceiling.h5")
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("d", shape=data.shape, dtype=data.dtype, chunks=chunks,
                                compression="gzip", compression_opts=4, shuffle=True)
        target = H5ChunkTarget("unused", "/d", data.shape, data.dtype, chunks,
                               encodable_pipeline(dset))
        start = time.perf_counter()
        encoded = [((i, 0, 0, 0), target.encode(data[i : i + 1])) for i in range(len(data))]
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        for offset, raw in encoded:
            dset.id.write_direct_chunk(offset, raw)
        f.flush()
        write_s = time.perf_counter() - start
    mb = data.nbytes / 1e6
    return mb / encode_s, mb / write_s


class _BusyLog:
    """Collects the single writer's debug line: seconds busy writing, seconds in all."""

    def __init__(self) -> None:
        import logging

        self.busy: list[tuple[float, float]] = []
        self.handler = logging.Handler(logging.DEBUG)
        self.handler.emit = self._emit  # type: ignore[method-assign]

    def _emit(self, record: Any) -> None:
        if record.getMessage().startswith("single writer:"):
            self.busy.append((float(record.args[1]), float(record.args[2])))

    def __enter__(self) -> Self:
        import logging

        logger = logging.getLogger("lazyio")
        self.level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import logging

        logger = logging.getLogger("lazyio")
        logger.removeHandler(self.handler)
        logger.setLevel(self.level)


def run(quick: bool = False) -> list[dict[str, Any]]:
    import dask.array as da
    from distributed import Client, LocalCluster

    shape = (16, 32, 64, 64) if quick else (32, 64, 128, 128)
    chunks = (1, shape[1], *shape[2:])
    data = _data(shape)
    results: dict[str, list[float]] = {"lazyio": [], "lock": []}
    with tempfile.TemporaryDirectory(prefix="lazyio-bench-cw-") as root, LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=":0", silence_logs=40,
    ) as cluster, Client(cluster):
        array = da.from_array(data, chunks=chunks).persist()  # on the workers already
        with _BusyLog() as log:
            for _ in range(3):
                for name, fn in (("lazyio", _lazyio), ("lock", _locked)):
                    path = os.path.join(root, f"{name}.hspy")
                    start = time.perf_counter()
                    fn(path, array, chunks)
                    results[name].append(time.perf_counter() - start)
        import h5py

        for name in results:  # both files hold the data
            with h5py.File(os.path.join(root, f"{name}.hspy")) as f:
                key = DATASET if DATASET in f else next(
                    f"/Experiments/{k}/data" for k in f["Experiments"])
                np.testing.assert_array_equal(f[key][()], data)
        encode_rate, write_rate = _ceilings(data, chunks, root)
    mb = data.nbytes / 1e6
    lz, lk = statistics.median(results["lazyio"]), statistics.median(results["lock"])
    rows = [{"measure": f".hspy write from 2 process workers, {mb:.0f} MB gzip",
             "lazyio": mb / lz, "baseline": mb / lk,
             "baseline_name": "h5py under distributed.Lock", "unit": "MB/s"},
            {"measure": "ceiling: one writer's write_direct_chunk vs one core's "
                        "gzip+shuffle encode (the Lock serialises encoding)",
             "lazyio": write_rate, "baseline": encode_rate,
             "baseline_name": "encode on one core", "unit": "MB/s"}]
    if log.busy:  # how far more workers scale: the writer's share of the wall time
        rows.append({
            "measure": "single writer busy writing (of the write's wall time, 2 workers)",
            "lazyio": statistics.median(b for b, _ in log.busy),
            "baseline": statistics.median(t for _, t in log.busy),
            "baseline_name": "wall time", "unit": "s"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for r in run(args.quick):
        print(f"{r['measure']}: lazyio {r['lazyio']:.3g} {r['unit']}, "
              f"{r['baseline_name']} {r['baseline']:.3g} {r['unit']}, "
              f"ratio {r['lazyio'] / r['baseline']:.2f}x")


if __name__ == "__main__":
    main()
