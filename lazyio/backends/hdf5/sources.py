"""HDF5 datasets as chunk sources: bytes read directly, decoded outside the HDF5 lock.

h5py describes the layout (byte offset of a contiguous dataset, the chunk index and the
filter pipeline of a chunked one); the tasks read those bytes themselves (``pread`` or a
memory map locally, range requests remotely) and decode them with the filter table
(:mod:`lazyio.backends.hdf5.filters`), so reads run in parallel instead of one at a time
under h5py's global lock, and checksums (Fletcher32) are verified on every path. Layouts
or filters lazyio cannot decode fall back to h5py, which is logged at debug level.

Each :class:`H5Source` carries one read strategy: :class:`Contiguous` (an unfiltered
contiguous dataset at a byte offset), :class:`Chunked` (a chunked dataset whose filters
lazyio decodes) or :class:`ViaLibrary` (everything else, read by h5py).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from itertools import product
from typing import Any

import h5py
import numpy as np

from lazyio import handles
from lazyio.backends.hdf5.files import open_h5, open_raw
from lazyio.backends.hdf5.filters import (
    SHUFFLE,
    FilterError,
    Pipeline,
    batch_decoders,
    decodable,
    decoders,
    ensure_filters,
    read_pipeline,
)
from lazyio.backends.hdf5.index import ChunkIndex, chunk_index
from lazyio.backends.hdf5.shuffle import unshuffle_into, unshuffle_rows
from lazyio.backends.slicing import apply_residual, split_index
from lazyio.errors import CorruptChunkError, corrupt_chunk, translate
from lazyio.location import Location

__all__ = ["Chunked", "Contiguous", "H5Source", "ReadStrategy", "ViaLibrary",
           "check_inflation", "chunk_index", "open_h5"]

_logger = logging.getLogger("lazyio")

# Chunks up to this size are read many at a time (see H5Source._read_small_chunks).
_SMALL_CHUNK = 64 * 1024
# A remote task that reads whole chunks asks for the chunks stored after its own, up to
# this many bytes, to be fetched in the background (Location.read_ranges(ahead=...)): the
# link then carries the next task's bytes while this one decodes. Without it two threads
# left the link idle between tasks (43 % of 100 Mbit/s at 50 ms round trips).
_READ_AHEAD = 8 * 2**20


def _on_cluster_worker() -> bool:
    """Whether this thread runs a task of a distributed worker: there the next chunks in
    the file are usually another worker's, so nothing is read ahead."""
    if "distributed" not in sys.modules:
        return False
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def _file_order(index: ChunkIndex) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The stored chunks' offsets and sizes, in file order."""
    offsets, sizes = index.offsets.ravel(), index.sizes.ravel()
    present = offsets >= 0
    order = np.argsort(offsets[present], kind="stable")
    return offsets[present][order], sizes[present][order]


@dataclass(frozen=True)
class Contiguous:
    """An unfiltered contiguous dataset whose bytes start at ``offset`` in the file."""

    offset: int


@dataclass(frozen=True)
class Chunked:
    """A chunked dataset whose filter pipeline (in applied order) lazyio decodes."""

    chunks: tuple[int, ...]
    filters: Pipeline


@dataclass(frozen=True)
class ViaLibrary:
    """Read through h5py: a layout or filter lazyio does not read itself."""


ReadStrategy = Contiguous | Chunked | ViaLibrary


@dataclass(frozen=True)
class H5Source:
    """One HDF5 dataset, read by slices; holds no open handle.

    Use :meth:`from_dataset` to describe an open ``h5py.Dataset``.
    """

    location: Location
    dataset: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    storage_chunks: tuple[int, ...] | None = None
    strategy: ReadStrategy = ViaLibrary()
    fill_value: Any = 0
    token: str = ""  # changes when the file does, so stale handles are never reused

    @classmethod
    def from_dataset(
        cls, location: Location, dset: h5py.Dataset, name: str | None = None
    ) -> H5Source:
        """Describe ``dset`` (layout, filters, offset) without reading its data.

        ``name``, the dataset's path from ``location``'s root when it differs from
        ``dset.name`` (a dataset in another file, reached by an external link), makes
        reads go through h5py by that path.
        """
        dtype = dset.dtype
        chunks = tuple(int(c) for c in dset.chunks) if dset.chunks else None
        strategy: ReadStrategy = ViaLibrary()
        if (dtype.kind in "biufc" and not dset.is_virtual and dset.external is None
                and name is None):
            if chunks is None:
                offset = dset.id.get_offset()  # None until space is allocated
                if offset is not None or not dset.size:
                    strategy = Contiguous(int(offset or 0))
            else:
                pipeline, _names = read_pipeline(dset)
                if decodable(pipeline):
                    strategy = Chunked(chunks, pipeline)
                else:
                    _logger.debug(
                        "%s:%s uses an HDF5 filter that lazyio does not decode (%s); "
                        "reading through h5py", location, dset.name, pipeline,
                    )
        fill = dset.fillvalue if dtype.kind in "biufc" else None
        return cls(
            location=location,
            dataset=name or dset.name,
            shape=tuple(dset.shape),
            dtype=dtype,
            storage_chunks=chunks,
            strategy=strategy,
            fill_value=fill.item() if isinstance(fill, np.generic) else fill,
            token=location.modified_token(),
        )

    @property
    def offset(self) -> int | None:
        """Byte offset of an unfiltered contiguous dataset read directly, else None."""
        return self.strategy.offset if isinstance(self.strategy, Contiguous) else None

    @property
    def filters(self) -> Pipeline | None:
        """The filter pipeline of a chunked dataset read directly, else None."""
        return self.strategy.filters if isinstance(self.strategy, Chunked) else None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray[Any, Any]:
        box, residual = split_index(key, self.shape)
        result: np.ndarray[Any, Any] = apply_residual(self.read_box(box), residual)
        return result

    def read_box(self, box: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        """Read a rectangular region given as step-1 slices."""
        out_shape = tuple(s.stop - s.start for s in box)
        if math.prod(out_shape) == 0:
            return np.empty(out_shape, dtype=self.dtype)
        strategy = self.strategy
        # h5py's fallback and the index reads report damage as bare library errors
        # (IndexError: a damaged chunk index points outside the dataset)
        where = tuple((s.start, s.stop) for s in box)
        with translate(self.location, scope="chunk",
                       what=f"dataset {self.dataset}, block {where}"):
            if isinstance(strategy, Contiguous):
                return self._read_contiguous(strategy.offset, box)
            if isinstance(strategy, Chunked):
                return _ChunkReader(self, strategy).read(box, out_shape)
            return self._read_h5py(box)

    def _read_h5py(self, box: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        dset = open_h5(self.location, token=self.token)[self.dataset]
        ensure_filters(dset)
        return np.asarray(dset[box] if self.ndim else dset[()])

    def _read_contiguous(self, offset: int, box: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        # Whole rows along axis 0 form one contiguous byte range; the rest is sliced in memory.
        row_items = math.prod(self.shape[1:]) if self.ndim else 1
        first_row, rows = (box[0].start, box[0].stop - box[0].start) if self.ndim else (0, 1)
        start = offset + first_row * row_items * self.dtype.itemsize
        nbytes = rows * row_items * self.dtype.itemsize
        if self.location.local_path is not None:
            mm = handles.read_map(self.location, self.token)
            if start + nbytes > len(mm):
                raise CorruptChunkError(
                    f"{self.location}: dataset {self.dataset} extends past the end of the file "
                    f"(needs {start + nbytes} bytes, the file has {len(mm)})"
                )
            flat = np.frombuffer(mm, dtype=self.dtype, count=rows * row_items, offset=start)
        else:
            raw = self.location.read_bytes(start, start + nbytes)
            if len(raw) != nbytes:
                raise CorruptChunkError(
                    f"{self.location}: dataset {self.dataset} is truncated (short read)"
                )
            flat = np.frombuffer(raw, dtype=self.dtype)
        if self.ndim == 0:
            return flat.reshape(()).copy()
        region = flat.reshape((rows, *self.shape[1:]))
        return np.array(region[(slice(None), *box[1:])])


def check_inflation(location: Location, dset: h5py.Dataset) -> None:
    """Before h5py reads a compressed chunked dataset that lazyio does not decode itself
    (strings, compound types), undo each chunk's filters with lazyio's bounded decoders.

    HDF5's own deflate filter doubles its buffer until the stream ends, so a 1 MB chunk
    inflating to 1 GiB is allocated whole by h5py; here no chunk may inflate past its
    elements' size (at least 16 bytes an element: a variable-length element is stored as a
    16-byte heap reference). Metadata datasets are small, so the second decode is cheap.

    Raises
    ------
    CorruptChunkError
        A chunk inflates past its size, naming the file, the dataset and the chunk.
    """
    if dset.chunks is None:
        return
    pipeline, _names = read_pipeline(dset)
    if not decodable(pipeline) or not any(fid != SHUFFLE for fid, _ in pipeline):
        return
    item = max(int(dset.id.get_type().get_size()), 16)
    bound = math.prod(dset.chunks) * item
    for i in range(dset.id.get_num_chunks()):
        info = dset.id.get_chunk_info(i)
        mask, raw = dset.id.read_direct_chunk(info.chunk_offset)
        buf: Any = raw
        try:
            for step in decoders(pipeline, item, bound, int(mask), exact=False):
                buf = step(buf)
        except FilterError as err:
            where = tuple(int(o) // c for o, c in zip(info.chunk_offset, dset.chunks,
                                                      strict=True))
            raise corrupt_chunk(location, f"chunk {where} of dataset {dset.name}",
                                err) from err
        except Exception:  # noqa: BLE001, S112 - anything else: h5py reports it in context
            continue


class _ChunkReader:
    """Reads one box of a :class:`Chunked` dataset: fetch, verify, decode, assemble.

    Every path (one chunk, many chunks, the batched small-chunk path and unshuffling
    straight into place) undoes the filters with :func:`~lazyio.backends.hdf5.filters.
    decoders`, so checksums are verified and decompression is bounded on each of them.
    """

    def __init__(self, source: H5Source, strategy: Chunked) -> None:
        self.source = source
        self.chunks = strategy.chunks
        self.filters = strategy.filters
        self.itemsize = source.dtype.itemsize
        self.chunk_nbytes = math.prod(self.chunks) * self.itemsize
        # shuffle applied first is undone last: in bulk, or straight into place
        self.shuffle_first = bool(self.filters) and self.filters[0][0] == SHUFFLE

    def _shuffle_itemsize(self) -> int:
        values = self.filters[0][1]
        return values[0] if values else self.itemsize

    def _fetch(self, ranges: list[tuple[int, int]], index: ChunkIndex | None = None
               ) -> list[bytes]:
        location = self.source.location
        if location.local_path is not None:
            raw = open_raw(location, self.source.token)  # held: it stays open while read
            fd = raw.fileno()
            return [os.pread(fd, size, offset) for offset, size in ranges]
        # one concurrent batch of range requests (fsspec's async filesystems); with
        # ``index`` (whole chunks are read) the chunks stored next are read ahead
        ahead = self._ahead(ranges, index) if index is not None and ranges else None
        return location.read_ranges([o for o, _ in ranges], [o + s for o, s in ranges],
                                    ahead=ahead, tag=self.source.token)

    def _ahead(self, ranges: list[tuple[int, int]], index: ChunkIndex
               ) -> list[tuple[int, int]] | None:
        if _on_cluster_worker():
            return None
        src = self.source
        offsets, sizes = handles.memo(("h5-file-order", src.location, src.dataset, src.token),
                                      lambda: _file_order(index))
        end = max(o + s for o, s in ranges)
        i = int(np.searchsorted(offsets, end))
        out, total = [], 0
        while i < len(offsets) and total < _READ_AHEAD:
            out.append((int(offsets[i]), int(offsets[i]) + int(sizes[i])))
            total += int(sizes[i])
            i += 1
        return out

    def _corrupt(self, coords: tuple[int, ...], err: Exception) -> CorruptChunkError:
        src = self.source
        return corrupt_chunk(src.location, f"chunk {coords} of dataset {src.dataset}", err)

    def _undo(self, raw: bytes, mask: int, coords: tuple[int, ...], skip_shuffle: bool) -> Any:
        """Undo the filters (all, or all but a leading shuffle) on one chunk's bytes."""
        pipeline, nbytes = self.filters, self.chunk_nbytes
        if skip_shuffle:
            pipeline, mask = pipeline[1:], mask >> 1
        try:
            buf: Any = raw
            for step in decoders(pipeline, self.itemsize, nbytes, mask):
                buf = step(buf)
            if len(memoryview(buf).cast("B")) != nbytes:
                raise ValueError(f"{len(memoryview(buf).cast('B'))} bytes decoded where the "
                                 f"chunk has {nbytes}")
            return buf
        except Exception as err:
            raise self._corrupt(coords, err) from err

    def _decode(self, raw: bytes, mask: int, coords: tuple[int, ...]) -> np.ndarray[Any, Any]:
        buf = self._undo(raw, mask, coords, skip_shuffle=False)
        return np.frombuffer(buf, dtype=self.source.dtype).reshape(self.chunks)

    def read(self, box: tuple[slice, ...], out_shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
        src, cs = self.source, self.chunks
        index = chunk_index(src.location, src.dataset, src.token)
        ranges_per_axis = [
            range(s.start // c, -(-s.stop // c)) for s, c in zip(box, cs, strict=True)
        ]
        if self.chunk_nbytes <= _SMALL_CHUNK and math.prod(
            len(r) for r in ranges_per_axis
        ) > 1:
            grid = tuple(slice(r.start, r.stop) for r in ranges_per_axis)
            if (index.offsets[grid] >= 0).all() and not index.masks[grid].any():
                return self._read_small_chunks(box, ranges_per_axis, index)
        coords_list = list(product(*ranges_per_axis))
        present = [c for c in coords_list if index.offsets[c] >= 0]
        aligned = all(s.start % k == 0 and (s.stop % k == 0 or s.stop == n)
                      for s, k, n in zip(box, cs, src.shape, strict=True))
        raws = self._fetch([(int(index.offsets[c]), int(index.sizes[c])) for c in present],
                           index if aligned else None)
        if len(present) == len(coords_list) and len(present) == 1:
            # one chunk covering the box: no assembly copy beyond the slice
            c = present[0]
            chunk = self._decode(raws[0], int(index.masks[c]), c)
            sel = tuple(
                slice(s.start - ci * k, s.stop - ci * k) for s, ci, k in zip(box, c, cs, strict=True)
            )
            return np.array(chunk[sel])
        out = np.empty(out_shape, dtype=src.dtype)
        if len(present) < len(coords_list):
            out[...] = src.fill_value
        for c, raw in zip(present, raws, strict=True):
            srcsel, dst = [], []
            for s, ci, k in zip(box, c, cs, strict=True):
                lo, hi = max(s.start, ci * k), min(s.stop, (ci + 1) * k)
                srcsel.append(slice(lo - ci * k, hi - ci * k))
                dst.append(slice(lo - s.start, hi - s.start))
            mask = int(index.masks[c])
            whole = all(s.stop - s.start == k for s, k in zip(srcsel, cs, strict=True))
            # shuffled chunks that lie wholly inside the box are unshuffled into place
            if (self.shuffle_first and whole and not mask & 1
                    and self._unshuffle_into(raw, mask, c, out[tuple(dst)])):
                continue
            chunk = self._decode(raw, mask, c)
            out[tuple(dst)] = chunk[tuple(srcsel)]
        return out

    def _read_small_chunks(
        self, box: tuple[slice, ...], ranges_per_axis: list[range], index: ChunkIndex
    ) -> np.ndarray[Any, Any]:
        """Many small chunks at once: per-chunk Python work would dominate otherwise.

        The chunks are decompressed in a tight loop into one buffer, unshuffled together
        and put in place by one transpose (all chunks present and fully filtered).
        """
        cs, nbytes = self.chunks, self.chunk_nbytes
        grid = tuple(slice(r.start, r.stop) for r in ranges_per_axis)
        sizes = index.sizes[grid].ravel().tolist()
        aligned = all(s.start % k == 0 and (s.stop % k == 0 or s.stop == n)
                      for s, k, n in zip(box, cs, self.source.shape, strict=True))
        raws = self._fetch(list(zip(index.offsets[grid].ravel().tolist(), sizes, strict=True)),
                           index if aligned else None)
        pipeline = self.filters[1:] if self.shuffle_first else self.filters
        steps = batch_decoders(pipeline, self.itemsize, nbytes, max(sizes, default=0))
        flat = np.empty((len(raws), nbytes), dtype=np.uint8)
        into = flat.reshape(-1).data  # a writable view of the batch buffer
        n = 0
        try:
            for n, raw in enumerate(raws):
                buf: Any = raw
                for step in steps:
                    buf = step(buf)
                got = memoryview(buf).cast("B")
                if got.nbytes != nbytes:  # never broadcast a short chunk into place
                    raise ValueError(f"{got.nbytes} bytes decoded where the chunk has {nbytes}")
                into[n * nbytes:(n + 1) * nbytes] = got
        except Exception as err:
            coords = tuple(int(i) + r.start for i, r in zip(
                np.unravel_index(n, [len(r) for r in ranges_per_axis]), ranges_per_axis,
                strict=True))
            raise self._corrupt(coords, err) from err
        if self.shuffle_first:
            flat = unshuffle_rows(flat, self._shuffle_itemsize())
        shape = [len(r) for r in ranges_per_axis]
        blocks = flat.reshape(-1).view(np.uint8).view(self.source.dtype).reshape(*shape, *cs)
        nd = len(cs)
        order = [a for i in range(nd) for a in (i, nd + i)]  # grid axis, then chunk axis
        whole = blocks.transpose(order).reshape([g * c for g, c in zip(shape, cs, strict=True)])
        sel = tuple(slice(s.start - r.start * c, s.stop - r.start * c)
                    for s, r, c in zip(box, ranges_per_axis, cs, strict=True))
        return np.ascontiguousarray(whole[sel])

    def _unshuffle_into(
        self, raw: bytes, mask: int, coords: tuple[int, ...], out: np.ndarray[Any, Any]
    ) -> bool:
        buf = self._undo(raw, mask, coords, skip_shuffle=True)
        return unshuffle_into(buf, self._shuffle_itemsize(), out)
