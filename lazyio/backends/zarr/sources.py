"""Zarr arrays as chunk sources, reopened from a :class:`~lazyio.backends.zarr.stores.StoreSpec`.

Numeric arrays are read through zarr-python 3. Zarr v2 object arrays (ragged arrays and
strings that HyperSpy wrote with ``vlen-array``, ``msgpack2``, ``json2``, ...), which
zarr-python 3 does not open, are decoded here chunk by chunk with an allow-list of
numcodecs codecs: nothing is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lazyio import handles
from lazyio.backends.slicing import apply_residual, split_index
from lazyio.backends.zarr.codecs import (
    SAFE_OBJECT_CODECS,
    check_object_codecs,
    decode_object_chunk,
)
from lazyio.backends.zarr.direct import (
    DirectPlan,
    LocalV2Layout,
    chunk_overlaps,
    local_v2_layout,
    v2_layout,
)
from lazyio.backends.zarr.stores import (
    SafeLocalStore,
    SafeZipStore,
    StoreSpec,
    get_bytes,
    pinned_store,
    read_json,
    zarr_array,
)
from lazyio.errors import FormatError, translate

# SAFE_OBJECT_CODECS, LocalV2Layout and local_v2_layout are re-exported: their home is
# codecs.py / direct.py, but callers found them here first.
__all__ = ["SAFE_OBJECT_CODECS", "LocalV2Layout", "ObjectZarrSource", "ZarrSource", "local_v2_layout"]


@dataclass(frozen=True)
class ZarrArrayKey(handles.FileKey):
    """An open zarr array in the handle cache; ``location`` is its store spec."""

    kind: ClassVar[str] = "zarr-array"
    path: str = ""
    token: str = ""


@dataclass(frozen=True)
class DirectPlanKey:
    """The memo key of one array's direct chunk-file read plan (``handles.memo``)."""

    location: StoreSpec
    path: str
    token: str


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
        # the pinned store is the version the array was made from (checked on opening)
        key = ZarrArrayKey(self.store, self.path, self.token)
        return handles.acquire(
            key, lambda: zarr_array(pinned_store(self.store, self.token), self.path,
                                    f"{self.store}: array {self.path}"))

    def _plan(self) -> DirectPlan | None:
        return handles.memo(DirectPlanKey(self.store, self.path, self.token),
                            lambda: _direct_plan(self))

    def __getitem__(self, key: Any) -> np.ndarray:
        box, residual = split_index(key, self.shape)
        plan = self._plan() if self.ndim else None
        if plan is not None:
            block = plan.read(box, self.dtype, f"{self.store}: array {self.path}")
            return apply_residual(block, residual)
        # a damaged zip member fails in zipfile, a damaged chunk in numcodecs or zarr
        with translate(self.store, scope="chunk", what=f"array {self.path}, region {box}"):
            if self.ndim == 0:
                return np.asarray(self._array()[()], dtype=self.dtype)
            block = np.asarray(self._array()[box])
        return apply_residual(block, residual)


def _direct_plan(source: ZarrSource) -> DirectPlan | None:
    """A plan when the array is a plain Zarr v2 one in a local directory or zip file, else
    None (zarr-python reads). Its chunk files are read from the pinned version of the
    store, with each chunk's decoding bounded by its declared size."""
    store = pinned_store(source.store, source.token)
    if not isinstance(store, SafeLocalStore | SafeZipStore):
        return None
    path = source.path.strip("/")
    meta = read_json(store, f"{path}/.zarray" if path else ".zarray")
    layout = v2_layout(meta) if meta is not None else None
    if (
        layout is None or layout.dtype != source.dtype
        or layout.chunks != tuple(source.storage_chunks)
    ):
        return None
    files = store.rootdir if isinstance(store, SafeLocalStore) else store
    return DirectPlan(layout, files, path)


@dataclass(frozen=True)
class ObjectZarrSource:
    """A Zarr v2 object array (``dtype "|O"``) decoded with safe numcodecs codecs."""

    store: StoreSpec
    path: str
    shape: tuple[int, ...]
    storage_chunks: tuple[int, ...]
    compressor: Mapping[str, Any] | None
    filters: tuple[Mapping[str, Any], ...]
    separator: str = "."
    token: str = ""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(object)

    @classmethod
    def from_metadata(
        cls, store: StoreSpec, path: str, meta: dict[str, Any], token: str = ""
    ) -> ObjectZarrSource:
        """Describe the array from its ``.zarray`` document, checking its codecs;
        ``token`` is the store version's (:func:`~lazyio.backends.zarr.stores.version_token`)."""
        filters = check_object_codecs(meta, f"{store}: array {path}")
        separator = meta.get("dimension_separator") or "."
        if separator not in (".", "/"):
            raise FormatError(f"{store}: array {path} has dimension_separator "
                              f"{str(separator)[:40]!r} (only '.' and '/' exist)")
        return cls(
            store=store,
            path=path.strip("/"),
            shape=tuple(meta["shape"]),
            storage_chunks=tuple(meta["chunks"]),
            compressor=meta.get("compressor"),
            filters=filters,
            separator=separator,
            token=token,
        )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _decode_chunk(self, coords: tuple[int, ...]) -> np.ndarray | None:
        key = self.separator.join(str(c) for c in coords) if coords else "0"
        store = pinned_store(self.store, self.token)
        # a missing chunk of a replaced store raises StaleFileError in get_bytes
        raw = get_bytes(store, f"{self.path}/{key}")
        if raw is None:
            return None
        where = f"{self.store}: chunk {coords} of array {self.path}"
        shape = self.storage_chunks if self.ndim else ()
        return decode_object_chunk(raw, self.compressor, self.filters, shape, where)

    def __getitem__(self, key: Any) -> np.ndarray:
        box, residual = split_index(key, self.shape)
        out = np.empty(tuple(s.stop - s.start for s in box), dtype=object)
        if out.size:
            for coords, src, dst in chunk_overlaps(box, self.storage_chunks):
                chunk = self._decode_chunk(coords)
                if chunk is not None:
                    out[dst] = chunk[src]
        return apply_residual(out, residual)
