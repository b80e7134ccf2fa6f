"""HyperSpy's HDF5 format (``.hspy``): lazy chunk-aligned reads, streamed writes.

``lazyio.hspy.file_reader`` and ``file_writer`` are drop-ins for RosettaSciIO's; the
parameters are documented once, on :func:`lazyio.load` and :func:`lazyio.save`, and here
for what is specific to .hspy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from typing import Any

import h5py

from lazyio import handles
from lazyio._api import save
from lazyio.backends.atomic import atomic_path
from lazyio.backends.hdf5.safety import refuse_external
from lazyio.backends.hdf5.sources import open_h5
from lazyio.backends.hdf5.target import H5ChunkTarget, encodable_pipeline, open_for_targets
from lazyio.errors import FormatError, SourceNotFoundError, TargetExistsError, reading
from lazyio.formats.hyperspy.hdf5_node import H5Node
from lazyio.formats.hyperspy.signal import read_file_tree, write_signal_tree
from lazyio.formats.hyperspy.writer import ArrayWriter
from lazyio.location import Location, as_location
from lazyio.signals import as_signal_dict, signal_axes_indices

__all__ = ["file_reader", "file_writer", "read", "sniff", "write"]

NAME = "hspy"
EXTENSIONS = (".hspy", ".hdf5")
FILE_FORMAT = "HyperSpy"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# RosettaSciIO's default: chunks of about 1 MB holding whole signals
TARGET_CHUNK_BYTES = 1e6

_logger = logging.getLogger("lazyio")


def is_hdf5(head: bytes) -> bool:
    """Whether ``head`` starts with the HDF5 superblock signature."""
    return head.startswith(HDF5_MAGIC)


def sniff(location: Location, head: bytes) -> bool:
    """A HyperSpy HDF5 file: HDF5 with ``file_format="HyperSpy"`` or an Experiments group."""
    if not is_hdf5(head):
        return False
    try:
        f = open_h5(location, token=location.modified_token())
    except (OSError, FormatError):
        return False
    fmt = f.attrs.get("file_format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode(errors="replace")
    return fmt == FILE_FORMAT or "Experiments" in f


def read(
    source: Location, *, lazy: bool = True, chunks: Any = "auto", **kwds: Any
) -> list[dict[str, Any]]:
    """Read every signal of a .hspy file (see :func:`lazyio.load`)."""
    location = as_location(source)
    kwds.pop("mode", None)  # no handle is kept, so there is no file mode to choose
    allow_external = bool(kwds.pop("allow_external", False))
    if kwds:
        _logger.debug("hspy reader ignores %s", sorted(kwds))
    if not location.exists():
        raise SourceNotFoundError(f"No such file: '{location}'")
    head = location.read_head(8)
    if not is_hdf5(head):
        raise FormatError(f"{location}: not an HDF5 file (no HDF5 signature)")
    try:
        with reading(location):
            f = open_h5(location, token=location.modified_token())
            refuse_external(f, location, allow_external)
            root = H5Node(f["/"], location, allow_external=allow_external)
            return read_file_tree(root, lazy=lazy, chunks=chunks)
    except KeyError as err:
        raise FormatError(f"{location}: damaged HyperSpy file ({err})") from err
    except RecursionError as err:
        raise FormatError(f"{location}: metadata nested too deeply to read") from err
    finally:
        if not lazy:
            handles.close_location(location)


def _writer(
    h5file: h5py.File, key: str, signal: dict[str, Any], chunks: Any, options: dict[str, Any]
) -> ArrayWriter:
    def make_target(node: H5Node, name: str, dset: h5py.Dataset) -> H5ChunkTarget:
        return H5ChunkTarget(
            key=key,
            dataset=dset.name,
            shape=tuple(dset.shape),
            dtype=dset.dtype,
            chunks=tuple(dset.chunks) if dset.chunks else None,
            pipeline=encodable_pipeline(dset),
        )

    return ArrayWriter(
        make_target,
        chunks=chunks,
        target_bytes=TARGET_CHUNK_BYTES,
        signal_axes=signal_axes_indices(signal),
        options=options,
    )


def _write_into(
    path: str,
    mode: str,
    location: Location,
    signal: dict[str, Any],
    *,
    chunks: Any,
    write_dataset: bool,
    show_progressbar: bool,
    options: dict[str, Any],
) -> None:
    handles.close_location(location)  # our own read handles on the target must not see a half-written file
    with h5py.File(path, mode) as h5file, open_for_targets(h5file) as key:
        writer = _writer(h5file, key, signal, chunks, options)
        write_signal_tree(
            H5Node(h5file["/"], location), signal, writer,
            file_format=FILE_FORMAT, write_dataset=write_dataset, **options,
        )
        writer.flush(show_progressbar)


def write(
    target: Location,
    signal: Any,
    *,
    overwrite: bool = False,
    chunks: Any = None,
    show_progressbar: bool = True,
    compression: Any = "gzip",
    write_dataset: bool = True,
    close_file: bool = True,
    **kwds: Any,
) -> None:
    """Write a signal to a .hspy file (see :func:`lazyio.save`).

    Parameters
    ----------
    compression : {"gzip", "lzf", "szip", None} or hdf5plugin filter, default "gzip"
        gzip (level 4, with byte shuffle) as RosettaSciIO. ``None`` stores raw chunks,
        without the shuffle RosettaSciIO adds, so they can be memory-mapped. An hdf5plugin
        filter object (e.g. ``hdf5plugin.Blosc()``) is passed through.
    write_dataset : bool, default True
        False rewrites metadata and axes of an existing file in place, keeping its data.
    close_file : bool, default True
        Accepted for compatibility; lazyio never leaves files open after writing.
    **kwds
        ``compression_opts``, ``shuffle``, ``fletcher32`` and other h5py dataset options.
    """
    location = as_location(target)
    if not isinstance(write_dataset, bool):
        raise TypeError("write_dataset must be True or False")
    signal = as_signal_dict(signal)
    kwds.pop("mode", None)
    options = {"compression": compression, **kwds}
    if compression is None:
        options.pop("compression")
    common = {"chunks": chunks, "show_progressbar": show_progressbar, "options": options}
    if not write_dataset:
        if not location.exists():
            raise SourceNotFoundError(
                f"No such file: '{location}' (write_dataset=False updates an existing file)"
            )
        if location.local_path is None:
            raise FormatError(f"{location}: in-place metadata updates need a local file")
        _write_into(location.local_path, "a", location, signal, write_dataset=False, **common)
        return
    if location.exists() and not overwrite:
        raise TargetExistsError(f"{location} exists; pass overwrite=True to replace it")
    if location.local_path is not None:
        with atomic_path(location.local_path) as tmp:
            _write_into(tmp, "w", location, signal, write_dataset=True, **common)
        return
    # HDF5 cannot be written through a byte stream: write locally, then upload whole.
    with tempfile.TemporaryDirectory(prefix="lazyio-") as tmpdir:
        tmp = os.path.join(tmpdir, location.name)
        _write_into(tmp, "w", location, signal, write_dataset=True, **common)
        location.fs.put_file(tmp, location.path)


def file_reader(filename: Any, lazy: bool = False, **kwds: Any) -> list[dict[str, Any]]:
    """RosettaSciIO-compatible reader; see :func:`lazyio.load` (``format="hspy"``)."""
    return read(as_location(filename), lazy=lazy, **kwds)


def file_writer(
    filename: Any,
    signal: dict[str, Any],
    chunks: Any = None,
    compression: Any = "gzip",
    close_file: bool = True,
    write_dataset: bool = True,
    show_progressbar: bool = True,
    **kwds: Any,
) -> None:
    """RosettaSciIO-compatible writer (replaces an existing file, as RosettaSciIO does);
    see :func:`lazyio.save` and :func:`write` for the parameters."""
    kwds.setdefault("overwrite", True)
    save(
        filename, signal, format=NAME, chunks=chunks, compression=compression,
        close_file=close_file, write_dataset=write_dataset,
        show_progressbar=show_progressbar, **kwds,
    )


with contextlib.suppress(ImportError):  # registers blosc, zstd, lz4, ... filters with HDF5
    import hdf5plugin  # noqa: F401
