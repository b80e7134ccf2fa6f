"""The machine's limits, measured in the same run as the formats.

- page-cache read bandwidth: ``CORES`` threads ``preadv`` a cached file into buffers;
- memory-mapped sum: ``CORES`` threads sum a cached ``.npy`` through ``numpy.memmap``
  (the limit of any uncompressed read);
- codec throughput: one core encodes/decodes sample chunks with a filter pipeline; the
  limit of a full read (or write) of ``n`` bytes on this machine is then
  ``n / (per-core throughput x CORES)``. The decode side includes summing the decoded
  chunk, since the measured operation is a sum.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np

from benchmarks.common import CORES

__all__ = ["Codec", "codec_rates", "mmap_sum", "page_cache_read", "sample_chunks"]


def page_cache_read(path: str, repeat: int = 3) -> float:
    """Bytes per second reading ``path`` (already cached) with ``CORES`` threads."""
    size = os.path.getsize(path)
    block = 8 * 2**20
    bufs = [bytearray(block) for _ in range(CORES)]
    fd = os.open(path, os.O_RDONLY)
    try:
        def part(i: int) -> None:
            buf = bufs[i]
            for off in range(i * block, size, CORES * block):
                os.preadv(fd, [buf], off)

        best = float("inf")
        with ThreadPoolExecutor(CORES) as pool:
            for _ in range(repeat):
                start = time.perf_counter()
                list(pool.map(part, range(CORES)))
                best = min(best, time.perf_counter() - start)
    finally:
        os.close(fd)
    return size / best


def mmap_sum(path: str, repeat: int = 3) -> float:
    """Median seconds of a ``CORES``-thread sum of a cached ``.npy`` through a memory map."""
    arr = np.load(path, mmap_mode="r")
    flat = arr.reshape(-1)
    step = max(1, 64 * 2**20 // arr.itemsize)
    pieces = [slice(i, i + step) for i in range(0, flat.size, step)]
    times = []
    with ThreadPoolExecutor(CORES) as pool:
        for _ in range(repeat):
            start = time.perf_counter()
            sum(pool.map(lambda s: flat[s].sum(), pieces))
            times.append(time.perf_counter() - start)
    return float(np.median(times))


@dataclass(frozen=True)
class Codec:
    """A filter pipeline as encode/decode functions on bytes."""

    name: str
    encode: Callable[[bytes], bytes]
    decode: Callable[[bytes], bytes]


class _Shuffle:
    """The fastest shuffle at hand (lazyio's numpy one; numcodecs' for odd item sizes)."""

    def __init__(self, itemsize: int) -> None:
        self.itemsize = itemsize

    def encode(self, buf: Any) -> Any:
        from lazyio.backends.hdf5.shuffle import shuffle

        return shuffle(buf, self.itemsize)

    def decode(self, buf: Any) -> Any:
        from lazyio.backends.hdf5.shuffle import unshuffle

        return unshuffle(buf, self.itemsize)


def _shuffle(itemsize: int) -> _Shuffle:
    return _Shuffle(itemsize)


def codecs(itemsize: int) -> dict[str, Codec]:
    """The pipelines the benchmark's files use."""
    sh = _shuffle(itemsize)
    numcodecs.blosc.set_nthreads(1)  # one core: the per-core rate
    blosc = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE)
    return {
        "gzip-4+shuffle": Codec("gzip-4+shuffle", lambda b: zlib.compress(sh.encode(b), 4),
                                lambda b: sh.decode(zlib.decompress(b))),
        "shuffle": Codec("shuffle", sh.encode, sh.decode),
        "blosc-zstd-1": Codec("blosc-zstd-1", blosc.encode, blosc.decode),
    }


def sample_chunks(data: np.ndarray, chunks: tuple[int, ...], max_bytes: int) -> list[np.ndarray]:
    """Whole storage chunks from the start of ``data``, up to ``max_bytes`` in total."""
    out, total = [], 0
    grid = [range(0, s, c) for s, c in zip(data.shape, chunks, strict=True)]
    for corner in np.ndindex(*(len(g) for g in grid)):
        sel = tuple(slice(g[i], g[i] + c) for g, i, c in zip(grid, corner, chunks, strict=True))
        piece = np.ascontiguousarray(data[sel])
        out.append(piece)
        total += piece.nbytes
        if total >= max_bytes:
            break
    return out


def codec_rates(codec: Codec, chunks: list[np.ndarray], repeat: int = 3) -> dict[str, Any]:
    """Per-core bytes/s (of decoded data) to encode, and to decode and sum, the chunks."""
    nbytes = sum(c.nbytes for c in chunks)
    dtype, shapes = chunks[0].dtype, [c.shape for c in chunks]
    encoded = [codec.encode(c) for c in chunks]

    def enc() -> None:
        for c in chunks:
            codec.encode(c)

    def dec() -> None:
        for e, s in zip(encoded, shapes, strict=True):
            np.frombuffer(codec.decode(e), dtype=dtype).reshape(s).sum()

    rates = {}
    for key, fn in (("encode", enc), ("decode+sum", dec)):
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        rates[key] = nbytes / best
    rates["ratio"] = nbytes / sum(len(e) for e in encoded)
    return rates
