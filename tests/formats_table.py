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
    directory: bool = False  # written as a folder by default (not one file)
    suite_kwargs: dict[str, Any] = field(default_factory=dict)  # FormatTests.write_kwargs


FORMATS: dict[str, Format] = {
    "hspy": Format("hspy", ".hspy", keeps_axes=True, keeps_metadata=True, hyperspy_tree=True,
                   suite_kwargs={"chunks": (1, 5, 8, 6)}),
    "zspy": Format("zspy", ".zspy", keeps_axes=True, keeps_metadata=True, hyperspy_tree=True,
                   directory=True, suite_kwargs={"chunks": (1, 5, 8, 6)}),
    "npy": Format("npy", ".npy", keeps_axes=False, keeps_metadata=False, hyperspy_tree=False),
    "usid": Format("usid", ".h5", keeps_axes=True, keeps_metadata=True, hyperspy_tree=False),
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
FORMAT_OF = {**{name: name for name in NAMES}, **{kind: fmt for kind, (fmt, _) in VARIANTS.items()}}
HYPERSPY_KINDS = [kind for kind in KINDS if FORMATS[FORMAT_OF[kind]].hyperspy_tree]
FILE_KINDS = [kind for kind in KINDS if kind in VARIANTS or not FORMATS[kind].directory]
