"""HyperSpy as an entry point: signals in and out of lazyio, and lazyio as a HyperSpy format.

- :func:`load` opens a local path or any fsspec URL (``s3://``, ``https://``, ...) and
  returns HyperSpy signals, lazy by default: the remote reading ``hs.load`` lacks.
- :func:`save` writes a HyperSpy signal (lazy or not) with :func:`lazyio.save`, streamed
  and without computing a lazy signal's data first.
- :func:`register` adds ``"lazyio"`` to the list of file formats HyperSpy reads
  (RosettaSciIO's ``IO_PLUGINS``), so ``hs.load(path, file_format="lazyio")`` and
  ``s.save(path, file_format="lazyio")`` go through lazyio, with the format detected from
  the content as :func:`lazyio.load` does.

This module imports HyperSpy only when one of its functions is called, so ``import lazyio``
(and ``import lazyio.hyperspy``) stay free of it. It is not the HyperSpy *file* tree,
which lives in :mod:`lazyio.formats.hyperspy`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lazyio.deferred import DeferredWrite

__all__ = ["PLUGIN_NAME", "file_reader", "file_writer", "is_registered", "load", "register",
           "save", "to_signal", "unregister"]

#: the name HyperSpy knows lazyio by once :func:`register` has run
PLUGIN_NAME = "lazyio"

# keywords HyperSpy's hs.load hands every reader; lazyio has no use for them
_HYPERSPY_READER_KEYWORDS = ("show_progressbar",)


def _require_hyperspy() -> None:
    try:
        import hyperspy.io  # noqa: F401 - only its presence is checked here
    except ImportError as err:
        raise ImportError(
            "lazyio.hyperspy needs HyperSpy: pip install hyperspy (lazyio's tests cover "
            "HyperSpy 2.4 and 2.5)"
        ) from err


def _plugin_spec() -> dict[str, Any]:
    """lazyio's entry in RosettaSciIO's plugin list.

    HyperSpy lower-cases a file's extension before looking it up in every entry's
    ``file_extensions``; the extensions are listed in upper case so that lookup never
    matches lazyio: after :func:`register`, ``hs.load("x.hspy")`` still uses RosettaSciIO
    and only an explicit ``file_format="lazyio"`` picks lazyio. The first one names the
    file HyperSpy makes for ``s.save("name", file_format="lazyio")`` without extension.
    """
    return {
        "name": PLUGIN_NAME,
        "name_aliases": ["LazyIO"],
        "description": ("lazyio: lazy, streamed reading and writing of .hspy, .zspy, .npy "
                        "and h5USID files, the format detected from the content."),
        "full_support": False,
        "file_extensions": ["HSPY", "ZSPY", "NPY", "H5"],
        "default_extension": 0,
        "writes": True,
        "non_uniform_axis": True,
        "api": __name__,
    }


def _io_plugins() -> list[dict[str, Any]]:
    # The very list object hyperspy.io imported: appending to it is what HyperSpy sees.
    _require_hyperspy()
    from rsciio import IO_PLUGINS

    plugins: list[dict[str, Any]] = IO_PLUGINS
    return plugins


def register() -> None:
    """Make ``"lazyio"`` a file format HyperSpy knows by name.

    Afterwards ``hs.load(path, file_format="lazyio", lazy=True)`` reads .hspy, .zspy, .npy
    and h5USID files through :func:`lazyio.load` (format detected from the content), and
    ``s.save(path, file_format="lazyio")`` writes through :func:`lazyio.save` (format from
    the extension). HyperSpy's choice by extension is unchanged. Calling it again does
    nothing; nothing changes in HyperSpy until it is called.
    """
    plugins = _io_plugins()
    if not any(p.get("name") == PLUGIN_NAME for p in plugins):
        plugins.append(_plugin_spec())


def unregister() -> None:
    """Remove what :func:`register` added (nothing if it was not called)."""
    plugins = _io_plugins()
    plugins[:] = [p for p in plugins if p.get("name") != PLUGIN_NAME]


def is_registered() -> bool:
    """Whether :func:`register` has made ``"lazyio"`` a HyperSpy file format."""
    return any(p.get("name") == PLUGIN_NAME for p in _io_plugins())


def file_reader(filename: Any, lazy: bool = False, **kwds: Any) -> list[dict[str, Any]]:
    """HyperSpy's reader entry point (``hs.load(..., file_format="lazyio")``).

    Reads through :func:`lazyio.load`'s pipeline, the format detected from the content;
    eager unless ``lazy=True``, as HyperSpy's readers are. Other keywords are
    :func:`lazyio.load`'s and the detected format's options.
    """
    from lazyio._api import read_with
    from lazyio.rsciio import READER_KEYWORDS

    for name in _HYPERSPY_READER_KEYWORDS:
        kwds.pop(name, None)
    return read_with(
        "file_reader", filename, format=kwds.pop("format", None), lazy=lazy,
        chunks=kwds.pop("chunks", "auto"), storage_options=kwds.pop("storage_options", None),
        untrusted=kwds.pop("untrusted", False),
        allow_external=kwds.pop("allow_external", False), options=kwds,
        own_keywords=READER_KEYWORDS | {"format"},
    )


def file_writer(filename: Any, signal: Any, **kwds: Any) -> None:
    """HyperSpy's writer entry point (``s.save(..., file_format="lazyio")``).

    Writes through :func:`lazyio.save`'s pipeline, the format from the extension (or
    ``format=``). HyperSpy has already asked about an existing file, so it is replaced,
    as by RosettaSciIO's writers.
    """
    from lazyio._api import write_with
    from lazyio.rsciio import WRITER_KEYWORDS

    write_with(
        "file_writer", filename, signal, format=kwds.pop("format", None),
        overwrite=kwds.pop("overwrite", True), chunks=kwds.pop("chunks", None),
        show_progressbar=kwds.pop("show_progressbar", True),
        storage_options=kwds.pop("storage_options", None),
        verify=kwds.pop("verify", False), compute=kwds.pop("compute", True), options=kwds,
        own_keywords=WRITER_KEYWORDS | {"format"},
    )


def to_signal(signal: dict[str, Any], *, lazy: bool | None = None) -> Any:
    """A signal dictionary (as :func:`lazyio.load` returns) as a HyperSpy signal.

    Parameters
    ----------
    signal : dict
        A signal dictionary; its data array becomes the signal's, not copied.
    lazy : bool, optional
        Make a lazy signal; by default lazy when the data is a dask array.

    Returns
    -------
    hyperspy.signal.BaseSignal
        The class HyperSpy picks for the signal type and dimensions (``LazySignal2D``,
        ...), with axes, metadata, markers, models and learning results.
    """
    import dask.array as da

    _require_hyperspy()
    from hyperspy.io import dict2signal

    from lazyio.signals import as_signal_dict

    d = as_signal_dict(signal)
    if lazy is None:
        lazy = isinstance(d["data"], da.Array)
    attributes = dict(d.get("attributes") or {})
    attributes["_lazy"] = bool(lazy)
    learning = attributes.pop("learning_results", None)
    d["attributes"] = attributes
    # dict2signal edits the metadata it is given; the caller's dictionary stays as it was
    d["metadata"] = dict(d["metadata"])
    out = dict2signal(d, lazy=lazy)
    if learning and hasattr(out, "learning_results"):
        out.learning_results.__dict__.update(learning)
    return out


def _is_signal_dict(d: Any) -> bool:
    # a file's standalone models come as {name: model} beside the signals; hs.load drops
    # them too
    return isinstance(d, dict) and "data" in d


def load(
    path_or_url: Any,
    *,
    lazy: bool = True,
    storage_options: dict[str, Any] | None = None,
    **kw: Any,
) -> Any:
    """Open a file as HyperSpy signals, from a local path or any fsspec URL.

    Parameters
    ----------
    path_or_url : str, os.PathLike or Location
        A local path or an fsspec URL (``s3://``, ``https://``, ``memory://``, ...) of a
        .hspy, .zspy, .npy or h5USID file; the format is detected from the content.
    lazy : bool, default True
        Return lazy signals (dask arrays reading chunk by chunk); ``False`` reads the data.
    storage_options : dict, optional
        Passed to fsspec for URLs (``{"anon": True}``, endpoint, credentials, ...).
    **kw
        Any other keyword of :func:`lazyio.load` (``format``, ``chunks``, ``untrusted``,
        ...) or of the detected format.

    Returns
    -------
    hyperspy.signal.BaseSignal or list of them
        One signal when the file holds one, else a list, as ``hs.load`` returns.

    Examples
    --------
    >>> s = lazyio.hyperspy.load("s3://bucket/scan.zspy",             # doctest: +SKIP
    ...                          storage_options={"anon": True})
    >>> s.inav[:10, :10].sum(axis=(2, 3)).compute()                    # doctest: +SKIP
    """
    from lazyio._api import is_store_object
    from lazyio._api import load as lazyio_load
    from lazyio.location import as_location

    dicts = lazyio_load(path_or_url, lazy=lazy, storage_options=storage_options, **kw)
    signals = [to_signal(d, lazy=lazy) for d in dicts if _is_signal_dict(d)]
    local = None if is_store_object(path_or_url) else as_location(path_or_url).local_path
    if local is not None:
        # what hs.load sets: s.save() without a name writes beside the source
        folder, name = os.path.split(os.path.abspath(local))
        stem, ext = os.path.splitext(name)
        for s in signals:
            for prefix in ("", "original_"):
                s.tmp_parameters.set_item(f"{prefix}folder", folder)
                s.tmp_parameters.set_item(f"{prefix}filename", stem)
                s.tmp_parameters.set_item(f"{prefix}extension", ext)
    return signals[0] if len(signals) == 1 else signals


def save(signal: Any, target: Any, **kw: Any) -> DeferredWrite | None:
    """Write a HyperSpy signal (lazy or not) with :func:`lazyio.save`.

    A lazy signal is written chunk by chunk without computing it first, so memory stays
    bounded by chunk size x workers. Axes, metadata (markers included), original
    metadata, models and learning results are kept where the format holds them.

    Parameters
    ----------
    signal : hyperspy.signal.BaseSignal
        The signal to write.
    target : str, os.PathLike, Location or zarr store
        A local path or fsspec URL; the format comes from the extension (or ``format=``).
    **kw
        Keywords of :func:`lazyio.save` (``overwrite``, ``chunks``, ``storage_options``,
        ``verify``, ``compute``, ...) and of the target format.

    Returns
    -------
    None, or with ``compute=False`` the delayed write (see :func:`lazyio.save`)
    """
    from lazyio._api import save as lazyio_save

    return lazyio_save(target, signal, **kw)
