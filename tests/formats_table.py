"""The format table of the tests, declared once.

Every test module that runs over formats takes its names, extensions and capabilities from
here, and this table takes them from the registry of ``lazyio.formats``: what the tests
expect of a format is what its plugin declares. Only what the suite chooses (the storage
chunks it writes with) and how a format lays out its target are stated here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lazyio.formats import available_plugins


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


# the suite's own choices: storage chunks that cut the test signals into several chunks
SUITE_KWARGS: dict[str, dict[str, Any]] = {
    "hspy": {"chunks": (1, 5, 8, 6)}, "zspy": {"chunks": (1, 5, 8, 6)}, "npy": {}, "usid": {},
}
# formats whose default target is a folder rather than one file
DIRECTORY_FORMATS = frozenset({"zspy"})


def _from_plugin(name: str, plugin: Any) -> Format:
    caps = plugin.capabilities
    return Format(
        name=name,
        extension=plugin.extensions[0],
        keeps_axes=caps.keeps_axes,
        keeps_metadata=caps.keeps_metadata and (
            caps.metadata_kept is None or ("General", "title") in caps.metadata_kept),
        hyperspy_tree=caps.keeps_models and caps.keeps_metadata and caps.metadata_kept is None,
        directory=name in DIRECTORY_FORMATS,
        suite_kwargs=SUITE_KWARGS.get(name, {}),
    )


# every registered format, in the registry's (detection) order
FORMATS: dict[str, Format] = {
    name: _from_plugin(name, plugin) for name, plugin in available_plugins().items()
}

NAMES = list(FORMATS)
EXT = {name: f.extension for name, f in FORMATS.items()}
HYPERSPY = [name for name, f in FORMATS.items() if f.hyperspy_tree]

# Storage variants some tests treat as a kind of their own: name -> (format, save options).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"zspy-zip": ("zspy", {"store_type": "zip"})}
# every format followed by its variants (zspy, zspy-zip, ...)
KINDS = [kind for name in NAMES
         for kind in (name, *(v for v, (fmt, _) in VARIANTS.items() if fmt == name))]
SUFFIX = {**EXT, **{kind: EXT[fmt] for kind, (fmt, _) in VARIANTS.items()}}
KIND_KWARGS = {kind: kwargs for kind, (_, kwargs) in VARIANTS.items()}
FORMAT_OF = {**{name: name for name in NAMES}, **{kind: fmt for kind, (fmt, _) in VARIANTS.items()}}
HYPERSPY_KINDS = [kind for kind in KINDS if FORMATS[FORMAT_OF[kind]].hyperspy_tree]
FILE_KINDS = [kind for kind in KINDS if kind in VARIANTS or not FORMATS[kind].directory]
