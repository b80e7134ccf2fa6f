"""Every chunk-size rule of lazyio, in one module.

Two kinds of chunks meet here:

- *storage chunks*, the unit a file compresses and stores (an HDF5 chunk, a Zarr chunk).
  Writers choose them (:func:`storage_chunks`, :func:`signal_chunks`,
  :func:`flattened_storage_chunks`); readers find them in the file.
- *dask blocks*, the unit of one task. A block must be a whole number of storage chunks
  along every axis, so that no stored chunk is decoded by two tasks and no two writers
  touch one chunk (:func:`aligned_chunks` when reading, :func:`rechunk_to_storage` when
  writing). Arrays without storage chunks (a memory map) may be cut anywhere
  (:func:`memory_map_chunks`).

How many bytes a block holds is decided here too (:func:`default_block_bytes`,
:func:`read_block_bytes`, :func:`conversion_block_bytes`). The per-format sizes of
default storage chunks (``TARGET_CHUNK_BYTES``) belong to the formats; the functions that
use them are here.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import site
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeGuard, cast

import numpy as np

if TYPE_CHECKING:
    import dask.array as da
    from numpy.typing import DTypeLike

__all__ = [
    "AxisChunk",
    "BlockChunks",
    "CONVERT_BLOCK_BYTES",
    "Chunks",
    "GRAPH_BLOCKS",
    "GRAPH_MAX_BLOCK",
    "MAX_BLOCKS",
    "REMOTE_BLOCK_BYTES",
    "aligned_chunks",
    "auto_block_bytes",
    "contiguous_chunks",
    "conversion_block_bytes",
    "default_block_bytes",
    "flat_aligned_block",
    "flattened_storage_chunks",
    "merge_blocks",
    "memory_map_chunks",
    "read_block_bytes",
    "rechunk_to_storage",
    "regular_chunks",
    "scaled_block_bytes",
    "reshaped_2d_chunks",
    "signal_chunks",
    "storage_chunks",
    "target_chunk_bytes",
    "trailing_storage_chunks",
    "write_block_bytes",
    "write_chunks",
]

_logger = logging.getLogger("lazyio")

BlockChunks: TypeAlias = tuple[tuple[int, ...], ...]
"""Normalised dask chunks: for every axis, the length of each block."""

AxisChunk: TypeAlias = int | Literal["auto"] | None
"""The request for one axis: a block length, ``-1`` or ``None`` (the whole axis), or
``"auto"``."""

Chunks: TypeAlias = (
    Literal["auto", "storage"] | int | bool
    | Sequence[AxisChunk | tuple[int, ...]]
    | Mapping[int, AxisChunk]
    | None
)
"""What the public ``chunks=`` parameters accept.

Readers: ``"auto"`` (or ``None``), ``"storage"`` (one block per storage chunk; ``"auto"``
for data without storage chunks), one length for every axis, a tuple with one entry per
axis (a length, ``-1``/``None`` for the whole axis, ``"auto"``), a ``{axis: entry}`` dict,
or normalised :data:`BlockChunks`. Writers (storage chunks): ``None`` for the format's
default, ``True`` for h5py's guess, or a tuple with one length per axis.
"""

# Buffers above glibc's largest mmap threshold (32 MiB) are fresh mappings whose pages
# fault in on every read: a cached read was 3x slower with 64 MiB blocks than 16 MiB.
_MAX_AUTO_BLOCK = 16 * 2**20

# Below this a task's overhead outweighs its work.
_MIN_AUTO_BLOCK = 4 * 2**20

# A million blocks of 16 MiB are 16 TB, and a graph that dask schedules in minutes: beyond
# that, a shape is a malformed header. (At 10 million, a 1 KB .zspy declaring 10**12 rows
# built a 7.2-million-block graph for 23 s and 780 MB before its axes were checked.)
MAX_BLOCKS = 1_000_000
_MAX_INDEX = 2**63 - 1  # numpy's largest axis (np.intp on 64-bit platforms)

# A huge array's "auto" blocks grow so that its graph stays near GRAPH_BLOCKS tasks (a 10 TB
# read in 4 MiB remote blocks was 2.4 million, refused by MAX_BLOCKS; 2**18 tasks are
# scheduled in about two minutes, docs/scale.md), up to GRAPH_MAX_BLOCK bytes each, so
# that a hostile header's shape is still refused (at most 64 TiB read "auto").
GRAPH_BLOCKS = 2**18
GRAPH_MAX_BLOCK = 64 * 2**20

# A remote task fetches its chunks, then decodes them: smaller blocks let the tasks overlap
# the two (a 134 MB gzip .hspy over HTTP read 1.7x faster in 4 MiB blocks than in 16 MiB).
REMOTE_BLOCK_BYTES = 4 * 2**20

# A conversion holds a few blocks per thread (read, rechunked, encoded): blocks smaller
# than dask's default keep that well below the array's size.
CONVERT_BLOCK_BYTES = 32 * 2**20

# Write blocks merged from source blocks are copies: a 256 MiB .zspy write from blocks of 4
# rows into chunks of 16 x 16 rows grew the process by 164 MiB with 16 MiB write blocks,
# 103 MiB with 8 MiB ones (two threads).
_MAX_WRITE_BLOCK = 8 * 2**20

# A single signal beyond this is split along its own dimensions in storage chunks (N-D,
# and flattened USID rows).
_MAX_WHOLE_ROW_BYTES = 64 * 2**20


# ----------------------------------------------------------------------------- budgets


# dask's own default of ``array.chunk-size``
_DASK_DEFAULT_CHUNK_BYTES = 128 * 2**20


def _dask_config_sources() -> bool:
    """Whether dask would read any setting from the environment or a configuration file
    (the places ``dask.config`` searches), so that its defaults cannot be assumed."""
    if any(key.startswith("DASK_") for key in os.environ):
        return True
    places = [os.environ.get("DASK_ROOT_CONFIG", "/etc/dask"),
              os.path.join(sys.prefix, "etc", "dask"),
              *[os.path.join(prefix, "etc", "dask") for prefix in site.PREFIXES],
              os.path.join(os.path.expanduser("~"), ".config", "dask")]
    for place in places:
        if os.path.isfile(place):
            return True
        try:
            names = os.listdir(place)
        except OSError:
            continue
        if any(os.path.splitext(n)[1].lower() in (".json", ".yaml", ".yml") for n in names):
            return True
    return False


def target_chunk_bytes() -> int:
    """Bytes of a default dask chunk: dask's ``array.chunk-size`` setting (128 MiB).

    Without importing dask (0.3 s of CPU, which ``lazyio info`` does without) when dask is
    not imported yet and no environment variable or configuration file could change its
    default; otherwise from ``dask.config``.
    """
    if "dask" not in sys.modules and not _dask_config_sources():
        return _DASK_DEFAULT_CHUNK_BYTES
    import dask
    from dask.utils import parse_bytes

    return int(parse_bytes(dask.config.get("array.chunk-size", "128MiB")))


def auto_block_bytes() -> int:
    """The largest default block: dask's chunk size, capped at 16 MiB.

    Buffers above glibc's largest mmap threshold (32 MiB) are fresh mappings whose pages
    fault in on every read: a cached read was 3x slower with 64 MiB blocks than 16 MiB.
    """
    return min(target_chunk_bytes(), _MAX_AUTO_BLOCK)


def default_block_bytes(nbytes: int) -> int:
    """Bytes per block of an ``"auto"`` read of an array of ``nbytes`` bytes.

    Enough blocks to keep every core busy (four per core), but no block smaller than
    4 MiB (task overhead) or larger than :func:`auto_block_bytes`.
    """
    per_core = nbytes // (4 * (os.cpu_count() or 1))
    return min(auto_block_bytes(), max(_MIN_AUTO_BLOCK, per_core))


def scaled_block_bytes(limit: int, nbytes: int) -> int:
    """``limit``, or more for an array of more than :data:`GRAPH_BLOCKS` such blocks:
    enough for about that many blocks, at most :data:`GRAPH_MAX_BLOCK` bytes each."""
    needed = -(-max(0, int(nbytes)) // GRAPH_BLOCKS)
    return max(int(limit), min(needed, GRAPH_MAX_BLOCK))


def read_block_bytes(remote: bool) -> int | None:
    """The block budget of a chunked read: :data:`REMOTE_BLOCK_BYTES` for remote data,
    ``None`` (:func:`default_block_bytes` of the array) for local files."""
    return REMOTE_BLOCK_BYTES if remote else None


def conversion_block_bytes() -> int:
    """Bytes per block when a file is converted: dask's chunk size, at most
    :data:`CONVERT_BLOCK_BYTES`."""
    return min(target_chunk_bytes(), CONVERT_BLOCK_BYTES)


# ----------------------------------------------------------------------------- dask blocks


def regular_chunks(shape: Sequence[int], block: Sequence[int]) -> BlockChunks:
    """Tuple-of-tuples chunks that tile ``shape`` with ``block`` (last ones shorter).

    Raises
    ------
    ValueError
        If the grid would have more than :data:`MAX_BLOCKS` blocks (a hostile header's
        shape, refused before anything is allocated) or an axis is longer than numpy can
        index. An array without elements whose grid would be that large is one empty
        block instead.

    Examples
    --------
    >>> regular_chunks((5, 4), (2, 4))
    ((2, 2, 1), (4,))
    """
    if any(int(s) > _MAX_INDEX for s in shape):
        raise ValueError(f"shape {tuple(shape)} has an axis longer than numpy can index "
                         f"({_MAX_INDEX})")
    blocks = [max(1, min(int(b), s)) if s else 1 for s, b in zip(shape, block, strict=True)]
    # a zero-length axis is one block (of length 0), not zero blocks: counted as zero, it
    # let (1.5e15, 0) in blocks of 1024 rows through as a grid of 1.5e12 empty blocks
    count = math.prod(max(1, -(-int(s) // b)) for s, b in zip(shape, blocks, strict=True))
    if count > MAX_BLOCKS and 0 in shape:
        # an array without elements: one empty block, whatever its other axes say
        return tuple((int(s),) for s in shape)
    if count > MAX_BLOCKS:
        raise ValueError(
            f"shape {tuple(shape)} in blocks of {tuple(blocks)} makes {count} blocks "
            f"(more than {MAX_BLOCKS})"
        )
    out = []
    for size, b in zip(shape, blocks, strict=True):
        n_full, rest = divmod(size, b)
        out.append((b,) * n_full + ((rest,) if rest else ()) or (0,))
    return tuple(out)


def _grow(shape: Sequence[int], storage: Sequence[int], itemsize: int, limit: int) -> list[int]:
    """Multiply the storage chunk along axes until a block reaches ``limit`` bytes.

    Axes double in turn, the last axis first, so blocks stay balanced and, for C-ordered
    contiguous data, read long runs of bytes. A block stays a whole number of storage
    chunks (or spans its axis).
    """
    block = [min(max(1, c), s) if s else 1 for c, s in zip(storage, shape, strict=True)]
    nbytes = math.prod(block) * itemsize
    progressed = True
    while progressed and nbytes < limit:
        progressed = False
        for axis in reversed(range(len(shape))):
            if block[axis] >= shape[axis]:
                continue
            per_unit = nbytes // block[axis]
            new = min(block[axis] * 2, shape[axis])
            if per_unit * new > limit:
                new = limit // per_unit // storage[axis] * storage[axis]
                if new <= block[axis]:
                    continue
            block[axis] = new
            nbytes = per_unit * new
            progressed = True
    return block


def _align(request: int, storage: int, size: int) -> int:
    """Round a requested block length to a whole number of storage chunks."""
    if request <= 0 or request >= size:
        return size
    aligned = max(storage, round(request / storage) * storage)
    if aligned != request:
        _logger.debug("dask chunk %d rounded to %d (storage chunk %d)", request, aligned, storage)
    return min(aligned, size)


def _is_block_chunks(chunks: object) -> TypeGuard[BlockChunks]:
    return isinstance(chunks, tuple) and bool(chunks) and all(
        isinstance(c, tuple) for c in chunks)


def aligned_chunks(
    shape: Sequence[int],
    storage_chunks: Sequence[int] | None,
    dtype: DTypeLike,
    chunks: Chunks = "auto",
    limit: int | None = None,
) -> BlockChunks:
    """Dask chunks for an array stored with ``storage_chunks``.

    Parameters
    ----------
    shape : tuple of int
        The array's shape.
    storage_chunks : tuple of int or None
        The storage chunk shape; ``None`` for contiguous data (any block is aligned).
    dtype : numpy dtype
        The array's dtype, to size blocks in bytes.
    chunks : Chunks
        The request. ``"auto"`` (or ``None``) groups whole storage chunks up to ``limit``
        bytes; ``"storage"`` makes one block per storage chunk (``"auto"`` when there are
        none); per-axis ``"auto"``, ``-1`` or ``None`` are accepted as in
        :func:`dask.array.normalize_chunks`. Explicit sizes are rounded to whole storage
        chunks. :data:`BlockChunks` are used as given after checking their alignment.
    limit : int, optional
        Bytes per block for ``"auto"``; by default :func:`default_block_bytes` of the
        array.

    Returns
    -------
    BlockChunks

    Raises
    ------
    ValueError
        If the request does not fit the array, or explicit block chunks split storage
        chunks.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    storage = tuple(int(c) for c in storage_chunks) if storage_chunks else (1,) * ndim
    itemsize = max(1, np.dtype(dtype).itemsize)
    if limit is None:
        limit = default_block_bytes(math.prod(shape) * itemsize)
    limit = scaled_block_bytes(limit, math.prod(shape) * itemsize)
    if ndim == 0:
        return ()
    if _is_block_chunks(chunks):
        return _check_explicit(shape, storage, chunks)
    if isinstance(chunks, str) and chunks == "storage":
        if storage_chunks:  # exactly the storage chunks: one task decodes one chunk
            return regular_chunks(shape, [max(1, min(c, n)) for c, n in zip(storage, shape,
                                                                           strict=True)])
        chunks = "auto"  # contiguous data have no storage chunks to follow
    request: list[Any]
    if chunks is None or (isinstance(chunks, str) and chunks == "auto"):
        request = ["auto"] * ndim
    elif isinstance(chunks, int | np.integer):
        request = [int(chunks)] * ndim
    elif isinstance(chunks, Mapping):
        request = ["auto"] * ndim
        for axis, value in chunks.items():
            request[int(axis)] = value
    elif isinstance(chunks, Sequence) and not isinstance(chunks, str):
        if len(chunks) != ndim:
            raise ValueError(
                f"chunks {chunks!r} has {len(chunks)} entries for an array of {ndim} dimensions"
            )
        request = list(chunks)
    else:
        raise ValueError(f"chunks must be 'auto', an int, a tuple or a dict; got {chunks!r}")

    block = [0] * ndim
    auto_axes = [i for i, r in enumerate(request) if r == "auto"]
    for i, r in enumerate(request):
        if r != "auto":
            block[i] = shape[i] if r in (-1, None) else _align(int(r), storage[i], shape[i])
    if auto_axes:
        fixed_bytes = math.prod(block[i] for i in range(ndim) if i not in auto_axes) * itemsize
        sub = _grow(
            [shape[i] for i in auto_axes],
            [storage[i] for i in auto_axes],
            fixed_bytes or itemsize,
            limit,
        )
        for i, b in zip(auto_axes, sub, strict=True):
            block[i] = b
    return regular_chunks(shape, block)


def _check_explicit(
    shape: tuple[int, ...], storage: tuple[int, ...], chunks: BlockChunks
) -> BlockChunks:
    if len(chunks) != len(shape):
        raise ValueError(f"chunks {chunks!r} do not match an array of shape {shape}")
    for axis, (size, cs, st) in enumerate(zip(shape, chunks, storage, strict=True)):
        if sum(cs) != size:
            raise ValueError(f"chunks along axis {axis} sum to {sum(cs)}, not {size}")
        if any(c % st for c in cs[:-1]):
            raise ValueError(
                f"chunks along axis {axis} ({cs}) are not whole multiples of the storage "
                f"chunk ({st})"
            )
    return chunks


def contiguous_chunks(
    shape: Sequence[int], itemsize: int, slow_to_fast: Sequence[int], limit: int
) -> BlockChunks:
    """Blocks of at most ``limit`` bytes that span the fastest-varying axes whole.

    ``slow_to_fast`` lists the axes from the slowest- to the fastest-varying in storage.
    Whole trailing axes make each block one run of bytes (few page faults, one range
    request); an axis that does not fit is split evenly.
    """
    items = max(1, limit // max(1, itemsize))
    block = [1] * len(shape)
    acc = 1
    for axis in reversed(slow_to_fast):
        size = shape[axis]
        if acc * size <= items:
            block[axis] = size
            acc *= max(1, size)
            continue
        per = max(1, items // acc)
        n_blocks = -(-size // per)
        block[axis] = -(-size // n_blocks)
        break
    return regular_chunks(shape, block)


def trailing_storage_chunks(shape: Sequence[int], itemsize: int, limit: int) -> tuple[int, ...]:
    """Storage chunks of at most ``limit`` bytes made of whole trailing axes: the last axes
    whole while they fit, the next one cut to what is left, ones before it.

    For an array that is one signal (no navigation axes), where "at least one whole
    signal per chunk" would make one chunk of the whole array.
    """
    chunks = [1] * len(shape)
    running = itemsize
    for i in reversed(range(len(shape))):
        if running * shape[i] <= limit:
            chunks[i] = int(shape[i])
            running *= shape[i]
        else:
            chunks[i] = max(1, limit // running)
            break
    return tuple(chunks)


def memory_map_chunks(
    chunks: Chunks,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    slow_to_fast: Sequence[int],
    limit: int,
) -> BlockChunks:
    """Dask chunks of a memory-mapped (unchunked) array.

    ``"auto"`` (or ``None``) makes :func:`contiguous_chunks`, and so does ``"storage"``
    (a memory map has no storage chunks); any block of a memory map is aligned, so
    explicit requests are honoured as given.
    """
    if not shape:
        return ()
    if chunks is None or (isinstance(chunks, str) and chunks in ("auto", "storage")):
        return contiguous_chunks(shape, dtype.itemsize, slow_to_fast, limit)
    return aligned_chunks(shape, None, dtype, chunks, limit=limit)


def flat_aligned_block(shape: Sequence[int], storage: int, target: int) -> tuple[int, ...]:
    """An N-D block of ``shape`` whose C-order steps form runs of whole storage chunks.

    For N-D axes stored flattened into one axis chunked by ``storage`` steps. A block is
    ``(1, ..., 1, b, full, ..., full)``: it covers contiguous steps, and if its length and
    the period of the dimension above it are multiples of ``storage`` steps, every block
    of the grid starts on a storage-chunk boundary. Among such blocks the one with the
    most steps not above ``target`` is chosen (the smallest if none is).

    Examples
    --------
    >>> flat_aligned_block((4, 6), 3, 12)
    (2, 6)
    """
    shape = tuple(int(s) for s in shape)
    if not shape:
        return ()
    storage = max(1, int(storage))
    candidates: list[tuple[int, ...]] = []
    for axis, size in enumerate(shape):
        inner = math.prod(shape[axis + 1 :])
        if axis and (size * inner) % storage:
            continue  # the blocks of each outer index would start off a chunk boundary
        unit = storage // math.gcd(storage, inner)  # smallest b with b * inner % storage == 0
        want = max(unit, (max(1, target) // max(1, inner)) // unit * unit)
        candidates.extend(
            (1,) * axis + (b,) + shape[axis + 1 :] for b in {min(want, size), size}
        )
    fitting = [c for c in candidates if math.prod(c) <= target]
    if fitting:
        return max(fitting, key=math.prod)
    return min(candidates, key=math.prod)


def reshaped_2d_chunks(
    row_shape: tuple[int, ...],
    col_shape: tuple[int, ...],
    storage_chunks: tuple[int, ...] | None,
    itemsize: int,
    limit: int,
) -> BlockChunks:
    """Dask chunks of the N-D view ``row_shape + col_shape`` of a 2-D stored array.

    Each block is a rectangle of whole 2-D storage chunks. Whole rows (e.g. spectra) are
    kept together when a block of the smallest aligned number of rows still fits in
    ``limit`` bytes; the rows then grow up to ``limit``.
    """
    rows_storage, cols_storage = storage_chunks or (1, math.prod(col_shape) or 1)
    if storage_chunks is None:
        # contiguous data are read in whole rows: a column block would read them anyway
        cols_storage = math.prod(col_shape) or 1
    itemsize = max(1, itemsize)
    min_rows = math.prod(flat_aligned_block(row_shape, rows_storage, 1))
    col_target = max(1, limit // (itemsize * max(1, min_rows)))
    col_block = flat_aligned_block(col_shape, cols_storage, col_target)
    row_target = max(1, limit // (itemsize * max(1, math.prod(col_block))))
    row_block = flat_aligned_block(row_shape, rows_storage, row_target)
    return regular_chunks(row_shape, row_block) + regular_chunks(col_shape, col_block)


# ----------------------------------------------------------------------------- storage chunks


def signal_chunks(
    shape: Sequence[int], dtype: DTypeLike, signal_axes: Sequence[int], target_bytes: float
) -> tuple[int, ...]:
    """Storage chunks that hold whole signals, about ``target_bytes`` each.

    Navigation axes share the budget evenly; an axis shorter than its share is taken
    whole and its leftover goes to the others. Signal axes are not split (RosettaSciIO's
    rule), unless a signal larger than ``target_bytes`` is the whole array (no
    navigation axes) or larger than 64 MiB: such a signal is cut into chunks of about
    ``target_bytes`` made of whole trailing axes (:func:`trailing_storage_chunks`), so
    that storage chunks, and the memory of a write, stay bounded.

    Examples
    --------
    >>> signal_chunks((100, 100, 1024), "float32", [2], 1e6)
    (15, 15, 1024)
    """
    shape = tuple(int(s) for s in shape)
    itemsize = np.dtype(dtype).itemsize
    sig = set(signal_axes)
    nav = [i for i in range(len(shape)) if i not in sig]
    signal_bytes = math.prod(shape[i] for i in sig) * itemsize
    if signal_bytes > target_bytes and (not nav or signal_bytes > _MAX_WHOLE_ROW_BYTES):
        # One signal per chunk would be the whole array (no navigation axes) or a chunk
        # that a writer holds several times per worker: cut the signal into chunks of
        # whole trailing axes (a 1 GiB image was one 1 GiB chunk, and its write grew
        # the process by 3 GB).
        sig_axes = sorted(sig)
        cut = trailing_storage_chunks([shape[i] for i in sig_axes], itemsize,
                                      int(target_bytes))
        chunks = dict(zip(sig_axes, cut, strict=True))
        return tuple(chunks.get(i, 1) for i in range(len(shape)))
    per_chunk = int(target_bytes // max(1, signal_bytes))
    if per_chunk < 2 or not nav:
        return tuple(s if i in sig else 1 for i, s in enumerate(shape))
    if per_chunk >= math.prod(shape[i] for i in nav):
        return shape
    chunks = {i: shape[i] for i in sig}
    free = list(nav)
    budget = float(per_chunk)
    while free:
        side = math.floor(budget ** (1 / len(free)) + 1e-9)
        small = [i for i in free if shape[i] < side]
        if not small:
            for i in free:
                chunks[i] = max(1, side)
            break
        for i in small:
            chunks[i] = shape[i]
            budget /= shape[i]
            free.remove(i)
    return tuple(max(1, min(chunks[i], shape[i])) if shape[i] else 1 for i in range(len(shape)))


def storage_chunks(
    shape: Sequence[int],
    dtype: DTypeLike,
    request: Chunks,
    signal_axes: Sequence[int],
    target_bytes: float,
) -> tuple[int, ...] | None:
    """Resolve the ``chunks`` argument of the writers to a storage chunk shape.

    Parameters
    ----------
    shape, dtype
        The array to write.
    request : None, False, True or tuple
        ``None``/``False`` follows :func:`signal_chunks`; ``True`` uses h5py's guess; a
        tuple (``-1``/``None`` for a whole axis) is clipped to the shape.
    signal_axes : sequence of int
        Axes never split by the default.
    target_bytes : float
        The format's default storage chunk size.

    Returns
    -------
    tuple of int or None
        ``None`` for scalars and empty arrays, which are not chunked.

    Raises
    ------
    TypeError
        If ``request`` is none of these.
    ValueError
        If a tuple does not have one entry per axis.
    """
    shape = tuple(int(s) for s in shape)
    if not shape or math.prod(shape) == 0:
        return None
    if request is True:
        # h5py's public behaviour for chunks=True
        from h5py._hl.filters import guess_chunk

        return tuple(guess_chunk(shape, None, np.dtype(dtype).itemsize))
    if request is None or request is False:
        return signal_chunks(shape, dtype, signal_axes, target_bytes)
    if not isinstance(request, Sequence) or isinstance(request, str):
        raise TypeError(f"chunks must be None, True or a tuple; got {request!r}")
    request = tuple(request)
    if len(request) != len(shape):
        raise ValueError(
            f"chunks {request} has {len(request)} entries for data of shape {shape}"
        )
    # an entry that is not a length ("auto", a nested tuple) fails in int(), as it should
    return tuple(
        s if (c is None or c == -1) else max(1, min(int(cast(Any, c)), s))
        for c, s in zip(request, shape, strict=True)
    )


def flattened_storage_chunks(
    request: Chunks,
    row_shape: tuple[int, ...],
    col_shape: tuple[int, ...],
    dtype: np.dtype[Any],
    target_bytes: float,
) -> tuple[int, int] | None:
    """Storage chunks of a 2-D array holding N-D data as (rows, columns), e.g. positions
    by spectra.

    By default: whole rows of about ``target_bytes``, and whole lines of the N-D row grid
    where they fit, so that N-D reads stay aligned; a single row beyond 64 MiB is split
    along its own dimensions. Any other request goes through :func:`storage_chunks`.

    Returns
    -------
    tuple of two int, or None for an empty array
    """
    rows, cols = math.prod(row_shape), math.prod(col_shape)
    if rows * cols == 0:
        return None
    if request is not None and request is not False:
        chunks = storage_chunks((rows, cols), dtype, request, [1], target_bytes)
        return None if chunks is None else (int(chunks[0]), int(chunks[1]))
    itemsize = max(1, dtype.itemsize)
    if cols * itemsize > _MAX_WHOLE_ROW_BYTES:
        col_block = math.prod(flat_aligned_block(col_shape, 1, int(target_bytes // itemsize)))
        return (1, col_block)
    per_chunk = max(1, int(target_bytes // (cols * itemsize)))
    return (math.prod(_tiling(row_shape, flat_aligned_block(row_shape, 1, per_chunk))), cols)


def _tiling(shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, ...]:
    """``block`` with its one partial axis cut to a divisor of that axis where one is at
    least half as long, so that chunks tile every line of the row grid.

    Chunks of 7 positions on lines of 64 straddled lines: no N-D block of the scan was a
    whole number of them except 7 whole lines (56 MiB of a 4-D stack), and a USID write
    grew by 240 MiB rechunking into such blocks; 4 positions tile the lines.
    """
    # blocks are (1, ..., 1, b, whole axes...): the last axis not taken whole is cut
    partial = [axis for axis, (b, n) in enumerate(zip(block, shape, strict=True)) if b < n]
    if partial:
        axis = partial[-1]
        b, n = block[axis], shape[axis]
        fit = next(d for d in range(b, 0, -1) if n % d == 0)
        if 2 * fit >= b:
            return (*block[:axis], fit, *block[axis + 1:])
    return block


def write_block_bytes() -> int:
    """The largest write block (unless one storage chunk is larger): dask's chunk size,
    at most 8 MiB.

    A write task holds its block, the source blocks it is cut from and the encoded storage
    chunks; with blocks of at most this size, a write needs a few of them per worker,
    whatever the array's size.
    """
    return min(target_chunk_bytes(), _MAX_WRITE_BLOCK)


def _axis_steps(shape: Sequence[int], storage: Sequence[int]) -> list[int]:
    return [max(1, min(int(c), int(n))) if n else 1 for c, n in zip(storage, shape, strict=True)]


def _write_lengths(
    chunks: BlockChunks, shape: tuple[int, ...], steps: list[int], itemsize: int,
    cap: int, grow_to: int,
) -> list[int]:
    """The length of a write block along every axis (a multiple of the storage step or
    the whole axis), before the source's boundaries are fitted to it."""
    lengths = []
    for sizes, step, n in zip(chunks, steps, shape, strict=True):
        typical = max(sizes) if sizes else n
        if all(s % step == 0 for s in sizes[:-1]):
            lengths.append(max(1, min(typical, n)))  # aligned: the source's own length
        else:  # the storage grid, near the source's length: a write spans few source blocks
            lengths.append(min(n, max(step, round(typical / step) * step)))
    nbytes = math.prod(lengths) * itemsize
    # Too big: cut the slowest axes first (long contiguous runs stay whole), never below
    # one storage chunk. Cutting a source block only slices it (a view, not a copy).
    for axis in range(len(shape)):
        if nbytes <= cap:
            break
        per_unit = nbytes // max(1, lengths[axis])
        fit = max(steps[axis], cap // max(1, per_unit) // steps[axis] * steps[axis])
        if fit < lengths[axis]:
            lengths[axis] = fit
            nbytes = per_unit * fit
    # Many small blocks: merge whole ones, the fastest axis first, so that a write task
    # is worth its overhead (16384 blocks of 4 KiB: 33 s to write to .npy, 7 s merged).
    if nbytes < _MIN_AUTO_BLOCK:
        for axis in reversed(range(len(shape))):
            if nbytes >= grow_to or lengths[axis] >= shape[axis]:
                continue
            per_unit = nbytes // max(1, lengths[axis])
            times = max(1, grow_to // max(1, per_unit * lengths[axis]))
            lengths[axis] = min(shape[axis], lengths[axis] * times)
            nbytes = per_unit * lengths[axis]
    return lengths


def _axis_blocks(sizes: tuple[int, ...], length: int, step: int, n: int) -> tuple[int, ...]:
    """Blocks of about ``length`` along one axis, on the source's boundaries where those
    fall on storage boundaries (merged or cut at storage steps), else a regular grid."""
    if not all(s % step == 0 for s in sizes[:-1]):
        n_full, rest = divmod(n, length)
        return (length,) * n_full + ((rest,) if rest else ())
    merge = length > max(sizes)  # merging copies: only when blocks are to grow
    out: list[int] = []
    run = 0
    for size in sizes:
        if run and (not merge or run + size > length):
            out.append(run)
            run = 0
        if run == 0 and size > length:
            n_full, rest = divmod(size, length)
            out.extend((length,) * n_full)
            run = rest
        else:
            run += size
    if run or not out:
        out.append(run)
    return tuple(out)


def write_chunks(
    chunks: BlockChunks,
    storage_chunks: Sequence[int],
    itemsize: int,
    limit: int | None = None,
) -> BlockChunks:
    """The dask blocks to write an array of blocks ``chunks`` into ``storage_chunks``.

    Every write block is a whole number of storage chunks along every axis (no two tasks
    touch one chunk) and holds at most ``limit`` bytes or one storage chunk, so a write
    needs memory for a few blocks per worker, whatever the array's size. Source
    boundaries that fall on storage boundaries are kept (merged or cut at storage steps),
    so each write task depends on few source blocks; elsewhere a regular grid of whole
    storage chunks near the source's block length is used. Blocks smaller than 4 MiB are
    merged (the fastest axis first) into blocks of :func:`default_block_bytes`.

    Parameters
    ----------
    chunks : BlockChunks
        The source's dask chunks.
    storage_chunks : sequence of int
        The target's storage chunk shape; ``(1,) * ndim`` for a target without chunks
        (a memory map), where any block is aligned.
    itemsize : int
        Bytes per element.
    limit : int, optional
        Bytes per write block; by default :func:`write_block_bytes`.

    Returns
    -------
    BlockChunks
    """
    shape = tuple(int(sum(c)) for c in chunks)
    if not shape or 0 in shape:
        return chunks
    itemsize = max(1, int(itemsize))
    steps = _axis_steps(shape, storage_chunks)
    limit = write_block_bytes() if limit is None else int(limit)
    limit = scaled_block_bytes(limit, math.prod(shape) * itemsize)
    cap = max(limit, math.prod(steps) * itemsize)
    grow_to = min(cap, default_block_bytes(math.prod(shape) * itemsize))
    lengths = _write_lengths(chunks, shape, steps, itemsize, cap, grow_to)
    return tuple(
        _axis_blocks(tuple(int(s) for s in sizes), length, step, n)
        for sizes, length, step, n in zip(chunks, lengths, steps, shape, strict=True)
    )


def rechunk_to_storage(
    array: da.Array, storage_chunks: Sequence[int] | None, limit: int | None = None
) -> da.Array:
    """Rechunk ``array`` into the write blocks of :func:`write_chunks`.

    Parameters
    ----------
    array : dask.array.Array
        The data to write.
    storage_chunks : sequence of int or None
        The target's storage chunk shape; ``None`` for a target without chunks.
    limit : int, optional
        Bytes per write block; by default :func:`write_block_bytes`.

    Returns
    -------
    dask.array.Array
        ``array`` itself when its blocks are already the write blocks.
    """
    if array.ndim == 0 or any(math.isnan(c) for cs in array.chunks for c in cs):
        return array
    storage = (1,) * array.ndim if storage_chunks is None else tuple(storage_chunks)
    itemsize = max(1, array.dtype.itemsize)
    new_chunks = write_chunks(array.chunks, storage, itemsize, limit)
    if new_chunks == array.chunks:
        return array
    # dask plans intermediate steps of up to its chunk size (128 MiB) by default: keep
    # them to the size of a write block
    cap = max(write_block_bytes() if limit is None else int(limit),
              math.prod(_axis_steps(array.shape, storage)) * itemsize)
    merged = merge_blocks(array, new_chunks)
    if merged is not None:
        return merged
    rechunked: da.Array = cast(Any, array).rechunk(new_chunks, block_size_limit=cap)
    return rechunked


# ----------------------------------------------------------------------------- merged blocks

# Merge source blocks inside the write tasks only when a write block takes at least this
# many of them on average: below that a rechunk adds few tasks.
_MIN_MERGED = 4

# Source blocks below this size are merged even into fewer write blocks than cores.
_MERGE_ALWAYS = 2**20

_SHARED = -1  # a key that stays a task of its own (needed by several write blocks)


class _Plan:
    """What one merged task computes: its private source keys in dependency order, where
    each source block goes in the output, and when each intermediate value can go.

    An opaque object, so that dask neither looks into the nodes nor schedules them.
    """

    __slots__ = ("dtype", "externals", "nodes", "places", "shape", "uses")

    def __init__(self, nodes: list[Any], places: dict[Any, list[tuple[Any, Any]]],
                 uses: dict[Any, int], shape: tuple[int, ...], dtype: np.dtype[Any],
                 externals: list[Any]) -> None:
        self.nodes, self.places, self.uses = nodes, places, uses
        self.shape, self.dtype, self.externals = shape, dtype, externals

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


def _run_plan(plan: _Plan, *external: Any) -> np.ndarray[Any, Any]:
    """Compute a merged block: run the private source tasks one after another, copying
    each source block into place as soon as it exists and dropping every value once its
    last user has run (memory: the output plus one source block's intermediates)."""
    values: dict[Any, Any] = dict(zip(plan.externals, external, strict=True))
    left = dict(plan.uses)
    out = np.empty(plan.shape, dtype=plan.dtype)

    def done(key: Any) -> None:
        left[key] -= 1
        if not left[key]:
            del values[key]

    for key in plan.externals:  # shared source blocks
        for dst, src in plan.places.get(key, ()):
            out[dst] = values[key][src]
            done(key)
    for node in plan.nodes:
        deps = node.dependencies
        values[node.key] = node({d: values[d] for d in deps})
        for dep in deps:
            done(dep)
        for dst, src in plan.places.get(node.key, ()):
            out[dst] = values[node.key][src]
            done(node.key)
    return out


def _overlaps(old: tuple[int, ...], new: tuple[int, ...]) -> list[list[tuple[int, slice, slice]]]:
    """For every new block along one axis: (old block, slice in it, slice in the new one)."""
    old_starts = [0, *itertools.accumulate(old)]
    out: list[list[tuple[int, slice, slice]]] = []
    i = 0
    start = 0
    for size in new:
        stop = start + size
        while i + 1 < len(old) and old_starts[i + 1] <= start:
            i += 1
        pieces = []
        j = i
        while j < len(old) and old_starts[j] < stop:
            lo, hi = max(start, old_starts[j]), min(stop, old_starts[j + 1])
            pieces.append((j, slice(lo - old_starts[j], hi - old_starts[j]),
                           slice(lo - start, hi - start)))
            j += 1
        out.append(pieces)
        start = stop
    return out


class _NotMerged(Exception):
    """The graph cannot be merged (a key it needs is not in it: a persisted future)."""


class _Graph:
    """The source graph, its nodes converted to dask's task spec as they are visited."""

    def __init__(self, raw: Mapping[Any, Any]) -> None:
        self.raw = raw
        self.nodes: dict[Any, Any] = {}

    def __getitem__(self, key: Any) -> Any:
        node = self.nodes.get(key)
        if node is None:
            from dask._task_spec import Alias, DataNode, GraphNode, convert_legacy_task

            try:
                value = self.raw[key]
            except KeyError:
                raise _NotMerged(key) from None
            if type(value) is np.ndarray:  # from_array of a numpy array: its slices
                node = self.nodes[key] = DataNode(key, value)
                return node
            node = convert_legacy_task(key, value, self.raw)
            if isinstance(node, Alias) and node.target == key:  # a persisted future
                raise _NotMerged(key)
            if not isinstance(node, GraphNode):
                node = DataNode(key, node)
            self.nodes[key] = node
        return node


def merge_blocks(array: da.Array, chunks: BlockChunks) -> da.Array | None:
    """``array`` in blocks ``chunks``, each computed by ONE task that runs the source
    tasks inside it itself, or None where that would not pay (then rechunk).

    A rechunk of many small source blocks keeps one scheduler task per source block, plus
    merging tasks: for 16,384 blocks of 4 KiB the scheduler's overhead was ten times the
    cost of the bytes (a null ``dask.array.store`` of them took longer than computing,
    compressing and writing them). Here the source tasks that only one new block needs
    (with everything only they need) run inside that block's task, in order, straight
    into the output; tasks that several new blocks need (a source block cut by the new
    grid, a file handle or a whole array every block reads from) stay scheduler tasks,
    computed once, and are passed in. On a cluster the private tasks run where their
    block is written, so no worker computes source blocks ahead of their write.

    Only numpy blocks are merged, and only when the new blocks take at least
    ``_MIN_MERGED`` source blocks each on average.
    """
    if type(getattr(array, "_meta", None)) is not np.ndarray or array.ndim == 0:
        return None
    from lazyio.deferred import deferring

    if deferring():
        # a delayed write's source may feed other writes of the same computation: its
        # tasks stay shared keys, read once, instead of running privately in each write
        return None
    n_new = math.prod(len(c) for c in chunks)
    if array.npartitions < _MIN_MERGED * n_new:
        return None
    # A merged block computes its source blocks one after another: with fewer blocks than
    # cores, only blocks too small to be worth a task each are merged
    if n_new < (os.cpu_count() or 1) and array.nbytes > _MERGE_ALWAYS * array.npartitions:
        return None
    try:
        return _merge(array, chunks)
    except _NotMerged:
        return None


def _merge(array: da.Array, chunks: BlockChunks) -> da.Array | None:
    from dask._task_spec import Task, TaskRef
    from dask.array.core import Array
    from dask.highlevelgraph import HighLevelGraph
    from dask.tokenize import tokenize

    graph = _Graph(dict(array.__dask_graph__()))
    overlaps = [_overlaps(tuple(old), tuple(new))
                for old, new in zip(array.chunks, chunks, strict=True)]
    # a source block cut by the new grid feeds several new blocks: it stays a task
    touches = []
    for axis, pieces_of in enumerate(overlaps):
        count = [0] * len(array.chunks[axis])
        for pieces in pieces_of:
            for j, _, _ in pieces:
                count[j] += 1
        touches.append(count)
    cut = any(c > 1 for count in touches for c in count)
    owner: dict[Any, int] = {}

    def share(key: Any) -> None:  # key and all it needs stay scheduler tasks
        stack = [key]
        while stack:
            k = stack.pop()
            if owner.get(k) == _SHARED:
                continue
            owner[k] = _SHARED
            stack.extend(graph[k].dependencies)

    name = array.name
    new_index = list(itertools.product(*[range(len(c)) for c in chunks]))
    orders: list[list[Any]] = []
    keyed_by_block = []
    for block_id, index in enumerate(new_index):
        order: list[Any] = []
        keyed = []
        for parts in itertools.product(*[overlaps[a][i] for a, i in enumerate(index)]):
            src, src_slice, dst = zip(*parts, strict=True)
            key = (name, *src)
            keyed.append((key, dst, src_slice))
            if cut and any(touches[a][j] > 1 for a, j in enumerate(src)):
                share(key)
                continue
            # the common case first: a source task that needs nothing or only shared keys
            node = graph[key]
            if key not in owner and all(owner.get(d) == _SHARED for d in node.dependencies):
                owner[key] = block_id
                order.append(key)
            else:
                _claim(key, block_id, graph, owner, share, order)
        keyed_by_block.append(keyed)
        orders.append(order)
    private = sum(1 for v in owner.values() if v != _SHARED)
    if private < _MIN_MERGED * len(new_index):
        return None
    out_name = "merged-" + tokenize(name, chunks)
    nodes_of = graph.nodes
    layer: dict[Any, Any] = {k: nodes_of[k] for k, v in owner.items() if v == _SHARED}
    for block_id, index in enumerate(new_index):
        nodes = [nodes_of[k] for k in orders[block_id] if owner[k] == block_id]
        externals: list[Any] = []
        uses: dict[Any, int] = {}
        places: dict[Any, list[tuple[Any, Any]]] = {}
        for node in nodes:
            for dep in node.dependencies:
                if dep not in uses and owner[dep] == _SHARED:
                    externals.append(dep)
                uses[dep] = uses.get(dep, 0) + 1
        for key, dst, src_slice in keyed_by_block[block_id]:
            places.setdefault(key, []).append((dst, src_slice))
            if key not in uses and owner[key] == _SHARED:
                externals.append(key)
            uses[key] = uses.get(key, 0) + 1
        shape = tuple(int(chunks[a][i]) for a, i in enumerate(index))
        plan = _Plan(nodes, places, uses, shape, array.dtype, externals)
        out_key = (out_name, *index)
        layer[out_key] = Task(out_key, _run_plan, plan, *(TaskRef(k) for k in externals))
    hlg = HighLevelGraph.from_collections(out_name, layer, dependencies=())
    return Array(hlg, out_name, chunks, meta=array._meta)


def _claim(key: Any, block_id: int, graph: _Graph, owner: dict[Any, int],
           share: Any, order: list[Any]) -> None:
    """Give ``key`` and what it needs to new block ``block_id`` (post-order, so ``order``
    lists dependencies first); a key another block holds already becomes shared."""
    stack: list[tuple[Any, bool]] = [(key, False)]
    while stack:
        k, expanded = stack.pop()
        if expanded:
            order.append(k)
            continue
        held = owner.get(k)
        if held in (block_id, _SHARED):
            continue
        if held is not None:
            share(k)
            continue
        owner[k] = block_id
        deps = graph[k].dependencies
        if deps:
            stack.append((k, True))
            stack.extend((d, False) for d in deps)
        else:
            order.append(k)
