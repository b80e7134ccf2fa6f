"""lazyio: lazy, dask-native reading and streamed writing of HyperSpy .hspy/.zspy, .npy and
h5USID files, locally, remotely (fsspec) and on ``distributed`` clusters."""

from __future__ import annotations

from typing import Any

from lazyio._api import load, save
from lazyio.errors import (
    CorruptChunkError,
    FormatError,
    LazyioError,
    LazyioWarning,
    NonUniformAxisError,
    SourceNotFoundError,
    TargetExistsError,
    UnknownFormatError,
    UnsupportedError,
)
from lazyio.handles import close_all
from lazyio.location import Location

__version__ = "0.1.0"

__all__ = [
    "CorruptChunkError",
    "FormatError",
    "LazyioError",
    "LazyioWarning",
    "Location",
    "NonUniformAxisError",
    "SourceNotFoundError",
    "TargetExistsError",
    "UnknownFormatError",
    "UnsupportedError",
    "__version__",
    "close_all",
    "load",
    "memmap_distributed",
    "save",
]


def __getattr__(name: str) -> Any:
    # Format modules import on first use, so `import lazyio` stays cheap.
    if name == "memmap_distributed":
        from lazyio.chunks.memmap import memmap_distributed

        return memmap_distributed
    if name in ("hspy", "zspy", "npy", "usid"):
        import importlib

        return importlib.import_module(f"lazyio.{name}")
    raise AttributeError(f"module 'lazyio' has no attribute {name!r}")
