"""HyperSpy's HDF5 format (``.hspy``): lazy chunk-aligned reads, streamed writes.

The RosettaSciIO-compatible ``lazyio.hspy.file_reader`` and ``file_writer`` live in
:mod:`lazyio.rsciio`, over :func:`lazyio.load` and :func:`lazyio.save`; the parameters are
documented there, and here for what is specific to .hspy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import h5py

from lazyio import handles
from lazyio.backends.chunking import Chunks
from lazyio.backends.hdf5.files import check_hdf5_source, open_h5, sniff_hdf5
from lazyio.backends.hdf5.filters import check_creation_options
from lazyio.backends.hdf5.layout import dataset_layout
from lazyio.backends.hdf5.safety import guard_untrusted, refuse_external
from lazyio.backends.hdf5.target import (
    H5ChunkTarget,
    encodable_pipeline,
    open_for_targets,
    writing_file,
)
from lazyio.errors import FormatError, UnsupportedError, damaged, reading
from lazyio.formats import (
    Capabilities,
    FileDescription,
    FormatPlugin,
    UntrustedGuard,
    check_axes,
    check_bool_option,
    check_choice_option,
    check_scaleoffset_option,
)
from lazyio.formats.hyperspy.describe import experiment_data_paths, spec_version
from lazyio.formats.hyperspy.hdf5_node import H5Node
from lazyio.formats.hyperspy.node import Node
from lazyio.formats.hyperspy.signal import read_file_tree, write_signal_tree
from lazyio.location import Location, as_location
from lazyio.signals import signal_axes_indices

if TYPE_CHECKING:
    # the writer streams through dask.array: imported on write only, so that reading a
    # description (lazyio info) does without dask
    from lazyio.formats.hyperspy.writer import ArrayWriter

__all__ = ["PLUGIN", "HspyFormat"]

FILE_FORMAT = "HyperSpy"
# RosettaSciIO's default: chunks of about 1 MB holding whole signals
TARGET_CHUNK_BYTES = 1_000_000
# h5py modes that open an existing file without creating or truncating it
READ_MODES = ("r", "r+", "a")


def _make_writer(
    key: str, signal: dict[str, Any], chunks: Chunks, options: dict[str, Any]
) -> ArrayWriter:
    from lazyio.formats.hyperspy.writer import ArrayWriter

    def make_target(node: Node, name: str, dset: h5py.Dataset) -> H5ChunkTarget:
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


class HspyFormat(FormatPlugin):
    """HyperSpy's HDF5 format.

    Write options
    -------------
    compression : {"gzip", "lzf", "szip", None} or hdf5plugin filter, default "gzip"
        gzip (level 4, with byte shuffle) as RosettaSciIO. ``None`` stores raw chunks,
        without the shuffle RosettaSciIO adds, so they can be memory-mapped. An hdf5plugin
        filter object (e.g. ``hdf5plugin.Blosc()``) is passed through.
    compression_opts, shuffle, fletcher32, scaleoffset
        h5py dataset options.
    write_dataset : bool, default True
        False rewrites metadata and axes of an existing local file in place, keeping its
        data.
    mode : {"w", "a"}, optional
        As RosettaSciIO: ``"a"`` goes with ``write_dataset=False`` (its default then), and
        ``mode="w"`` with ``write_dataset=False`` raises ``ValueError`` (a file opened for
        truncation cannot keep its data). ``"a"`` with ``write_dataset=True`` (adding an
        experiment to an existing file) is not supported.
    close_file : bool, default True
        Accepted for compatibility; lazyio never leaves files open after writing.

    Read options
    ------------
    mode : {"r", "r+", "a"}, optional
        Accepted for compatibility; no handle is kept, so there is no file mode to choose.
        Modes that would create or truncate the file are refused.
    """

    name = "hspy"
    extensions = (".hspy", ".hdf5")
    description = "HyperSpy's HDF5 format"
    capabilities = Capabilities(
        remote_write="upload", supports_metadata_update=True,
        target_chunk_bytes=TARGET_CHUNK_BYTES,
    )
    read_options = frozenset({"mode"})
    write_options = frozenset({"compression", "compression_opts", "shuffle", "fletcher32",
                               "scaleoffset", "write_dataset", "close_file", "mode"})
    writer_positional = ("chunks", "compression", "close_file", "write_dataset",
                         "show_progressbar")

    def untrusted_guard(self) -> UntrustedGuard:
        """The HDF5 child-process check, shared with every HDF5-based format."""
        return guard_untrusted

    def sniff(self, location: Location, head: bytes) -> bool:
        """HDF5 with ``file_format="HyperSpy"`` or an ``Experiments`` group."""
        f = sniff_hdf5(location, head)
        if f is None:
            return False
        fmt = f.attrs.get("file_format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode(errors="replace")
        return fmt == FILE_FORMAT or "Experiments" in f

    def read(
        self, source: Any, *, lazy: bool = True, chunks: Chunks = "auto",
        allow_external: bool = False, mode: Any = None,
    ) -> list[dict[str, Any]]:
        """Read every signal of a .hspy file (see :func:`lazyio.load`)."""
        location = as_location(source)
        check_hdf5_source(location)
        try:
            with reading(location):
                f = open_h5(location, token=location.modified_token())
                refuse_external(f, location, allow_external)
                root = H5Node(f["/"], location, allow_external=allow_external)
                return read_file_tree(root, lazy=lazy, chunks=chunks)
        except KeyError as err:
            raise damaged(location, err) from err
        except RecursionError as err:
            raise FormatError(f"{location}: metadata nested too deeply to read") from err
        finally:
            if not lazy:
                handles.close_location(location)

    def check_read(self, options: Mapping[str, Any]) -> None:
        """``mode`` must not create or truncate the file."""
        check_choice_option("mode", options.get("mode"), READ_MODES)

    def check_write(
        self, target: Any, signal: dict[str, Any], options: Mapping[str, Any]
    ) -> None:
        """Axes must fit the data; ``write_dataset`` and ``close_file`` are bools, ``mode``
        agrees with ``write_dataset``; in-place updates need a local file; HDF5 dataset
        options are checked before the file is created."""
        check_axes(target, signal)
        for flag in ("shuffle", "fletcher32"):  # OptionError: a ValueError too, as RosettaSciIO
            check_bool_option(flag, options.get(flag), target)
        check_scaleoffset_option(options.get("scaleoffset"), target)
        check_creation_options({"compression": "gzip", **options}, target)
        write_dataset = options.get("write_dataset", True)
        check_bool_option("write_dataset", write_dataset, target)
        check_bool_option("close_file", options.get("close_file"), target)
        mode = options.get("mode")
        check_choice_option("mode", mode, ("w", "a"), target)
        if mode == "w" and not write_dataset:
            raise ValueError(
                f"{target}: mode='a' is required to use write_dataset=False (mode='w' "
                "truncates the file); nothing was written"
            )
        if mode == "a" and write_dataset:
            raise UnsupportedError(
                f"{target}: mode='a' with write_dataset=True (adding to an existing file) "
                "is not supported: lazyio writes a new file, or with write_dataset=False "
                "rewrites metadata and axes in place"
            )
        if not write_dataset and getattr(target, "local_path", None) is None:
            raise FormatError(f"{target}: in-place metadata updates need a local file")

    def write(
        self, target: Any, signal: dict[str, Any], *, chunks: Chunks = None,
        show_progressbar: bool = True, compression: Any = "gzip",
        write_dataset: bool = True, close_file: bool = True, mode: str | None = None,
        **h5_options: Any,
    ) -> None:
        """Write into the local file ``target`` (created, or updated in place when
        ``write_dataset`` is False)."""
        location = as_location(target)
        path = location.local_path
        if path is None:  # the pipeline uploads HDF5 files; it never asks for this
            raise FormatError(f"{location}: HDF5 files are written to local paths")
        options = dict(h5_options)
        if compression is not None:
            options["compression"] = compression
        with writing_file(path, "w" if write_dataset else "a") as h5file, \
                open_for_targets(h5file) as key:
            writer = _make_writer(key, signal, chunks, options)
            write_signal_tree(
                H5Node(h5file["/"], location), signal, writer,
                file_format=FILE_FORMAT, write_dataset=write_dataset, **options,
            )
            writer.flush(show_progressbar)

    def describe(self, source: Location) -> FileDescription:
        """The ``file_format_version`` and the layout of each ``Experiments/*/data``."""
        location = as_location(source)
        token = location.modified_token()
        with reading(location):
            root = H5Node(open_h5(location, token=token)["/"], location)
            paths = experiment_data_paths(root)
            return FileDescription(
                spec_version(root), [dataset_layout(location, "/" + p, token) for p in paths]
            )


PLUGIN = HspyFormat()

