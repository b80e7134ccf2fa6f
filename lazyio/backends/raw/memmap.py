"""Distributed memory maps: a raw binary payload (``.npy``, a detector dump) as a dask array.

Every task maps the file itself (through the per-process handle cache) and returns its
block as a read-only view of the map, as :class:`numpy.memmap` would, so no data passes
through the scheduler and graphs run on process workers over a shared file system. The
pages of a block are unmapped from the process once the block and every view of it are
gone: a cached map would otherwise keep every page it ever touched counted as the
worker's memory. Remote files (no local path) are read by byte ranges into new arrays.

Graph construction does no per-chunk Python work: :func:`~lazyio.backends.to_dask` makes a
lazily materialised ``Blockwise`` layer whose block slices come from ``ArraySliceDep``;
scan ``positions`` use a ``Blockwise`` layer over a chunked frame-index map.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from itertools import product
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lazyio import handles
from lazyio.backends import to_dask
from lazyio.backends.chunking import (
    Chunks,
    contiguous_chunks,
    memory_map_chunks,
    target_chunk_bytes,
)
from lazyio.backends.plan import plan, planned
from lazyio.backends.slicing import apply_residual, split_index
from lazyio.errors import FormatError, UnsupportedError, not_found
from lazyio.location import Location, as_location

if TYPE_CHECKING:
    import dask.array as da

Order = Literal["C", "F"]  # storage order of a memory-mapped array
__all__ = ["MemmapSource", "contiguous_chunks", "memmap_distributed"]

# A remote range request costs about as much as transferring this many bytes (latency x
# bandwidth of an object store); reads merge runs of bytes while merging is cheaper.
_REQUEST_COST = 256 * 1024


def _release(mm: mmap.mmap, start: int, stop: int) -> None:
    """Unmap the pages of ``[start, stop)`` from this process (the page cache keeps them).

    A cached map would otherwise keep every page it ever touched resident in the worker,
    and distributed counts those pages against the worker's memory limit.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None or stop <= start:
        return
    first = start - start % mmap.PAGESIZE
    # Only an optimisation; a map closed meanwhile has nothing mapped.
    with contextlib.suppress(OSError, ValueError):
        mm.madvise(advice, first, min(stop, len(mm)) - first)


def _flat_index(index: Sequence[int], shape: Sequence[int], order: Order) -> int:
    """Position of ``index`` among the items of an array of ``shape`` stored in ``order``."""
    axes = range(len(shape)) if order == "C" else reversed(range(len(shape)))
    flat = 0
    for axis in axes:
        flat = flat * shape[axis] + index[axis]
    return flat


@dataclass(frozen=True)
class MemmapSource:
    """A raw array in a file: ``records`` items of ``file_dtype`` from byte ``offset``.

    The exposed array is ``records`` followed by the sub-array shape of the dtype (or of
    its field ``key``), with the field's base dtype, exactly as :class:`numpy.memmap`
    shows it. The source holds no open file; it pickles by value.

    Parameters
    ----------
    location : Location
        The file.
    offset : int
        Byte offset of the first item.
    records : tuple of int
        Shape of the stored array of ``file_dtype`` items.
    file_dtype : numpy.dtype
        The dtype of one stored item (may be structured or a sub-array dtype).
    order : {"C", "F"}
        Storage order of ``records``.
    key : str, optional
        A field of a structured ``file_dtype`` to expose.
    token : str
        Changes when the file changes (see :meth:`Location.modified_token`).
    """

    location: Location
    offset: int
    records: tuple[int, ...]
    file_dtype: np.dtype
    order: Order = "C"
    key: str | None = None
    token: str = ""

    @property
    def _field(self) -> np.dtype:
        return self.file_dtype if self.key is None else self.file_dtype[self.key]

    @property
    def dtype(self) -> np.dtype:
        return self._field.base

    @property
    def shape(self) -> tuple[int, ...]:
        return self.records + self._field.shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def stored_nbytes(self) -> int:
        """Bytes of the stored array (all fields)."""
        return math.prod(self.records) * self.file_dtype.itemsize

    def __getitem__(self, key: Any) -> np.ndarray:
        box, residual = split_index(key, self.shape)
        return apply_residual(self.read_box(box), residual)

    def read_box(self, box: tuple[slice, ...]) -> np.ndarray:
        """Read a rectangular region given as step-1 slices over the exposed shape."""
        out_shape = tuple(s.stop - s.start for s in box)
        if math.prod(out_shape) == 0:
            return np.empty(out_shape, dtype=self.dtype)
        n = len(self.records)
        outer, inner = box[:n], box[n:]
        if self.location.local_path is not None:
            # A read-only view of the map, not a copy (copying halved throughput). Every
            # array derived from `records` keeps it alive (numpy collapses view chains to
            # the first array over the map), so its pages are released exactly when the
            # last of them is gone. The trailing Ellipsis keeps a 0-d result an array: a
            # numpy scalar would lose a non-native byte order.
            mm = handles.read_map(self.location, self.token)
            records = self._view(mm)
            first, last = self._span(outer)
            weakref.finalize(records, _release, mm, self.offset + first, self.offset + last)
            whole: tuple[Any, ...] = (*box, Ellipsis)
            view: np.ndarray = self._expose(records)[whole]
            return view
        records = self._expose(self._read_records(outer))
        rest: tuple[Any, ...] = (*(slice(None),) * n, *inner, Ellipsis)
        copy: np.ndarray = records[rest].copy(order="K")
        return copy

    def take(self, index: np.ndarray, rest: tuple[slice, ...]) -> np.ndarray:
        """Read ``array[index, *rest]``: whole items along axis 0 (frames of a scan).

        ``index`` is a 1-D integer array; ``rest`` slices the exposed axes after the first.
        """
        index = np.asarray(index, dtype=np.intp)
        out_shape = (len(index), *(s.stop - s.start for s in rest))
        if math.prod(out_shape) == 0:
            return np.empty(out_shape, dtype=self.dtype)
        if self.location.local_path is not None:
            mm = handles.read_map(self.location, self.token)
            picked: tuple[Any, ...] = (index, *rest)
            block: np.ndarray = self._expose(self._view(mm))[picked]  # fancy index: a copy
            rows = slice(int(index.min()), int(index.max()) + 1)
            first, last = self._span((rows, *(slice(0, s) for s in self.records[1:])))
            _release(mm, self.offset + first, self.offset + last)
            return block
        # Remote: read each run of consecutive items once, then gather.
        wanted = np.unique(index)
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        parts = [
            self.read_box((slice(int(run[0]), int(run[-1]) + 1), *rest))
            for run in np.split(wanted, breaks)
        ]
        return np.concatenate(parts)[np.searchsorted(wanted, index)]

    # -- helpers ------------------------------------------------------------------------

    def _view(self, buffer: Any) -> np.ndarray:
        # numpy expands a sub-array dtype into trailing axes here, as np.memmap does.
        return np.ndarray(
            self.records, dtype=self.file_dtype, buffer=buffer, offset=self.offset,
            order=self.order,
        )

    def _expose(self, records: np.ndarray) -> np.ndarray:
        return records if self.key is None else records[self.key]

    def _span(self, outer: tuple[slice, ...]) -> tuple[int, int]:
        """Byte range (relative to ``offset``) that holds the items of ``outer``."""
        first = _flat_index([s.start for s in outer], self.records, self.order)
        last = _flat_index([s.stop - 1 for s in outer], self.records, self.order)
        return first * self.file_dtype.itemsize, (last + 1) * self.file_dtype.itemsize

    def _read_records(self, outer: tuple[slice, ...]) -> np.ndarray:
        """Read the items of ``outer`` from a remote file, in as few requests as pays."""
        if self.order == "C":
            return self._read_records_c(outer, self.records)
        rev = self._read_records_c(tuple(reversed(outer)), tuple(reversed(self.records)))
        n = len(self.records)
        return rev.transpose(*reversed(range(n)), *range(n, rev.ndim))

    def _read_records_c(self, box: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
        itemsize = self.file_dtype.itemsize
        lens = [s.stop - s.start for s in box]
        n = len(shape)
        out = np.empty((*lens, itemsize), dtype=np.uint8)
        if n == 0:
            raw = self.location.read_bytes(self.offset, self.offset + itemsize)
            out[...] = np.frombuffer(raw, dtype=np.uint8)
            scalar: np.ndarray = np.ndarray((), dtype=self.file_dtype, buffer=out)
            return scalar
        # Group runs along axis g: one request per index of the axes before g, each
        # covering whole trailing rows; pick g trading requests against wasted bytes.
        def cost(g: int) -> int:
            requests = math.prod(lens[:g])
            nbytes = math.prod(lens[: g + 1]) * math.prod(shape[g + 1 :]) * itemsize
            return int(requests * _REQUEST_COST + nbytes)

        g = min(range(n), key=cost)
        run_items = lens[g] * math.prod(shape[g + 1 :])
        leads = list(product(*(range(s.start, s.stop) for s in box[:g])))
        starts = [
            self.offset
            + _flat_index((*lead, box[g].start, *(0,) * (n - g - 1)), shape, "C") * itemsize
            for lead in leads
        ]
        ends = [s + run_items * itemsize for s in starts]
        if len(starts) == 1:
            raws = [self.location.read_bytes(starts[0], ends[0])]
        else:
            raws = self.location.read_ranges(starts, ends)
        tail = (slice(None), *box[g + 1 :], slice(None))
        for lead, raw, start in zip(leads, raws, starts, strict=True):
            if len(raw) != run_items * itemsize:
                raise FormatError(
                    f"{self.location}: expected {run_items * itemsize} bytes at offset "
                    f"{start}, got {len(raw)} (was the file truncated?)"
                )
            run = np.frombuffer(raw, dtype=np.uint8).reshape(
                (lens[g], *shape[g + 1 :], itemsize)
            )
            dst = tuple(i - s.start for i, s in zip(lead, box[:g], strict=True))
            out[dst] = run[tail]
        return np.ndarray(tuple(lens), dtype=self.file_dtype, buffer=out)


def _scan_block(
    frames: MemmapSource, frame_index: np.ndarray, box: tuple[slice, ...]
) -> np.ndarray:
    """One block of a scan: frames placed at their positions, zeros where none was taken."""
    sig_box = box[frame_index.ndim :]
    out = np.zeros(
        frame_index.shape + tuple(s.stop - s.start for s in sig_box), dtype=frames.dtype
    )
    present = frame_index >= 0
    if present.any():
        out[present] = frames.take(frame_index[present], sig_box)
    return out





def _positions_array(positions: Any, nav_shape: tuple[int, ...]) -> np.ndarray:
    pos = np.asarray(positions)
    if pos.ndim == 1 and len(nav_shape) == 1:
        pos = pos[:, None]
    if pos.ndim != 2 or pos.shape[1] != len(nav_shape) or pos.dtype.kind not in "iu":
        raise ValueError(
            f"positions must be integers of shape (n_frames, {len(nav_shape)}) for a "
            f"navigation shape {nav_shape}; got {pos.dtype} of shape {pos.shape}"
        )
    if pos.size and ((pos < 0).any() or (pos >= np.asarray(nav_shape)).any()):
        raise ValueError(f"positions fall outside the navigation shape {nav_shape}")
    return pos.astype(np.intp)


def memmap_distributed(
    filename: Any,
    dtype: Any,
    positions: Any = None,
    offset: int = 0,
    shape: int | Sequence[int] | None = None,
    order: Order = "C",
    chunks: Chunks = "auto",
    block_size_limit: int | str | None = None,
    key: str | None = None,
) -> da.Array:
    """A dask array over a raw binary file, each task memory-mapping the file itself.

    A drop-in for RosettaSciIO's function of the same name (and for :class:`numpy.memmap`
    in read mode): no data passes through the scheduler, and the array computes on
    process workers that share the file system. Remote URLs are read by byte ranges.

    Parameters
    ----------
    filename : str, os.PathLike or Location
        A local path or an fsspec URL.
    dtype : numpy dtype
        The dtype of one stored item; may be structured (see ``key``) or a sub-array
        dtype, whose shape is appended to the array's.
    positions : array-like of int, optional
        Arbitrary scan positions, shape ``(n_frames, n_navigation_axes)``: frame ``i``
        of the file goes to navigation index ``positions[i]`` of the result (the last
        of several frames at one position wins). The last two axes of the result are the
        signal; the file holds ``n_frames`` frames one after the other, and navigation
        positions without a frame are zero. ``shape`` is then the result's shape and is
        required.
    offset : int, default 0
        Byte offset of the first item (the length of a file header).
    shape : int or tuple of int, optional
        Shape of the stored array (without the dtype's sub-array shape). By default the
        file holds a 1-D array of as many items as fit after ``offset``.
    order : {"C", "F"}, default "C"
        Storage order, as in :class:`numpy.memmap`.
    chunks : "auto", int, tuple or dict, default "auto"
        Dask chunks of the result, over all its axes (sub-array axes included).
        ``"auto"`` makes blocks of up to ``block_size_limit`` bytes that span the
        fastest-varying axes whole, so each task reads one run of bytes.
    block_size_limit : int or str, optional
        Bytes per block for ``"auto"`` chunks; dask's ``array.chunk-size`` by default.
    key : str, optional
        For a structured dtype, the field to read. The field's sub-array axes, if any,
        follow the stored shape and can be chunked like any other axis.

    Returns
    -------
    dask.array.Array

    Raises
    ------
    FormatError
        The file is shorter than ``offset`` plus the stored array.
    SourceNotFoundError
        The file does not exist.

    Examples
    --------
    A detector dump of 256 x 256 frames of 128 x 128 ``uint16`` after a 1024-byte header:

    >>> data = lazyio.memmap_distributed(
    ...     "scan.raw", "<u2", offset=1024, shape=(256, 256, 128, 128)
    ... )  # doctest: +SKIP
    """
    location = as_location(filename)
    file_dtype = np.dtype(dtype)
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    if file_dtype.hasobject:
        raise UnsupportedError(
            f"{location}: dtype {file_dtype!r} holds Python objects, which cannot be "
            "memory-mapped"
        )
    if key is not None and (file_dtype.names is None or key not in file_dtype.names):
        raise ValueError(f"key {key!r} is not a field of dtype {file_dtype!r}")
    offset = int(offset)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")
    if not location.exists():
        raise not_found(location)
    size = location.size()
    itemsize = file_dtype.itemsize
    if shape is None:
        if positions is not None:
            raise ValueError("shape (the scan's full shape) is required with positions")
        if itemsize == 0:
            raise ValueError(f"cannot infer a shape for dtype {file_dtype!r} of size 0")
        shape = (max(0, size - offset) // itemsize,)
    elif isinstance(shape, int | np.integer):
        shape = (int(shape),)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    field = file_dtype if key is None else file_dtype[key]
    out_dtype = field.base
    full_shape = shape + field.shape

    pos = None
    if positions is None:
        records = shape
    else:
        n_nav = len(full_shape) - 2
        if n_nav < 1 or n_nav > len(shape):
            raise ValueError(
                f"with positions the result needs navigation axes and two signal axes; "
                f"shape {shape} with dtype sub-array shape {field.shape} does not have them"
            )
        pos = _positions_array(positions, full_shape[:n_nav])
        records = (len(pos), *shape[n_nav:])

    needed = offset + math.prod(records) * itemsize
    if needed > size:
        raise FormatError(
            f"{location}: {math.prod(records)} items of {file_dtype} in shape {records} "
            f"from byte {offset} need {needed} bytes, but the file holds {size}"
        )
    token = location.modified_token()
    source = MemmapSource(location, offset, records, file_dtype, order, key, token)
    if block_size_limit is None:
        limit = target_chunk_bytes()
    elif isinstance(block_size_limit, str):
        from dask.utils import parse_bytes

        limit = int(parse_bytes(block_size_limit))
    else:
        limit = int(block_size_limit)
    ndim = len(full_shape)
    n_rec = len(records)

    if pos is None:
        if order == "F":  # contiguous runs go along the first stored axis
            slow_to_fast = [*reversed(range(n_rec)), *range(n_rec, ndim)]
        else:
            slow_to_fast = list(range(ndim))
        block_chunks = memory_map_chunks(chunks, full_shape, out_dtype, slow_to_fast, limit)
        return to_dask(source, block_chunks, prefix="memmap", token_extra=token)

    block_chunks = memory_map_chunks(chunks, full_shape, out_dtype, list(range(ndim)), limit)
    if planned():
        return plan(full_shape, out_dtype, block_chunks)
    import dask.array as da
    from dask.base import tokenize
    from dask.blockwise import blockwise as core_blockwise
    from dask.highlevelgraph import HighLevelGraph
    from dask.layers import ArraySliceDep

    n_nav = ndim - 2
    index_map = np.full(full_shape[:n_nav], -1, dtype=np.intp)
    index_map[tuple(pos.T)] = np.arange(len(pos))
    name = f"memmap-scan-{tokenize(source, block_chunks, index_map)}"
    # Each task receives its own part of the index map, not the whole map.
    index_blocks = da.from_array(index_map, chunks=block_chunks[:n_nav], name=f"{name}-index")
    out_ind = tuple(range(ndim))
    # da.blockwise cannot give the signal axes chunks that no input array has, so the
    # layer is built as dask's own from_array builds its: blocks indexed by the
    # index-map blocks along the navigation axes and by ArraySliceDep along all axes.
    layer = core_blockwise(
        partial(_scan_block, source),
        name,
        out_ind,
        index_blocks.name,
        out_ind[:n_nav],
        ArraySliceDep(block_chunks),
        out_ind,
        numblocks={index_blocks.name: index_blocks.numblocks},
    )
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[index_blocks])
    return da.Array(graph, name, block_chunks, meta=np.empty((0,) * ndim, dtype=out_dtype))
