"""h5USID (Universal Spectroscopy and Imaging Data in HDF5): lazy N-D reads, streamed writes.

A USID main dataset is stored 2-D (positions x spectroscopic values); lazyio returns it in
its N-D form, position dimensions as navigation axes and spectroscopic dimensions as
signal axes, each side ordered slowest-varying first as read from the index matrices. The
N-D dask array is built directly on the 2-D dataset (:class:`~lazyio.formats.usid.schema.USIDView`),
with blocks of whole storage chunks, so no task ever reads the whole dataset.

The schema is read and written with h5py alone: pyUSID is not needed at run time (its last
release cannot write under numpy 2, and its dependencies are heavy for a cluster worker).
The drop-ins for RosettaSciIO's ``rsciio.usid`` (``lazyio.usid.file_reader`` and
``file_writer``) live in :mod:`lazyio.rsciio`.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import h5py
import numpy as np

from lazyio import handles
from lazyio.backends import register_direct
from lazyio.backends.chunking import (
    BlockChunks,
    Chunks,
    auto_block_bytes,
    merge_blocks,
    write_block_bytes,
)
from lazyio.backends.hdf5.files import check_hdf5_source, open_h5, sniff_hdf5
from lazyio.backends.hdf5.filters import check_creation_options
from lazyio.backends.hdf5.layout import dataset_layout
from lazyio.backends.hdf5.safety import guard_untrusted, refuse_external
from lazyio.backends.hdf5.sources import H5Source
from lazyio.backends.hdf5.target import (
    H5ChunkTarget,
    encodable_pipeline,
    open_for_targets,
    writing_file,
)
from lazyio.backends.plan import plan, planned, planning
from lazyio.errors import (
    FormatError,
    LazyioWarning,
    NonUniformAxisError,
    SourceNotFoundError,
    UnsupportedError,
    reading,
)
from lazyio.formats import (
    Capabilities,
    FileDescription,
    FormatPlugin,
    UntrustedGuard,
    WriteMode,
    check_axes,
    check_bool_option,
    check_scaleoffset_option,
)
from lazyio.formats.usid.schema import (
    ANCILLARY,
    Dimension,
    USIDView,
    attrs_to_dict,
    decode_text,
    dimensions_from_axes,
    find_main,
    flatten,
    group_attrs,
    main_chunks,
    main_problem,
    nd_chunks,
    next_index,
    read_dimensions,
    rows_block,
    set_attr,
    split_descriptor,
    write_ancillary,
)
from lazyio.location import Location, as_location
from lazyio.signals import make_signal_dict

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["PLUGIN", "UsidFormat"]

# numpy arrays up to this size are written at once instead of through dask
_SMALL_BYTES = 16 * 2**20
# What RosettaSciIO writes when the signal has no quantity
DEFAULT_QUANTITY, DEFAULT_UNITS = "Unknown Quantity", "Unknown Units"

NonUniform = Literal["warn", "raise", "axis"]

_logger = logging.getLogger("lazyio")


# --------------------------------------------------------------------------- reading


def _as_dask(view: USIDView, chunks: BlockChunks, token: str) -> da.Array:
    # Like lazyio.backends.to_dask, but fancy=True: the view applies any index through
    # split_index, and dask then fuses a selection (one spectrum, one image) into the read
    # instead of reading the whole block first.
    if planned():
        return plan(view.shape, view.dtype, chunks)
    import dask.array as da
    from dask.base import tokenize

    array: da.Array = da.from_array(
        view,
        chunks=chunks,
        name=f"usid-{tokenize(view, chunks, token)}",
        meta=np.empty((0,) * view.ndim, dtype=view.dtype),
        inline_array=True,
        asarray=False,
        fancy=True,
    )
    register_direct(array, view)
    return array


def _axis(
    dim: Dimension, navigate: bool, non_uniform: NonUniform, where: str
) -> dict[str, Any]:
    axis: dict[str, Any] = {"name": dim.name, "units": dim.units, "navigate": navigate}
    step = dim.step()
    if step is not None:
        # offset and scale in the number type of the stored values (float32 as a rule), as
        # RosettaSciIO gives them: a rewrite to .hspy then stores the same types
        stored = np.asarray(dim.values)
        offset: Any = float(stored[0])
        scale: Any = step
        if stored.dtype.kind == "f" or (stored.dtype.kind in "iu" and step.is_integer()):
            offset, scale = stored[0], stored.dtype.type(step)
        return {**axis, "size": dim.size, "offset": offset, "scale": scale}
    if non_uniform == "axis":
        return {**axis, "size": dim.size, "axis": np.asarray(dim.values, dtype=np.float64)}
    if non_uniform == "raise":
        raise NonUniformAxisError(
            f"{where}: cannot load provided dataset. Parameter: {dim.name} was varied "
            'non-uniformly. Supply keyword argument "ignore_non_uniform_dims=True" to ignore '
            'this error, or non_uniform="axis" to read it as a non-uniform axis'
        )
    # RosettaSciIO's behaviour: an index axis (offset 0, scale 1) and a warning; the scale
    # is the int 1 as in its dictionary, so a rewrite to .hspy stores the same number type
    warnings.warn(
        f"Ignoring non-uniformity of dimension: {dim.name} ({where})", LazyioWarning,
        stacklevel=4,
    )
    stored = np.asarray(dim.values)
    zero = stored.dtype.type(0) if stored.dtype.kind in "fiu" else 0.0
    return {**axis, "size": dim.size, "offset": zero, "scale": 1}


def _read_main(
    location: Location,
    f: h5py.File,
    path: str,
    *,
    lazy: bool,
    chunks: Chunks,
    non_uniform: NonUniform,
    token: str,
) -> list[dict[str, Any]]:
    where = f"{location}:{path}"
    try:
        dset = f[path]
    except KeyError as err:
        raise SourceNotFoundError(f"{location}: no dataset at {path!r}") from err
    problem = main_problem(dset)
    if problem is not None:
        raise FormatError(f"{where} is not a USID main dataset: {problem}")
    pos_dims, pos_order = read_dimensions(dset, False, where)
    spec_dims, spec_order = read_dimensions(dset, True, where)
    # size-1 dimensions (pyUSID's placeholder for a missing side) are squeezed, as
    # RosettaSciIO does
    pos_dims = [d for d in pos_dims if d.size > 1]
    spec_dims = [d for d in spec_dims if d.size > 1]
    axes = [_axis(d, True, non_uniform, where) for d in pos_dims]
    axes += [_axis(d, False, non_uniform, where) for d in spec_dims]
    for i, axis in enumerate(axes):
        axis["index_in_array"] = i
    pos_shape = tuple(d.size for d in pos_dims)
    spec_shape = tuple(d.size for d in spec_dims)

    source = H5Source.from_dataset(location, dset)
    quantity = decode_text(dset.attrs["quantity"])
    units = decode_text(dset.attrs["units"])
    name = path.rsplit("/", 1)[-1]
    original = {
        "quantity": quantity,
        "units": units,
        "dataset_path": path,
        "original_file_type": "USID HDF5",
        "parameters": group_attrs(dset),
        "file_attributes": attrs_to_dict(f),
        "dataset_attributes": attrs_to_dict(dset),
    }
    fields = list(dset.dtype.names or [None])
    signals = []
    for field in fields:
        view = USIDView(source, pos_shape, spec_shape, field)
        data = _data(view, pos_order, spec_order, lazy=lazy, chunks=chunks, token=token)
        # As RosettaSciIO: every field's signal is titled after the dataset, and a compound
        # dataset's quantity becomes the fields' signal_type (the field names the quantity)
        if field is None:
            signal_type, (sig_quantity, sig_units) = "", (quantity, units)
        else:
            signal_type, (sig_quantity, sig_units) = quantity, split_descriptor(field)
        descriptor = f"{sig_quantity} ({sig_units})" if sig_units else sig_quantity
        metadata = {
            "General": {"title": name, "original_filename": location.name},
            "Signal": {"signal_type": signal_type, "quantity": descriptor},
        }
        signal = make_signal_dict(
            data, copy.deepcopy(axes), metadata, copy.deepcopy(original), lazy=lazy
        )
        if field is not None:
            signal["original_metadata"].update(
                {"field": field, "quantity": sig_quantity, "units": sig_units}
            )
        signals.append(signal)
    return signals


def _data(
    view: USIDView,
    pos_order: np.ndarray | None,
    spec_order: np.ndarray | None,
    *,
    lazy: bool,
    chunks: Chunks,
    token: str,
) -> Any:
    shape = view.shape
    if pos_order is not None or spec_order is not None:
        # Steps not in C order (e.g. a serpentine scan): gather them into grid order.
        _logger.debug("%s: steps are not in C order; reading with a gather", view.source)
        flat = USIDView(view.source, (view.source.shape[0],), (view.source.shape[1],),
                        view.field)
        rows = slice(None) if pos_order is None else pos_order
        cols = slice(None) if spec_order is None else spec_order
        if not lazy:
            return flat[:, :][rows][:, cols].reshape(shape)
        if planned():
            # the gather's blocks are dask's indexing and reshape: planned by dask itself
            with planning(False):
                gathered = _data(view, pos_order, spec_order, lazy=True, chunks=chunks,
                                 token=token)
            return plan(gathered.shape, gathered.dtype, gathered.chunks)
        arr = _as_dask(flat, _auto_chunks(flat, "auto"), token)[rows][:, cols]
        return arr.reshape(shape)
    if not lazy:
        return view[tuple(slice(None) for _ in shape)]
    return _as_dask(view, _auto_chunks(view, chunks), token)


def _auto_chunks(view: USIDView, chunks: Chunks) -> BlockChunks:
    if chunks is None or (isinstance(chunks, str) and chunks in ("auto", "storage")):
        # "storage": the smallest N-D blocks of whole 2-D storage chunks (a one-byte budget)
        return nd_chunks(
            view.pos_shape, view.spec_shape, view.source.storage_chunks,
            view.dtype.itemsize, 1 if chunks == "storage" else auto_block_bytes(),
        )
    # explicit chunks are the caller's choice; blocks that split storage chunks still read
    # correctly, each task decoding the storage chunks it touches
    import dask.array as da

    return da.core.normalize_chunks(chunks, view.shape, dtype=view.dtype)


def _check_non_uniform(non_uniform: object, ignore_non_uniform_dims: bool) -> NonUniform:
    if non_uniform is None:
        non_uniform = "warn" if ignore_non_uniform_dims else "raise"
    if non_uniform not in ("warn", "raise", "axis"):
        raise ValueError(f"non_uniform must be 'warn', 'raise' or 'axis'; got {non_uniform!r}")
    return non_uniform


# --------------------------------------------------------------------------- writing


def _check_writable(location: Location, data: Any) -> None:
    """Refuse, before anything is written, what a USID main dataset cannot hold."""
    dtype = np.dtype(data.dtype)
    kinds = [dtype[n].kind for n in dtype.names] if dtype.names else [dtype.kind]
    if any(kind in "OUSM" for kind in kinds):
        raise UnsupportedError(
            f"{location}: USID main datasets hold numbers; this signal holds {dtype} data"
        )
    if 0 in data.shape:
        raise UnsupportedError(
            f"{location}: USID cannot describe empty data (shape {data.shape}): every "
            "dimension needs at least one step"
        )


def _align_to_storage(
    data: da.Array, pos_shape: tuple[int, ...], spec_shape: tuple[int, ...],
    chunk_shape: tuple[int, int],
) -> da.Array:
    """Rechunk N-D data so that every block is a C-order run of whole 2-D storage chunks.

    dask's reshape then maps each block to one 2-D block. Blocks that split trailing
    dimensions would be merged by the reshape instead, and every write task re-reads a whole
    merged block: a 256 MiB array with no navigation axes peaked at 3.3 GiB that way.
    """
    import dask.array as da

    # write blocks, not read blocks: their size bounds the write's memory
    limit = write_block_bytes()
    target = max(1, limit // max(1, np.dtype(data.dtype).itemsize))
    rows_per_chunk, cols_per_chunk = chunk_shape
    if cols_per_chunk < math.prod(spec_shape):  # spectra split: one position per block
        block = (1,) * len(pos_shape) + rows_block(spec_shape, cols_per_chunk, target)
    else:
        per_row = max(1, math.prod(spec_shape))
        block = rows_block(pos_shape, rows_per_chunk, max(1, target // per_row)) + spec_shape
    chunks = da.core.normalize_chunks(block, data.shape)
    if chunks == data.chunks:
        return data
    # many small source blocks run inside the write tasks; otherwise dask's rechunk, its
    # intermediate blocks kept to the size of a write block
    merged = merge_blocks(data, chunks)
    if merged is not None:
        return merged
    rechunked: da.Array = data.rechunk(chunks, block_size_limit=max(
        limit, math.prod(block) * np.dtype(data.dtype).itemsize))
    return rechunked


def _write_into(
    h5file: h5py.File, signal: dict[str, Any], *, chunks: Chunks, show_progressbar: bool,
    options: dict[str, Any],
) -> None:
    import dask.array as da

    from lazyio.backends.store import rechunk_to_storage, store

    data = signal["data"]
    axes = signal["axes"]
    nav = [i for i, a in enumerate(axes) if a.get("navigate", False)]
    sig = [i for i, a in enumerate(axes) if not a.get("navigate", False)]
    if nav + sig != list(range(data.ndim)):
        data = data.transpose(nav + sig)  # USID rows are positions: navigation axes first
    pos_shape = tuple(int(data.shape[i]) for i in range(len(nav)))
    spec_shape = tuple(int(s) for s in data.shape[len(nav):])
    labels: set[str] = set()  # unique across both sides, as pyUSID needs
    pos_dims = dimensions_from_axes([axes[i] for i in nav], pos_shape, "Pos", labels)
    spec_dims = dimensions_from_axes([axes[i] for i in sig], spec_shape, "Spec", labels)
    rows, cols = math.prod(pos_shape), math.prod(spec_shape)
    chunk_shape = main_chunks(chunks, pos_shape, spec_shape, np.dtype(data.dtype))
    if isinstance(data, da.Array) and chunk_shape is not None:
        data = _align_to_storage(data, pos_shape, spec_shape, chunk_shape)
    data2d = data.reshape(rows, cols)

    metadata = signal.get("metadata") or {}
    descriptor = str(metadata.get("Signal", {}).get("quantity") or "").strip()
    quantity, units = split_descriptor(descriptor) if descriptor else (
        DEFAULT_QUANTITY, DEFAULT_UNITS)
    title = str(metadata.get("General", {}).get("title") or "").strip()
    # pyUSID replaces '-' in dataset names; '/' would create groups
    name = title.replace("/", "_").replace("-", "_") or "Raw_Data"
    if name in ANCILLARY:
        name = f"{name}_Data"

    from lazyio import __version__

    for key, value in {"data_type": name, "translator": "lazyio",
                       "lazyio_version": __version__}.items():
        h5file.attrs.setdefault(key, value)
    measurement = h5file.create_group(next_index(h5file, "Measurement"))
    # RosettaSciIO's layout of the metadata: flattened with '-' on the Measurement group
    for key, value in flatten(metadata):
        set_attr(measurement, key, value)
    for key, value in flatten(signal.get("original_metadata") or {}, "Original"):
        set_attr(measurement, key, value)
    channel = measurement.create_group("Channel_000")
    pos_inds, pos_vals = write_ancillary(channel, "Position", pos_dims, False)
    spec_inds, spec_vals = write_ancillary(channel, "Spectroscopic", spec_dims, True)

    dset = channel.create_dataset(
        name, shape=(rows, cols), dtype=data.dtype, chunks=chunk_shape, **options
    )
    dset.attrs["quantity"] = quantity
    dset.attrs["units"] = units
    for key, anc in zip(ANCILLARY, (pos_inds, pos_vals, spec_inds, spec_vals), strict=True):
        dset.attrs[key] = anc.ref
    with open_for_targets(h5file) as key:
        target = H5ChunkTarget(
            key=key, dataset=dset.name, shape=(rows, cols), dtype=dset.dtype,
            chunks=tuple(dset.chunks) if dset.chunks else None,
            pipeline=encodable_pipeline(dset),
        )
        if isinstance(data2d, np.ndarray) and data2d.nbytes <= _SMALL_BYTES:
            target[(slice(0, rows), slice(0, cols))] = data2d
            return
        layout = tuple(dset.chunks) if dset.chunks else (rows, cols)
        source = data2d if isinstance(data2d, da.Array) else da.from_array(data2d, chunks=layout)
        store([rechunk_to_storage(source, layout)], [target], show_progressbar=show_progressbar)


class UsidFormat(FormatPlugin):
    """h5USID: Universal Spectroscopy and Imaging Data in HDF5.

    Read options
    ------------
    dataset_path : str, optional
        Read only this main dataset (e.g. ``"/Measurement_000/Channel_000/Raw_Data"``);
        by default every main dataset of the file is read.
    ignore_non_uniform_dims : bool, default True
        As in RosettaSciIO: a non-uniformly varied dimension warns and becomes an index
        axis (offset 0, scale 1); with ``False`` it raises
        :class:`~lazyio.errors.NonUniformAxisError` (a ``ValueError``).
    non_uniform : {"warn", "raise", "axis"}, optional
        Overrides ``ignore_non_uniform_dims`` when given: ``"axis"`` returns a non-uniform
        dimension as a non-uniform axis (its values in an ``axis`` vector).

    Signals are returned one per main dataset, or per field of a compound dtype. Position
    dimensions are navigation axes and spectroscopic ones signal axes, each side
    slowest-varying first; dimensions of size 1 are squeezed. ``"auto"`` chunks are blocks
    of whole storage chunks up to dask's ``array.chunk-size``, keeping whole spectra
    together where they fit.

    Write options
    -------------
    append : bool, default False
        Add the signal to an existing local file as the next ``Measurement_NNN`` group
        (what RosettaSciIO's writer does when the file exists), in place.
    compression, compression_opts, shuffle, fletcher32, scaleoffset
        h5py dataset options for the main dataset; uncompressed by default, as pyUSID.

    Navigation axes become position dimensions and signal axes spectroscopic ones; a side
    without axes gets pyUSID's single placeholder dimension (``"Arb"``). The dataset is
    ``/Measurement_000/Channel_000/<title or "Raw_Data">`` with its four ancillary
    datasets; dask data are streamed chunk by chunk. ``chunks`` are the storage chunks of
    the 2-D (positions, spectroscopic values) dataset: ``None`` for whole spectra, about
    1 MB per chunk, whole scan lines where they fit; ``True`` for h5py's guess.
    """

    name = "usid"
    extensions = (".h5",)
    description = "h5USID (Universal Spectroscopy and Imaging Data in HDF5)"
    capabilities = Capabilities(
        metadata_kept=frozenset({("General", "title"), ("General", "original_filename"),
                                 ("Signal", "quantity"), ("Signal", "signal_type")}),
        metadata_loss=("metadata other than title and quantity (stored as flattened "
                       "attributes of the Measurement group, read back under "
                       "original_metadata['parameters'])"),
        keeps_original_metadata=False, keeps_models=False, keeps_learning_results=False,
        remote_write="upload", target_chunk_bytes=1_000_000, nd_storage_chunks=False,
        splits_fields=True,
    )
    read_options = frozenset({"dataset_path", "ignore_non_uniform_dims", "non_uniform"})
    write_options = frozenset({"append", "compression", "compression_opts", "shuffle",
                               "fletcher32", "scaleoffset"})
    reader_positional = ("dataset_path", "ignore_non_uniform_dims")
    # non-uniform dimensions are described, not warned about
    describe_read_options: ClassVar[Mapping[str, Any]] = MappingProxyType({"non_uniform": "axis"})

    def untrusted_guard(self) -> UntrustedGuard:
        """The HDF5 child-process check, shared with every HDF5-based format."""
        return guard_untrusted

    def sniff(self, location: Location, head: bytes) -> bool:
        """An HDF5 file holding at least one USID main dataset (and not a HyperSpy file)."""
        f = sniff_hdf5(location, head)
        if f is None:
            return False
        if decode_text(f.attrs.get("file_format")) == "HyperSpy":
            return False
        return bool(find_main(f, first_only=True))

    def check_read(self, options: Mapping[str, Any]) -> None:
        """Validate ``non_uniform``, ``ignore_non_uniform_dims`` and ``dataset_path``."""
        check_bool_option("ignore_non_uniform_dims", options.get("ignore_non_uniform_dims"))
        _check_non_uniform(options.get("non_uniform"),
                           options.get("ignore_non_uniform_dims", True))
        dataset_path = options.get("dataset_path")
        if dataset_path is not None and not isinstance(dataset_path, str):
            raise TypeError("'dataset_path' should be a string")

    def read(
        self,
        source: Any,
        *,
        lazy: bool = True,
        chunks: Chunks = "auto",
        allow_external: bool = False,
        dataset_path: str | None = None,
        ignore_non_uniform_dims: bool = True,
        non_uniform: NonUniform | None = None,
    ) -> list[dict[str, Any]]:
        """Read the USID main datasets of an HDF5 file (see :func:`lazyio.load`)."""
        location = as_location(source)
        checked = _check_non_uniform(non_uniform, ignore_non_uniform_dims)
        self.check_read({"dataset_path": dataset_path})
        check_hdf5_source(location)
        token = location.modified_token()
        try:
            with reading(location):
                f = open_h5(location, token=token)
                refuse_external(f, location, allow_external)
                paths = [dataset_path] if dataset_path is not None else find_main(f)
                if not paths:
                    raise FormatError(f"{location}: no USID main dataset in this HDF5 file")
                signals: list[dict[str, Any]] = []
                for path in paths:
                    signals += _read_main(
                        location, f, path, lazy=lazy, chunks=chunks, non_uniform=checked,
                        token=token,
                    )
                return signals
        finally:
            if not lazy:
                handles.close_location(location)

    def check_write(
        self, target: Any, signal: dict[str, Any], options: Mapping[str, Any]
    ) -> None:
        """Refuse axes that contradict the data, data a USID main dataset cannot hold, bad
        option values, and appends to remote files."""
        check_axes(target, signal)
        _check_writable(target, signal["data"])
        for flag in ("shuffle", "fletcher32"):  # OptionError: a ValueError too, as RosettaSciIO
            check_bool_option(flag, options.get(flag), target)
        check_scaleoffset_option(options.get("scaleoffset"), target)
        check_creation_options(options, target)
        append = options.get("append", False)
        check_bool_option("append", append, target)
        if append and getattr(target, "local_path", None) is None and target.exists():
            raise UnsupportedError(f"{target}: appending needs a local file")

    def write_mode(self, options: Mapping[str, Any]) -> WriteMode:
        """``append=True`` adds to an existing file in place (or creates it)."""
        return "append" if options.get("append") else "create"

    def write(
        self, target: Any, signal: dict[str, Any], *, chunks: Chunks = None,
        show_progressbar: bool = True, append: bool = False, **h5_options: Any,
    ) -> None:
        """Write into the local file ``target`` (created, or appended to in place)."""
        path = as_location(target).local_path
        if path is None:  # the pipeline uploads HDF5 files; it never asks for this
            raise FormatError(f"{target}: HDF5 files are written to local paths")
        common: dict[str, Any] = {"chunks": chunks, "show_progressbar": show_progressbar,
                  "options": h5_options}
        if not append:
            with writing_file(path, "w") as h5file:
                _write_into(h5file, signal, **common)
            return
        # the pipeline hands over a copy of the file, renamed over it only on success
        with writing_file(path, "a") as h5file:
            _write_into(h5file, signal, **common)

    def describe(self, source: Location) -> FileDescription:
        """The pyUSID version that wrote the file (when it says) and the layout of each
        main dataset's 2-D storage (once per field of a compound dtype)."""
        location = as_location(source)
        token = location.modified_token()
        with reading(location):
            f = open_h5(location, token=token)
            version = decode_text(f.attrs.get("pyUSID_version"))
            layouts = []
            for path in find_main(f):
                fields = f[path].dtype.names or (None,)
                layouts += [dataset_layout(location, path, token)] * len(fields)
        return FileDescription(None if version is None else f"pyUSID {version}", layouts)


PLUGIN = UsidFormat()

