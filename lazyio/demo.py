"""The demo: a generated detector-like 4-D dataset written and read back in every format."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import dask.array as da
import numpy as np

import lazyio
from lazyio.formats import available_plugins

__all__ = ["make_dataset", "run_demo"]


def make_dataset(shape: tuple[int, int, int, int], seed: int = 0) -> da.Array:
    """A 4-D STEM-diffraction-like stack: Poisson counts with a bright central disk.

    Generated block by block (seeded per block), so any size streams in bounded memory.
    """
    ny, nx, ky, kx = shape
    yy, xx = np.mgrid[:ky, :kx]
    disk = ((yy - ky / 2) ** 2 + (xx - kx / 2) ** 2) < (min(ky, kx) / 8) ** 2
    lam = np.where(disk, 200.0, 2.0)
    chunks = (max(1, min(ny, 8)), max(1, min(nx, 8)), ky, kx)

    def block(block_info: Any = None) -> np.ndarray:
        info = block_info[None]
        loc = info["array-location"]
        rng = np.random.default_rng([seed, loc[0][0], loc[1][0]])
        n0, n1 = loc[0][1] - loc[0][0], loc[1][1] - loc[1][0]
        return rng.poisson(lam, size=(n0, n1, ky, kx)).astype(np.uint16)

    return da.map_blocks(block, chunks=da.core.normalize_chunks(chunks, shape),
                         dtype=np.uint16, meta=np.empty((0,) * 4, np.uint16))


def _signal(data: da.Array) -> dict[str, Any]:
    names = ["y", "x", "ky", "kx"]
    units = ["nm", "nm", "1/nm", "1/nm"]
    axes = [
        {"name": n, "units": u, "scale": 1.0, "offset": 0.0, "size": s, "navigate": i < 2}
        for i, (n, u, s) in enumerate(zip(names, units, data.shape, strict=True))
    ]
    return {"data": data, "axes": axes,
            "metadata": {"General": {"title": "demo 4D-STEM"},
                         "Signal": {"signal_type": "electron_diffraction"}},
            "original_metadata": {"generator": {"seed": 0, "kind": "poisson + disk"}}}


def run_demo(
    outdir: str = "demo-output", shape: tuple[int, int, int, int] = (88, 88, 128, 128),
    show_progressbar: bool = False,
) -> list[dict[str, Any]]:
    """Write the dataset in each format, read it back lazily, and measure both ways.

    Returns one row per format: write and read throughput (MB/s), size on disk, and
    checks that the virtual bright-field image and the mean pattern match the source.
    """
    os.makedirs(outdir, exist_ok=True)
    data = make_dataset(shape)
    nbytes = data.nbytes
    ky, kx = shape[2:]
    yy, xx = np.mgrid[:ky, :kx]
    mask = ((yy - ky / 2) ** 2 + (xx - kx / 2) ** 2) < (min(ky, kx) / 8) ** 2
    reference_bf = (data * mask).sum(axis=(2, 3)).compute()
    rows = []
    for fmt in [f for f in ("hspy", "zspy", "npy") if f in available_plugins()]:
        path = os.path.join(outdir, f"demo.{fmt}")
        t0 = time.perf_counter()
        lazyio.save(path, _signal(data), overwrite=True, show_progressbar=show_progressbar)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = lazyio.load(path)[0]["data"]
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        bf, mean = da.compute((loaded * mask).sum(axis=(2, 3)), loaded.mean(axis=(0, 1)))
        t_read = time.perf_counter() - t0
        rows.append({
            "format": fmt,
            "write MB/s": nbytes / t_write / 1e6,
            "open ms": t_open * 1e3,
            "read MB/s": nbytes / t_read / 1e6,
            "on disk MB": _disk_size(path) / 1e6,
            "tasks": loaded.npartitions,
            "correct": bool(np.array_equal(bf, reference_bf)),
        })
        _save_png(os.path.join(outdir, f"virtual_bf_{fmt}.png"), bf)
        _save_png(os.path.join(outdir, f"mean_pattern_{fmt}.png"), np.log1p(mean))
    return rows


def _disk_size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def _save_png(path: str, image: np.ndarray) -> None:
    """A grey-scale PNG with the standard library only (zlib + struct)."""
    import struct
    import zlib

    img = np.asarray(image, dtype=np.float64)
    lo, hi = float(img.min()), float(img.max())
    scaled = ((img - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in scaled)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(
            ">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", scaled.shape[1], scaled.shape[0], 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def clean(outdir: str) -> None:
    """Remove the demo's output folder."""
    shutil.rmtree(outdir, ignore_errors=True)
