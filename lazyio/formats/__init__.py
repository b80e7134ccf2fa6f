"""Format plugins: the :class:`FormatPlugin` contract, the registry, and detection.

A format is one :class:`FormatPlugin` object: a name, the extensions it writes, what it can
hold (:class:`Capabilities`), the keywords its reader and writer take, and five methods
(``sniff``, ``read``, ``write``, ``describe``, ``check_write``). :func:`lazyio.load` and
:func:`lazyio.save` own everything around them (detection, safety options, overwrite,
temporaries, uploads, verification): a plugin reads the source it is given and writes into
the local path or store it is given.

The registry holds the built-in plugins and those of the ``lazyio.formats`` entry-point group
(an entry point names a plugin object, a plugin class, or a module with a ``PLUGIN``).
Plugins are imported on first use, so ``import lazyio`` stays light; :func:`refresh` re-reads
the entry points.
"""

from __future__ import annotations

import abc
import functools
import importlib
import logging
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from lazyio.errors import FormatError, LazyioError, UnknownFormatError, not_found
from lazyio.location import Location

if TYPE_CHECKING:
    from lazyio.backends import StorageLayout
    from lazyio.backends.chunking import Chunks

__all__ = [
    "BUILTINS",
    "BUILTIN_EXTENSIONS",
    "Capabilities",
    "FileDescription",
    "FormatPlugin",
    "WriteMode",
    "available_plugins",
    "OptionError",
    "check_axes",
    "check_bool_option",
    "check_choice_option",
    "check_scaleoffset_option",
    "detect_format",
    "format_from_extension",
    "format_names",
    "get_plugin",
    "refresh",
    "store_plugin",
]

_logger = logging.getLogger("lazyio")

# Detection order matters: a USID file is HDF5 too, so it is checked before hspy.
BUILTINS: dict[str, str] = {
    "npy": "lazyio.formats.npy:PLUGIN",
    "zspy": "lazyio.formats.zspy:PLUGIN",
    "usid": "lazyio.formats.usid.plugin:PLUGIN",
    "hspy": "lazyio.formats.hspy:PLUGIN",
}
# The extensions of the built-in plugins, so that detection can sniff a file's own format
# first without importing the others (zspy's import of zarr costs 0.6 s); a test checks
# this against each plugin's ``extensions``.
BUILTIN_EXTENSIONS: dict[str, str] = {
    ".npy": "npy", ".zspy": "zspy", ".h5": "usid", ".hspy": "hspy", ".hdf5": "hspy",
}
ENTRY_POINT_GROUP = "lazyio.formats"
HEAD_BYTES = 512

RemoteWrite = Literal["upload", "temporary", "in_place"]
WriteMode = Literal["create", "update", "append"]
UntrustedGuard = Callable[[Location, bytes, float | None], None]


@dataclass(frozen=True)
class Capabilities:
    """What a format can hold and how it can be written; the pipeline and ``convert`` read
    these instead of testing format names.

    Attributes
    ----------
    keeps_axes : bool
        Axis names, units, scales, offsets and navigation roles survive a round trip.
    keeps_metadata : bool
        The ``metadata`` tree survives (see ``metadata_kept`` for a partial keep).
    metadata_kept : frozenset of (str, str), optional
        Only these ``(group, key)`` entries of ``metadata`` are kept as such; the rest is
        stored as ``metadata_loss`` says. ``None``: all of it.
    metadata_loss : str
        Words naming what a partial keep loses, for the warning of :func:`lazyio.convert`.
    keeps_original_metadata, keeps_models, keeps_learning_results : bool
        The ``original_metadata`` tree, HyperSpy models, learning results survive.
    accepts_store_objects : bool
        Zarr stores and mappings are accepted as sources and targets.
    remote_write : {"upload", "temporary", "in_place"}
        How a remote target is written: locally, then uploaded whole (HDF5 cannot be
        written through a byte stream); streamed into a temporary object then moved into
        place; or written in place after the old target is removed (a directory store,
        where a move would copy every object).
    supports_metadata_update : bool
        ``write_dataset=False`` rewrites metadata and axes of an existing target in place.
    target_chunk_bytes : int, optional
        Size of the default storage chunks; ``None`` for an unchunked format.
    nd_storage_chunks : bool
        Storage chunks have one entry per axis of the signal (``False``: the format stores
        another shape, e.g. USID's 2-D matrix, and ``chunks`` describes that).
    splits_fields : bool
        A structured dtype is read back as one signal per field.
    """

    keeps_axes: bool = True
    keeps_metadata: bool = True
    metadata_kept: frozenset[tuple[str, str]] | None = None
    metadata_loss: str = "metadata"
    keeps_original_metadata: bool = True
    keeps_models: bool = True
    keeps_learning_results: bool = True
    accepts_store_objects: bool = False
    remote_write: RemoteWrite = "upload"
    supports_metadata_update: bool = False
    target_chunk_bytes: int | None = None
    nd_storage_chunks: bool = True
    splits_fields: bool = False

    @property
    def supports_remote_write(self) -> bool:
        """Whether remote targets are written through fsspec, without a local copy."""
        return self.remote_write != "upload"


@dataclass(frozen=True)
class FileDescription:
    """What :meth:`FormatPlugin.describe` returns: the spec version and, for each signal
    :meth:`FormatPlugin.read` returns (in the same order), how its array is stored."""

    spec_version: str | None
    layouts: list[StorageLayout] = field(default_factory=list)


class FormatPlugin(abc.ABC):
    """The contract every format implements (built-in or from an entry point).

    Class attributes declare the format; the methods do the format-specific work only.
    ``read_options`` and ``write_options`` name every format-specific keyword the reader
    and writer accept: :func:`lazyio.load` and :func:`lazyio.save` refuse any other with a
    ``TypeError``. ``reader_positional`` and ``writer_positional`` give the order of the
    positional parameters of the RosettaSciIO-compatible ``file_reader`` (after
    ``filename, lazy``) and ``file_writer`` (after ``filename, signal``).
    """

    name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]
    description: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    read_options: ClassVar[frozenset[str]] = frozenset()
    write_options: ClassVar[frozenset[str]] = frozenset()
    reader_positional: ClassVar[tuple[str, ...]] = ()
    writer_positional: ClassVar[tuple[str, ...]] = ()
    # read options lazyio.info uses (e.g. describe a dimension rather than warn about it)
    describe_read_options: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    @abc.abstractmethod
    def sniff(self, location: Location, head: bytes) -> bool:
        """Whether the file at ``location`` (whose first bytes are ``head``) is of this
        format, from its content. A sniffer that raises counts as "no"."""

    @abc.abstractmethod
    def read(
        self, source: Any, *, lazy: bool = True, chunks: Chunks = "auto",
        allow_external: bool = False,
    ) -> list[dict[str, Any]]:
        """Every signal of ``source`` (a Location, or a store object when
        ``accepts_store_objects``) as RosettaSciIO-style dictionaries.

        A plugin adds its ``read_options`` as keyword-only parameters with defaults."""

    @abc.abstractmethod
    def write(
        self, target: Any, signal: dict[str, Any], *, chunks: Chunks = None,
        show_progressbar: bool = True,
    ) -> None:
        """Write ``signal`` (a complete signal dictionary) into ``target``; a plugin adds
        its ``write_options`` as keyword-only parameters with defaults.

        ``target`` is a Location the pipeline chose (a fresh temporary path, a remote
        location, or the existing target for an in-place update or append) or a store
        object. The plugin neither checks for an existing target nor renames anything.
        """

    @abc.abstractmethod
    def describe(self, source: Location) -> FileDescription:
        """The spec version and the storage layout of each signal, from metadata only."""

    def check_write(
        self, target: Any, signal: dict[str, Any], options: Mapping[str, Any]
    ) -> None:
        """Refuse, before anything is written, option values or data this format cannot
        write to ``target`` (the final target, not a temporary). ``ValueError`` or
        ``TypeError`` for bad values, a LazyioError naming the target otherwise.

        The default refuses axes that contradict the data (:func:`check_axes`); a plugin
        that overrides this calls it too."""
        check_axes(target, signal)

    def check_read(self, options: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Refuse bad read option values before the file is opened."""

    def write_mode(self, options: Mapping[str, Any]) -> WriteMode:
        """How these write options treat an existing target.

        ``"create"``: a new target replaces it (subject to ``overwrite``); ``"update"``: the
        existing target is changed in place and must exist; ``"append"``: the existing
        target is added to in place, or created when missing.
        """
        if self.capabilities.supports_metadata_update and options.get("write_dataset") is False:
            return "update"
        return "create"

    def untrusted_guard(self) -> UntrustedGuard | None:
        """What ``load(..., untrusted=True)`` runs before detection opens the file: a
        function that parses, in a child process, whatever this format's library would
        parse in-process. Formats sharing a library return the same function, so it runs
        once per file. Default: none."""
        return None

    def __repr__(self) -> str:
        return f"<lazyio format plugin {self.name!r}>"


class OptionError(LazyioError, TypeError, ValueError):
    """A format option of the wrong type (``write_dataset="yes"``).

    Both a ``TypeError``, as Python functions raise for a wrong type, and a ``ValueError``,
    as RosettaSciIO raises for these options, so either ``except`` written against one of
    them keeps working."""


def check_bool_option(name: str, value: Any, where: object = None) -> None:
    """Refuse an option that must be ``True`` or ``False`` (``None``: not given).

    Raises
    ------
    OptionError
        A ``TypeError`` and a ``ValueError``, naming ``where`` (the target) and the option.
    """
    if value is not None and not isinstance(value, bool | np.bool_):
        prefix = f"{where}: " if where is not None else ""
        raise OptionError(f"{prefix}{name} must be True or False, not {value!r}")


def check_scaleoffset_option(value: Any, where: object = None) -> None:
    """Refuse an HDF5 ``scaleoffset`` that is neither ``None``, a bool nor an integer >= 0
    (h5py would only fail once the file exists).

    Raises
    ------
    OptionError
        A ``TypeError`` and a ``ValueError``, naming ``where`` and the option.
    """
    if value is None or isinstance(value, bool | np.bool_):
        return
    if not isinstance(value, int | np.integer) or value < 0:
        prefix = f"{where}: " if where is not None else ""
        raise OptionError(f"{prefix}scaleoffset must be True, False or an integer >= 0, "
                          f"not {value!r}")


def check_choice_option(
    name: str, value: Any, choices: tuple[Any, ...], where: object = None
) -> None:
    """Refuse an option whose value is not one of ``choices`` (``None``: not given).

    Raises
    ------
    ValueError
        Naming ``where`` (the target), the option and the choices.
    """
    try:
        known = value is None or (value in choices and not isinstance(value, bool))
    except (TypeError, ValueError):  # e.g. an array compared with a string
        known = False
    if known:
        return
    prefix = f"{where}: " if where is not None else ""
    raise ValueError(
        f"{prefix}{name} must be one of {', '.join(repr(c) for c in choices)}, not {value!r}"
    )


def check_axes(target: object, signal: Mapping[str, Any]) -> None:
    """Refuse, before anything is written, axes that contradict the data: an axis whose
    ``size`` (or non-uniform ``axis`` vector) disagrees with the data's length along it.

    Such a file would be read back with the data's shape winning and a warning; writing
    it is a mistake of the caller's, so every built-in writer refuses it.

    Raises
    ------
    FormatError
        A ``ValueError``, naming ``target`` and the axis.
    """
    shape = tuple(getattr(signal.get("data"), "shape", ()))
    for i, axis in enumerate(signal.get("axes") or ()):
        if i >= len(shape) or not isinstance(axis, Mapping):
            break
        try:
            n = operator.index(shape[i])
        except TypeError:  # a dask array of unknown length along this axis
            continue
        label = f"axis {i}" + (f" ({axis['name']!r})" if axis.get("name") else "")
        vector = axis.get("axis")
        sized = hasattr(vector, "__len__") and getattr(vector, "ndim", 1) == 1
        if vector is not None and sized and len(vector) != n:
            raise FormatError(
                f"{target}: {label} has {len(vector)} values but the data have {n} "
                "elements along it; nothing was written"
            )
        size = axis.get("size")
        if size is None or isinstance(size, bool):
            continue
        try:
            size = operator.index(size)
        except TypeError:
            whole = isinstance(size, float) and size.is_integer()
            if not whole:
                raise FormatError(
                    f"{target}: {label} has size {size!r}, not a whole number; nothing "
                    "was written"
                ) from None
            size = int(size)
        if size != n:
            raise FormatError(
                f"{target}: {label} says size {size} but the data have {n} elements along "
                "it; nothing was written"
            )


# --------------------------------------------------------------------------- the registry


def _entry_points() -> list[Any]:
    """The installed ``lazyio.formats`` entry points (patched in tests)."""
    return list(entry_points(group=ENTRY_POINT_GROUP))


@functools.cache
def _references() -> dict[str, Any]:
    # entry points are read once per process (scanning them costs ~5 ms); refresh() re-reads
    found: dict[str, Any] = dict(BUILTINS)
    for ep in _entry_points():
        if ep.name.lower() in found:
            _logger.debug("entry point %s ignored: the format name is taken", ep)
            continue
        found[ep.name.lower()] = ep
    return found


_loaded: dict[str, FormatPlugin] = {}


def refresh() -> None:
    """Forget the registry's entry points and loaded plugins; re-read them on next use."""
    _references.cache_clear()
    _loaded.clear()


def format_names() -> list[str]:
    """Every registered format name, in detection order, without importing any plugin."""
    return list(_references())


def _as_plugin(obj: Any, where: str) -> FormatPlugin:
    if isinstance(obj, ModuleType):
        obj = getattr(obj, "PLUGIN", None)
    if isinstance(obj, type) and issubclass(obj, FormatPlugin):
        obj = obj()
    if not isinstance(obj, FormatPlugin):
        raise TypeError(f"{where} is not a lazyio FormatPlugin (got {type(obj).__name__})")
    return obj


def _load(name: str, reference: Any) -> FormatPlugin:
    if isinstance(reference, str):
        module, _, attr = reference.partition(":")
        obj: Any = importlib.import_module(module)
        if attr:
            obj = getattr(obj, attr)
        return _as_plugin(obj, reference)
    return _as_plugin(reference.load(), f"entry point {reference.value!r}")


def get_plugin(name: str) -> FormatPlugin:
    """The plugin of format ``name`` (``"hspy"``, ``".hspy"`` and ``"HSPY"`` alike).

    Raises
    ------
    UnknownFormatError
        No such format, or its plugin cannot be loaded (the error says why).
    """
    key = str(name).lower().lstrip(".")
    if key in _loaded:
        return _loaded[key]
    # a built-in name wins over entry points, so it needs no scan of them (~80 ms)
    reference = BUILTINS.get(key)
    if reference is None:
        references = _references()
        if key not in references:
            raise UnknownFormatError(
                f"Unknown format {name!r}; lazyio knows {', '.join(references)}"
            )
        reference = references[key]
    try:
        plugin = _load(key, reference)
    except (ImportError, AttributeError, TypeError) as err:
        raise UnknownFormatError(f"The {key!r} format plugin cannot be loaded: {err}") from err
    _loaded[key] = plugin
    return plugin


def available_plugins() -> dict[str, FormatPlugin]:
    """The plugins that load on this installation, in detection order."""
    plugins = {}
    for name in _references():
        try:
            plugins[name] = get_plugin(name)
        except UnknownFormatError as err:
            _logger.debug("format plugin %s unavailable: %s", name, err)
    return plugins


def _sniffs(plugin: FormatPlugin, location: Location, head: bytes) -> bool:
    try:
        return bool(plugin.sniff(location, head))
    except Exception as err:  # noqa: BLE001 - a broken sniffer must not stop detection
        _logger.debug("format %s: sniffing %s raised %r; skipped", plugin.name, location, err)
        return False


def detect_format(location: Location) -> str:
    """Name the format of the file at ``location``: from its content, else its extension.

    The format named like the extension (``.hspy`` -> ``hspy``), or the built-in format
    writing that extension (``.h5`` -> ``usid``), sniffs first, so that a file with its
    usual extension imports its own plugin only (``lazyio info`` stays fast; the Zarr
    plugin alone imports zarr, 0.6 s); the others sniff in registry order after it.
    """
    if not location.exists():
        raise not_found(location)
    head = location.read_head(HEAD_BYTES)
    named = location.suffix.lstrip(".")
    if named not in BUILTINS:
        named = BUILTIN_EXTENSIONS.get(location.suffix.lower(), named)
    if named in BUILTINS or named in _references():
        try:
            plugin = get_plugin(named)
        except UnknownFormatError as err:
            _logger.debug("format plugin %s unavailable: %s", named, err)
        else:
            if _sniffs(plugin, location, head):
                return named
    plugins = available_plugins()
    for name, plugin in plugins.items():
        if name != named and _sniffs(plugin, location, head):
            return name
    for name, plugin in plugins.items():
        if location.suffix in plugin.extensions:
            return name
    raise UnknownFormatError(
        f"{location}: not a file lazyio can read (neither its content nor its extension "
        f"{location.suffix!r} matches {', '.join(plugins)})"
    )


def format_from_extension(location: Location) -> str:
    """Name the format that writes files with ``location``'s extension."""
    for name, plugin in available_plugins().items():
        if location.suffix in plugin.extensions:
            return name
    raise UnknownFormatError(
        f"{location}: cannot tell the format from the extension {location.suffix!r}; pass "
        f"format= one of {', '.join(_references())}"
    )


def store_plugin(format: str | None = None) -> FormatPlugin:
    """The plugin for a zarr store or mapping: ``format`` if given, else the one format
    that accepts store objects."""
    if format is not None:
        plugin = get_plugin(format)
        if not plugin.capabilities.accepts_store_objects:
            raise UnknownFormatError(
                f"the {plugin.name} format reads and writes files, not store objects"
            )
        return plugin
    accepting = [p for p in available_plugins().values()
                 if p.capabilities.accepts_store_objects]
    if len(accepting) != 1:
        raise UnknownFormatError(
            "cannot tell the format of a store object; pass format= one of "
            f"{', '.join(p.name for p in accepting) or '(none registered)'}"
        )
    return accepting[0]
