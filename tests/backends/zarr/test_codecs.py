"""Zarr codecs (lazyio.backends.zarr.codecs): the default compressor, v2 <-> v3, safety."""

from __future__ import annotations

import json

import numcodecs
import numpy as np
import pytest
from numcodecs.abc import Codec
from zarr import codecs as zarr_codecs

import lazyio
from lazyio.backends.zarr.codecs import (
    SAFE_OBJECT_CODECS,
    as_zarr3_codec,
    check_object_codecs,
    decode_object_chunk,
    default_compressor,
    describe_codecs,
    is_vlen_utf8,
    object_codec,
    refuse_unsafe_codecs,
    v2_dtype,
    zarr_codec_kwargs,
)
from lazyio.errors import CorruptChunkError, UnsupportedError


def test_default_compressor_is_blosc_zstd_level_1_shuffle():
    assert default_compressor().get_config() == {
        "id": "blosc", "cname": "zstd", "clevel": 1, "shuffle": 1, "blocksize": 0,
    }


def test_zspy_written_with_the_default_compressor(tmp_path):
    path = tmp_path / "a.zspy"
    lazyio.save(path, {"data": np.arange(64.0).reshape(8, 8)}, show_progressbar=False)
    meta = json.loads((path / "Experiments" / "__unnamed__" / "data" / ".zarray").read_text())
    assert meta["compressor"] == default_compressor().get_config()
    # the zspy plugin's name for it still works
    from lazyio.formats import zspy

    assert zspy.default_compressor().get_config() == default_compressor().get_config()


@pytest.mark.parametrize(
    ("shuffle", "expected"),
    [(numcodecs.Blosc.NOSHUFFLE, "noshuffle"), (numcodecs.Blosc.SHUFFLE, "shuffle"),
     (numcodecs.Blosc.BITSHUFFLE, "bitshuffle")],
)
def test_blosc_translates_to_zarr3_blosc(shuffle, expected):
    codec = as_zarr3_codec(numcodecs.Blosc(cname="lz4", clevel=3, shuffle=shuffle))
    assert isinstance(codec, zarr_codecs.BloscCodec)
    assert codec.cname.value == "lz4"
    assert codec.clevel == 3
    assert codec.shuffle.value == expected


@pytest.mark.parametrize(("dtype", "expected"), [("u2", "shuffle"), ("u1", "bitshuffle")])
def test_blosc_autoshuffle_is_chosen_from_the_dtype(tmp_path, dtype, expected):
    # numcodecs' AUTOSHUFFLE means what zarr 3's shuffle=None means: by item size
    path = tmp_path / "a.zspy"
    compressor = numcodecs.Blosc(shuffle=numcodecs.Blosc.AUTOSHUFFLE)
    data = np.arange(256, dtype=dtype).reshape(16, 16)
    lazyio.save(path, {"data": data}, zarr_format=3, compressor=compressor,
                show_progressbar=False)
    meta = json.loads((path / "Experiments" / "__unnamed__" / "data" / "zarr.json").read_text())
    blosc = next(c for c in meta["codecs"] if c["name"] == "blosc")
    assert blosc["configuration"]["shuffle"] == expected
    np.testing.assert_array_equal(lazyio.load(path, lazy=False)[0]["data"], data)


@pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")
def test_zstd_zlib_and_others_translate():
    assert isinstance(as_zarr3_codec(numcodecs.Zstd(level=4)), zarr_codecs.ZstdCodec)
    gzip = as_zarr3_codec(numcodecs.Zlib(level=2))
    assert isinstance(gzip, zarr_codecs.GzipCodec)
    assert gzip.level == 2
    lz4 = as_zarr3_codec(numcodecs.LZ4())
    assert type(lz4).__name__ == "LZ4"  # numcodecs' own Zarr v3 wrapper
    native = zarr_codecs.ZstdCodec(level=1)
    assert as_zarr3_codec(native) is native


def test_codec_without_a_zarr3_form_is_refused():
    class Nope(Codec):
        codec_id = "lazyio-test-nope"

        def encode(self, buf):
            return buf

        def decode(self, buf, out=None):
            return buf

    with pytest.raises(UnsupportedError, match="lazyio-test-nope"):
        as_zarr3_codec(Nope())


def test_codec_kwargs_per_format():
    v2 = zarr_codec_kwargs({}, 2)
    assert v2["compressors"].get_config() == default_compressor().get_config()
    assert v2["chunk_key_encoding"] == {"name": "v2", "separator": "/"}
    assert zarr_codec_kwargs({"compressor": None}, 2)["compressors"] is None
    v3 = zarr_codec_kwargs({"compressor": "default", "shards": (4, 4), "fill_value": 7}, 3)
    assert isinstance(v3["compressors"], zarr_codecs.BloscCodec)
    assert v3["shards"] == (4, 4)
    assert v3["fill_value"] == 7
    assert "chunk_key_encoding" not in v3
    assert "shards" not in zarr_codec_kwargs({"shards": (4, 4)}, 2)


@pytest.mark.parametrize(
    "meta",
    [
        {"filters": [{"id": "pickle", "protocol": 5}], "compressor": None},
        {"filters": None, "compressor": {"id": "pickle"}},
        {"codecs": [{"name": "bytes"}, {"name": "numcodecs.pickle", "configuration": {}}]},
    ],
)
def test_pickle_refused_wherever_it_appears(meta):
    with pytest.raises(UnsupportedError, match="pickle"):
        refuse_unsafe_codecs(meta, "f.zspy: array a")


def test_safe_codecs_pass():
    refuse_unsafe_codecs({"filters": [{"id": "vlen-utf8"}], "compressor": {"id": "zstd"}}, "w")
    refuse_unsafe_codecs({"codecs": [{"name": "bytes"}, {"name": "blosc"}]}, "w")


def test_object_codec_allow_list():
    meta = {"filters": [{"id": "vlen-array", "dtype": "<f8"}], "compressor": {"id": "zstd"}}
    assert check_object_codecs(meta, "w") == ({"id": "vlen-array", "dtype": "<f8"},)
    with pytest.raises(UnsupportedError, match="object codec 'base64'"):
        check_object_codecs({"filters": [{"id": "base64"}]}, "w")
    with pytest.raises(UnsupportedError, match="object codec None"):
        check_object_codecs({"filters": []}, "w")
    with pytest.raises(UnsupportedError, match="unknown codec"):
        check_object_codecs(
            {"filters": [{"id": "vlen-utf8"}], "compressor": {"id": "no-such-codec"}}, "w")
    assert "pickle" not in SAFE_OBJECT_CODECS
    assert object_codec(None, "w") is None


@pytest.mark.parametrize(
    ("codec", "values"),
    [({"id": "vlen-utf8"}, ["a", "bé", ""]), ({"id": "msgpack2"}, ["x", "yz", "w"]),
     ({"id": "json2"}, ["p", "q", "r"])],
)
def test_object_chunk_round_trip(codec, values):
    data = np.array(values, dtype=object)
    raw = bytes(numcodecs.Zstd().encode(numcodecs.get_codec(codec).encode(data)))
    out = decode_object_chunk(raw, {"id": "zstd"}, [codec], (3,), "w")
    assert out.dtype == object
    assert out.tolist() == values


def test_damaged_object_chunk_is_corrupt():
    with pytest.raises(CorruptChunkError, match=r"f\.zspy: chunk"):
        decode_object_chunk(b"\x00garbage", None, [{"id": "vlen-utf8"}], (3,), "f.zspy: chunk")


def test_v2_dtypes():
    assert v2_dtype("<u2") == np.dtype("<u2")
    nested = v2_dtype([["a", "<f4"], ["b", [["c", "<i2"]]]])
    assert nested == np.dtype([("a", "<f4"), ("b", [("c", "<i2")])])
    assert is_vlen_utf8({"filters": [{"id": "vlen-utf8"}]})
    assert not is_vlen_utf8({"filters": None})


def test_describe_codecs():
    v2 = {"filters": [{"id": "delta", "dtype": "<i4"}],
          "compressor": {"id": "blosc", "cname": "zstd", "clevel": 1, "shuffle": 1,
                         "blocksize": 0}}
    assert describe_codecs(v2, 2) == "delta(dtype=<i4)+blosc(cname=zstd, clevel=1, shuffle=1)"
    assert describe_codecs({"compressor": None}, 2) is None
    v3 = {"codecs": [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": [2, 2],
        "codecs": [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 3}}]}}]}
    assert describe_codecs(v3, 3) == "sharding(chunks=(2, 2): zstd(level=3))"


# ------------------------------------------------------------------ bounded decoding

BOUNDED = [numcodecs.Blosc(), numcodecs.Zstd(), numcodecs.LZ4(), numcodecs.Zlib(),
           numcodecs.GZip(), numcodecs.BZ2(), numcodecs.LZMA()]


@pytest.mark.parametrize("codec", BOUNDED, ids=lambda c: c.codec_id)
def test_decode_bounded_round_trip_and_sizes(codec):
    from lazyio.backends.zarr.codecs import decode_bounded

    data = np.arange(1000, dtype="<i4")
    raw = bytes(codec.encode(data))
    config = codec.get_config()
    got = decode_bounded(config, raw, data.nbytes, "s.zspy: chunk (0,)")
    assert np.array_equal(np.frombuffer(got, dtype="<i4"), data)
    out = np.empty(data.nbytes, dtype=np.uint8)
    got = decode_bounded(config, raw, data.nbytes, "s.zspy: chunk (0,)", out=out)
    assert np.array_equal(np.frombuffer(bytes(got), dtype="<i4"), data)
    # a chunk of another size than declared: too big is refused before it is inflated
    with pytest.raises(CorruptChunkError, match=r"s\.zspy: chunk \(0,\): the chunk "
                       r"(inflates past the 3996 bytes|decodes to 4000 bytes)"):
        decode_bounded(config, raw, data.nbytes - 4, "s.zspy: chunk (0,)")
    with pytest.raises(CorruptChunkError, match=r"s\.zspy: chunk \(0,\)"):
        decode_bounded(config, raw, data.nbytes + 4, "s.zspy: chunk (0,)")


@pytest.mark.parametrize("codec", BOUNDED, ids=lambda c: c.codec_id)
def test_decode_bounded_never_inflates_a_bomb(codec):
    """32 MiB of zeros in a chunk that may hold 1 KiB: refused without allocating it
    (the peak traced allocation stays far below the bomb: lzma's 8 MiB dictionary)."""
    import tracemalloc

    from lazyio.backends.zarr.codecs import decode_bounded

    raw = bytes(codec.encode(np.zeros(32 * 2**20, dtype=np.uint8)))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptChunkError, match=r"w: the chunk (inflates past the 1024"
                           r" bytes|cannot be decoded)"):
            decode_bounded(codec.get_config(), raw, 1024, "w")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20


def test_decode_bounded_checks_blosc_headers():
    from lazyio.backends.zarr.codecs import decode_bounded

    raw = bytearray(numcodecs.Blosc().encode(np.zeros(256, "u1")))
    raw[4:8] = (2**31 - 1).to_bytes(4, "little")  # claims 2 GiB
    with pytest.raises(CorruptChunkError, match="inflates past the 256 bytes"):
        decode_bounded({"id": "blosc"}, bytes(raw), 256, "w")
    raw = bytearray(numcodecs.Blosc().encode(np.zeros(256, "u1")))
    raw[12:16] = (2**20).to_bytes(4, "little")  # claims more stored bytes than there are
    with pytest.raises(CorruptChunkError, match="damaged Blosc header"):
        decode_bounded({"id": "blosc"}, bytes(raw), 256, "w")
    with pytest.raises(UnsupportedError, match="'delta'"):
        decode_bounded({"id": "delta", "dtype": "<i4"}, b"", 4, "w")


def test_vlen_item_count_is_checked_before_decoding():
    """4 bytes of garbage declared 2e9 items: numcodecs allocated them all (98 s)."""
    with pytest.raises(CorruptChunkError, match="declares 1918985984 items, not the 3"):
        decode_object_chunk(b"\x00gar" + b"\x00" * 8, None, [{"id": "vlen-utf8"}], (3,),
                            "f.zspy: chunk")
