"""Format plugins: a registry, and detection from content first, then from the extension.

A plugin is a module with ``NAME``, ``EXTENSIONS`` and three functions::

    sniff(location: Location, head: bytes) -> bool
    read(source, *, lazy=True, chunks="auto", **kwds) -> list[dict]
    write(location, signal: dict, *, overwrite=False, chunks=None, show_progressbar=True,
          **kwds) -> None

``source`` is a :class:`~lazyio.location.Location`, or for zspy also a zarr store. Third-
party plugins register under the ``lazyio.formats`` entry-point group (name -> module).
"""

from __future__ import annotations

import functools
import importlib
import logging
from importlib.metadata import entry_points
from types import ModuleType

from lazyio.errors import SourceNotFoundError, UnknownFormatError
from lazyio.location import Location

__all__ = ["FORMATS", "detect_format", "get_plugin"]

_logger = logging.getLogger("lazyio")

# Detection order matters: a USID file is HDF5 too, so it is checked before hspy.
FORMATS: dict[str, str] = {
    "npy": "lazyio.formats.npy",
    "zspy": "lazyio.formats.zspy",
    "usid": "lazyio.formats.usid.plugin",
    "hspy": "lazyio.formats.hspy",
}

HEAD_BYTES = 512


@functools.cache
def _registry() -> dict[str, str]:
    # entry points are read once per process: scanning them costs ~5 ms per call
    found = dict(FORMATS)
    for ep in entry_points(group="lazyio.formats"):
        found.setdefault(ep.name, ep.value)
    return found


def get_plugin(name: str) -> ModuleType:
    """Import the plugin module for format ``name``."""
    registry = _registry()
    key = name.lower().lstrip(".")
    if key not in registry:
        raise UnknownFormatError(
            f"Unknown format {name!r}; lazyio knows {', '.join(sorted(registry))}"
        )
    return importlib.import_module(registry[key])


def available_plugins() -> dict[str, ModuleType]:
    """The plugins that import on this installation, in detection order."""
    plugins = {}
    for name in _registry():
        try:
            plugins[name] = get_plugin(name)
        except ImportError as err:
            _logger.debug("format plugin %s unavailable: %s", name, err)
    return plugins


def detect_format(location: Location) -> str:
    """Name the format of the file at ``location``: from its content, else its extension."""
    if not location.exists():
        raise SourceNotFoundError(f"No such file or directory: '{location}'")
    head = location.read_head(HEAD_BYTES)
    plugins = available_plugins()
    for name, plugin in plugins.items():
        if plugin.sniff(location, head):
            return name
    for name, plugin in plugins.items():
        if location.suffix in plugin.EXTENSIONS:
            return name
    raise UnknownFormatError(
        f"{location}: not a file lazyio can read (neither its content nor its extension "
        f"{location.suffix!r} matches {', '.join(plugins)})"
    )


def format_from_extension(location: Location) -> str:
    """Name the format that writes files with ``location``'s extension."""
    for name, plugin in available_plugins().items():
        if location.suffix in plugin.EXTENSIONS:
            return name
    raise UnknownFormatError(
        f"{location}: cannot tell the format from the extension {location.suffix!r}; pass "
        f"format= one of {', '.join(_registry())}"
    )
