"""Seeded benchmark data, generated once per run as .npy files.

- ``detector``: a detector-like uint16 4-D stack, Poisson counts with a bright central
  disk (``lazyio.demo.make_dataset``), (64, 64, 256, 256) = 512 MiB at full size;
- ``floats``: float32 uniform random numbers, (64, 64, 256, 256) = 1 GiB at full size;
- ``many``: a 2-D float32 array (4096, 1024) that the format benchmarks store in 16,384
  chunks of (32, 8) (1,024 chunks with ``--quick``).

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


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"detector": (8, 8, 32, 32), "floats": (8, 8, 32, 32), "many": (128, 64),
                "many_chunks": (4, 2)}
    return {"detector": (64, 64, 256, 256), "floats": (64, 64, 256, 256),
            "many": (4096, 1024), "many_chunks": (32, 8)}


def make(workdir: str, quick: bool) -> Datasets:
    """Write the datasets into ``workdir`` (kept if already there with the right shape)."""
    import lazyio
    from lazyio.demo import make_dataset

    size = sizes(quick)
    paths = {k: os.path.join(workdir, f"{k}.npy") for k in ("detector", "floats", "many")}
    if not _ok(paths["detector"], size["detector"]):
        lazyio.save(paths["detector"], make_dataset(size["detector"], seed=0), overwrite=True,
                    show_progressbar=False)
    if not _ok(paths["floats"], size["floats"]):
        _random(paths["floats"], size["floats"], seed=1)
    if not _ok(paths["many"], size["many"]):
        _random(paths["many"], size["many"], seed=2)
    return Datasets(paths["detector"], paths["floats"], paths["many"], size["many_chunks"])


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
