"""RosettaSciIO-compatible ``file_reader`` / ``file_writer`` for every registered format.

``lazyio.hspy``, ``lazyio.zspy``, ``lazyio.npy``, ``lazyio.usid`` (and ``lazyio.<name>`` for
a format registered through an entry point) are namespaces built here, importable as
modules (``from lazyio.hspy import file_reader``) and usable wherever RosettaSciIO plugin
modules are (``hs.load(path, reader=lazyio.hspy)``). Their functions are thin layers over
the pipelines of :func:`lazyio.load` and :func:`lazyio.save`, so safety options
(``untrusted=``, ``allow_external=``), ``verify=`` and keyword checking behave the same on
both paths. As in RosettaSciIO, ``file_reader`` reads eagerly by default and ``file_writer``
replaces an existing file.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from lazyio._api import read_with, write_with
from lazyio.formats import format_names, get_plugin
from lazyio.location import Location

__all__ = ["file_reader", "file_writer", "namespace"]

READER_KEYWORDS = frozenset({"lazy", "chunks", "storage_options", "untrusted",
                             "allow_external"})
WRITER_KEYWORDS = frozenset({"overwrite", "chunks", "show_progressbar", "storage_options",
                             "verify", "compute"})


def _name_positional(
    caller: str, names: Sequence[str], args: tuple[Any, ...], kwds: dict[str, Any]
) -> dict[str, Any]:
    if len(args) > len(names):
        raise TypeError(f"{caller}() takes at most {len(names) + 2} positional arguments "
                        f"({len(args) + 2} given)")
    for name, value in zip(names, args, strict=False):
        if name in kwds:
            raise TypeError(f"{caller}() got multiple values for argument {name!r}")
        kwds[name] = value
    return kwds


def file_reader(
    format: str, filename: Any, lazy: bool = False, *args: Any, **kwds: Any
) -> list[dict[str, Any]]:
    """Read ``filename`` as ``format`` through :func:`lazyio.load`'s pipeline, eagerly by
    default; extra positional arguments follow the plugin's ``reader_positional``."""
    plugin = get_plugin(format)
    kwds = _name_positional("file_reader", plugin.reader_positional, args, kwds)
    return read_with(
        "file_reader", filename, format=plugin.name, lazy=lazy,
        chunks=kwds.pop("chunks", "auto"), storage_options=kwds.pop("storage_options", None),
        untrusted=kwds.pop("untrusted", False),
        allow_external=kwds.pop("allow_external", False), options=kwds,
        own_keywords=READER_KEYWORDS,
    )


def file_writer(format: str, filename: Any, signal: Any, *args: Any, **kwds: Any) -> None:
    """Write ``signal`` to ``filename`` as ``format`` through :func:`lazyio.save`'s
    pipeline, replacing an existing file unless ``overwrite=False``; extra positional
    arguments follow the plugin's ``writer_positional``."""
    plugin = get_plugin(format)
    kwds = _name_positional("file_writer", plugin.writer_positional, args, kwds)
    write_with(
        "file_writer", filename, signal, format=plugin.name,
        overwrite=kwds.pop("overwrite", True), chunks=kwds.pop("chunks", None),
        show_progressbar=kwds.pop("show_progressbar", True),
        storage_options=kwds.pop("storage_options", None),
        verify=kwds.pop("verify", False), compute=kwds.pop("compute", True), options=kwds,
        own_keywords=WRITER_KEYWORDS,
    )


def _populate(module: ModuleType, name: str) -> None:
    plugin = get_plugin(name)

    def reader(filename: Any, lazy: bool = False, *args: Any, **kwds: Any) -> list[dict[str, Any]]:
        return file_reader(plugin.name, filename, lazy, *args, **kwds)

    def writer(filename: Any, signal: Any, *args: Any, **kwds: Any) -> None:
        file_writer(plugin.name, filename, signal, *args, **kwds)

    def read(source: Any, **kwds: Any) -> list[dict[str, Any]]:
        return read_with(
            "read", source, format=plugin.name, lazy=kwds.pop("lazy", True),
            chunks=kwds.pop("chunks", "auto"),
            storage_options=kwds.pop("storage_options", None),
            untrusted=kwds.pop("untrusted", False),
            allow_external=kwds.pop("allow_external", False), options=kwds,
        )

    def write(target: Any, signal: Any, **kwds: Any) -> None:
        write_with(
            "write", target, signal, format=plugin.name,
            overwrite=kwds.pop("overwrite", False), chunks=kwds.pop("chunks", None),
            show_progressbar=kwds.pop("show_progressbar", True),
            storage_options=kwds.pop("storage_options", None),
            verify=kwds.pop("verify", False), compute=kwds.pop("compute", True),
            options=kwds,
        )

    def sniff(location: Location, head: bytes) -> bool:
        return plugin.sniff(location, head)

    positional = ", ".join(plugin.reader_positional)
    reader.__doc__ = (
        f"RosettaSciIO-compatible reader of {plugin.description or plugin.name}: "
        f":func:`lazyio.load` with ``format={plugin.name!r}``, eager by default"
        + (f"; positional arguments after ``lazy``: {positional}" if positional else "")
        + f".\n\nFormat options: {', '.join(sorted(plugin.read_options)) or 'none'}."
    )
    positional = ", ".join(plugin.writer_positional)
    writer.__doc__ = (
        f"RosettaSciIO-compatible writer of {plugin.description or plugin.name}: "
        f":func:`lazyio.save` with ``format={plugin.name!r}``, replacing an existing file"
        + (f"; positional arguments after ``signal``: {positional}" if positional else "")
        + f".\n\nFormat options: {', '.join(sorted(plugin.write_options)) or 'none'}."
    )
    read.__doc__ = f":func:`lazyio.load` with ``format={plugin.name!r}``."
    write.__doc__ = f":func:`lazyio.save` with ``format={plugin.name!r}``."
    sniff.__doc__ = type(plugin).sniff.__doc__
    for func, attr in ((reader, "file_reader"), (writer, "file_writer"), (read, "read"),
                       (write, "write"), (sniff, "sniff")):
        func.__name__ = attr
        func.__qualname__ = attr
        func.__module__ = module.__name__
        setattr(module, attr, func)
    module.__doc__ = (f"{plugin.description or plugin.name}: RosettaSciIO-compatible "
                      "functions over lazyio.load and lazyio.save.")
    # through the namespace: a module's attributes are its __dict__, which a type checker
    # only knows for modules it can see
    vars(module).update(
        NAME=plugin.name, EXTENSIONS=plugin.extensions, plugin=plugin,
        __all__=["file_reader", "file_writer", "read", "sniff", "write"],
    )


class _NamespaceLoader(importlib.abc.Loader):
    def __init__(self, name: str) -> None:
        self.name = name

    def create_module(self, spec: Any) -> None:
        return None  # a plain module

    def exec_module(self, module: ModuleType) -> None:
        _populate(module, self.name)


class _NamespaceFinder(importlib.abc.MetaPathFinder):
    """Makes ``lazyio.<format>`` importable for every registered format."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        package, _, name = fullname.partition(".")
        if package != "lazyio" or not name or "." in name or name not in format_names():
            return None
        return importlib.util.spec_from_loader(fullname, _NamespaceLoader(name))


def namespace(name: str) -> ModuleType:
    """The ``lazyio.<name>`` namespace of format ``name`` (``file_reader``,
    ``file_writer``, ``read``, ``write``, ``sniff``)."""
    plugin = get_plugin(name)  # an unknown name raises UnknownFormatError
    return importlib.import_module(f"lazyio.{plugin.name}")


# Last on the path: lazyio's real submodules are always found first.
if not any(isinstance(f, _NamespaceFinder) for f in sys.meta_path):
    sys.meta_path.append(_NamespaceFinder())
