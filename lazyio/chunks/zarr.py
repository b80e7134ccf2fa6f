"""Zarr arrays as chunk sources, reopened from a :class:`~lazyio.stores.StoreSpec`.

Numeric arrays are read through zarr-python 3. Zarr v2 object arrays (ragged arrays and
strings that HyperSpy wrote with ``vlen-array``, ``msgpack2``, ``json2``, ...), which
zarr-python 3 does not open, are decoded here chunk by chunk with an allow-list of
numcodecs codecs: nothing is ever unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Any

import numcodecs
import numpy as np

from lazyio import handles
from lazyio.chunks.slicing import apply_residual, split_index
from lazyio.errors import CorruptChunkError, UnsupportedError
from lazyio.stores import StoreSpec, get_bytes, open_store, zarr_array

__all__ = ["ZarrSource", "ObjectZarrSource", "SAFE_OBJECT_CODECS"]

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
        return handles.acquire(key, lambda: zarr_array(open_store(self.store), self.path))

    def __getitem__(self, key: Any) -> np.ndarray:
        box, residual = split_index(key, self.shape)
        try:
            if self.ndim == 0:
                return np.asarray(self._array()[()], dtype=self.dtype)
            block = np.asarray(self._array()[box])
        except (RuntimeError, ValueError, TypeError, OSError) as err:
            raise CorruptChunkError(
                f"{self.store}: array {self.path}, region {box} cannot be read ({err})"
            ) from err
        return apply_residual(block, residual)


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
