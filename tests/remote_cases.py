"""Shared cases of the remote and distributed tests: a format table, one example file per
format, and a factory that places a local file on a backend (local, S3, HTTP)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import fsspec
import numpy as np
from formats_table import EXT, NAMES

import lazyio


@dataclass(frozen=True)
class Case:
    """One format: its extension and the writer options of its example file."""

    fmt: str
    ext: str
    write_kwargs: dict[str, Any] = field(default_factory=dict)


WRITE_KWARGS: dict[str, dict[str, Any]] = {
    "hspy": {"chunks": (2, 5, 16, 12)},  # gzip + shuffle, chunked
    "zspy": {"chunks": (2, 5, 16, 12)},
    "usid": {"compression": "gzip"},
}
CASES = {name: Case(name, EXT[name], WRITE_KWARGS.get(name, {})) for name in NAMES}
FORMATS = list(CASES)
BACKENDS = ["local", "s3", "http"]


def example_data() -> np.ndarray:
    """A seeded 4-D stack (2 x 5 navigation, 16 x 12 signal)."""
    rng = np.random.default_rng(20261121)
    return rng.integers(0, 4000, size=(6, 5, 16, 12), dtype=np.uint16)


def example_signal() -> dict[str, Any]:
    data = da.from_array(example_data(), chunks=(2, 5, 16, 12))
    return {
        "data": data,
        "axes": [
            {"name": n, "size": s, "scale": 1.0, "offset": 0.0, "units": "nm", "navigate": i < 2}
            for i, (n, s) in enumerate(zip("yxvu", data.shape, strict=True))
        ],
        "metadata": {"General": {"title": "remote"}, "Signal": {"quantity": "Counts (e)"}},
    }


def write_example(path: str, fmt: str, **kwargs: Any) -> None:
    lazyio.save(path, example_signal(), format=fmt, show_progressbar=False,
                **{**CASES[fmt].write_kwargs, **kwargs})


def eager(path_or_url: str, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """The data of the first signal, read eagerly (the reference of every comparison)."""
    [signal] = lazyio.load(path_or_url, lazy=False, storage_options=storage_options)[:1]
    return np.asarray(signal["data"])


class Placer:
    """Puts local files on a backend and says how to address them there."""

    def __init__(self, s3_server: Any, http_server: Any) -> None:
        self.s3 = s3_server
        self.http = http_server

    def place(self, local: str, backend: str, name: str) -> tuple[str, dict[str, Any]]:
        """Copy ``local`` (a file or a directory) to ``backend`` as ``name``."""
        if backend == "local":
            return local, {}
        if backend == "s3":
            fs = fsspec.filesystem("s3", **self.s3.storage_options)
            key = f"{self.s3.bucket}/{name}"
            if os.path.isdir(local):
                fs.put(local.rstrip("/") + "/", key + "/", recursive=True)
            else:
                fs.put_file(local, key)
            fs.invalidate_cache()
            return f"s3://{key}", self.s3.storage_options
        if backend == "http":
            dest = os.path.join(self.http.root, name)
            if os.path.isdir(local):
                shutil.copytree(local, dest, dirs_exist_ok=True)
            else:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copyfile(local, dest)
            return self.http.url(name), {}
        raise ValueError(backend)

    def target(self, backend: str, name: str, tmp_path: Any) -> tuple[str, dict[str, Any]]:
        """A writable location on ``backend`` (HTTP is read-only)."""
        if backend == "local":
            return str(tmp_path / name), {}
        if backend == "s3":
            return f"s3://{self.s3.bucket}/{name}", self.s3.storage_options
        raise ValueError(f"{backend} is not writable")


def make_example_files(folder: Any, placer: Placer) -> dict[str, dict[str, Any]]:
    """Every format's example file, written locally once and placed on every backend.

    Returns ``{fmt: {backend: (url, storage_options)}}``; the local eager read of each is
    under ``[fmt]["expected"]``.
    """
    prefix = os.path.basename(str(folder))  # unique per module on the shared servers
    files: dict[str, dict[str, Any]] = {}
    for fmt, case in CASES.items():
        local = str(folder / f"example{case.ext}")
        write_example(local, fmt)
        files[fmt] = {b: placer.place(local, b, f"{prefix}/example{case.ext}") for b in BACKENDS}
        files[fmt]["expected"] = eager(local)
    return files
