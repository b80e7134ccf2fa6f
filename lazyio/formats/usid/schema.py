"""The h5USID schema, read and written with h5py alone (pyUSID is only the tests' oracle).

A USID *main* dataset is a 2-D HDF5 dataset (positions x spectroscopic values) with string
attributes ``quantity`` and ``units`` and object references to four ancillary datasets:
``Position_Indices``/``Position_Values`` of shape (positions, position dimensions) and
``Spectroscopic_Indices``/``Spectroscopic_Values`` of shape (spectroscopic dimensions,
spectroscopic values), each with ``labels`` and ``units`` attributes.

This module knows that layout: finding main datasets, recovering the N-D dimensions (order,
sizes, values) from the index matrices, presenting the 2-D dataset as an N-D chunk source,
choosing chunk-aligned N-D dask chunks, and building the ancillary matrices for writing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import h5py
import numpy as np

from lazyio.backends.chunking import (
    Chunks,
    flat_aligned_block,
    flattened_storage_chunks,
    reshaped_2d_chunks,
)
from lazyio.backends.hdf5.filters import ensure_filters
from lazyio.backends.hdf5.sources import H5Source, open_h5
from lazyio.backends.plan import is_dask_array
from lazyio.backends.slicing import apply_residual, split_index
from lazyio.errors import FormatError

__all__ = [
    "ANCILLARY",
    "ANCILLARY_MAX_ITEMS",
    "Dimension",
    "USIDView",
    "attrs_to_dict",
    "dimensions_from_axes",
    "find_main",
    "flatten",
    "grid_indices",
    "group_attrs",
    "main_chunks",
    "main_problem",
    "nd_chunks",
    "next_index",
    "parse_dimensions",
    "read_dimensions",
    "rows_block",
    "set_attr",
    "split_descriptor",
    "string_array",
    "write_ancillary",
]

_logger = logging.getLogger("lazyio")

ANCILLARY = (
    "Position_Indices", "Position_Values", "Spectroscopic_Indices", "Spectroscopic_Values"
)
INDICES_DTYPE = np.uint32  # what pyUSID writes
VALUES_DTYPE = np.float32
# Storage chunks of about 1 MB holding whole spectra, as the hspy writer's default.
TARGET_CHUNK_BYTES = 1e6
# pyUSID's placeholder for a side (positions or spectroscopic) without dimensions
DUMMY_DIMENSION = ("Arb", "a. u.")
# Relative tolerance on the steps of a uniformly varied dimension (sidpy's ``get_slope``).
UNIFORM_RTOL = 1e-3


# --------------------------------------------------------------------------- attributes


def decode_text(value: Any) -> Any:
    """Bytes and numpy strings as ``str``; arrays of them as lists of ``str``."""
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "SUO":
        return [decode_text(v) for v in value.ravel().tolist()]
    return value


def _attr_value(value: Any) -> Any:
    """An attribute value fit for ``original_metadata``; ``None`` for references."""
    if isinstance(value, h5py.Reference | h5py.RegionReference | h5py.Empty):
        return None  # object/region references mean nothing outside the file
    value = decode_text(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O" or value.dtype.names is not None:
            return None
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def attrs_to_dict(obj: h5py.HLObject) -> dict[str, Any]:
    """The attributes of an HDF5 object as plain Python, skipping references.

    Old pyUSID files carry region references (one attribute per dimension label) on their
    ancillary and main datasets; those, and any attribute h5py cannot read, are skipped.
    """
    out: dict[str, Any] = {}
    for key in obj.attrs:
        try:
            value = _attr_value(obj.attrs[key])
        except (OSError, TypeError, ValueError):
            _logger.debug("skipping unreadable attribute %s of %s", key, obj.name, exc_info=True)
            continue
        if value is not None:
            out[key] = value
    return out


def string_list(obj: h5py.HLObject, name: str, count: int) -> list[str]:
    """A ``labels``/``units`` attribute as ``count`` strings (missing ones empty)."""
    raw = obj.attrs.get(name)
    if raw is None:
        return [""] * count
    values = decode_text(raw)
    if isinstance(values, str):
        values = [values]
    values = [str(decode_text(v)) for v in np.atleast_1d(np.asarray(values, dtype=object))]
    return (values + [""] * count)[:count]


def string_array(values: Sequence[str]) -> np.ndarray:
    """Strings as the fixed-length UTF-8 byte array sidpy writes for lists of strings."""
    return np.array([v.encode("utf-8") for v in values], dtype="S")


def split_descriptor(text: str) -> tuple[str, str]:
    """Split ``"Quantity (units)"`` or ``"Quantity [units]"`` into quantity and units."""
    text = text.strip()
    for opening, closing in ("()", "[]"):
        if text.endswith(closing) and opening in text:
            at = text.rfind(opening)
            return text[:at].strip(), text[at + 1 : -1].strip()
    return text, ""


# --------------------------------------------------------------------------- detection


def _deref(h5file: h5py.File, ref: Any) -> h5py.HLObject | None:
    if not isinstance(ref, h5py.Reference) or isinstance(ref, h5py.RegionReference):
        return None
    try:
        return h5file[ref]
    except (ValueError, KeyError, OSError):
        return None


def main_problem(dset: Any) -> str | None:
    """Why ``dset`` is not a USID main dataset, or ``None`` if it is one."""
    if not isinstance(dset, h5py.Dataset):
        return "it is not a dataset"
    if dset.ndim != 2:
        return f"it has {dset.ndim} dimensions, not 2"
    for name in ("quantity", "units"):
        if not isinstance(decode_text(dset.attrs.get(name)), str):
            return f"it has no string attribute {name!r}"
    shapes = {}
    for name in ANCILLARY:
        if name not in dset.attrs:
            return f"it has no attribute {name!r}"
        anc = _deref(dset.file, dset.attrs[name])
        if not isinstance(anc, h5py.Dataset) or anc.ndim != 2:
            return f"its {name!r} attribute does not refer to a 2-D dataset"
        shapes[name] = anc.shape
    rows, cols = dset.shape
    if shapes["Position_Indices"] != shapes["Position_Values"]:
        return "Position_Indices and Position_Values differ in shape"
    if shapes["Spectroscopic_Indices"] != shapes["Spectroscopic_Values"]:
        return "Spectroscopic_Indices and Spectroscopic_Values differ in shape"
    if shapes["Position_Indices"][0] != rows:
        return f"Position_Indices has {shapes['Position_Indices'][0]} rows, not {rows}"
    if shapes["Spectroscopic_Indices"][1] != cols:
        found = shapes["Spectroscopic_Indices"][1]
        return f"Spectroscopic_Indices has {found} columns, not {cols}"
    return None


def find_main(h5file: h5py.File, first_only: bool = False) -> list[str]:
    """Paths of the USID main datasets in the file, in h5py's visiting (name) order."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> str | None:
        # cheap attribute-name test first: most datasets of a file are not main datasets
        if (
            isinstance(obj, h5py.Dataset)
            and obj.ndim == 2
            and "Position_Indices" in obj.attrs
            and main_problem(obj) is None
        ):
            # h5py gives bytes for a name that is not UTF-8 (a damaged file)
            found.append("/" + (name if isinstance(name, str) else name.decode(errors="replace")))
            if first_only:
                return name  # a non-None return stops the visit
        return None

    h5file.visititems(visit)
    return found


# --------------------------------------------------------------------------- dimensions


@dataclass(frozen=True)
class Dimension:
    """One position or spectroscopic dimension: label, units and the values it took."""

    name: str
    units: str
    values: np.ndarray
    #: the axis name a label was made unique from (``"x"`` for ``"x_1"``), if it was
    original: str | None = None

    @property
    def size(self) -> int:
        return len(self.values)

    def step(self) -> float | None:
        """The constant step of a uniformly varied dimension, else ``None``."""
        values = np.asarray(self.values, dtype=np.float64)
        if values.size < 2:
            return 0.0
        step = (values[-1] - values[0]) / (values.size - 1)
        if step == 0 or not np.isfinite(step):
            return None
        # values are stored as float32: allow for their rounding as well as the tolerance
        stored = np.asarray(self.values)
        resolution = 0.0
        if stored.dtype.kind == "f":
            resolution = 4 * float(np.max(np.spacing(np.abs(stored))))
        tolerance = UNIFORM_RTOL * abs(step) + resolution
        return float(step) if np.all(np.abs(np.diff(values) - step) <= tolerance) else None


def _first_appearance_codes(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0, 1, ... numbering the distinct values in order of first appearance, and the
    row of each first appearance."""
    _, first, inverse = np.unique(column, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse.ravel()], first[order]


def parse_dimensions(
    indices: np.ndarray, values: np.ndarray, labels: Sequence[str], units: Sequence[str],
    where: str,
) -> tuple[list[Dimension], np.ndarray | None]:
    """Recover the dimensions of one side (positions or spectroscopic values).

    Parameters
    ----------
    indices, values : ndarray
        Ancillary matrices oriented as (steps, dimensions): Position_* as stored, the
        transpose of Spectroscopic_*.
    labels, units : sequence of str
        One per column.
    where : str
        Names the file and dataset in error messages.

    Returns
    -------
    dims : list of Dimension
        Slowest-varying first, the order of a C-ordered reshape. A dimension's values are in
        the order in which they first appear along the steps.
    order : ndarray or None
        ``None`` when the steps enumerate the grid of ``dims`` in C order (a reshape is
        enough); else, for each grid cell in C order, the step that holds it (a gather).
    """
    steps, ndims = indices.shape
    if len(labels) != ndims:
        raise FormatError(f"{where}: {len(labels)} labels for {ndims} dimensions")
    if steps == 0 or ndims == 0:
        return [], None
    changes = np.count_nonzero(np.diff(indices, axis=0), axis=0)
    # fewest changes = slowest; ties (size-1 dimensions) keep the column order
    slow_to_fast = np.argsort(changes, kind="stable")
    codes, firsts = [], []
    for col in slow_to_fast:
        code, first = _first_appearance_codes(indices[:, col])
        codes.append(code)
        firsts.append(first)
    sizes = [len(f) for f in firsts]
    if math.prod(sizes) != steps:
        raise FormatError(
            f"{where}: the dimensions {[labels[c] for c in slow_to_fast]} take {sizes} "
            f"distinct indices, whose product {math.prod(sizes)} is not the {steps} steps "
            "stored (dependent or incomplete dimensions are not supported)"
        )
    cell = np.zeros(steps, dtype=np.int64)
    for code, size in zip(codes, sizes, strict=True):
        cell = cell * size + code
    order = None
    if not np.array_equal(cell, np.arange(steps)):
        if np.any(np.bincount(cell, minlength=steps) != 1):
            raise FormatError(f"{where}: some combinations of indices occur more than once")
        order = np.argsort(cell, kind="stable")  # e.g. serpentine scans
    dims = [
        Dimension(labels[col], units[col], np.asarray(values[first, col]))
        for col, first in zip(slow_to_fast, firsts, strict=True)
    ]
    return dims, order


def grid_indices(sizes: Sequence[int], start: int = 0, stop: int | None = None) -> np.ndarray:
    """The (steps, dimensions) index matrix of a C-ordered grid, slowest dimension first.

    ``start`` and ``stop`` select a run of steps, so big grids can be written in slabs.
    """
    steps = math.prod(sizes)
    stop = steps if stop is None else min(stop, steps)
    flat = np.arange(start, max(start, stop), dtype=np.int64)
    out = np.empty((flat.size, len(sizes)), dtype=INDICES_DTYPE)
    stride = steps
    for axis, size in enumerate(sizes):
        stride //= size
        out[:, axis] = (flat // stride) % size
    return out


# --------------------------------------------------------------------------- the N-D view


def _box_steps(box: Sequence[slice], shape: tuple[int, ...]) -> tuple[int, int, np.ndarray | None]:
    """Flat C-order range [start, stop) covering an N-D box, and the flat offsets inside it
    when the box is not one contiguous run (``None`` when it is)."""
    if not shape:
        return 0, 1, None
    starts = [s.start for s in box]
    lengths = [s.stop - s.start for s in box]
    first = int(np.ravel_multi_index(starts, shape))
    last = int(np.ravel_multi_index([s.stop - 1 for s in box], shape))
    if math.prod(lengths) == last - first + 1:
        return first, last + 1, None
    grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij")
    flat = np.ravel_multi_index(grids, shape).ravel() - first
    return first, last + 1, flat


@dataclass(frozen=True)
class USIDView:
    """A USID main dataset seen as its N-D form: positions, then spectroscopic dimensions.

    A chunk source: it holds the 2-D dataset's :class:`~lazyio.backends.hdf5.sources.H5Source` and
    the N-D shape, never a file; a box of the N-D array is read as the 2-D rectangle of
    rows and columns that covers it (one contiguous run each when the box is chunk-aligned).

    Parameters
    ----------
    source : H5Source
        The 2-D main dataset.
    pos_shape, spec_shape : tuple of int
        Sizes of the position and spectroscopic dimensions, slowest first.
    field : str, optional
        A field of a compound dtype, read alone.
    """

    source: H5Source
    pos_shape: tuple[int, ...]
    spec_shape: tuple[int, ...]
    field: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.pos_shape + self.spec_shape

    @property
    def dtype(self) -> np.dtype:
        dtype = np.dtype(self.source.dtype)
        return dtype if self.field is None else dtype[self.field]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        box, residual = split_index(key, self.shape)
        return apply_residual(self.read_box(box), residual)

    def _read_2d(self, rows: slice, cols: slice) -> np.ndarray:
        if self.field is None:
            return self.source.read_box((rows, cols))
        # h5py converts only the requested member of each compound record
        src = self.source
        dset = open_h5(src.location, token=src.token)[src.dataset]
        return dset.fields(self.field)[rows, cols]

    def read_box(self, box: tuple[slice, ...]) -> np.ndarray:
        """Read an N-D box given as step-1 slices."""
        lengths = tuple(s.stop - s.start for s in box)
        if math.prod(lengths) == 0:
            return np.empty(lengths, dtype=self.dtype)
        npos = len(self.pos_shape)
        r0, r1, rsel = _box_steps(box[:npos], self.pos_shape)
        c0, c1, csel = _box_steps(box[npos:], self.spec_shape)
        block = self._read_2d(slice(r0, r1), slice(c0, c1))
        if rsel is not None:
            block = np.take(block, rsel, axis=0)
        if csel is not None:
            block = np.take(block, csel, axis=1)
        return block.reshape(lengths)


# --------------------------------------------------------------------------- chunks


# The rules are generic (N-D axes stored flattened into one chunked axis): they live in
# lazyio.backends.chunking; the USID names stay for the plugin.
rows_block = flat_aligned_block
nd_chunks = reshaped_2d_chunks


# --------------------------------------------------------------------------- reading helpers


#: The most values of one ancillary matrix read at load (Position_/Spectroscopic_ Indices
#: and Values are read whole to find the dimensions): 8 Mi values hold a 2048 x 4096 scan
#: of two position dimensions, parsed with a peak RSS of ~700 MB (32 Mi took 1.15 GB and
#: 24 s); a 15 KB file declaring 1e8 never-written rows took 4.1 GB.
ANCILLARY_MAX_ITEMS = 1 << 23

#: attribute of the ancillary datasets holding the axes' names where the ``labels`` had
#: to be made unique (lazyio's own; pyUSID and RosettaSciIO read the labels)
ORIGINAL_NAMES = "lazyio_names"


def read_dimensions(
    dset: h5py.Dataset, spectroscopic: bool, where: str
) -> tuple[list[Dimension], np.ndarray | None]:
    """The dimensions of one side of a main dataset (see :func:`parse_dimensions`)."""
    prefix = "Spectroscopic" if spectroscopic else "Position"
    f = dset.file
    inds = f[dset.attrs[f"{prefix}_Indices"]]
    vals = f[dset.attrs[f"{prefix}_Values"]]
    # before anything is sized by them: labels are one string per dimension
    for anc in (inds, vals):
        if anc.size > ANCILLARY_MAX_ITEMS:
            raise FormatError(
                f"{where}: {anc.name} declares {anc.shape[0]} x {anc.shape[1]} values, read "
                f"whole at load to find the dimensions; lazyio refuses more than "
                f"{ANCILLARY_MAX_ITEMS} (a damaged or hostile file?)"
            )
    ndims = inds.shape[0] if spectroscopic else inds.shape[1]
    labels = string_list(inds, "labels", ndims)
    labels = [lab or f"{prefix}_Dim_{i}" for i, lab in enumerate(labels)]
    units = string_list(inds, "units", ndims)
    ensure_filters(inds)
    ensure_filters(vals)
    ind_mat, val_mat = inds[()], vals[()]
    if spectroscopic:
        ind_mat, val_mat = ind_mat.T, val_mat.T
    dims, order = parse_dimensions(ind_mat, val_mat, labels, units,
                                   f"{where} ({prefix} dimensions)")
    if ORIGINAL_NAMES in inds.attrs:  # labels lazyio made unique: the axes' own names
        names = dict(zip(labels, string_list(inds, ORIGINAL_NAMES, ndims), strict=True))
        dims = [dataclasses.replace(d, name=names.get(d.name) or d.name) for d in dims]
    return dims, order


def group_attrs(dset: h5py.Dataset) -> dict[str, Any]:
    """Attributes of the Channel and Measurement groups above a main dataset (what
    RosettaSciIO calls ``parameters``)."""
    out: dict[str, Any] = {}
    channel = dset.parent
    if isinstance(channel, h5py.Group) and "Channel" in channel.name.rsplit("/", 1)[-1]:
        out.update(attrs_to_dict(channel))
        measurement = channel.parent
        if "Measurement" in measurement.name.rsplit("/", 1)[-1]:
            out.update(attrs_to_dict(measurement))
    return out


# --------------------------------------------------------------------------- writing helpers


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaves of a nested mapping with '-'-joined keys (RosettaSciIO's layout on the
    Measurement group)."""
    for key, value in tree.items():
        name = f"{prefix}-{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from flatten(value, name)
        else:
            yield name, value


def set_attr(obj: h5py.HLObject, key: str, value: Any) -> None:
    """Write a metadata value as an attribute if HDF5 can hold it; skip it otherwise."""
    if value is None or is_dask_array(value):
        return
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        value = string_array(value)
    try:
        obj.attrs[key] = value
    except (TypeError, ValueError, OSError):
        _logger.debug("usid writer skips attribute %s=%r", key, value)


def dimensions_from_axes(
    axes: list[dict[str, Any]], shape: tuple[int, ...], kind: Literal["Pos", "Spec"],
    seen: set[str] | None = None,
) -> list[Dimension]:
    """Dimensions (slowest first) of one side; the dummy dimension for an empty side.

    Labels are made unique across ``seen`` (pass one set for both sides): pyUSID finds a
    dimension by its label among the position *and* spectroscopic ones, and cannot
    reshape a dataset two of whose dimensions share one. A renamed dimension keeps the
    axis' own name in :attr:`Dimension.original` (written as ``lazyio_names``).
    """
    if not axes:
        return [Dimension(*DUMMY_DIMENSION, np.zeros(1))]
    dims = []
    seen = set() if seen is None else seen
    for i, (axis, size) in enumerate(zip(axes, shape, strict=True)):
        original = str(axis.get("name") or "").strip()
        # RosettaSciIO numbers unnamed dimensions from the fastest one
        name = original or f"{kind}_Dim_{len(axes) - 1 - i}"
        base, n = name, 1
        while name in seen:
            name, n = f"{base}_{n}", n + 1
        seen.add(name)
        units = str(axis.get("units") or "").strip() or DUMMY_DIMENSION[1]
        if axis.get("axis") is not None:
            values = np.asarray(axis["axis"], dtype=np.float64)
        else:
            values = axis.get("offset", 0.0) + axis.get("scale", 1.0) * np.arange(size)
        dims.append(Dimension(name, units, values, original if name != base else None))
    return dims


_ANCILLARY_SLAB = 2**20  # steps per slab: ancillaries of huge grids are written in pieces


def write_ancillary(
    group: h5py.Group, prefix: str, dims: list[Dimension], spectroscopic: bool
) -> tuple[h5py.Dataset, h5py.Dataset]:
    """Create ``<prefix>_Indices`` and ``<prefix>_Values`` of a C-ordered grid of ``dims``.

    Written in slabs of steps, so memory stays bounded however many steps the grid has.
    """
    sizes = [d.size for d in dims]
    steps = math.prod(sizes)
    shape = (len(dims), steps) if spectroscopic else (steps, len(dims))
    inds_dset = group.create_dataset(f"{prefix}_Indices", shape=shape, dtype=INDICES_DTYPE)
    vals_dset = group.create_dataset(f"{prefix}_Values", shape=shape, dtype=np.float32)
    axis_values = [np.asarray(d.values, dtype=np.float64) for d in dims]
    for start in range(0, steps, _ANCILLARY_SLAB):
        inds = grid_indices(sizes, start, start + _ANCILLARY_SLAB)
        vals = np.empty(inds.shape, dtype=np.float32)
        for col, values in enumerate(axis_values):
            vals[:, col] = values[inds[:, col]]
        stop = start + inds.shape[0]
        where = np.s_[:, start:stop] if spectroscopic else np.s_[start:stop, :]
        inds_dset[where] = inds.T if spectroscopic else inds
        vals_dset[where] = vals.T if spectroscopic else vals
    for dset in (inds_dset, vals_dset):
        dset.attrs["labels"] = string_array([d.name for d in dims])
        dset.attrs["units"] = string_array([d.units for d in dims])
        if any(d.original is not None for d in dims):
            # the axes' own names, where a label had to differ: read back as the names
            dset.attrs[ORIGINAL_NAMES] = string_array(
                [d.name if d.original is None else d.original for d in dims])
        dset.attrs["type"] = np.zeros(len(dims), dtype=np.int64)  # pyUSID's DimType.DEFAULT
    return inds_dset, vals_dset


def main_chunks(
    request: Chunks, pos_shape: tuple[int, ...], spec_shape: tuple[int, ...], dtype: np.dtype
) -> tuple[int, int] | None:
    """Storage chunks of the 2-D main dataset for the writer's ``chunks`` argument."""
    return flattened_storage_chunks(request, pos_shape, spec_shape, dtype, TARGET_CHUNK_BYTES)


def next_index(group: h5py.Group, base: str) -> str:
    """The first free ``<base>_NNN`` name in the group (pyUSID's indexed groups)."""
    taken = {k for k in group if k.startswith(f"{base}_")}
    i = 0
    while f"{base}_{i:03d}" in taken:
        i += 1
    return f"{base}_{i:03d}"
