"""lazyio: lazy, dask-native reading and streamed writing of HyperSpy .hspy/.zspy, .npy and
h5USID files, locally, remotely (fsspec) and on ``distributed`` clusters."""

from __future__ import annotations

from typing import Any

# makes lazyio.hspy, lazyio.zspy, lazyio.npy, lazyio.usid (and entry-point formats) importable
from lazyio import rsciio as _rsciio
from lazyio._api import load, save

# convert, fetch and info are bound eagerly: a lazy import of the submodule would shadow them
from lazyio.convert import convert
from lazyio.deferred import DeferredWrite, save_many
from lazyio.errors import (
    AccessDeniedError,
    CorruptChunkError,
    DiskFullError,
    ForeignTargetError,
    FormatError,
    LazyioConnectionError,
    LazyioError,
    LazyioWarning,
    MissingDirectoryError,
    NonUniformAxisError,
    RangeNotSupportedError,
    ResumeMismatchError,
    SourceNotFoundError,
    StaleFileError,
    TargetBusyError,
    TargetExistsError,
    UnknownFormatError,
    UnsafeFileError,
    UnsupportedError,
    VerificationError,
    WriteError,
)
from lazyio.fetch import fetch
from lazyio.handles import close_all
from lazyio.info import info
from lazyio.location import Location

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "CorruptChunkError",
    "DeferredWrite",
    "DiskFullError",
    "ForeignTargetError",
    "FormatError",
    "LazyioConnectionError",
    "LazyioError",
    "LazyioWarning",
    "Location",
    "MissingDirectoryError",
    "NonUniformAxisError",
    "RangeNotSupportedError",
    "ResumeMismatchError",
    "SourceNotFoundError",
    "StaleFileError",
    "TargetBusyError",
    "TargetExistsError",
    "UnknownFormatError",
    "UnsafeFileError",
    "UnsupportedError",
    "VerificationError",
    "WriteError",
    "__version__",
    "close_all",
    "convert",
    "fetch",
    "from_xarray",
    "info",
    "load",
    "memmap_distributed",
    "save",
    "save_many",
    "to_xarray",
]


def __getattr__(name: str) -> Any:
    # Format plugins import on first use, so `import lazyio` stays cheap.
    if name == "memmap_distributed":
        from lazyio.backends.raw.memmap import memmap_distributed

        return memmap_distributed
    if name == "hyperspy":  # lazyio.hyperspy without importing it first; HyperSpy stays unloaded
        import importlib

        return importlib.import_module("lazyio.hyperspy")
    if name in ("to_xarray", "from_xarray"):
        from lazyio import interop

        return getattr(interop, name)
    from lazyio.formats import format_names

    if name in format_names():  # the RosettaSciIO-compatible namespace of a format
        return _rsciio.namespace(name)
    raise AttributeError(f"module 'lazyio' has no attribute {name!r}")
