"""Where the chunks of a chunked HDF5 dataset live: read once per file version and process."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lazyio import handles
from lazyio.backends.hdf5.files import open_h5
from lazyio.location import Location

__all__ = ["ChunkIndex", "ChunkIndexKey", "chunk_index"]


@dataclass(frozen=True)
class ChunkIndex:
    """Where each stored chunk lives: grid-shaped arrays of offset, size and filter mask."""

    offsets: np.ndarray  # int64, -1 where the chunk was never written
    sizes: np.ndarray
    masks: np.ndarray


@dataclass(frozen=True)
class ChunkIndexKey:
    """The memo key of one dataset's chunk index (``handles.memo``)."""

    location: Location
    dataset: str
    token: str


def chunk_index(location: Location, dataset: str, token: str = "") -> ChunkIndex:
    """Read a chunked dataset's index once per process (memoised beside the handles)."""

    def build() -> ChunkIndex:
        dset = open_h5(location, token=token)[dataset]
        chunks = dset.chunks
        grid = tuple(math.ceil(s / c) for s, c in zip(dset.shape, chunks, strict=True))
        offsets = np.full(grid, -1, dtype=np.int64)
        sizes = np.zeros(grid, dtype=np.int64)
        masks = np.zeros(grid, dtype=np.uint32)

        def visit(info: Any) -> None:
            pos = tuple(o // c for o, c in zip(info.chunk_offset, chunks, strict=True))
            offsets[pos] = info.byte_offset
            sizes[pos] = info.size
            masks[pos] = info.filter_mask

        try:
            dset.id.chunk_iter(visit)
        except AttributeError:  # HDF5 older than 1.12.3: slower, same answer
            for i in range(dset.id.get_num_chunks()):
                visit(dset.id.get_chunk_info(i))
        return ChunkIndex(offsets, sizes, masks)

    return handles.memo(ChunkIndexKey(location, dataset, token), build)
