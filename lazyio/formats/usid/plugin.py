"""h5USID (Universal Spectroscopy and Imaging Data in HDF5): lazy N-D reads, streamed writes.

A USID main dataset is stored 2-D (positions x spectroscopic values); lazyio returns it in
its N-D form, position dimensions as navigation axes and spectroscopic dimensions as
signal axes, each side ordered slowest-varying first as read from the index matrices. The
N-D dask array is built directly on the 2-D dataset (:class:`~lazyio.formats.usid.schema.USIDView`),
with blocks of whole storage chunks, so no task ever reads the whole dataset.

The schema is read and written with h5py alone: pyUSID is not needed at run time (its last
release cannot write under numpy 2, and its dependencies are heavy for a cluster worker).
``file_reader`` and ``file_writer`` are drop-ins for RosettaSciIO's ``rsciio.usid``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import tempfile
import warnings
from typing import Any, Literal

import dask.array as da
import h5py
import numpy as np
from dask.base import tokenize

from lazyio import handles
from lazyio._api import save
from lazyio.backends.atomic import atomic_path
from lazyio.backends.chunking import auto_block_bytes
from lazyio.backends.hdf5.safety import refuse_external
from lazyio.backends.hdf5.sources import H5Source, open_h5
from lazyio.backends.hdf5.target import H5ChunkTarget, encodable_pipeline, open_for_targets
from lazyio.backends.store import rechunk_to_storage, store
from lazyio.errors import (
    FormatError,
    LazyioWarning,
    NonUniformAxisError,
    SourceNotFoundError,
    TargetExistsError,
    UnsupportedError,
    reading,
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
from lazyio.signals import as_signal_dict, make_signal_dict

__all__ = ["file_reader", "file_writer", "read", "sniff", "write"]

NAME = "usid"
EXTENSIONS = (".h5",)
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# numpy arrays up to this size are written at once instead of through dask
_SMALL_BYTES = 16 * 2**20
# What RosettaSciIO writes when the signal has no quantity
DEFAULT_QUANTITY, DEFAULT_UNITS = "Unknown Quantity", "Unknown Units"

NonUniform = Literal["warn", "raise", "axis"]

_logger = logging.getLogger("lazyio")


# --------------------------------------------------------------------------- detection


def sniff(location: Location, head: bytes) -> bool:
    """An HDF5 file holding at least one USID main dataset (and not a HyperSpy file)."""
    if not head.startswith(HDF5_MAGIC):
        return False
    try:
        f = open_h5(location, token=location.modified_token())
    except (OSError, FormatError):
        return False
    if decode_text(f.attrs.get("file_format")) == "HyperSpy":
        return False
    return bool(find_main(f, first_only=True))


# --------------------------------------------------------------------------- reading


def _as_dask(view: USIDView, chunks: tuple[tuple[int, ...], ...], token: str) -> da.Array:
    # Like lazyio.backends.to_dask, but fancy=True: the view applies any index through
    # split_index, and dask then fuses a selection (one spectrum, one image) into the read
    # instead of reading the whole block first.
    return da.from_array(
        view,
        chunks=chunks,
        name=f"usid-{tokenize(view, chunks, token)}",
        meta=np.empty((0,) * view.ndim, dtype=view.dtype),
        inline_array=True,
        asarray=False,
        fancy=True,
    )


def _axis(
    dim: Dimension, navigate: bool, non_uniform: NonUniform, where: str
) -> dict[str, Any]:
    axis: dict[str, Any] = {"name": dim.name, "units": dim.units, "navigate": navigate}
    step = dim.step()
    if step is not None:
        return {**axis, "size": dim.size, "offset": float(dim.values[0]), "scale": step}
    if non_uniform == "axis":
        return {**axis, "size": dim.size, "axis": np.asarray(dim.values, dtype=np.float64)}
    if non_uniform == "raise":
        raise NonUniformAxisError(
            f"{where}: cannot load provided dataset. Parameter: {dim.name} was varied "
            'non-uniformly. Supply keyword argument "ignore_non_uniform_dims=True" to ignore '
            'this error, or non_uniform="axis" to read it as a non-uniform axis'
        )
    # RosettaSciIO's behaviour: an index axis (offset 0, scale 1) and a warning
    warnings.warn(
        f"Ignoring non-uniformity of dimension: {dim.name} ({where})", LazyioWarning,
        stacklevel=4,
    )
    return {**axis, "size": dim.size, "offset": 0.0, "scale": 1.0}


def _read_main(
    location: Location,
    f: h5py.File,
    path: str,
    *,
    lazy: bool,
    chunks: Any,
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
        if field is None:
            title, (sig_quantity, sig_units) = name, (quantity, units)
        else:
            title, (sig_quantity, sig_units) = field, split_descriptor(field)
        descriptor = f"{sig_quantity} ({sig_units})" if sig_units else sig_quantity
        metadata = {
            "General": {"title": title, "original_filename": location.name},
            "Signal": {"signal_type": "", "quantity": descriptor},
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
    chunks: Any,
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
        arr = _as_dask(flat, _auto_chunks(flat, "auto"), token)[rows][:, cols]
        return arr.reshape(shape)
    if not lazy:
        return view[tuple(slice(None) for _ in shape)]
    return _as_dask(view, _auto_chunks(view, chunks), token)


def _auto_chunks(view: USIDView, chunks: Any) -> tuple[tuple[int, ...], ...]:
    if chunks is None or chunks == "auto":
        return nd_chunks(
            view.pos_shape, view.spec_shape, view.source.storage_chunks,
            view.dtype.itemsize, auto_block_bytes(),
        )
    # explicit chunks are the caller's choice; blocks that split storage chunks still read
    # correctly, each task decoding the storage chunks it touches
    return da.core.normalize_chunks(chunks, view.shape, dtype=view.dtype)


def read(
    source: Location,
    *,
    lazy: bool = True,
    chunks: Any = "auto",
    dataset_path: str | None = None,
    ignore_non_uniform_dims: bool = True,
    non_uniform: NonUniform | None = None,
    **kwds: Any,
) -> list[dict[str, Any]]:
    """Read the USID main datasets of an HDF5 file (see :func:`lazyio.load`).

    Parameters
    ----------
    source : Location
        The file.
    lazy : bool, default True
        Dask arrays of chunk-aligned blocks, or numpy arrays with ``False``.
    chunks : "auto", int, tuple or dict
        Dask chunks of the N-D form. ``"auto"`` picks blocks of whole storage chunks up to
        dask's ``array.chunk-size``, keeping whole spectra together where they fit.
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

    Returns
    -------
    list of dict
        One signal per main dataset, or per field of a compound dtype. Position dimensions
        are navigation axes and spectroscopic ones signal axes, each side slowest-varying
        first; dimensions of size 1 are squeezed.
    """
    location = as_location(source)
    allow_external = bool(kwds.pop("allow_external", False))
    if kwds:
        _logger.debug("usid reader ignores %s", sorted(kwds))
    if non_uniform is None:
        non_uniform = "warn" if ignore_non_uniform_dims else "raise"
    if non_uniform not in ("warn", "raise", "axis"):
        raise ValueError(f"non_uniform must be 'warn', 'raise' or 'axis'; got {non_uniform!r}")
    if dataset_path is not None and not isinstance(dataset_path, str):
        raise TypeError("'dataset_path' should be a string")
    if not location.exists():
        raise SourceNotFoundError(f"No such file: '{location}'")
    if not location.read_head(8).startswith(HDF5_MAGIC):
        raise FormatError(f"{location}: not an HDF5 file (no HDF5 signature)")
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
                    location, f, path, lazy=lazy, chunks=chunks, non_uniform=non_uniform,
                    token=token,
                )
            return signals
    finally:
        if not lazy:
            handles.close_location(location)


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
    target = max(1, auto_block_bytes() // max(1, np.dtype(data.dtype).itemsize))
    rows_per_chunk, cols_per_chunk = chunk_shape
    if cols_per_chunk < math.prod(spec_shape):  # spectra split: one position per block
        block = (1,) * len(pos_shape) + rows_block(spec_shape, cols_per_chunk, target)
    else:
        per_row = max(1, math.prod(spec_shape))
        block = rows_block(pos_shape, rows_per_chunk, max(1, target // per_row)) + spec_shape
    return data.rechunk(block)


def _write_into(
    h5file: h5py.File, signal: dict[str, Any], *, chunks: Any, show_progressbar: bool,
    options: dict[str, Any],
) -> None:
    data = signal["data"]
    axes = signal["axes"]
    nav = [i for i, a in enumerate(axes) if a.get("navigate", False)]
    sig = [i for i, a in enumerate(axes) if not a.get("navigate", False)]
    if nav + sig != list(range(data.ndim)):
        data = data.transpose(nav + sig)  # USID rows are positions: navigation axes first
    pos_shape = tuple(int(data.shape[i]) for i in range(len(nav)))
    spec_shape = tuple(int(s) for s in data.shape[len(nav):])
    pos_dims = dimensions_from_axes([axes[i] for i in nav], pos_shape, "Pos")
    spec_dims = dimensions_from_axes([axes[i] for i in sig], spec_shape, "Spec")
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


def write(
    target: Location,
    signal: Any,
    *,
    overwrite: bool = False,
    chunks: Any = None,
    show_progressbar: bool = True,
    append: bool = False,
    **kwds: Any,
) -> None:
    """Write a signal as a USID main dataset (see :func:`lazyio.save`).

    Navigation axes become position dimensions and signal axes spectroscopic ones; a side
    without axes gets pyUSID's single placeholder dimension (``"Arb"``). The dataset is
    ``/Measurement_000/Channel_000/<title or "Raw_Data">`` with its four ancillary
    datasets; dask data are streamed chunk by chunk.

    Parameters
    ----------
    chunks : None, True or (int, int)
        Storage chunks of the 2-D (positions, spectroscopic values) dataset. ``None``:
        whole spectra, about 1 MB per chunk, whole scan lines where they fit; ``True``:
        h5py's guess.
    append : bool, default False
        Add the signal to an existing local file as the next ``Measurement_NNN`` group
        (what RosettaSciIO's writer does when the file exists), in place.
    **kwds
        h5py dataset options for the main dataset (``compression``, ``compression_opts``,
        ``shuffle``, ...); uncompressed by default, as pyUSID.
    """
    location = as_location(target)
    signal = as_signal_dict(signal)
    _check_writable(location, signal["data"])
    kwds.pop("mode", None)
    common = {"chunks": chunks, "show_progressbar": show_progressbar, "options": kwds}
    if append and location.exists():
        if location.local_path is None:
            raise UnsupportedError(f"{location}: appending needs a local file")
        handles.close_location(location)  # our read handles must not see the file change under them
        with h5py.File(location.local_path, "r+") as h5file:
            before = set(h5file)
            try:
                _write_into(h5file, signal, **common)
            except BaseException:
                for name in set(h5file) - before:  # leave the file as it was
                    del h5file[name]
                raise
        return
    if location.exists() and not overwrite:
        raise TargetExistsError(f"{location} exists; pass overwrite=True to replace it")
    handles.close_location(location)
    if location.local_path is not None:
        with atomic_path(location.local_path) as tmp, h5py.File(tmp, "w") as h5file:
            _write_into(h5file, signal, **common)
        return
    # HDF5 cannot be written through a byte stream: write locally, then upload whole.
    with tempfile.TemporaryDirectory(prefix="lazyio-") as tmpdir:
        tmp = os.path.join(tmpdir, location.name)
        with h5py.File(tmp, "w") as h5file:
            _write_into(h5file, signal, **common)
        location.fs.put_file(tmp, location.path)


# --------------------------------------------------------------------------- rsciio API


def file_reader(
    filename: Any,
    lazy: bool = False,
    dataset_path: str | None = None,
    ignore_non_uniform_dims: bool = True,
    **kwds: Any,
) -> list[dict[str, Any]]:
    """RosettaSciIO-compatible reader; see :func:`lazyio.load` and :func:`read`."""
    return read(
        as_location(filename), lazy=lazy, dataset_path=dataset_path,
        ignore_non_uniform_dims=ignore_non_uniform_dims, **kwds,
    )


def file_writer(filename: Any, signal: dict[str, Any], **kwds: Any) -> None:
    """RosettaSciIO-compatible writer (replaces an existing file unless ``append=True``);
    see :func:`lazyio.save` and :func:`write`."""
    kwds.setdefault("overwrite", True)
    save(filename, signal, format=NAME, **kwds)


with contextlib.suppress(ImportError):  # registers blosc, zstd, lz4, ... filters with HDF5
    import hdf5plugin  # noqa: F401
