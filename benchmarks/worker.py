"""Jobs run in a fresh process: writes (time and peak RSS) and RosettaSciIO-on-zarr-2 reads.

Usage: ``python -m benchmarks.worker <write|read> '<json spec>'``; prints one JSON line.
This module imports neither lazyio nor RosettaSciIO at the top, so it also runs in the
separate zarr 2 environment where RosettaSciIO's .zspy plugin works.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
import warnings
from typing import Any

import numpy as np

from benchmarks.datasets import signal_dict

warnings.filterwarnings("ignore")


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _vm_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _source(spec: dict[str, Any]) -> Any:
    """The array to write: a dask array over the cached .npy, chunked as a signal read
    lazily from a typical RosettaSciIO file (its default ~1 MB chunks of whole signals;
    RosettaSciIO keeps a dask array's chunks as storage chunks), or in ``spec["chunks"]``
    (the source chunkings of ``benchmarks.datasets.SOURCES``)."""
    import dask.array as da

    arr = np.load(spec["src"], mmap_mode="r")
    # "chunks" (benchmarks.datasets.SOURCES) or "source_chunks" (bench_zspy): JSON lists
    chunks = spec.get("chunks") or spec.get("source_chunks")
    if spec.get("in_memory"):  # a numpy array in memory, cut into dask blocks
        return da.from_array(np.load(spec["src"]), chunks=tuple(chunks))
    if chunks is None:
        from rsciio._hierarchical import get_signal_chunks

        signal_axes = tuple(range(arr.ndim - (2 if arr.ndim > 2 else 1), arr.ndim))
        chunks = get_signal_chunks(arr.shape, arr.dtype, signal_axes)
    return da.from_array(_Blocks(spec["src"], arr.shape, arr.dtype), chunks=tuple(chunks))


class _Blocks:
    """Blocks of an .npy file read with ``pread`` into fresh arrays: no memory map, so
    the file's pages never count in the writer's RSS, and no per-block header parsing."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype, self.ndim = path, shape, dtype, len(shape)
        self.offset = np.load(path, mmap_mode="r").offset

    def __getitem__(self, key: Any) -> np.ndarray:
        import itertools
        import os

        box = [range(*k.indices(s)) for k, s in zip(key, self.shape, strict=False)]
        box += [range(s) for s in self.shape[len(box):]]
        if any(r.step != 1 for r in box):
            raise NotImplementedError(key)
        out = np.empty([len(r) for r in box], dtype=self.dtype)
        if not out.size:
            return out
        partial = [a for a, (r, s) in enumerate(zip(box, self.shape, strict=True))
                   if len(r) != s] or [0]
        # read contiguous runs along the last cut axis; when those are short (a cut
        # signal row), read whole rows along the axis before it and slice them
        cut = partial[-1]
        strides = [int(np.prod(self.shape[a + 1:], dtype=np.int64)) * self.dtype.itemsize
                   for a in range(self.ndim)]
        run = len(box[cut]) * strides[cut]
        widen = cut > 0 and run < 4096 and cut == self.ndim - 1
        axis = cut - 1 if widen else cut
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for index in itertools.product(*box[:axis]):
                start = self.offset + sum(i * st for i, st in zip(index, strides, strict=False))
                start += box[axis].start * strides[axis]
                pos = tuple(i - r.start for i, r in zip(index, box, strict=False))
                if widen:
                    rows = np.empty((len(box[axis]), self.shape[cut]), dtype=self.dtype)
                    os.preadv(fd, [memoryview(rows).cast("B")], start)
                    out[pos] = rows[:, box[cut].start:box[cut].stop]
                else:
                    os.preadv(fd, [memoryview(out[pos]).cast("B")], start)
        finally:
            os.close(fd)
        return out


def write(spec: dict[str, Any]) -> dict[str, Any]:
    """Write ``spec["src"]`` (an .npy file) to ``spec["dst"]`` with one implementation."""
    import dask

    dask.config.set(scheduler="threads", num_workers=spec.get("workers"))
    impl, fmt, dst, kwargs = spec["impl"], spec["fmt"], spec["dst"], dict(spec.get("kwargs", {}))
    if isinstance(kwargs.get("chunks"), list):  # JSON has no tuples
        kwargs["chunks"] = tuple(kwargs["chunks"])
    data = _source(spec)
    # dask's first compute imports distributed to look for a client (0.4-2 s here): a
    # once-per-process cost that pyUSID's imports pay before the clock, so both sides do
    # (the zarr 2 environment has no distributed, and dask does not look for it there)
    with contextlib.suppress(ImportError):
        import distributed  # noqa: F401

    if impl == "lazyio":
        import lazyio
        from lazyio.formats import available_plugins

        # the plugins import before the clock starts, as RosettaSciIO's module does
        available_plugins()

        def run() -> None:
            lazyio.save(dst, signal_dict(data, lazy=True), format=fmt, overwrite=True,
                        show_progressbar=False, **kwargs)
    elif impl == "rsciio":
        import importlib

        module = importlib.import_module(f"rsciio.{ {'npy': 'numpy'}.get(fmt, fmt)}")
        if fmt == "usid" and not hasattr(np, "product"):
            # pyUSID 0.0.12 calls numpy.product, removed in numpy 2: the benchmark (never
            # lazyio) puts the alias back so RosettaSciIO's USID writer can run
            setattr(np, "product", np.prod)  # noqa: B010

        def run() -> None:
            if fmt == "npy":  # RosettaSciIO's .npy writer cannot take a dask array
                module.file_writer(dst, signal_dict(data.compute(), lazy=False), **kwargs)
            elif fmt == "usid":  # its writer has no progress bar option
                module.file_writer(dst, signal_dict(data, lazy=True), **kwargs)
            else:
                module.file_writer(dst, signal_dict(data, lazy=True),
                                   show_progressbar=False, **kwargs)
    elif impl == "zarr":  # plain zarr-python 3 + dask.array.to_zarr
        import dask.array as da
        import numcodecs
        import zarr

        def run() -> None:
            chunks = list(kwargs["chunks"])
            z = zarr.create_array(
                dst, shape=data.shape, dtype=data.dtype, chunks=chunks, zarr_format=2,
                compressors=numcodecs.Blosc(cname="zstd", clevel=1, shuffle=1),
                overwrite=True,
            )
            da.to_zarr(data.rechunk(_multiple(data.chunksize, chunks)), z)
    elif impl == "tensorstore":  # TensorStore's zarr driver, fed by dask.array.store
        import dask.array as da
        import tensorstore as ts

        def run() -> None:
            chunks = list(kwargs["chunks"])
            arr = ts.open({
                "driver": "zarr", "kvstore": {"driver": "file", "path": dst},
                "metadata": {"shape": list(data.shape), "chunks": chunks,
                             "dtype": data.dtype.str, "dimension_separator": "/",
                             "compressor": {"id": "blosc", "cname": "zstd", "clevel": 1,
                                            "shuffle": 1}},
            }, create=True, delete_existing=True).result()
            da.store(data.rechunk(_multiple(data.chunksize, chunks)), _TensorStoreTarget(arr),
                     lock=False)
    else:
        raise ValueError(impl)
    baseline = _vm_rss()
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak": _vm_hwm(), "baseline": baseline}


class _TensorStoreTarget:
    def __init__(self, arr: Any) -> None:
        self.arr = arr

    def __setitem__(self, region: Any, block: Any) -> None:
        self.arr[region].write(np.asarray(block)).result()


def _multiple(have: tuple[int, ...], storage: list[int]) -> tuple[int, ...]:
    return tuple(max(c, h // c * c) for h, c in zip(have, storage, strict=True))


def read(spec: dict[str, Any]) -> dict[str, Any]:
    """Open, sum and read single signals with RosettaSciIO (used in the zarr 2 venv)."""
    import dask

    dask.config.set(scheduler="threads", num_workers=spec.get("workers"))
    import importlib

    module = importlib.import_module(f"rsciio.{spec['fmt']}")
    path, points = spec["path"], [tuple(p) for p in spec["points"]]
    module.file_reader(path, lazy=True)[0]["data"].sum().compute()  # warm-up
    start = time.perf_counter()
    data = module.file_reader(path, lazy=True)[0]["data"]
    opened = time.perf_counter() - start
    start = time.perf_counter()
    data.sum().compute()
    summed = time.perf_counter() - start
    lat = []
    for p in points:
        start = time.perf_counter()
        data[p].compute()
        lat.append(time.perf_counter() - start)
    return {"open": opened, "sum": summed, "one": statistics.median(lat[1:] or lat),
            "tasks": data.npartitions}


def main() -> None:
    cmd, spec = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps({"write": write, "read": read}[cmd](spec)))


if __name__ == "__main__":
    main()
