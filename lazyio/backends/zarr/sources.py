"""Zarr arrays as chunk sources, reopened from a :class:`~lazyio.backends.zarr.stores.StoreSpec`.

Numeric arrays are read through zarr-python 3. Zarr v2 object arrays (ragged arrays and
strings that HyperSpy wrote with ``vlen-array``, ``msgpack2``, ``json2``, ...), which
zarr-python 3 does not open, are decoded here chunk by chunk with an allow-list of
numcodecs codecs: nothing is ever unpickled.
"""

from __future__ import annotations

import functools
import json
import os
import zipfile
from dataclasses import dataclass
from itertools import product
from typing import Any

import numcodecs
import numpy as np

from lazyio import handles
from lazyio.backends.slicing import apply_residual, split_index
from lazyio.backends.zarr.stores import StoreSpec, get_bytes, open_store, zarr_array
from lazyio.errors import CorruptChunkError, LazyioError, UnsupportedError

__all__ = ["SAFE_OBJECT_CODECS", "LocalV2Layout", "ObjectZarrSource", "ZarrSource", "local_v2_layout"]

# Object codecs that decode data without executing anything from the file.
SAFE_OBJECT_CODECS = frozenset({"vlen-array", "vlen-utf8", "vlen-bytes", "json2", "msgpack2"})


@dataclass(frozen=True)
class ZarrSource:
    """A zarr array read through zarr-python, reopened per process."""

    store: StoreSpec
    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    storage_chunks: tuple[int, ...]
    token: str = ""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _array(self) -> Any:
        key = ("zarr-array", self.store, self.path, self.token)
        return handles.acquire(key, handles.opened_unchanged(
            self.store.location, self.token,
            lambda: zarr_array(open_store(self.store), self.path)))

    def _plan(self) -> _DirectPlan | None:
        key = ("zarr-direct", self.store, self.path, self.token)
        return handles.memo(key, lambda: _checked_plan(self))

    def __getitem__(self, key: Any) -> np.ndarray:
        box, residual = split_index(key, self.shape)
        plan = self._plan() if self.ndim else None
        if plan is not None:
            return apply_residual(plan.read(box, self), residual)
        try:
            if self.ndim == 0:
                return np.asarray(self._array()[()], dtype=self.dtype)
            block = np.asarray(self._array()[box])
        except LazyioError:
            raise
        except (RuntimeError, ValueError, TypeError, OSError, KeyError, EOFError,
                zipfile.BadZipFile) as err:  # a damaged zip member fails in zipfile
            raise CorruptChunkError(
                f"{self.store}: array {self.path}, region {box} cannot be read ({err})"
            ) from err
        return apply_residual(block, residual)


# Compressors whose chunks lazyio reads itself from local Zarr v2 directories.
_DIRECT_COMPRESSORS = frozenset({"blosc", "zstd", "zlib", "gzip", "bz2", "lz4", "lzma"})


@dataclass(frozen=True)
class LocalV2Layout:
    """What lazyio needs to read or write a plain local Zarr v2 array's chunk files."""

    root: str
    separator: str
    compressor: dict[str, Any] | None
    fill_value: int | float
    dtype: np.dtype
    chunks: tuple[int, ...]

    def chunk_path(self, coords: tuple[int, ...]) -> str:
        return os.path.join(self.root, self.separator.join(map(str, coords)))

    def codec(self) -> Any:
        """The numcodecs codec of the chunk files (``None``: stored raw)."""
        if self.compressor is None:
            return None
        return _codec_from_json(json.dumps(self.compressor, sort_keys=True))


@functools.lru_cache(maxsize=32)
def _codec_from_json(config: str) -> Any:
    return numcodecs.get_codec(json.loads(config))


def local_v2_layout(root: str) -> LocalV2Layout | None:
    """The layout of the Zarr v2 array in directory ``root`` when lazyio can handle its
    chunk files itself (numeric, C order, no filters, a known compressor, a numeric fill
    value); ``None`` otherwise, and zarr-python does the work."""
    try:
        with open(os.path.join(root, ".zarray"), "rb") as f:
            meta = json.load(f)
        dtype = np.dtype(meta.get("dtype"))
    except (OSError, ValueError, TypeError):
        return None  # Zarr v3, or not a plain array: zarr-python knows
    compressor = meta.get("compressor")
    if (
        meta.get("zarr_format") != 2 or meta.get("filters") or meta.get("order") != "C"
        or dtype.kind not in "biufc"
        or (compressor is not None and compressor.get("id") not in _DIRECT_COMPRESSORS)
    ):
        return None
    fill = meta.get("fill_value")
    if not isinstance(fill, int | float) or isinstance(fill, bool):
        fill = 0 if fill is None else None
    if fill is None:
        return None  # NaN/Infinity strings, base64 fill values: zarr-python decodes them
    return LocalV2Layout(
        root=root, separator=meta.get("dimension_separator") or ".", compressor=compressor,
        fill_value=fill, dtype=dtype, chunks=tuple(int(c) for c in meta.get("chunks", ())),
    )


@dataclass(frozen=True)
class _DirectPlan:
    """How to read a local Zarr v2 array's chunk files without zarr-python.

    zarr-python 3 runs every read through its event loop and thread pool, which costs
    more than decoding for small chunks; here each task reads its chunk files and
    decodes them with numcodecs (which releases the GIL), as for HDF5.
    """

    layout: LocalV2Layout

    def read(self, box: tuple[slice, ...], source: ZarrSource) -> np.ndarray:
        layout, cs = self.layout, self.layout.chunks
        out = np.empty(tuple(s.stop - s.start for s in box), dtype=source.dtype)
        if out.size == 0:
            return out
        codec = layout.codec()
        grid = [range(s.start // c, -(-s.stop // c)) for s, c in zip(box, cs, strict=True)]
        for coords in product(*grid):
            src, dst = [], []
            for s, ci, k in zip(box, coords, cs, strict=True):
                lo, hi = max(s.start, ci * k), min(s.stop, (ci + 1) * k)
                src.append(slice(lo - ci * k, hi - ci * k))
                dst.append(slice(lo - s.start, hi - s.start))
            target = out[tuple(dst)]
            try:
                with open(layout.chunk_path(coords), "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                target[...] = layout.fill_value  # never written: the fill value
                continue
            try:
                if _decode_into(codec, raw, target):
                    continue
                buf = codec.decode(raw) if codec is not None else raw
                target[...] = np.frombuffer(buf, dtype=layout.dtype).reshape(cs)[tuple(src)]
            except Exception as err:
                raise CorruptChunkError(
                    f"{source.store}: array {source.path}: chunk {coords} cannot be decoded "
                    f"({type(err).__name__}: {err})"
                ) from err
        return out


def _decode_into(codec: Any, raw: bytes, target: np.ndarray) -> bool:
    """Decode a Blosc chunk straight into a whole, contiguous ``target`` if it is one."""
    if (
        getattr(codec, "codec_id", "") != "blosc" or not target.flags.c_contiguous
        # bytes 4-7 of a Blosc header: the decoded size; a short chunk would leave
        # stale bytes in place (the general path reports it)
        or len(raw) < 16 or int.from_bytes(raw[4:8], "little") != target.nbytes
    ):
        return False
    codec.decode(raw, out=target.view(np.uint8).reshape(-1))
    return True


def _checked_plan(source: ZarrSource) -> _DirectPlan | None:
    plan = _direct_plan(source)
    handles.check_unchanged(source.store.location, source.token)
    return plan


def _direct_plan(source: ZarrSource) -> _DirectPlan | None:
    """A plan when the array is a plain local Zarr v2 one, else None (zarr-python reads)."""
    location = source.store.location
    if source.store.kind != "dir" or location is None or location.local_path is None:
        return None
    layout = local_v2_layout(os.path.join(location.local_path, *source.path.strip("/").split("/")))
    if (
        layout is None or layout.dtype != source.dtype
        or layout.chunks != tuple(source.storage_chunks)
    ):
        return None
    return _DirectPlan(layout)


def _codec(config: dict[str, Any] | None, where: str) -> Any:
    if config is None:
        return None
    if config.get("id") == "pickle":
        raise UnsupportedError(f"{where}: refusing the 'pickle' codec (it can run code)")
    return numcodecs.get_codec(dict(config))


@dataclass(frozen=True)
class ObjectZarrSource:
    """A Zarr v2 object array (``dtype "|O"``) decoded with safe numcodecs codecs."""

    store: StoreSpec
    path: str
    shape: tuple[int, ...]
    storage_chunks: tuple[int, ...]
    compressor: Any  # dict config or None
    filters: tuple[Any, ...]  # dict configs
    separator: str = "."

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(object)

    @classmethod
    def from_metadata(cls, store: StoreSpec, path: str, meta: dict[str, Any]) -> ObjectZarrSource:
        """Describe the array from its ``.zarray`` document, checking its codecs."""
        filters = tuple(meta.get("filters") or ())
        where = f"{store}: array {path}"
        ids = [f.get("id") for f in filters]
        if not ids or ids[0] not in SAFE_OBJECT_CODECS:
            raise UnsupportedError(
                f"{where} has object codec {ids[0] if ids else None!r}; lazyio decodes only "
                f"{sorted(SAFE_OBJECT_CODECS)}"
            )
        for f in (*filters, meta.get("compressor")):
            _codec(f, where)  # fail now, not in a task, on codecs numcodecs lacks
        return cls(
            store=store,
            path=path.strip("/"),
            shape=tuple(meta["shape"]),
            storage_chunks=tuple(meta["chunks"]),
            compressor=meta.get("compressor"),
            filters=filters,
            separator=meta.get("dimension_separator") or ".",
        )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _decode_chunk(self, coords: tuple[int, ...]) -> np.ndarray | None:
        key = self.separator.join(str(c) for c in coords) if coords else "0"
        raw = get_bytes(open_store(self.store), f"{self.path}/{key}")
        if raw is None:
            return None
        where = f"{self.store}: chunk {coords} of array {self.path}"
        try:
            buf: Any = raw
            comp = _codec(self.compressor, where)
            if comp is not None:
                buf = comp.decode(buf)
            for config in reversed(self.filters):
                buf = _codec(config, where).decode(buf)
            chunk = np.asarray(buf, dtype=object)
            return chunk.reshape(self.storage_chunks) if self.ndim else chunk.reshape(())
        except (ValueError, TypeError, RuntimeError) as err:
            raise CorruptChunkError(f"{where} cannot be decoded ({err})") from err

    def __getitem__(self, key: Any) -> np.ndarray:
        box, residual = split_index(key, self.shape)
        out = np.empty(tuple(s.stop - s.start for s in box), dtype=object)
        if out.size:
            grid = [
                range(s.start // c, -(-s.stop // c))
                for s, c in zip(box, self.storage_chunks, strict=True)
            ]
            for coords in product(*grid):
                chunk = self._decode_chunk(coords)
                src, dst = [], []
                for s, ci, k in zip(box, coords, self.storage_chunks, strict=True):
                    lo, hi = max(s.start, ci * k), min(s.stop, (ci + 1) * k)
                    src.append(slice(lo - ci * k, hi - ci * k))
                    dst.append(slice(lo - s.start, hi - s.start))
                if chunk is not None:
                    out[tuple(dst)] = chunk[tuple(src)]
        return apply_residual(out, residual)
