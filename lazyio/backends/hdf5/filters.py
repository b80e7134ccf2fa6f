"""The HDF5 filters lazyio knows: one table, used by the reader, the writer and ``info``.

Each :class:`Filter` row says what lazyio can do with one HDF5 filter id: undo it
(``decoder``), apply it (``encoder``), whether it carries a checksum that reading
verifies, and how to label it with its parameters (``"gzip(4)"``). A filter without a
decoder is read through h5py; a pipeline with a filter lacking an encoder is written
through h5py. No other module holds filter ids.

Decoders are bounded: each is built for the number of bytes its output must have (the
chunk's size, plus 4 per Fletcher32 checksum applied before it), never allocates more
than that, and raises :class:`FilterError` for any other size, so a small chunk that
would inflate to gigabytes fails after allocating one chunk. (Undoing a compressor
applied after another one, where the size is not known in advance, is bounded by the
worst-case growth of a compressor instead.)
"""

from __future__ import annotations

import bz2
import functools
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lazyio.backends.hdf5.shuffle import shuffle, unshuffle

__all__ = [
    "FILTERS", "Filter", "FilterError", "Pipeline", "creation_options", "decoders",
    "encoder", "ensure_filters", "fletcher32", "label", "pipeline_label", "read_pipeline",
    "register_hdf5_plugins",
]

Values = tuple[int, ...]
#: A dataset's filters in the order HDF5 applies them: ``((filter id, values), ...)``.
Pipeline = tuple[tuple[int, Values], ...]
#: One filter step on a chunk's bytes (bytes-like in, bytes-like out).
Codec = Callable[[Any], Any]


class FilterError(ValueError):
    """A chunk's bytes are not what its filter pipeline produces (reported by the reader
    as :class:`~lazyio.errors.CorruptChunkError` with the file, dataset and chunk)."""


@dataclass(frozen=True)
class Filter:
    """One HDF5 filter as lazyio knows it.

    Attributes
    ----------
    id : int
        The HDF5 filter id (H5Zpublic.h or the HDF Group's plugin registry).
    name : str
        Short name, as h5py and ``lazyio info`` print it.
    decoder : callable or None
        ``decoder(values, itemsize, out_nbytes, exact)`` -> a function undoing the filter
        on one chunk, whose output must be ``out_nbytes`` long (at most, if not
        ``exact``). None: read via h5py.
    encoder : callable or None
        ``encoder(values, itemsize)`` -> a function applying the filter. None: the
        pipeline is written through h5py.
    checksum : bool
        The filter appends a checksum that the decoder verifies.
    grows_by : int
        Bytes the filter adds to its input (a checksum's size).
    compresses : bool
        The filter's output size depends on the data (a compressor).
    label : callable or None
        ``label(values)`` -> a name with parameters; None: :attr:`name`.
    """

    id: int
    name: str
    decoder: Callable[[Values, int, int, bool], Codec] | None = None
    encoder: Callable[[Values, int], Codec | None] | None = None
    checksum: bool = False
    grows_by: int = 0
    compresses: bool = False
    label: Callable[[Values], str] | None = None


# ------------------------------------------------------------------------------ Fletcher32

_MOD = 65535
_BLOCK = 64  # words per row: a row's weighted sum stays below 2**32 (65535 * 64 * 65 / 2)
_ROW_WEIGHTS = np.arange(_BLOCK, 0, -1, dtype=np.uint32)


def fletcher32(buf: Any) -> int:
    """HDF5's Fletcher32 (``H5_checksum_fletcher32``) of ``buf``, vectorised.

    The data are read as big-endian 16-bit words (an odd last byte as the high byte of
    a last word); ``sum1`` is the words' sum and ``sum2`` the sum of the running sums,
    each kept by HDF5 in ``[1, 65535]`` by end-around-carry folding (0 only for all-zero
    data). So they are the sums modulo 65535 with 0 mapped to 65535 unless every word is
    zero, which lets numpy compute them in bulk: ``sum2 = sum_j w_j (n - j)``.
    """
    raw = np.frombuffer(buf, dtype=np.uint8)
    n = (raw.size + 1) // 2
    if n == 0:
        return 0
    rows = -(-n // _BLOCK)
    words = np.zeros(rows * _BLOCK, dtype=np.uint32)
    even = raw.size - raw.size % 2
    words[: even // 2] = raw[:even].view(">u2")
    if raw.size % 2:
        words[n - 1] = int(raw[-1]) << 8
    grid = words.reshape(rows, _BLOCK)
    row_sums = grid.sum(axis=1, dtype=np.uint64)
    within = grid @ _ROW_WEIGHTS  # sum_i w_ki (BLOCK - i), exact in uint32
    total = rows * _BLOCK
    # word j = k * BLOCK + i weighs (total - j) = (total - (k + 1) * BLOCK) + (BLOCK - i)
    before = (total - _BLOCK * np.arange(1, rows + 1, dtype=np.int64)) % _MOD
    sum1 = int(row_sums.sum())
    if sum1 == 0:
        return 0
    weighted = int(within.sum(dtype=np.uint64)) + int(
        ((row_sums % _MOD) * before.astype(np.uint64)).sum(dtype=np.uint64))
    sum2 = weighted - (total - n) * sum1  # the zero padding counted n..total as weights
    return ((((sum2 - 1) % _MOD) + 1) << 16) | (((sum1 - 1) % _MOD) + 1)


def _swapped_halves(value: int) -> int:
    # HDF5 before 1.6.3 stored the checksum with the bytes of each 16-bit half swapped
    # on little-endian machines; HDF5 still accepts that form, so lazyio does too.
    b = value.to_bytes(4, "little")
    return int.from_bytes(bytes((b[1], b[0], b[3], b[2])), "little")


def _fletcher32_decoder(_values: Values, _itemsize: int, out_nbytes: int,
                        exact: bool) -> Codec:
    def verify(buf: Any) -> Any:
        view = memoryview(buf).cast("B")
        if len(view) < 4 or (exact and len(view) != out_nbytes + 4):
            raise FilterError(
                f"Fletcher32: {len(view)} bytes where {out_nbytes + 4} were expected")
        payload = view[:-4]
        stored = int.from_bytes(view[-4:], "little")
        computed = fletcher32(payload)
        if stored not in (computed, _swapped_halves(computed)):
            raise FilterError(
                f"Fletcher32 checksum mismatch (stored {stored:#010x}, computed "
                f"{computed:#010x})")
        return payload

    return verify


def _fletcher32_encoder(_values: Values, _itemsize: int) -> Codec:
    def append(buf: Any) -> bytes:
        data = bytes(buf)
        return data + fletcher32(data).to_bytes(4, "little")

    return append


# ----------------------------------------------------------------------------- Compressors


def _exact(name: str, out: bytes, out_nbytes: int, exact: bool) -> bytes:
    if exact and len(out) != out_nbytes:
        raise FilterError(f"{name}: decoded to {len(out)} bytes where {out_nbytes} were expected")
    return out


_DEFLATE_MAX_RATIO = 1032


def _short_deflate(out_nbytes: int) -> int:
    # deflate expands at most ~1032:1, so a stream this short cannot inflate beyond a
    # few chunks' worth: one call (faster for small chunks), size checked after
    return max(4 * max(out_nbytes, 1), 1 << 20) // _DEFLATE_MAX_RATIO


def _deflate_decoder(_values: Values, _itemsize: int, out_nbytes: int, exact: bool) -> Codec:
    bound = max(out_nbytes, 1)  # 0 would mean "unbounded" to zlib
    short = _short_deflate(out_nbytes)

    def inflate(buf: Any) -> bytes:
        if (len(buf) if type(buf) is bytes else memoryview(buf).nbytes) <= short:
            whole = zlib.decompress(buf)
            if exact and len(whole) != out_nbytes:
                return _exact("deflate", whole, out_nbytes, exact)  # raises
            return whole
        d = zlib.decompressobj()
        out: bytes = d.decompress(buf, bound)
        # stopped at the bound: only the stream's end may remain
        if not d.eof and (d.decompress(d.unconsumed_tail, 1) or not d.eof):
            raise FilterError(
                f"deflate: the stream is longer than the chunk ({out_nbytes} bytes) or "
                "truncated")
        return _exact("deflate", out, out_nbytes, exact)

    return inflate


def _deflate_encoder(values: Values, _itemsize: int) -> Codec:
    level = values[0] if values else 4
    return functools.partial(zlib.compress, level=level)


def _bzip2_decoder(_values: Values, _itemsize: int, out_nbytes: int, exact: bool) -> Codec:
    def decompress(buf: Any) -> bytes:
        d = bz2.BZ2Decompressor()
        out: bytes = d.decompress(buf, out_nbytes)
        if not d.eof and (d.decompress(b"", 1) or not d.eof):
            raise FilterError(
                f"bzip2: the stream is longer than the chunk ({out_nbytes} bytes) or "
                "truncated")
        return _exact("bzip2", out, out_nbytes, exact)

    return decompress


def _bzip2_encoder(values: Values, _itemsize: int) -> Codec:
    level = values[0] if values else 9
    return functools.partial(bz2.compress, compresslevel=level)


def _shuffle_decoder(values: Values, itemsize: int, _out_nbytes: int, _exact: bool) -> Codec:
    # numpy, not numcodecs: it releases the GIL
    return functools.partial(unshuffle, itemsize=values[0] if values else itemsize)


def _shuffle_encoder(values: Values, itemsize: int) -> Codec:
    return functools.partial(shuffle, itemsize=values[0] if values else itemsize)


_BLOSC_NAMES = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}


def _blosc_decoder(_values: Values, _itemsize: int, out_nbytes: int, exact: bool) -> Codec:
    # numcodecs (0.3 s to import) only when a chunk needs it: `lazyio info` never does
    import numcodecs

    codec = numcodecs.Blosc()

    def decode(buf: Any) -> Any:
        head = bytes(memoryview(buf).cast("B")[:16])
        if len(head) < 16:
            raise FilterError("blosc: chunk shorter than the blosc header")
        nbytes, _blocksize, cbytes = struct.unpack("<III", head[4:16])
        wrong = nbytes != out_nbytes if exact else nbytes > out_nbytes
        if wrong or cbytes > len(memoryview(buf).cast("B")):
            raise FilterError(
                f"blosc: header says {nbytes} bytes ({cbytes} compressed) for a chunk of "
                f"{out_nbytes} bytes")
        return codec.decode(buf)

    return decode


def _blosc_encoder(values: Values, itemsize: int) -> Codec | None:
    if len(values) < 7:
        return None
    import numcodecs

    codec = numcodecs.Blosc(cname=_BLOSC_NAMES.get(values[6], "blosclz"), clevel=values[4],
                            shuffle=values[5], typesize=itemsize)
    encode: Codec = codec.encode
    return encode


def _zstd_content_size(head: bytes) -> int | None:
    """The decompressed size a zstd frame header declares (None: not declared)."""
    if len(head) < 5 or head[:4] != b"\x28\xb5\x2f\xfd":
        raise FilterError("zstd: not a zstd frame")
    fhd = head[4]
    single = (fhd >> 5) & 1
    fcs_size = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    if fcs_size == 0:
        return None
    start = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
    field = head[start : start + fcs_size]
    if len(field) < fcs_size:
        raise FilterError("zstd: truncated frame header")
    size = int.from_bytes(field, "little")
    return size + 256 if fcs_size == 2 else size


def _zstd_decoder(_values: Values, _itemsize: int, out_nbytes: int, exact: bool) -> Codec:
    import numcodecs.zstd

    def decode(buf: Any) -> Any:
        declared = _zstd_content_size(bytes(memoryview(buf).cast("B")[:18]))
        if declared is not None and not exact and declared <= out_nbytes:
            return numcodecs.zstd.decompress(buf)
        if declared is not None and declared != out_nbytes:
            raise FilterError(
                f"zstd: frame declares {declared} bytes for a chunk of {out_nbytes}")
        # an undeclared size is decompressed into a buffer of the chunk's size, which
        # numcodecs refuses to overflow
        return numcodecs.zstd.decompress(buf, bytearray(out_nbytes))

    return decode


def _zstd_encoder(values: Values, _itemsize: int) -> Codec:
    import numcodecs

    encode: Codec = numcodecs.Zstd(level=values[0] if values else 3).encode
    return encode


def _gzip_label(values: Values) -> str:
    return f"gzip({values[0]})" if values else "gzip"


def _level_label(name: str) -> Callable[[Values], str]:
    return lambda values: f"{name}({values[0]})" if values else name


def _blosc_label(values: Values) -> str:
    if len(values) >= 7:
        return f"blosc({_BLOSC_NAMES.get(values[6], values[6])},{values[4]})"
    return "blosc"


#: Every HDF5 filter lazyio knows, by id.
FILTERS: Mapping[int, Filter] = {f.id: f for f in (
    Filter(1, "gzip", _deflate_decoder, _deflate_encoder, compresses=True,
           label=_gzip_label),
    Filter(2, "shuffle", _shuffle_decoder, _shuffle_encoder),
    Filter(3, "fletcher32", _fletcher32_decoder, _fletcher32_encoder, checksum=True,
           grows_by=4),
    Filter(4, "szip"),
    Filter(5, "nbit"),
    Filter(6, "scaleoffset"),
    Filter(307, "bzip2", _bzip2_decoder, _bzip2_encoder, compresses=True,
           label=_level_label("bzip2")),
    Filter(32000, "lzf"),  # no decoder available without the C extension: via h5py
    Filter(32001, "blosc", _blosc_decoder, _blosc_encoder, compresses=True,
           label=_blosc_label),
    Filter(32004, "lz4"),
    Filter(32008, "bitshuffle"),
    Filter(32015, "zstd", _zstd_decoder, _zstd_encoder, compresses=True,
           label=_level_label("zstd")),
)}

DEFLATE = 1  # the batched reader inflates tiny chunks with one plain call each
SHUFFLE = 2  # the reader unshuffles in bulk or straight into place when it comes first


def label(fid: int, values: Values = (), raw_name: bytes | str = b"") -> str:
    """A filter's name with its parameters (``"gzip(4)"``), or HDF5's own name for it."""
    known = FILTERS.get(fid)
    if known is not None:
        return known.label(values) if known.label is not None else known.name
    name = raw_name.decode(errors="replace") if isinstance(raw_name, bytes) else raw_name
    return name or str(fid)


def pipeline_label(pipeline: Pipeline) -> str | None:
    """``"shuffle+gzip(4)+fletcher32"``, or None for an unfiltered dataset."""
    return "+".join(label(fid, values) for fid, values in pipeline) or None


def read_pipeline(dset: Any) -> tuple[Pipeline, tuple[bytes, ...]]:
    """The filters of an h5py dataset, in applied order, with HDF5's names for them."""
    plist = dset.id.get_create_plist()
    steps, names = [], []
    for i in range(plist.get_nfilters()):
        fid, _flags, values, raw_name = plist.get_filter(i)
        steps.append((int(fid), tuple(int(v) for v in values)))
        names.append(bytes(raw_name))
    return tuple(steps), tuple(names)


@functools.cache
def register_hdf5_plugins() -> bool:
    """Register hdf5plugin's filters (blosc, zstd, lz4, bitshuffle, ...) with the HDF5
    library, once; returns whether hdf5plugin is installed.

    Importing hdf5plugin costs about 0.25 s, so it happens only where HDF5 itself must
    apply a filter it lacks (:func:`ensure_filters`) or a writer names a filter by id,
    never on the metadata-only path of ``lazyio info``.
    """
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        return False
    return True


def ensure_filters(dset: Any) -> None:
    """Before h5py (not lazyio's decoders) reads the h5py dataset ``dset``: register
    hdf5plugin's filters if the dataset uses one the HDF5 library does not have yet."""
    import h5py

    pipeline, _names = read_pipeline(dset)
    if any(not h5py.h5z.filter_avail(fid) for fid, _ in pipeline):
        register_hdf5_plugins()


def decodable(pipeline: Pipeline) -> bool:
    """Whether lazyio can undo every filter of ``pipeline``."""
    return all(FILTERS.get(fid, _UNKNOWN).decoder is not None for fid, _ in pipeline)


_UNKNOWN = Filter(-1, "unknown")


@functools.lru_cache(maxsize=256)
def batch_decoders(
    pipeline: Pipeline, itemsize: int, chunk_nbytes: int, max_stored: int
) -> tuple[Codec, ...]:
    """:func:`decoders` for a batch of fully filtered chunks of one dataset, none stored in
    more than ``max_stored`` bytes, whose results the caller checks to be exactly
    ``chunk_nbytes`` long.

    A lone deflate whose inputs are all too short to inflate past a bounded size is plain
    ``zlib.decompress``: with thousands of tiny chunks per task, the per-chunk wrapper
    was a measurable part of the read.
    """
    if (len(pipeline) == 1 and pipeline[0][0] == DEFLATE
            and max_stored <= _short_deflate(chunk_nbytes)):
        return (zlib.decompress,)
    return decoders(pipeline, itemsize, chunk_nbytes, 0)


def decoders(
    pipeline: Pipeline, itemsize: int, chunk_nbytes: int, mask: int = 0, exact: bool = True
) -> tuple[Codec, ...]:
    """The steps undoing ``pipeline`` on one stored chunk, last-applied first.

    ``mask`` is the chunk's filter mask (a set bit ``i``: HDF5 skipped filter ``i``).
    Each step is bounded to the size its output must have (at most ``chunk_nbytes``
    bytes in all when not ``exact``).
    """
    sizes: list[tuple[int, bool]] = []  # what undoing filter i gives back; exactly?
    size = chunk_nbytes
    for i, (fid, _values) in enumerate(pipeline):
        sizes.append((size, exact))
        if mask & (1 << i):
            continue
        spec = FILTERS.get(fid, _UNKNOWN)
        if spec.compresses:
            # a compressor's output size is not known; it never exceeds its input by more
            # than a small fraction (zlib 0.03 %, blosc and zstd a header)
            size, exact = size + size // 8 + 1024, False
        size += spec.grows_by
    steps = []
    for i in reversed(range(len(pipeline))):
        if mask & (1 << i):
            continue
        fid, values = pipeline[i]
        make = FILTERS.get(fid, _UNKNOWN).decoder
        if make is None:
            raise FilterError(f"HDF5 filter {label(fid, values)} cannot be decoded by lazyio")
        steps.append(make(values, itemsize, *sizes[i]))
    return tuple(steps)


@functools.lru_cache(maxsize=256)
def encoder(fid: int, values: Values, itemsize: int) -> Codec | None:
    """The function applying one filter, or None if lazyio cannot apply it."""
    make = FILTERS.get(fid, _UNKNOWN).encoder
    return make(values, itemsize) if make is not None else None


# compression names h5py knows without a plugin
_NAMED_COMPRESSION = ("gzip", "lzf", "szip")
_BOOL_OPTIONS = ("shuffle", "fletcher32")


def check_creation_options(options: Mapping[str, Any], where: object) -> None:
    """Refuse, before a file is created, writer options h5py would reject half-way.

    ``compression`` is ``None``, ``"gzip"``, ``"lzf"``, ``"szip"``, a gzip level 0-9, the id
    of an HDF5 filter available here, or a filter object (``hdf5plugin.Blosc()``);
    ``shuffle`` and ``fletcher32`` are booleans; a gzip ``compression_opts`` is a level 0-9.

    Raises
    ------
    ValueError, TypeError
        Naming ``where`` (the target), the option and what it accepts.
    """
    compression = options.get("compression")
    if isinstance(compression, bool) or not (
            compression is None or isinstance(compression, str | int | Mapping)):
        raise TypeError(
            f"{where}: compression must be a name ({', '.join(_NAMED_COMPRESSION)}), a gzip "
            f"level, a filter id or a filter object such as hdf5plugin.Blosc(), not "
            f"{compression!r}")
    if isinstance(compression, str) and compression not in _NAMED_COMPRESSION:
        raise ValueError(
            f"{where}: unknown compression {compression!r}; use one of "
            f"{', '.join(_NAMED_COMPRESSION)}, None, or an hdf5plugin filter object")
    if isinstance(compression, int) and not 0 <= compression <= 9:
        import h5py

        register_hdf5_plugins()  # the id may be one of hdf5plugin's filters
        if compression < 0 or not h5py.h5z.filter_avail(compression):
            raise ValueError(
                f"{where}: compression={compression}: neither a gzip level (0-9) nor the id "
                "of an HDF5 filter available here")
    for name in _BOOL_OPTIONS:
        value = options.get(name)
        if value is not None and not isinstance(value, bool | np.bool_):
            raise TypeError(f"{where}: {name} must be True or False, not {value!r}")
    level = options.get("compression_opts")
    if compression == "gzip" and level is not None and (
            isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9):
        raise ValueError(f"{where}: a gzip compression_opts is a level 0-9, not {level!r}")


def creation_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """h5py ``create_dataset`` keywords from lazyio's writer options.

    ``compression`` as a name or id (``"gzip"``, ``"lzf"``, 1, ...) gets HDF5's byte
    shuffle by default, as RosettaSciIO does; a filter object such as
    ``hdf5plugin.Blosc()`` (a mapping of h5py keywords) shuffles by itself.
    ``fletcher32=True`` adds the checksum filter.
    """
    kwargs = dict(options)
    compression = kwargs.pop("compression", None)
    if compression is not None:
        kwargs["compression"] = compression
        if isinstance(compression, str | int):
            kwargs.setdefault("shuffle", True)
    return kwargs
