"""Chunk grids: dask chunks aligned to whole storage chunks.

A dask chunk must be a whole multiple of the storage chunk along every axis so that no
compressed storage chunk is decoded by two tasks, and no two writers touch one chunk.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import numpy as np
from dask.utils import parse_bytes

__all__ = ["aligned_chunks", "auto_block_bytes", "regular_chunks", "target_chunk_bytes"]

_logger = logging.getLogger("lazyio")

Chunks = tuple[tuple[int, ...], ...]

_MAX_AUTO_BLOCK = 16 * 2**20


# 10 million blocks of dask's default 128 MiB are over a petabyte: beyond that, a shape is
# a malformed header, and the graph alone would exhaust memory.
MAX_BLOCKS = 10_000_000

def target_chunk_bytes() -> int:
    """Bytes of a default dask chunk: dask's ``array.chunk-size`` setting (128 MiB)."""
    return int(parse_bytes(dask.config.get("array.chunk-size", "128MiB")))


def auto_block_bytes() -> int:
    """Largest default block: dask's chunk size, capped below glibc's mmap threshold.

    Buffers above glibc's largest mmap threshold (32 MiB) are fresh mappings whose pages
    fault in on every read: a cached read was 3x slower with 64 MiB blocks than 16 MiB.
    """
    return min(target_chunk_bytes(), _MAX_AUTO_BLOCK)


def regular_chunks(shape: Sequence[int], block: Sequence[int]) -> Chunks:
    """Tuple-of-tuples chunks that tile ``shape`` with ``block`` (last ones shorter).

    >>> regular_chunks((5, 4), (2, 4))
    ((2, 2, 1), (4,))
    """
    blocks = [max(1, min(int(b), s)) if s else 1 for s, b in zip(shape, block, strict=True)]
    count = math.prod(-(-int(s) // b) for s, b in zip(shape, blocks, strict=True))
    if count > MAX_BLOCKS:  # a hostile header's shape, not data: refuse before allocating
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


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _align(request: int, storage: int, size: int) -> int:
    """Round a requested block length to a whole number of storage chunks."""
    if request <= 0 or request >= size:
        return size
    aligned = max(storage, round(request / storage) * storage)
    if aligned != request:
        _logger.debug("dask chunk %d rounded to %d (storage chunk %d)", request, aligned, storage)
    return min(aligned, size)


def aligned_chunks(
    shape: Sequence[int],
    storage_chunks: Sequence[int] | None,
    dtype: Any,
    chunks: Any = "auto",
    limit: int | None = None,
) -> Chunks:
    """Dask chunks for an array stored with ``storage_chunks``.

    Parameters
    ----------
    shape : tuple of int
        The array's shape.
    storage_chunks : tuple of int or None
        The storage chunk shape; ``None`` for contiguous data (any block is aligned).
    dtype : numpy dtype
        The array's dtype, to size blocks in bytes.
    chunks : "auto", int, tuple, dict or tuple of tuples
        The request. ``"auto"`` groups whole storage chunks up to dask's
        ``array.chunk-size``; per-axis ``"auto"``, ``-1`` or ``None`` are accepted as in
        :func:`dask.array.normalize_chunks`. Explicit sizes are rounded to whole storage
        chunks. A tuple of tuples is used as given after checking its alignment.
    limit : int, optional
        Bytes per block for ``"auto"``; defaults to :func:`target_chunk_bytes`.

    Returns
    -------
    tuple of tuple of int
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    storage = tuple(int(c) for c in storage_chunks) if storage_chunks else (1,) * ndim
    itemsize = max(1, np.dtype(dtype).itemsize)
    if limit is None:
        # Enough blocks to keep every core busy, but no block smaller than a few MiB
        # (task overhead) or larger than auto_block_bytes().
        total = math.prod(shape) * itemsize
        limit = min(auto_block_bytes(), max(4 * 2**20, total // (4 * (os.cpu_count() or 1))))
    if ndim == 0:
        return ()
    if isinstance(chunks, tuple) and chunks and all(isinstance(c, tuple) for c in chunks):
        return _check_explicit(shape, storage, chunks)
    if chunks is None or chunks == "auto":
        request: list[Any] = ["auto"] * ndim
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

    fixed = [
        shape[i] if r in (-1, None) else _align(int(r), storage[i], shape[i])
        for i, r in enumerate(request)
        if r != "auto"
    ]
    auto_axes = [i for i, r in enumerate(request) if r == "auto"]
    block = [0] * ndim
    it = iter(fixed)
    for i, r in enumerate(request):
        if r != "auto":
            block[i] = next(it)
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


def _check_explicit(shape: tuple[int, ...], storage: tuple[int, ...], chunks: Chunks) -> Chunks:
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
