"""``lazyio.load`` and ``lazyio.save``: resolve the location, pick the plugin, delegate."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

from lazyio.errors import reading
from lazyio.formats import detect_format, format_from_extension, get_plugin
from lazyio.location import Location, as_location

__all__ = ["load", "save"]


def _is_store_object(source: Any) -> bool:
    if isinstance(source, str | os.PathLike | Location):
        return False
    try:
        from zarr.abc.store import Store
    except ImportError:  # pragma: no cover - zarr is a dependency
        return False
    return isinstance(source, Store | MutableMapping)


def load(
    source: Any,
    *,
    format: str | None = None,
    lazy: bool = True,
    chunks: Any = "auto",
    storage_options: dict[str, Any] | None = None,
    **kwds: Any,
) -> list[dict[str, Any]]:
    """Open a file and return its signals as RosettaSciIO-style dictionaries.

    Parameters
    ----------
    source : str, os.PathLike, Location, zarr store or MutableMapping
        A local path, an fsspec URL (``s3://``, ``https://``, ``memory://``, ...), or for
        .zspy a zarr store or an fsspec mapping.
    format : {"hspy", "zspy", "npy", "usid"}, optional
        Skip detection. By default the format is detected from the content (HDF5
        superblock and ``file_format`` attribute, a USID main dataset, Zarr metadata or a
        zip of it, the ``.npy`` magic), then from the extension.
    lazy : bool, default True
        Return dask arrays whose tasks each read one chunk-aligned block. Opening reads
        metadata only. With ``False`` the data are read into numpy arrays.
    chunks : "auto", int, tuple or dict
        Dask chunks for lazy reads, rounded to whole storage chunks. ``"auto"`` groups
        storage chunks up to dask's ``array.chunk-size``.
    storage_options : dict, optional
        Passed to fsspec for URLs.
    **kwds
        Format-specific options (see each format's ``file_reader``), and two safety
        options. ``allow_external=False``: HDF5 external links, virtual datasets and
        external storage (which make HDF5 open other files named inside the file) raise
        :class:`~lazyio.errors.UnsafeFileError` unless this is True. ``untrusted=False``:
        with True, a local HDF5 file is first parsed in a child process, so a crash of
        the HDF5 library on a malformed file raises ``UnsafeFileError`` instead of
        killing the caller, and so does a child still parsing after 60 s (or after
        ``untrusted=<seconds>``): a loop in the library. Costs one Python start-up,
        about 0.2 s.

    Returns
    -------
    list of dict
        One dictionary per signal: ``data``, ``axes``, ``metadata``,
        ``original_metadata``, ``attributes``, ``package``, ``package_version`` (and
        ``models`` for hspy/zspy).
    """
    untrusted = kwds.pop("untrusted", False)
    if _is_store_object(source):
        return get_plugin(format or "zspy").read(source, lazy=lazy, chunks=chunks, **kwds)
    location = as_location(source, storage_options)
    if untrusted:
        # a number is the child's time limit in seconds
        _inspect_first(location, None if untrusted is True else float(untrusted))
    with reading(location):
        name = format or detect_format(location)
    return get_plugin(name).read(location, lazy=lazy, chunks=chunks, **kwds)


def _inspect_first(location: Location, timeout: float | None) -> None:
    from lazyio.backends.hdf5.safety import DEFAULT_TIMEOUT, inspect_untrusted
    from lazyio.errors import UnsupportedError
    from lazyio.formats.hspy import is_hdf5

    if location.isdir() or not location.exists():
        return  # a Zarr directory (or nothing, reported by the reader): no HDF5 parsing
    if not is_hdf5(location.read_head(8)):
        return  # only the HDF5 C library parses untrusted structure in-process
    if location.local_path is None:
        raise UnsupportedError(f"{location}: untrusted=True needs a local HDF5 file")
    inspect_untrusted(location.local_path, timeout or DEFAULT_TIMEOUT)


def save(
    target: Any,
    signal: Any,
    *,
    format: str | None = None,
    overwrite: bool = False,
    chunks: Any = None,
    show_progressbar: bool = True,
    storage_options: dict[str, Any] | None = None,
    **kwds: Any,
) -> None:
    """Write a signal dictionary (or a bare numpy/dask array) to a file.

    Dask arrays are streamed chunk by chunk with :func:`dask.array.store`; memory stays
    bounded by the chunk size times the number of workers.

    Parameters
    ----------
    target : str, os.PathLike, Location, zarr store or MutableMapping
        Where to write; a path or fsspec URL, or for .zspy a zarr store.
    signal : dict or array
        A RosettaSciIO-style signal dictionary, or an array (given default axes).
    format : {"hspy", "zspy", "npy", "usid"}, optional
        By default taken from the extension (``.hspy``/``.hdf5``, ``.zspy``, ``.npy``,
        ``.h5``).
    overwrite : bool, default False
        Replace an existing target. Without it an existing target raises
        :class:`~lazyio.errors.TargetExistsError` and nothing is written. A replaced local
        file is swapped in only once the new one is complete.
    chunks : tuple of int, True or None
        Storage chunks. ``None`` picks chunks holding at least one whole signal; ``True``
        lets h5py guess (hspy).
    show_progressbar : bool, default True
        Show a progress bar while data are written.
    storage_options : dict, optional
        Passed to fsspec for URLs.
    **kwds
        Format-specific options (``compression`` for hspy, ``compressor``,
        ``store_type`` and ``zarr_format`` for zspy, ...), and ``verify=True``: once
        written, re-read the target and compare it with the source chunk by chunk
        (BLAKE2b digests computed in dask tasks; the source is computed a second time).
        A mismatch deletes the written file and raises
        :class:`~lazyio.errors.VerificationError` naming the first differing chunk.
    """
    verify = bool(kwds.pop("verify", False))
    if _is_store_object(target):
        name = format or "zspy"
        get_plugin(name).write(
            target, signal, overwrite=overwrite, chunks=chunks,
            show_progressbar=show_progressbar, **kwds,
        )
        written: Any = target
    else:
        written = as_location(target, storage_options)
        name = format or format_from_extension(written)
        get_plugin(name).write(
            written, signal, overwrite=overwrite, chunks=chunks,
            show_progressbar=show_progressbar, **kwds,
        )
    if verify:
        from lazyio.verify import verify_written

        verify_written(written, signal, format=name)
