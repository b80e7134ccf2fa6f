"""Plain local Zarr v2 arrays read and written as chunk files, without zarr-python.

zarr-python 3 runs every chunk through its event loop and codec thread pool, which costs
more than the decoding itself for chunks of a few MiB: reading or writing a local .zspy
through it was about twice as slow (512 MiB in 8 MiB Blosc chunks: 1.55 s written through
zarr against 0.70 s here). Here each dask task opens its chunk files and runs numcodecs
(which releases the GIL) itself. Only *plain* arrays take this path: Zarr v2, numeric, C
order, no filters, a compressor lazyio knows, a numeric fill value. Everything else is
left to zarr-python.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import product
from typing import Any, Protocol

import numcodecs.abc
import numpy as np

from lazyio.backends.zarr.codecs import codec_from_config, decode_bounded
from lazyio.errors import CorruptChunkError

__all__ = ["ChunkFiles", "DirectPlan", "LocalV2Layout", "chunk_overlaps", "local_v2_layout",
           "v2_layout", "write_region"]

# Compressors whose chunks lazyio decodes and encodes itself.
_DIRECT_COMPRESSORS = frozenset({"blosc", "zstd", "zlib", "gzip", "bz2", "lz4", "lzma"})

Region = tuple[slice, ...]


def chunk_overlaps(
    box: Region, chunks: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], Region, Region]]:
    """Every storage chunk ``box`` touches, as (chunk coordinates, slice of the chunk,
    slice of the box).

    >>> list(chunk_overlaps((slice(1, 3),), (2,)))
    [((0,), (slice(1, 2, None),), (slice(0, 1, None),)), ((1,), (slice(0, 1, None),), (slice(1, 2, None),))]
    """
    grid = [range(s.start // c, -(-s.stop // c)) for s, c in zip(box, chunks, strict=True)]
    for coords in product(*grid):
        src, dst = [], []
        for s, ci, k in zip(box, coords, chunks, strict=True):
            lo, hi = max(s.start, ci * k), min(s.stop, (ci + 1) * k)
            src.append(slice(lo - ci * k, hi - ci * k))
            dst.append(slice(lo - s.start, hi - s.start))
        yield coords, tuple(src), tuple(dst)


@dataclass(frozen=True)
class LocalV2Layout:
    """What lazyio needs to read or write a plain local Zarr v2 array's chunk files."""

    root: str
    separator: str
    compressor: Mapping[str, Any] | None
    fill_value: int | float
    dtype: np.dtype[Any]
    chunks: tuple[int, ...]

    def chunk_path(self, coords: tuple[int, ...]) -> str:
        """The file of the chunk at grid coordinates ``coords``."""
        return os.path.join(self.root, self.separator.join(map(str, coords)))

    def codec(self) -> numcodecs.abc.Codec | None:
        """The numcodecs codec of the chunk files (``None``: stored raw)."""
        if self.compressor is None:
            return None
        return codec_from_config(self.compressor)


def local_v2_layout(root: str) -> LocalV2Layout | None:
    """The layout of the Zarr v2 array in directory ``root`` if lazyio can handle its
    chunk files itself.

    Returns
    -------
    LocalV2Layout or None
        ``None`` when the array is not plain (Zarr v3, filters, object or structured
        dtype, Fortran order, an unusual compressor or fill value): zarr-python does the
        work then.
    """
    try:
        with open(os.path.join(root, ".zarray"), "rb") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return v2_layout(meta, root)


def v2_layout(meta: Any, root: str = "") -> LocalV2Layout | None:
    """The layout a Zarr v2 ``.zarray`` document describes, if the array is plain (see
    :func:`local_v2_layout`); ``root`` is the array's directory, if it has one."""
    if not isinstance(meta, dict):
        return None
    try:
        dtype = np.dtype(meta.get("dtype"))
    except (ValueError, TypeError):
        return None
    compressor = meta.get("compressor")
    if (
        meta.get("zarr_format") != 2 or meta.get("filters") or meta.get("order") != "C"
        or dtype.kind not in "biufc"
        or (compressor is not None and (not isinstance(compressor, dict)
                                        or compressor.get("id") not in _DIRECT_COMPRESSORS))
        or meta.get("dimension_separator", ".") not in (".", "/", None)
    ):
        return None
    fill = meta.get("fill_value")
    if isinstance(fill, str) and dtype.kind in "fc" and fill in _SPECIAL_FLOATS:
        fill = _SPECIAL_FLOATS[fill]
    elif not isinstance(fill, int | float) or isinstance(fill, bool):
        fill = 0 if fill is None else None
    if fill is None:
        return None  # base64 fill values: zarr-python decodes them
    chunks = meta.get("chunks")
    if not isinstance(chunks, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in chunks
    ):
        return None
    return LocalV2Layout(
        root=root, separator=meta.get("dimension_separator") or ".", compressor=compressor,
        fill_value=fill, dtype=dtype, chunks=tuple(chunks),
    )


_SPECIAL_FLOATS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


class ChunkFiles(Protocol):
    """Where a plan reads chunk files: a store directory's descriptor
    (:class:`~lazyio.backends.zarr.safe.RootDir`) or a zip store."""

    def read(self, key: str, limit: int, what: str = "file", check: bool = True
             ) -> bytes | None:
        """The bytes of ``key`` (at most ``limit``), ``None`` if missing; ``check=False``
        for keys built from checked parts."""

    def check_current(self, key: str) -> None:
        """Raise :class:`~lazyio.errors.StaleFileError` if ``key`` is missing because
        the store was replaced."""


def raw_limit(nbytes: int, compressed: bool) -> int:
    """The most bytes a stored chunk of ``nbytes`` decoded bytes may take: compressors
    add a few bytes to data they cannot shrink, far less than this."""
    return nbytes + nbytes // 2 + (1 << 16) if compressed else nbytes


@dataclass(frozen=True)
class DirectPlan:
    """Reads of a plain Zarr v2 array straight from its chunk files.

    Attributes
    ----------
    layout : LocalV2Layout
    files : ChunkFiles, optional
        Where the chunk files are read, below ``prefix``; by default the directory
        ``layout.root`` (opened on each read: for tests and one-off reads).
    prefix : str
        The array's key in ``files`` (``""``: its root).
    """

    layout: LocalV2Layout
    files: ChunkFiles | None = None
    prefix: str = ""

    def read(self, box: Region, dtype: np.dtype[Any], where: str) -> np.ndarray:
        """The values of ``box`` (step-1 slices) as a new array of ``dtype``.

        A chunk file that does not exist was never written: it reads as the fill value
        (unless the store was replaced meanwhile: :class:`StaleFileError`).

        Raises
        ------
        CorruptChunkError
            Naming ``where`` and the chunk, if a chunk file cannot be decoded, or decodes
            to another size than the chunk's (decoding never goes past that size).
        UnsafeFileError
            If a chunk file is a link, a FIFO or a device, or its key leaves the store.
        """
        from lazyio.backends.zarr.safe import RootDir, check_key

        layout = self.layout
        out = np.empty(tuple(s.stop - s.start for s in box), dtype=dtype)
        if out.size == 0:
            return out
        files = self.files if self.files is not None else RootDir(layout.root, where)
        base = self.prefix.strip("/") + "/" if self.prefix.strip("/") else ""
        if base:
            check_key(base.rstrip("/"), where)  # chunk keys add digits and "." or "/"
        codec = layout.codec()
        nbytes = layout.dtype.itemsize * math.prod(layout.chunks)
        limit = raw_limit(nbytes, layout.compressor is not None)
        for coords, src, dst in chunk_overlaps(box, layout.chunks):
            target = out[dst]
            key = base + layout.separator.join(map(str, coords))
            raw = files.read(key, limit, "chunk file", check=False)
            if raw is None:
                files.check_current(key)
                target[...] = layout.fill_value
                continue
            chunk_where = f"{where}: chunk {coords}"
            if layout.compressor is None:
                if len(raw) != nbytes:
                    raise CorruptChunkError(
                        f"{chunk_where}: the raw chunk holds {len(raw)} bytes, not {nbytes}"
                    )
                buf: Any = raw
            else:
                whole = target.flags.c_contiguous and target.nbytes == nbytes \
                    and target.dtype == layout.dtype
                buf = decode_bounded(layout.compressor, raw, nbytes, chunk_where,
                                     out=target.view(np.uint8).reshape(-1) if whole else None,
                                     codec=codec)
                if whole and buf is not None and _shares(buf, target):
                    continue
            try:
                chunk = np.frombuffer(buf, dtype=layout.dtype).reshape(layout.chunks)
                target[...] = chunk[src]
            except (ValueError, TypeError) as err:
                raise CorruptChunkError(
                    f"{chunk_where} cannot be decoded ({type(err).__name__}: {err})"
                ) from err
        return out


def _shares(buf: Any, target: np.ndarray) -> bool:
    return isinstance(buf, np.ndarray) and np.shares_memory(buf, target)


def is_aligned(region: Region, chunks: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``region`` starts on chunk boundaries and ends on one or at the array's end."""
    return len(region) == len(shape) > 0 and all(
        r.start % c == 0 and (r.stop % c == 0 or r.stop == n)
        for r, c, n in zip(region, chunks, shape, strict=True)
    )


def write_region(layout: LocalV2Layout, region: Region, block: Any) -> None:
    """Encode ``block`` and write it as the chunk files of ``region``.

    ``region`` must be aligned (:func:`is_aligned`); edge chunks are stored whole,
    padded with the fill value, as Zarr v2 stores them.
    """
    block = np.asarray(block)
    codec = layout.codec()
    for coords, _src, local in chunk_overlaps(region, layout.chunks):
        piece = block[local]
        if piece.shape != layout.chunks:
            full = np.full(layout.chunks, layout.fill_value, dtype=layout.dtype)
            full[tuple(slice(0, n) for n in piece.shape)] = piece
            piece = full
        raw = np.ascontiguousarray(piece, dtype=layout.dtype)
        data = codec.encode(raw) if codec is not None else raw.tobytes()
        name = layout.chunk_path(coords)
        os.makedirs(os.path.dirname(name), exist_ok=True)
        with open(name, "wb") as f:
            f.write(data)
