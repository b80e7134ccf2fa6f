"""The format table of the tests, declared once.

Every test module that runs over formats takes its names, extensions and capabilities from
here (the registry of ``lazyio.formats`` will answer the same questions once it declares
capabilities; then this table reads from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Format:
    """One file format as the tests see it."""

    name: str
    extension: str
    keeps_axes: bool  # axis names, calibration and navigation flags survive a round trip
    keeps_metadata: bool  # the title survives a round trip
    hyperspy_tree: bool  # the whole HyperSpy tree: metadata, models, learning results
    suite_kwargs: dict[str, Any] = field(default_factory=dict)  # FormatTests.write_kwargs


FORMATS: dict[str, Format] = {
    "hspy": Format("hspy", ".hspy", True, True, True, {"chunks": (1, 5, 8, 6)}),
    "zspy": Format("zspy", ".zspy", True, True, True, {"chunks": (1, 5, 8, 6)}),
    "npy": Format("npy", ".npy", False, False, False),
    "usid": Format("usid", ".h5", True, True, False),
}

NAMES = list(FORMATS)
EXT = {name: f.extension for name, f in FORMATS.items()}
HYPERSPY = [name for name, f in FORMATS.items() if f.hyperspy_tree]

# Storage variants some tests treat as a kind of their own: name -> (format, save options).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"zspy-zip": ("zspy", {"store_type": "zip"})}
# every format followed by its variants: hspy, zspy, zspy-zip, npy, usid
KINDS = [kind for name in NAMES
         for kind in (name, *(v for v, (fmt, _) in VARIANTS.items() if fmt == name))]
SUFFIX = {**EXT, **{kind: EXT[fmt] for kind, (fmt, _) in VARIANTS.items()}}
KIND_KWARGS = {kind: kwargs for kind, (_, kwargs) in VARIANTS.items()}
