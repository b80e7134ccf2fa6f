"""Everything lazyio knows about Zarr codecs, in one place.

- the default compressor of .zspy files (Blosc zstd, level 1, byte shuffle, as HyperSpy);
- the creation keywords zarr-python takes for lazyio's options, and the translation of a
  numcodecs (Zarr v2) codec to its Zarr v3 form;
- the safety rules for object arrays: an allow-list of codecs that decode without running
  code from the file, and the refusal of ``pickle`` wherever it appears;
- decoding of Zarr v2 object chunks, which zarr-python 3 does not open;
- parsing of Zarr v2 ``dtype`` entries, and a short text naming an array's codecs.
"""

from __future__ import annotations

import bz2
import functools
import json
import lzma
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numcodecs
import numcodecs.abc
import numpy as np

from lazyio.errors import CorruptChunkError, UnsupportedError

__all__ = [
    "SAFE_OBJECT_CODECS",
    "ZarrFormat",
    "as_zarr3_codec",
    "codec_from_config",
    "decode_bounded",
    "decode_object_chunk",
    "default_compressor",
    "describe_codecs",
    "is_vlen_utf8",
    "object_codec",
    "refuse_unsafe_codecs",
    "v2_dtype",
    "zarr_codec_kwargs",
]

ZarrFormat = Literal[2, 3]

# Object codecs that decode data without executing anything from the file.
SAFE_OBJECT_CODECS = frozenset({"vlen-array", "vlen-utf8", "vlen-bytes", "json2", "msgpack2"})

# Codecs of a Zarr v3 array that only describe byte order and axis order: not worth naming.
_LAYOUT_CODECS = frozenset({"bytes", "transpose"})

_BLOSC_SHUFFLE: dict[Any, Literal["noshuffle", "shuffle", "bitshuffle"]] = {
    0: "noshuffle", 1: "shuffle", 2: "bitshuffle",
}

# Options that describe internals rather than the compression a user chose.
_UNSHOWN_OPTIONS = frozenset({"id", "name", "blocksize", "typesize", "endian", "checksum"})


def default_compressor() -> numcodecs.abc.Codec:
    """The default compressor of .zspy arrays.

    Returns
    -------
    numcodecs.abc.Codec
        ``Blosc(cname="zstd", clevel=1, shuffle=SHUFFLE)``: HyperSpy's default, fast to
        write and a good ratio on detector data.
    """
    return numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE)


# ----------------------------------------------------------------------------- writing


def zarr_codec_kwargs(options: Mapping[str, Any], zarr_format: ZarrFormat) -> dict[str, Any]:
    """Keywords of ``zarr.Group.create_array`` for lazyio's writer options.

    Parameters
    ----------
    options : mapping
        ``compressor`` (a numcodecs or Zarr v3 codec, ``None`` for raw chunks, or
        ``"default"``/absent for :func:`default_compressor`), ``shards`` (Zarr v3 only),
        ``filters`` and ``fill_value`` (passed on).
    zarr_format : {2, 3}
        The format of the array to create.

    Returns
    -------
    dict
    """
    kwargs: dict[str, Any] = {}
    compressor = options.get("compressor", "default")
    if isinstance(compressor, str) and compressor == "default":
        compressor = default_compressor()
    if compressor is not None and zarr_format == 3:
        compressor = as_zarr3_codec(compressor)
    kwargs["compressors"] = compressor
    if zarr_format == 2:
        # HyperSpy's zarr 2 writes nested chunk keys ("0/0/0"): keep its layout
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    elif options.get("shards") is not None:
        kwargs["shards"] = options["shards"]
    for key in ("filters", "fill_value"):
        if key in options:
            kwargs[key] = options[key]
    return kwargs


def as_zarr3_codec(codec: Any) -> Any:
    """The Zarr v3 codec equivalent to a numcodecs (Zarr v2) codec.

    Parameters
    ----------
    codec : numcodecs.abc.Codec or zarr codec
        A Zarr v3 codec is returned unchanged.

    Returns
    -------
    zarr codec
        zarr's own Blosc, Zstd and Gzip codecs where they exist (zlib is written as gzip,
        which zarr-python 3 offers natively), else the ``numcodecs.zarr3`` wrapper of the
        same name.

    Raises
    ------
    UnsupportedError
        If numcodecs has no Zarr v3 form of the codec.
    """
    if not isinstance(codec, numcodecs.abc.Codec):
        return codec
    from zarr import codecs as zarr_codecs

    config = dict(codec.get_config())
    codec_id = str(config.pop("id"))
    if codec_id == "blosc":
        # numcodecs' AUTOSHUFFLE (-1) is zarr 3's None: chosen from the dtype
        shuffle = _BLOSC_SHUFFLE.get(config.get("shuffle", 1))
        return zarr_codecs.BloscCodec(
            cname=config.get("cname", "zstd"), clevel=config.get("clevel", 5), shuffle=shuffle
        )
    if codec_id == "zstd":
        return zarr_codecs.ZstdCodec(level=config.get("level", 0))
    if codec_id in ("zlib", "gzip"):
        return zarr_codecs.GzipCodec(level=config.get("level", 5))
    wrappers = _numcodecs_zarr3_wrappers()
    cls = wrappers.get(codec_id.lower())
    if cls is None:
        raise UnsupportedError(f"numcodecs codec {codec_id!r} has no Zarr v3 form")
    return cls(**config)


def _numcodecs_zarr3_wrappers() -> dict[str, Any]:
    """The Zarr v3 wrappers of numcodecs codecs, by lower-case codec id.

    zarr-python >= 3.1.3 ships them (``zarr.codecs.numcodecs``); before, numcodecs did
    (``numcodecs.zarr3``, whose names are loaded on first access, so they are looked up
    through ``__all__``, not the module's dictionary).
    """
    import importlib
    import warnings

    for name in ("zarr.codecs.numcodecs", "numcodecs.zarr3"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            classes = {n: getattr(module, n, None) for n in getattr(module, "__all__", ())}
        return {n.lower(): c for n, c in classes.items() if isinstance(c, type)}
    return {}


# ----------------------------------------------------------------------------- safety


def _is_pickle(config: Any) -> bool:
    # Zarr v2 names it "pickle", numcodecs' Zarr v3 wrapper "numcodecs.pickle"
    if not isinstance(config, Mapping):
        return False
    name = str(config.get("id") or config.get("name") or "")
    return name.split(".")[-1] == "pickle"


def refuse_unsafe_codecs(meta: Mapping[str, Any], where: str) -> None:
    """Refuse an array whose codecs execute code from the file (pickle), whatever its dtype.

    Parameters
    ----------
    meta : mapping
        The array's metadata document (``.zarray`` or ``zarr.json``).
    where : str
        The file and array, for the error message.

    Raises
    ------
    UnsupportedError
        If any filter, compressor or codec is ``pickle``.
    """
    configs = [*(meta.get("filters") or []), meta.get("compressor"), *(meta.get("codecs") or [])]
    if any(_is_pickle(config) for config in configs):
        raise UnsupportedError(f"{where}: refusing the 'pickle' codec (it can run code)")


def object_codec(config: Mapping[str, Any] | None, where: str) -> numcodecs.abc.Codec | None:
    """The numcodecs codec of a Zarr v2 filter or compressor entry (``None`` stays ``None``).

    Raises
    ------
    UnsupportedError
        For ``pickle``, or a codec numcodecs does not know.
    """
    if config is None:
        return None
    if _is_pickle(config):
        raise UnsupportedError(f"{where}: refusing the 'pickle' codec (it can run code)")
    try:
        return codec_from_config(config)
    except (ValueError, KeyError, TypeError) as err:
        raise UnsupportedError(f"{where}: unknown codec {dict(config)!r} ({err})") from err


def check_object_codecs(meta: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], ...]:
    """Check a Zarr v2 object array's codecs before any chunk is read; return its filters.

    The first filter turns bytes into Python objects: only :data:`SAFE_OBJECT_CODECS` are
    accepted there. Every codec must be known to numcodecs, so that a task never fails
    on a codec the metadata already showed to be missing.

    Raises
    ------
    UnsupportedError
    """
    filters = tuple(meta.get("filters") or ())
    ids = [f.get("id") for f in filters]
    if not ids or ids[0] not in SAFE_OBJECT_CODECS:
        raise UnsupportedError(
            f"{where} has object codec {ids[0] if ids else None!r}; lazyio decodes only "
            f"{sorted(SAFE_OBJECT_CODECS)}"
        )
    for config in (*filters, meta.get("compressor")):
        object_codec(config, where)
    return filters


def decode_object_chunk(
    raw: bytes,
    compressor: Mapping[str, Any] | None,
    filters: Sequence[Mapping[str, Any]],
    chunk_shape: tuple[int, ...],
    where: str,
) -> np.ndarray:
    """Decode one chunk of a Zarr v2 object array: the compressor, then the filters.

    Parameters
    ----------
    raw : bytes
        The stored chunk.
    compressor, filters : codec configurations
        From the ``.zarray`` document (checked by :func:`check_object_codecs`).
    chunk_shape : tuple of int
        The storage chunk shape (``()`` for a scalar array).
    where : str
        The file, array and chunk, for error messages.

    Returns
    -------
    numpy.ndarray of object

    Raises
    ------
    CorruptChunkError
        If a codec cannot decode the bytes.
    """
    try:
        buf: Any = raw
        comp = object_codec(compressor, where)
        if comp is not None and compressor is not None:
            # an object chunk's decoded size is not declared: bound it by a generous cap
            buf = decode_bounded(compressor, raw, MAX_OBJECT_CHUNK_BYTES, where, exact=False)
        for config in reversed(filters):
            codec = object_codec(config, where)
            if codec is not None:
                if str(config.get("id", "")).startswith("vlen-"):
                    _check_vlen_count(buf, chunk_shape, where)
                buf = codec.decode(buf)
        chunk = np.asarray(buf, dtype=object)
        return chunk.reshape(chunk_shape)
    except (ValueError, TypeError, RuntimeError) as err:
        raise CorruptChunkError(f"{where} cannot be decoded ({err})") from err


# ----------------------------------------------------------------------------- bounded decoding

MAX_OBJECT_CHUNK_BYTES = 256 * 2**20
"""The most an object (ragged) chunk may inflate to: its decoded size is not declared."""

# Codecs whose decoded size :func:`decode_bounded` can bound before or while decoding.
BOUNDED_CODECS = frozenset({"blosc", "zstd", "lz4", "zlib", "gzip", "bz2", "lzma"})


def _bomb(where: str, limit: int) -> CorruptChunkError:
    return CorruptChunkError(
        f"{where}: the chunk inflates past the {limit} bytes it can hold (damaged, or a "
        "decompression bomb); refused"
    )


def _short(where: str, got: int, nbytes: int) -> CorruptChunkError:
    return CorruptChunkError(
        f"{where}: the chunk decodes to {got} bytes, not the {nbytes} it must hold"
    )


def _stream(make: Any, raw: bytes, limit: int, where: str, streams: bool) -> bytes:
    """Inflate ``raw`` with the stdlib decompressor ``make()``, never past ``limit`` bytes
    (``streams``: concatenated streams, as gzip, bz2 and xz allow)."""
    parts: list[bytes] = []
    total = 0
    data = raw
    while True:
        dec = make()
        part = dec.decompress(data, limit + 1 - total)
        total += len(part)
        parts.append(part)
        if total > limit:
            raise _bomb(where, limit)
        if not dec.eof:
            raise CorruptChunkError(f"{where}: the compressed chunk is truncated")
        data = dec.unused_data
        if not streams or not data:
            return b"".join(parts)


def _declared(codec_id: str, raw: bytes) -> int | None:
    """The decoded size a Blosc, LZ4 or Zstandard chunk declares in its header."""
    if codec_id == "blosc":
        # bytes 4-7: decoded size, 12-15: compressed size (must be the whole chunk)
        if len(raw) < 16 or int.from_bytes(raw[12:16], "little") != len(raw):
            raise ValueError("damaged Blosc header")
        return int.from_bytes(raw[4:8], "little")
    if codec_id == "lz4":  # numcodecs prefixes the decoded size
        if len(raw) < 4:
            raise ValueError("damaged LZ4 header")
        return int.from_bytes(raw[:4], "little")
    if codec_id == "zstd":
        return _zstd_content_size(raw)
    return None


def _zstd_content_size(raw: bytes) -> int | None:
    # RFC 8878, section 3.1.1.1: the frame header's Frame_Content_Size, if present
    if len(raw) < 6 or raw[:4] != b"\x28\xb5\x2f\xfd":
        raise ValueError("damaged Zstandard frame header")
    fhd = raw[4]
    fcs_flag, single, did_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    size = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[fcs_flag]
    if size == 0:
        return None
    start = 5 + (0 if single else 1) + {0: 0, 1: 1, 2: 2, 3: 4}[did_flag]
    if len(raw) < start + size:
        raise ValueError("damaged Zstandard frame header")
    value = int.from_bytes(raw[start:start + size], "little")
    return value + 256 if size == 2 else value


def decode_bounded(
    config: Mapping[str, Any], raw: bytes, nbytes: int, where: str, *, exact: bool = True,
    out: np.ndarray | None = None, codec: numcodecs.abc.Codec | None = None,
) -> Any:
    """Decode one compressed chunk without ever producing more than ``nbytes`` bytes.

    Blosc, LZ4 and Zstandard chunks declare their decoded size in a header: it is checked
    before anything is allocated, and decoding goes into a buffer of that size. zlib,
    gzip, bz2 and lzma chunks are inflated by streaming decompressors with a maximum
    output length. So a 2 KB chunk claiming or inflating to gigabytes costs nothing.

    Parameters
    ----------
    config : mapping
        The compressor's numcodecs configuration (``id`` in :data:`BOUNDED_CODECS`).
    raw : bytes
        The stored chunk.
    nbytes : int
        The chunk's decoded size (``exact``), or the most it may decode to.
    where : str
        The store, array and chunk, for error messages.
    exact : bool
        Whether the chunk must decode to exactly ``nbytes`` bytes.
    out : numpy.ndarray, optional
        A C-contiguous buffer of exactly ``nbytes`` bytes to decode into (Blosc, LZ4 and
        Zstandard chunks decode into it directly).
    codec : numcodecs.abc.Codec, optional
        The codec of ``config``, if the caller has it (saves building it per chunk).

    Returns
    -------
    buffer
        ``out`` if it was given and used, else the decoded bytes.

    Raises
    ------
    CorruptChunkError
        If the chunk is damaged, too large, or (``exact``) of another size.
    UnsupportedError
        For a codec whose output cannot be bounded.
    """
    codec_id = str(config.get("id"))
    if codec_id not in BOUNDED_CODECS:
        raise UnsupportedError(f"{where}: codec {codec_id!r} is not read by lazyio's bounded "
                               "decoder")
    try:
        if codec_id == "zlib":
            buf = _stream(zlib.decompressobj, raw, nbytes, where, streams=False)
        elif codec_id == "gzip":
            buf = _stream(lambda: zlib.decompressobj(31), raw, nbytes, where, streams=True)
        elif codec_id == "bz2":
            buf = _stream(bz2.BZ2Decompressor, raw, nbytes, where, streams=True)
        elif codec_id == "lzma":
            fmt = int(config.get("format", lzma.FORMAT_XZ))
            filters = config.get("filters") if fmt == lzma.FORMAT_RAW else None
            buf = _stream(lambda: lzma.LZMADecompressor(format=fmt, filters=filters), raw,
                          nbytes, where, streams=fmt != lzma.FORMAT_RAW)
        else:
            declared = _declared(codec_id, raw)
            if declared is None:  # a Zstandard frame without its size: bounded by `out`
                if not exact:
                    raise ValueError("Zstandard frame without a declared size")
                declared = nbytes
            if declared > nbytes:
                raise _bomb(where, nbytes)
            if exact and declared != nbytes:
                raise _short(where, declared, nbytes)
            if out is None or declared != nbytes:
                out = np.empty(declared, dtype=np.uint8)
            if codec is None:
                codec = codec_from_config(config)
            codec.decode(raw, out=out.view(np.uint8).reshape(-1))
            return out
    except CorruptChunkError:
        raise
    except (ValueError, TypeError, RuntimeError, OSError, EOFError, lzma.LZMAError,
            zlib.error) as err:
        raise CorruptChunkError(
            f"{where}: the chunk cannot be decoded ({type(err).__name__}: {err})"
        ) from err
    if exact and len(buf) != nbytes:
        raise _short(where, len(buf), nbytes)
    return buf


def _check_vlen_count(buf: Any, chunk_shape: tuple[int, ...], where: str) -> None:
    # numcodecs' vlen codecs start with the item count (uint32) and allocate that many
    # objects before reading them: 4 bytes of garbage asked for 2e9 (98 s, gigabytes)
    head = bytes(memoryview(buf).cast("B")[:4])
    count = int.from_bytes(head, "little") if len(head) == 4 else -1
    expected = math.prod(chunk_shape) if chunk_shape else 1
    if count != expected:
        raise CorruptChunkError(
            f"{where}: the chunk declares {count} items, not the {expected} of its shape"
        )


# ----------------------------------------------------------------------------- metadata


def codec_from_config(config: Mapping[str, Any]) -> numcodecs.abc.Codec:
    """The numcodecs codec of a configuration, built once per process and configuration.

    Codec objects are stateless for decoding and encoding, and building Blosc's is not
    free: tasks of one array share one.
    """
    return _codec_from_json(json.dumps(dict(config), sort_keys=True))


@functools.lru_cache(maxsize=32)
def _codec_from_json(config: str) -> numcodecs.abc.Codec:
    return numcodecs.get_codec(json.loads(config))


def v2_dtype(spec: Any) -> np.dtype[Any]:
    """The numpy dtype of a Zarr v2 ``dtype`` entry (a string, or JSON lists for
    structured dtypes)."""
    if isinstance(spec, list):
        # a field is [name, dtype] or [name, dtype, shape]; dtype is a list when nested
        fields = [
            (field[0], v2_dtype(field[1]), *(tuple(field[2]) for _ in field[2:3]))
            for field in spec
        ]
        structured: np.dtype[Any] = np.dtype(fields)
        return structured
    plain: np.dtype[Any] = np.dtype(spec)
    return plain


def is_vlen_utf8(meta: Mapping[str, Any]) -> bool:
    """Whether a Zarr v2 array stores text with ``vlen-utf8`` (zarr-python 3 reads these)."""
    filters = meta.get("filters") or []
    return bool(filters) and filters[0].get("id") == "vlen-utf8"


def _codec_name(config: Mapping[str, Any]) -> str:
    # Zarr v2: {"id": ..., options}; Zarr v3: {"name": ..., "configuration": {...}}
    name = config.get("id") or config.get("name") or "?"
    options = config.get("configuration", config)
    shown = {k: v for k, v in options.items()
             if k not in _UNSHOWN_OPTIONS and not isinstance(v, dict | list)}
    args = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"{name}({args})" if args else str(name)


def describe_codecs(meta: Mapping[str, Any], zarr_format: ZarrFormat | None) -> str | None:
    """A short text naming an array's filters and compressors, e.g. ``blosc(cname=zstd,
    clevel=1, shuffle=1)``; ``None`` for raw chunks."""
    names: list[str] = []
    if zarr_format == 3:
        for codec in meta.get("codecs") or []:
            if codec.get("name") == "sharding_indexed":
                conf = codec.get("configuration", {})
                inner = [_codec_name(c) for c in conf.get("codecs", [])
                         if c.get("name") not in _LAYOUT_CODECS]
                names.append(f"sharding(chunks={tuple(conf.get('chunk_shape', ()))}"
                             + (f": {'+'.join(inner)}" if inner else "") + ")")
            elif codec.get("name") not in _LAYOUT_CODECS:
                names.append(_codec_name(codec))
    else:
        names = [_codec_name(c) for c in (*(meta.get("filters") or ()),
                                          meta.get("compressor")) if c]
    return "+".join(names) or None
