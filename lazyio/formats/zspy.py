"""HyperSpy's Zarr format (``.zspy``): directory, zip or any zarr store; Zarr format 2 or 3.

Zarr format 2 is written by default so today's HyperSpy (zarr 2) opens the files;
``zarr_format=3`` (with optional sharding) on request. Files are read with zarr-python 3,
except Zarr v2 object arrays (ragged data), which lazyio decodes itself.
"""

from __future__ import annotations

import logging
import os
import zipfile
from typing import Any

import zarr
from zarr.storage import LocalStore

from lazyio import handles
from lazyio._api import save
from lazyio.backends.atomic import atomic_path, remove_path
from lazyio.backends.zarr.codecs import default_compressor
from lazyio.backends.zarr.stores import FreshStore, StoreSpec, node_kind, open_store
from lazyio.backends.zarr.targets import zarr_target
from lazyio.errors import (
    FormatError,
    LazyioError,
    SourceNotFoundError,
    TargetExistsError,
    UnsupportedError,
    reading,
)
from lazyio.formats.hyperspy.signal import read_file_tree, write_signal_tree
from lazyio.formats.hyperspy.writer import ArrayWriter
from lazyio.formats.hyperspy.zarr_node import ZarrNode
from lazyio.location import Location, as_location
from lazyio.signals import as_signal_dict, signal_axes_indices

__all__ = ["file_reader", "file_writer", "read", "sniff", "write"]

NAME = "zspy"
EXTENSIONS = (".zspy",)
FILE_FORMAT = "ZSpy"
ZIP_MAGIC = b"PK\x03\x04"
# Chunks of a few MB holding whole signals: one spectrum or pattern stays a cheap read.
TARGET_CHUNK_BYTES = 8 * 2**20

_logger = logging.getLogger("lazyio")


def _is_zip(location: Location, head: bytes | None = None) -> bool:
    if head is None:
        head = location.read_head(4)
    return head.startswith(ZIP_MAGIC)


def sniff(location: Location, head: bytes) -> bool:
    """A Zarr hierarchy: a directory with Zarr metadata, or a zip file holding one."""
    if location.local_path is None or location.isdir():
        # remotely (an object-store prefix, an HTTP folder) the metadata files tell
        return any(location.child(name).exists() for name in (".zgroup", "zarr.json"))
    if _is_zip(location, head) and location.local_path is not None:
        try:
            with zipfile.ZipFile(location.local_path) as zf:
                names = set(zf.namelist())
        except zipfile.BadZipFile:
            return False
        return ".zgroup" in names or "zarr.json" in names
    return False


def _spec(source: Any) -> StoreSpec:
    if isinstance(source, Location):
        if not source.exists():
            raise SourceNotFoundError(f"No such file or directory: '{source}'")
        if not source.isdir() and _is_zip(source):
            return StoreSpec("zip", source)
        return StoreSpec("dir", source)
    return StoreSpec("instance", instance=source)


def read(
    source: Any, *, lazy: bool = True, chunks: Any = "auto", **kwds: Any
) -> list[dict[str, Any]]:
    """Read every signal of a .zspy store (see :func:`lazyio.load`)."""
    kwds.pop("mode", None)
    if kwds:
        _logger.debug("zspy reader ignores %s", sorted(kwds))
    spec = _spec(source if not isinstance(source, str) else as_location(source))
    try:
        store = open_store(spec)
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, EOFError) as err:
        if isinstance(err, LazyioError):
            raise
        raise FormatError(f"{spec}: cannot be opened as a Zarr store ({err})") from err
    with reading(spec):
        kind, fmt, _ = node_kind(store, "")
        if kind != "group":
            raise FormatError(f"{spec}: not a Zarr hierarchy (no group metadata at its root)")
        return read_file_tree(ZarrNode(spec, store, "", fmt), lazy=lazy, chunks=chunks)


def _write_store(
    store: Any,
    spec: StoreSpec,
    signal: dict[str, Any],
    *,
    mode: str,
    zarr_format: int,
    chunks: Any,
    write_dataset: bool,
    show_progressbar: bool,
    options: dict[str, Any],
) -> None:
    if mode == "w":
        zarr.open_group(store=store, mode="w", zarr_format=zarr_format)
    else:
        kind, fmt, _ = node_kind(store, "")
        if kind != "group":
            raise FormatError(f"{spec}: not a Zarr hierarchy to update")
        zarr_format = fmt
    writer = ArrayWriter(
        lambda node, name, arr: zarr_target(arr),
        chunks=chunks,
        target_bytes=TARGET_CHUNK_BYTES,
        signal_axes=signal_axes_indices(signal),
        options=options,
    )
    write_signal_tree(
        ZarrNode(spec, store, "", zarr_format), signal, writer,
        file_format=FILE_FORMAT, write_dataset=write_dataset,
    )
    writer.flush(show_progressbar)


def write(
    target: Any,
    signal: Any,
    *,
    overwrite: bool = False,
    chunks: Any = None,
    show_progressbar: bool = True,
    compressor: Any = None,
    store_type: str | None = None,
    zarr_format: int = 2,
    shards: Any = None,
    write_dataset: bool = True,
    close_file: bool = True,
    **kwds: Any,
) -> None:
    """Write a signal to a .zspy store (see :func:`lazyio.save`).

    Parameters
    ----------
    compressor : numcodecs codec, optional
        Default ``Blosc(cname="zstd", clevel=1, shuffle=SHUFFLE)``, as HyperSpy.
    store_type : {"local", "zip"}, optional
        A nested directory (default) or a single zip file.
    zarr_format : {2, 3}, default 2
        Zarr format 2 opens in today's HyperSpy; 3 allows ``shards``.
    shards : tuple of int, optional
        Zarr format 3 only: shard shape (a whole number of chunks per axis).
    write_dataset : bool, default True
        False rewrites metadata and axes of an existing store in place, keeping its data.
    close_file : bool, default True
        Accepted for compatibility; lazyio always finalises the store.
    """
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, not {zarr_format!r}")
    if shards is not None and zarr_format != 3:
        raise ValueError("shards need zarr_format=3")
    signal = as_signal_dict(signal)
    kwds.pop("mode", None)
    options = {"compressor": compressor if compressor is not None else default_compressor(),
               "shards": shards, **kwds}
    common = {"chunks": chunks, "show_progressbar": show_progressbar, "options": options,
              "zarr_format": zarr_format}
    if not isinstance(target, Location | str):
        spec = StoreSpec("instance", instance=target)
        store = open_store(spec, read_only=False)
        _write_store(store, spec, signal, mode="w" if write_dataset else "a",
                     write_dataset=write_dataset, **common)
        return
    location = as_location(target)
    if not write_dataset:
        spec = _spec(location)
        if spec.kind == "zip":
            raise FormatError(f"{location}: zip stores cannot be updated in place")
        store = open_store(spec, read_only=False, cached=False)
        _write_store(store, spec, signal, mode="a", write_dataset=False, **common)
        return
    if location.exists() and not overwrite:
        raise TargetExistsError(f"{location} exists; pass overwrite=True to replace it")
    handles.close_location(location)
    zip_store = store_type == "zip"
    if store_type not in (None, "local", "zip"):
        raise ValueError(f"store_type must be 'local' or 'zip', not {store_type!r}")
    if location.local_path is None:
        if zip_store:
            raise UnsupportedError(
                f"{location}: zip stores can only be written to local files; write a "
                "directory store (the default) to remote URLs"
            )
        if location.exists():
            location.fs.rm(location.path, recursive=True)
        spec = StoreSpec("dir", location)
        store = FreshStore(open_store(spec, read_only=False, cached=False))
        # zarr's filesystem is another (async) fsspec instance, shared with earlier reads
        # in this process: its cached listings would still show the removed store
        _invalidate_listings(store)
        try:
            _write_store(store, spec, signal, mode="w", write_dataset=True, **common)
        finally:
            _invalidate_listings(store)
            location.fs.invalidate_cache()
        return
    with atomic_path(location.local_path) as tmp:
        # A zip member cannot be rewritten, and the tree's metadata is written in several
        # steps: build a directory store first, then pack it (uncompressed) into the zip.
        folder = tmp + ".dir" if zip_store else tmp
        spec = StoreSpec("dir", Location(folder))
        try:
            _write_store(LocalStore(folder), spec, signal, mode="w", write_dataset=True,
                         **common)
            if zip_store:
                _pack_zip(folder, tmp)
        finally:
            if zip_store:
                remove_path(folder)


def _invalidate_listings(store: Any) -> None:
    fs = getattr(getattr(store, "_store", store), "fs", None)  # through a FreshStore
    if fs is not None:
        fs.invalidate_cache()


def _pack_zip(folder: str, zip_path: str) -> None:
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED,
                         allowZip64=True) as zf:
        for root, _dirs, files in os.walk(folder):
            for name in sorted(files):
                full = os.path.join(root, name)
                zf.write(full, os.path.relpath(full, folder).replace(os.sep, "/"))


def file_reader(filename: Any, lazy: bool = False, **kwds: Any) -> list[dict[str, Any]]:
    """RosettaSciIO-compatible reader; see :func:`lazyio.load` (``format="zspy"``)."""
    source = filename if not isinstance(filename, str) and not hasattr(
        filename, "__fspath__") else as_location(filename)
    return read(source, lazy=lazy, **kwds)


def file_writer(
    filename: Any,
    signal: dict[str, Any],
    chunks: Any = None,
    compressor: Any = None,
    close_file: bool = True,
    write_dataset: bool = True,
    show_progressbar: bool = True,
    store_type: str | None = None,
    **kwds: Any,
) -> None:
    """RosettaSciIO-compatible writer (replaces an existing store, as RosettaSciIO does);
    see :func:`lazyio.save` and :func:`write` for the parameters."""
    kwds.setdefault("overwrite", True)
    save(
        filename, signal, format=NAME, chunks=chunks, compressor=compressor,
        close_file=close_file, write_dataset=write_dataset,
        show_progressbar=show_progressbar, store_type=store_type, **kwds,
    )
