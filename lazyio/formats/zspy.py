"""HyperSpy's Zarr format (``.zspy``): directory, zip or any zarr store; Zarr format 2 or 3.

Zarr format 2 is written by default so today's HyperSpy (zarr 2) opens the files;
``zarr_format=3`` (with optional sharding) on request. Files are read with zarr-python 3,
except Zarr v2 object arrays (ragged data), which lazyio decodes itself.

The RosettaSciIO-compatible ``lazyio.zspy.file_reader`` and ``file_writer`` live in
:mod:`lazyio.rsciio`, over :func:`lazyio.load` and :func:`lazyio.save`.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.storage import LocalStore

from lazyio.backends.atomic import remove_path
from lazyio.backends.chunking import Chunks
from lazyio.backends.zarr.codecs import ZarrFormat, default_compressor
from lazyio.backends.zarr.layout import array_layout
from lazyio.backends.zarr.stores import (
    DirSpec,
    InstanceSpec,
    StoreSpec,
    ZipSpec,
    get_bytes,
    list_dir,
    node_kind,
    open_store,
)
from lazyio.backends.zarr.targets import (
    CONSOLIDATED,
    DeferredRootStore,
    commit_root,
    consolidate_local,
    zarr_target,
)
from lazyio.errors import (
    FormatError,
    LazyioError,
    UnsupportedError,
    not_found,
    reading,
    translate,
)
from lazyio.formats import (
    Capabilities,
    FileDescription,
    FormatPlugin,
    OptionError,
    check_axes,
    check_bool_option,
    check_choice_option,
)
from lazyio.formats.hyperspy.describe import experiment_data_paths, spec_version
from lazyio.formats.hyperspy.signal import read_file_tree, write_signal_tree
from lazyio.formats.hyperspy.zarr_node import ZarrNode
from lazyio.location import Location, as_location
from lazyio.signals import signal_axes_indices

__all__ = ["PLUGIN", "ZspyFormat", "default_compressor"]

FILE_FORMAT = "ZSpy"
ZIP_MAGIC = b"PK\x03\x04"
# Chunks of a few MB holding whole signals: one spectrum or pattern stays a cheap read.
TARGET_CHUNK_BYTES = 8 * 2**20
StoreType = Literal["local", "zip"]
# zarr modes that open an existing store without creating or emptying it
READ_MODES = ("r", "r+", "a")


def _is_zip(location: Location, head: bytes | None = None) -> bool:
    if head is None:
        head = location.read_head(4)
    return head.startswith(ZIP_MAGIC)


def _sniff(location: Location, head: bytes) -> bool:
    if location.local_path is None or location.isdir():
        # remotely (an object-store prefix, an HTTP folder) the metadata files tell
        return any(location.child(name).exists() for name in (".zgroup", "zarr.json"))
    if _is_zip(location, head) and location.local_path is not None:
        try:
            # the store the load then reads (from the handle cache): its central directory
            # is parsed once
            store = open_store(ZipSpec(location))
        except (LazyioError, zipfile.BadZipFile, OSError, ValueError, EOFError):
            pass  # damaged: decided below as before, the load reports the damage
        else:
            root = set(list_dir(store, ""))
            return ".zgroup" in root or "zarr.json" in root
        try:
            with zipfile.ZipFile(location.local_path) as zf:
                names = set(zf.namelist())
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return False
        return ".zgroup" in names or "zarr.json" in names
    return False


def _spec(source: Any) -> StoreSpec:
    if isinstance(source, Location):
        if not source.exists():
            raise not_found(source)
        if not source.isdir() and _is_zip(source):
            return ZipSpec(source)
        return DirSpec(source)
    return InstanceSpec(source)



def _open_source(source: Any) -> tuple[StoreSpec, Any]:
    spec = _spec(source if not isinstance(source, str) else as_location(source))
    with translate(spec):
        return spec, open_store(spec)


def _root(spec: StoreSpec, store: Any) -> ZarrNode:
    # the probe's documents are kept: the open reads each one once
    probe = ZarrNode(spec, store, "", 3)
    kind, fmt, _ = probe.kind_of("")
    if kind != "group":
        raise FormatError(f"{spec}: not a Zarr hierarchy (no group metadata at its root)")
    return ZarrNode(spec, store, "", fmt if fmt is not None else 2, probe.docs)


def _write_store(
    store: Any,
    spec: StoreSpec,
    signal: dict[str, Any],
    *,
    update: bool,
    zarr_format: ZarrFormat,
    chunks: Chunks,
    show_progressbar: bool,
    options: dict[str, Any],
) -> None:
    if not update:
        zarr.open_group(store=store, mode="w", zarr_format=zarr_format)
    else:
        kind, fmt, _ = node_kind(store, "")
        if kind != "group" or fmt not in (2, 3):
            raise FormatError(f"{spec}: not a Zarr hierarchy to update")
        zarr_format = 3 if fmt == 3 else 2
        # consolidated metadata would go stale with this update: gone before any change
        # (a local store gets it back at the end, see ZspyFormat.write)
        if get_bytes(store, CONSOLIDATED) is not None:
            sync(store.delete(CONSOLIDATED))
    # streams through dask.array: imported on write only (lazyio info does without dask)
    from lazyio.formats.hyperspy.writer import ArrayWriter

    shards = options.get("shards")
    if shards is not None and not update:
        chunks = _chunks_in_shards(spec, signal, chunks, tuple(int(n) for n in shards))
    writer = ArrayWriter(
        lambda node, name, arr: zarr_target(arr),
        chunks=chunks,
        target_bytes=TARGET_CHUNK_BYTES,
        signal_axes=signal_axes_indices(signal),
        options=options,
    )
    write_signal_tree(
        ZarrNode(spec, store, "", zarr_format), signal, writer,
        file_format=FILE_FORMAT, write_dataset=not update,
    )
    writer.flush(show_progressbar)


def _chunks_in_shards(
    spec: StoreSpec, signal: dict[str, Any], chunks: Chunks, shards: tuple[int, ...]
) -> tuple[int, ...]:
    """The main data's storage chunks when it is sharded: the requested ones, which must
    tile a shard, or lazyio's default shrunk along each axis to a divisor of the shard."""
    from lazyio.backends.chunking import storage_chunks

    data = signal["data"]
    shape = tuple(int(n) for n in data.shape)
    # a shard larger than the array holds the whole axis
    shards = tuple(min(s, max(1, n)) for s, n in zip(shards, shape, strict=True))
    got = storage_chunks(shape, data.dtype, chunks, signal_axes_indices(signal),
                         TARGET_CHUNK_BYTES)
    if got is None:
        return shards
    if isinstance(chunks, tuple | list):
        if any(s % c for s, c in zip(shards, got, strict=True)):
            raise OptionError(
                f"{spec}: shards {shards} must hold a whole number of chunks {got} "
                "along every axis"
            )
        return got
    return tuple(max(d for d in range(1, min(c, s) + 1) if s % d == 0)
                 for c, s in zip(got, shards, strict=True))


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


def _is_codec(value: Any) -> bool:
    import numcodecs.abc
    from zarr.abc.codec import BaseCodec

    return isinstance(value, numcodecs.abc.Codec | BaseCodec)


def _check_codecs(options: Mapping[str, Any], target: object) -> None:
    """``compressor`` one codec (or None), ``filters`` a sequence of codecs, ``fill_value``
    a scalar: zarr would only fail on them once the store has been created."""
    compressor = options.get("compressor")
    if compressor is not None and not _is_codec(compressor):
        raise OptionError(
            f"{target}: compressor must be a numcodecs codec (e.g. numcodecs.Blosc()), a "
            f"zarr codec or None, not {compressor!r}"
        )
    filters = options.get("filters")
    if filters is not None and (isinstance(filters, str | bytes)
                                or not isinstance(filters, Sequence)
                                or not all(_is_codec(f) for f in filters)):
        raise OptionError(
            f"{target}: filters must be a list of numcodecs or zarr codecs, not {filters!r}"
        )
    fill_value = options.get("fill_value")
    if fill_value is not None and not isinstance(fill_value, int | float | complex | bool
                                                 | np.generic):
        raise OptionError(f"{target}: fill_value must be a number, not {fill_value!r}")


def _check_shape_option(name: str, value: Any, target: object) -> None:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes) or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0
            for v in value):
        raise OptionError(f"{target}: {name} must be a tuple of positive integers, "
                          f"not {value!r}")


class ZspyFormat(FormatPlugin):
    """HyperSpy's Zarr format: a directory, a zip file or any zarr store.

    Write options
    -------------
    compressor : numcodecs codec, optional
        Default ``Blosc(cname="zstd", clevel=1, shuffle=SHUFFLE)``, as HyperSpy.
    store_type : {"local", "zip"}, optional
        A nested directory (default) or a single zip file (local targets only).
    zarr_format : {2, 3}, default 2
        Zarr format 2 opens in today's HyperSpy; 3 allows ``shards``.
    shards : tuple of int, optional
        Zarr format 3 only: shard shape (a whole number of chunks per axis).
    filters, fill_value
        zarr array options.
    write_dataset : bool, default True
        False rewrites metadata and axes of an existing store in place, keeping its data.
    close_file : bool, default True
        Accepted for compatibility; lazyio always finalises the store.

    Read options
    ------------
    mode : {"r", "r+", "a"}, optional
        Accepted for compatibility; stores are opened read-only. Modes that would create
        or empty the store are refused.
    """

    name = "zspy"
    extensions = (".zspy",)
    description = "HyperSpy's Zarr format"
    capabilities = Capabilities(
        accepts_store_objects=True, remote_write="in_place", supports_metadata_update=True,
        target_chunk_bytes=TARGET_CHUNK_BYTES,
    )
    read_options = frozenset({"mode"})
    write_options = frozenset({"compressor", "store_type", "zarr_format", "shards",
                               "filters", "fill_value", "write_dataset", "close_file"})
    writer_positional = ("chunks", "compressor", "close_file", "write_dataset",
                         "show_progressbar", "store_type")

    def sniff(self, location: Location, head: bytes) -> bool:
        """A Zarr hierarchy: a directory with Zarr metadata, or a zip file holding one."""
        return _sniff(location, head)

    def read(
        self, source: Any, *, lazy: bool = True, chunks: Chunks = "auto",
        allow_external: bool = False, mode: Any = None,
    ) -> list[dict[str, Any]]:
        """Read every signal of a .zspy store (see :func:`lazyio.load`)."""
        spec, store = _open_source(source)
        with reading(spec):
            return read_file_tree(_root(spec, store), lazy=lazy, chunks=chunks)

    def check_read(self, options: Mapping[str, Any]) -> None:
        """``mode`` must not create or empty the store."""
        check_choice_option("mode", options.get("mode"), READ_MODES)

    def check_write(
        self, target: Any, signal: dict[str, Any], options: Mapping[str, Any]
    ) -> None:
        """Axes must fit the data; validate ``zarr_format``, ``shards``, ``store_type``,
        ``compressor``, ``filters``, ``fill_value``, ``write_dataset`` and ``close_file``,
        and refuse zip stores where they cannot be written."""
        check_axes(target, signal)
        zarr_format = options.get("zarr_format", 2)
        if zarr_format not in (2, 3) or isinstance(zarr_format, bool):
            raise ValueError(f"{target}: zarr_format must be 2 or 3, not {zarr_format!r}")
        shards = options.get("shards")
        if shards is not None:
            if zarr_format != 3:
                raise ValueError(f"{target}: shards need zarr_format=3")
            _check_shape_option("shards", shards, target)
            ndim = np.ndim(signal["data"])
            if len(shards) != ndim:
                raise OptionError(f"{target}: shards {tuple(shards)} must have one length "
                                  f"per axis of the data ({ndim})")
        store_type = options.get("store_type")
        check_choice_option("store_type", store_type, ("local", "zip"), target)
        if store_type is not None and not isinstance(target, Location):
            raise ValueError(
                "store_type must be None when a zarr store is passed as the filename "
                "(the store is written as given)"
            )
        write_dataset = options.get("write_dataset", True)
        check_bool_option("write_dataset", write_dataset, target)
        check_bool_option("close_file", options.get("close_file"), target)
        _check_codecs(options, target)
        if not isinstance(target, Location):
            return
        if not write_dataset:
            if target.exists() and not target.isdir() and _is_zip(target):
                raise FormatError(f"{target}: zip stores cannot be updated in place")
        elif store_type == "zip" and target.local_path is None:
            raise UnsupportedError(
                f"{target}: zip stores can only be written to local files; write a "
                "directory store (the default) to remote URLs"
            )

    def write(
        self, target: Any, signal: dict[str, Any], *, chunks: Chunks = None,
        show_progressbar: bool = True, compressor: Any = None,
        store_type: StoreType | None = None, zarr_format: ZarrFormat = 2, shards: Any = None,
        write_dataset: bool = True, close_file: bool = True, **zarr_options: Any,
    ) -> None:
        """Write into ``target``: a store object, a fresh local path (a directory, or a
        zip file with ``store_type="zip"``), a remote location the pipeline emptied, or an
        existing store to update in place (``write_dataset=False``)."""
        options = {"compressor": compressor if compressor is not None else default_compressor(),
                   "shards": shards, **zarr_options}
        common: dict[str, Any] = {"chunks": chunks, "show_progressbar": show_progressbar,
                                  "options": options, "zarr_format": zarr_format,
                                  "update": not write_dataset}
        if not isinstance(target, Location | str):
            spec: StoreSpec = InstanceSpec(target)
            _write_store(open_store(spec, read_only=False), spec, signal, **common)
            return
        location = as_location(target)
        if not write_dataset:
            spec = _spec(location)
            _write_store(open_store(spec, read_only=False, cached=False), spec, signal, **common)
            if location.local_path is not None and os.path.isdir(location.local_path):
                consolidate_local(location.local_path)
            return
        if location.local_path is None:
            spec = DirSpec(location)
            # the root metadata goes in last: a store not completely written never loads
            store = DeferredRootStore(open_store(spec, read_only=False, cached=False))
            # zarr's filesystem is another (async) fsspec instance, shared with earlier
            # reads in this process: its cached listings would still show a removed store
            _invalidate_listings(store)
            try:
                _write_store(store, spec, signal, **common)
                commit_root(store)
            finally:
                _invalidate_listings(store)
                location.fs.invalidate_cache()
            return
        path = location.local_path
        # A zip member cannot be rewritten, and the tree's metadata is written in several
        # steps: build a directory store first, then pack it (uncompressed) into the zip.
        folder = path + ".dir" if store_type == "zip" else path
        try:
            _write_store(LocalStore(folder), DirSpec(Location(folder)), signal,
                         **common)
            consolidate_local(folder)  # last: a store with it is complete
            if store_type == "zip":
                _pack_zip(folder, path)
        finally:
            if store_type == "zip":
                remove_path(folder)

    def describe(self, source: Location) -> FileDescription:
        """The ``file_format_version`` and the layout of each ``Experiments/*/data``."""
        spec, store = _open_source(source)
        with reading(spec):
            root = _root(spec, store)
            paths = experiment_data_paths(root)
            return FileDescription(spec_version(root), [array_layout(spec, p) for p in paths])


PLUGIN = ZspyFormat()
