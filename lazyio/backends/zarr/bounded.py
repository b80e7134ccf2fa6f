"""Bounded decoding for the Zarr arrays that zarr-python decodes.

lazyio decodes plain local Zarr v2 arrays itself (:mod:`lazyio.backends.zarr.direct`),
never letting a chunk decode past its size. Zarr v3 arrays (sharded or not), v2 arrays with
filters and remote arrays are decoded by zarr-python, whose compressors allocate whatever a
chunk's header declares, or inflate a gzip stream to its end: a 2 KB chunk could claim
gigabytes. Here the decompressors of such an array are swapped, in its codec pipeline
only (its metadata and the process's zarr configuration stay as they are), for ones that
go through :func:`~lazyio.backends.zarr.codecs.decode_bounded` with a limit from the
chunk's shape and data type.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numcodecs
import numcodecs.abc
import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs.sharding import ShardingCodec

from lazyio.backends.zarr.codecs import BOUNDED_CODECS, decode_bounded
from lazyio.backends.zarr.direct import raw_limit

__all__ = ["BoundedBytesCodec", "BoundedNumcodec", "bound_array"]

# codecs whose decode lazyio runs with its own numcodecs object (they decode into a
# buffer of the size their header declares, checked first)
_HEADER_CODECS = {"blosc": numcodecs.Blosc, "zstd": numcodecs.Zstd, "lz4": numcodecs.LZ4}
# dtype-like keys of numcodecs filters whose encoded form has another item size
_FILTER_DTYPE_KEYS = ("dtype", "astype", "encode_dtype", "decode_dtype")


def _numcodecs_config(codec_id: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The configuration :func:`decode_bounded` needs, or None if it cannot bound the codec."""
    if codec_id not in BOUNDED_CODECS:
        return None
    out: dict[str, Any] = {"id": codec_id}
    if codec_id == "lzma":
        out.update({k: config[k] for k in ("format", "filters") if k in config})
    return out


def _decode(config: dict[str, Any], raw: Any, limit: int, where: str) -> np.ndarray:
    make = _HEADER_CODECS.get(str(config["id"]))
    data = bytes(memoryview(raw).cast("B")) if not isinstance(raw, bytes) else raw
    buf = decode_bounded(config, data, limit, where, exact=False,
                         codec=make() if make is not None else None)
    return np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) \
        else buf.view(np.uint8).reshape(-1)


@dataclass(frozen=True)
class BoundedBytesCodec(BytesBytesCodec):
    """A Zarr v3 compressor whose decoding never produces more than about 1.5 times the
    chunk's size (see :func:`~lazyio.backends.zarr.direct.raw_limit`); encoding and
    metadata are the wrapped codec's."""

    inner: BytesBytesCodec
    config: dict[str, Any]
    where: str

    is_fixed_size = False

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = self.inner.to_dict()
        return result

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: Any) -> int:
        size: int = self.inner.compute_encoded_size(input_byte_length, chunk_spec)
        return size

    def _limit(self, chunk_spec: Any) -> int:
        dtype = np.dtype(chunk_spec.dtype.to_native_dtype())
        return raw_limit(math.prod(chunk_spec.shape) * max(1, dtype.itemsize), True)

    def _decode_sync(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        out = _decode(self.config, chunk_bytes.as_array_like(), self._limit(chunk_spec),
                      self.where)
        return chunk_spec.prototype.buffer.from_array_like(out)

    async def _decode_single(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        return await self.inner._encode_single(chunk_bytes, chunk_spec)


class BoundedNumcodec(numcodecs.abc.Codec):  # type: ignore[misc]
    """A Zarr v2 compressor (numcodecs) whose decoding stops at ``limit`` bytes."""

    codec_id = "lazyio-bounded"

    def __init__(self, inner: numcodecs.abc.Codec, config: dict[str, Any], limit: int,
                 where: str) -> None:
        self.inner, self.config, self.limit, self.where = inner, config, limit, where

    def encode(self, buf: Any) -> Any:
        return self.inner.encode(buf)

    def decode(self, buf: Any, out: Any = None) -> Any:
        got = _decode(self.config, np.ascontiguousarray(buf).view(np.uint8).reshape(-1)
                      if not isinstance(buf, bytes) else buf, self.limit, self.where)
        if out is None:
            return got
        target = np.frombuffer(out, dtype=np.uint8) if not isinstance(out, np.ndarray) \
            else out.view(np.uint8).reshape(-1)
        target[: got.size] = got
        return out

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.inner.get_config()
        return config


def _bound_v3(codec: Any, where: str) -> Any:
    if isinstance(codec, ShardingCodec):
        # the inner chunks of a shard: bounded by the inner chunk's size
        return dataclasses.replace(codec, codecs=tuple(_bound_v3(c, where)
                                                       for c in codec.codecs))
    if not isinstance(codec, BytesBytesCodec) or isinstance(codec, BoundedBytesCodec):
        return codec
    doc = codec.to_dict()
    name = str(doc.get("name", "")).removeprefix("numcodecs.")
    settings = doc.get("configuration") or {}
    config = _numcodecs_config(name, settings if isinstance(settings, dict) else {})
    return codec if config is None else BoundedBytesCodec(codec, config, where)


def _v2_limit(meta: Any) -> int | None:
    dtype = np.dtype(meta.dtype.to_native_dtype())
    if dtype.kind not in "biufcmM":
        return None  # strings: their encoded size does not follow from the shape
    itemsize = dtype.itemsize
    for f in meta.filters or ():
        config = f.get_config()
        for key in _FILTER_DTYPE_KEYS:
            if key in config:
                try:
                    itemsize = max(itemsize, np.dtype(config[key]).itemsize)
                except TypeError:
                    return None
    return raw_limit(math.prod(meta.chunks) * max(1, itemsize), True)


def bound_array(array: zarr.Array[Any], where: str) -> zarr.Array[Any]:
    """``array`` with every compressor lazyio can bound replaced in its codec pipeline.

    Parameters
    ----------
    array : zarr.Array
        An array opened for reading.
    where : str
        The store and array, for error messages.

    Returns
    -------
    zarr.Array
        The same array object; decoding a chunk that inflates past its bound raises
        :class:`~lazyio.errors.CorruptChunkError` naming ``where``.
    """
    from zarr.codecs._v2 import V2Codec
    from zarr.registry import get_pipeline_class

    inner = array._async_array
    meta = inner.metadata
    if meta.zarr_format == 2:
        compressor = meta.compressor
        limit = _v2_limit(meta)
        config = (_numcodecs_config(str(compressor.codec_id), compressor.get_config())
                  if compressor is not None else None)
        if limit is None or config is None:
            return array
        codec = V2Codec(filters=meta.filters,
                        compressor=BoundedNumcodec(compressor, config, limit, where))
        pipeline = get_pipeline_class().from_codecs([codec])
    else:
        codecs = tuple(_bound_v3(c, where) for c in meta.codecs)
        if all(a is b for a, b in zip(codecs, meta.codecs, strict=True)):
            return array
        pipeline = get_pipeline_class().from_codecs(codecs)
    object.__setattr__(inner, "codec_pipeline", pipeline)
    return array
