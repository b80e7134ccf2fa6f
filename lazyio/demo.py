"""The demo: a generated 4-D STEM diffraction dataset written and read back in every format.

The synthetic sample has structure a virtual detector can show: a polycrystal of a few
grains (a Voronoi tessellation of the scan), each with its own lattice orientation and
scattering strength, under a thickness that grows from left to right. At each probe
position the pattern is the direct-beam disk, weakened by thickness and by the grain's
scattering, plus six Bragg spots rotated with the grain and a diffuse background, in
Poisson counts. So the virtual bright-field image (the disk) shows the thickness ramp and
the grains darkened by their scattering; the virtual annular dark-field image (a ring
around the disk, catching the spots) shows them bright.

Figures are drawn with matplotlib (``pip install "lazyio[demo]"``): axes in the data's
units, a colour bar per image. Without matplotlib, plain grey-scale PNGs are written with
the standard library.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import dask.array as da
import numpy as np

import lazyio
from lazyio.formats import available_plugins

__all__ = ["make_dataset", "run_demo", "virtual_masks"]

SCAN_STEP_NM = 2.0  # probe step
DETECTOR_STEP = 0.05  # 1/nm per detector pixel
GRAINS = 7
SEED = 0


def virtual_masks(ky: int, kx: int) -> tuple[np.ndarray, np.ndarray]:
    """The bright-field disk and the annular dark-field ring on a ``ky x kx`` detector."""
    yy, xx = np.mgrid[:ky, :kx]
    r = np.hypot(yy - ky / 2, xx - kx / 2)
    disk_r = min(ky, kx) / 8
    return r < disk_r, (r >= 1.5 * disk_r) & (r < 3.6 * disk_r)


def _sample(ny: int, nx: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grain index and thickness (0.2 .. 1.0, growing along x) at every probe position."""
    rng = np.random.default_rng([seed, 1])
    centres = rng.random((GRAINS, 2)) * (ny, nx)
    yy, xx = np.mgrid[:ny, :nx]
    distance = np.hypot(yy[..., None] - centres[:, 0], xx[..., None] - centres[:, 1])
    grain = np.argmin(distance, axis=-1)
    thickness = 0.2 + 0.8 * np.broadcast_to(xx / max(1, nx - 1), (ny, nx))
    return grain, thickness


def _spots(ky: int, kx: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per grain: its Bragg-spot image (six spots, rotated with the grain) and its
    scattering strength."""
    rng = np.random.default_rng([seed, 2])
    yy, xx = np.mgrid[:ky, :kx]
    radius, width = 2.6 * min(ky, kx) / 8, max(1.0, min(ky, kx) / 64)
    images = np.zeros((GRAINS, ky, kx))
    strength = rng.uniform(0.15, 0.6, GRAINS)
    for g, angle in enumerate(rng.uniform(0, np.pi / 3, GRAINS)):
        for k in range(6):
            cy = ky / 2 + radius * np.sin(angle + k * np.pi / 3)
            cx = kx / 2 + radius * np.cos(angle + k * np.pi / 3)
            images[g] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))
    return images, strength


def make_dataset(shape: tuple[int, int, int, int], seed: int = SEED) -> da.Array:
    """A 4-D STEM diffraction stack of a polycrystal of varying thickness (Poisson counts).

    Generated block by block (seeded per block), so any size streams in bounded memory and
    every computation of it gives the same numbers.

    Parameters
    ----------
    shape : tuple of 4 int
        Scan y, scan x, detector y, detector x.
    seed : int, optional
        Seeds the grains and the noise.

    Returns
    -------
    dask.array.Array
        ``uint16`` counts, in blocks of 8 x 8 probe positions.
    """
    ny, nx, ky, kx = shape
    grain, thickness = _sample(ny, nx, seed)
    spots, strength = _spots(ky, kx, seed)
    # float32 rates: a third of the time of float64 to build; the Poisson draws dominate
    spots = spots.astype(np.float32)
    disk = virtual_masks(ky, kx)[0].astype(np.float32)
    chunks = (max(1, min(ny, 8)), max(1, min(nx, 8)), ky, kx)

    def block(block_info: Any = None) -> np.ndarray:
        (y0, y1), (x0, x1) = block_info[None]["array-location"][:2]
        g, t = grain[y0:y1, x0:x1], thickness[y0:y1, x0:x1]
        scatter = strength[g] * t  # what the grain sends out of the direct beam
        direct = (220.0 * np.exp(-1.2 * t) * (1.0 - scatter)).astype(np.float32)
        lam = direct[..., None, None] * disk
        lam += (900.0 * scatter).astype(np.float32)[..., None, None] * spots[g]
        lam += (0.5 + 1.5 * t).astype(np.float32)[..., None, None]  # diffuse background
        rng = np.random.default_rng([seed, y0, x0])
        return rng.poisson(lam).astype(np.uint16)

    return da.map_blocks(block, chunks=da.core.normalize_chunks(chunks, shape),
                         dtype=np.uint16, meta=np.empty((0,) * 4, np.uint16))


def _signal(data: da.Array) -> dict[str, Any]:
    names = ["y", "x", "ky", "kx"]
    units = ["nm", "nm", "1/nm", "1/nm"]
    scales = [SCAN_STEP_NM, SCAN_STEP_NM, DETECTOR_STEP, DETECTOR_STEP]
    axes = [
        {"name": n, "units": u, "scale": sc, "size": s, "navigate": i < 2,
         "offset": 0.0 if i < 2 else -sc * (s // 2)}
        for i, (n, u, sc, s) in enumerate(zip(names, units, scales, data.shape, strict=True))
    ]
    return {"data": data, "axes": axes,
            "metadata": {"General": {"title": "demo 4D-STEM"},
                         "Signal": {"signal_type": "electron_diffraction"}},
            "original_metadata": {"generator": {
                "seed": SEED, "grains": GRAINS,
                "kind": "Voronoi polycrystal, thickness ramp along x, Poisson counts"}}}


def _images(data: da.Array) -> tuple[Any, ...]:
    """The lazy virtual bright-field and dark-field images and the mean pattern."""
    bf, adf = virtual_masks(*data.shape[2:])
    return ((data * bf).sum(axis=(2, 3)), (data * adf).sum(axis=(2, 3)),
            data.mean(axis=(0, 1)))


def run_demo(
    outdir: str = "demo-output", shape: tuple[int, int, int, int] = (88, 88, 128, 128),
    show_progressbar: bool = False,
) -> list[dict[str, Any]]:
    """Write the dataset in each format, read it back lazily, and measure both ways.

    Returns one row per format: write and read throughput (MB/s), size on disk, and
    whether the virtual bright-field and dark-field images and the mean pattern computed
    from the file match those of the source. The images read back from the first format
    are saved in ``outdir`` (see :func:`save_figures`).
    """
    os.makedirs(outdir, exist_ok=True)
    data = make_dataset(shape)
    nbytes = data.nbytes
    reference = da.compute(*_images(data))
    rows: list[dict[str, Any]] = []
    shown: tuple[str, tuple[Any, ...]] | None = None
    for fmt in [f for f in ("hspy", "zspy", "npy") if f in available_plugins()]:
        path = os.path.join(outdir, f"demo.{fmt}")
        signal = _signal(data)
        t0 = time.perf_counter()
        lazyio.save(path, signal, overwrite=True, show_progressbar=show_progressbar)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = lazyio.load(path)[0]["data"]
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        images = da.compute(*_images(loaded))
        t_read = time.perf_counter() - t0
        rows.append({
            "format": fmt,
            "write MB/s": nbytes / t_write / 1e6,
            "open ms": t_open * 1e3,
            "read MB/s": nbytes / t_read / 1e6,
            "on disk MB": _disk_size(path) / 1e6,
            "tasks": loaded.npartitions,
            "correct": all(np.array_equal(a, b) for a, b in zip(images, reference,
                                                                 strict=True)),
        })
        shown = shown or (fmt, images)
    if shown is not None:
        # one set of figures: the table's "correct" column says every format read back
        # the same images
        save_figures(outdir, f"demo.{shown[0]}", shown[1], _signal(data)["axes"])
    return rows


def save_figures(outdir: str, source: str, images: tuple[Any, ...],
                 axes: list[dict[str, Any]]) -> list[str]:
    """Save the virtual images and the mean pattern read from ``source``; returns the
    files written.

    With matplotlib: one figure ``virtual_images.png`` of three panels with axes in the
    data's units and colour bars. Without: three grey-scale PNGs (``virtual_bf.png``,
    ``virtual_df.png``, ``mean_pattern.png``).
    """
    bf, adf, mean = (np.asarray(i, dtype=np.float64) for i in images)
    try:
        import matplotlib
    except ImportError:
        paths = [os.path.join(outdir, f"{name}.png")
                 for name in ("virtual_bf", "virtual_df", "mean_pattern")]
        for path, image in zip(paths, (bf, adf, np.log1p(mean)), strict=True):
            _save_png(path, image)
        return paths
    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    def extent(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, float, float]:
        return (b["offset"], b["offset"] + b["scale"] * b["size"],
                a["offset"] + a["scale"] * a["size"], a["offset"])

    scan, detector = extent(axes[0], axes[1]), extent(axes[2], axes[3])
    fig, panels = plt.subplots(1, 3, figsize=(15, 4.6))
    fig.subplots_adjust(left=0.05, right=0.97, bottom=0.12, top=0.84, wspace=0.35)
    for ax, image, title, ext, units, cmap, label in (
        (panels[0], bf, "virtual bright field (disk)", scan, "nm", "gray", "counts"),
        (panels[1], adf, "virtual annular dark field", scan, "nm", "inferno", "counts"),
        (panels[2], np.log1p(mean), "mean diffraction pattern", detector, "1/nm",
         "viridis", "log(1 + counts)"),
    ):
        shown = ax.imshow(image, extent=ext, cmap=cmap, interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel(f"x ({units})")
        ax.set_ylabel(f"y ({units})")
        fig.colorbar(shown, ax=ax, label=label, shrink=0.85)
    fig.suptitle(f"lazyio demo: a polycrystal of varying thickness, read back from {source}")
    path = os.path.join(outdir, "virtual_images.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


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
