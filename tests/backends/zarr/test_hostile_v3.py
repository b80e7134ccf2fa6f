"""Decompression bombs in the arrays zarr-python decodes (issue 13, Zarr leftover): Zarr v3
arrays (plain and sharded) and Zarr v2 arrays with filters. Each tiny chunk claims or
inflates to gigabytes; lazyio refuses it with a CorruptChunkError naming the store,
without allocating its claimed size (lazyio.backends.zarr.bounded)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import dask
import hostile_zarr
import numcodecs
import numpy as np
import pytest

import lazyio
from lazyio.errors import CorruptChunkError

ARRAY = hostile_zarr.ARRAY
DATA = hostile_zarr.DATA  # (8, 6) float32 in chunks of (2, 3): 24-byte chunks
CLAIM = 2 * 2**30 - 1  # what the header bombs claim
STREAM_BOMB = 2**29  # what the stream bombs inflate to (512 MiB: quick to build)


def _save(path: Path, **options: object) -> Path:
    lazyio.save(path, DATA, chunks=(2, 3), show_progressbar=False, **options)
    return path


def _claim_blosc(raw: bytes) -> bytes:
    out = bytearray(raw)
    out[4:8] = struct.pack("<I", CLAIM)  # the decoded size in a Blosc header
    return bytes(out)


def _patch(path: Path, key: str, change: Callable[[bytes], bytes]) -> None:
    chunk = path / ARRAY / key
    chunk.write_bytes(change(chunk.read_bytes()))


def v3_blosc(folder: Path) -> Path:
    path = _save(folder / "v3-blosc.zspy", zarr_format=3)
    _patch(path, "c/0/0", _claim_blosc)
    return path


def v3_lz4(folder: Path) -> Path:
    path = _save(folder / "v3-lz4.zspy", zarr_format=3, compressor=numcodecs.LZ4())
    # numcodecs' LZ4 chunks start with their decoded size
    _patch(path, "c/0/0", lambda raw: struct.pack("<I", CLAIM) + raw[4:])
    return path


def _gzip_bomb() -> bytes:
    body, crc = hostile_zarr._repeated_deflate(STREAM_BOMB, -15)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + body + struct.pack("<II", crc, STREAM_BOMB % 2**32)


def v3_gzip(folder: Path) -> Path:
    path = _save(folder / "v3-gzip.zspy", zarr_format=3, compressor=numcodecs.GZip(1))
    (path / ARRAY / "c/0/0").write_bytes(_gzip_bomb())
    return path


def v3_sharded_blosc(folder: Path) -> Path:
    """An inner chunk of a shard claims 2 GiB; the shard's index (and its crc32c) is
    intact, so only the chunk's decoding can catch it."""
    path = _save(folder / "v3-shard.zspy", zarr_format=3, shards=(4, 6))
    shard = path / ARRAY / "c/0/0"
    raw = bytearray(shard.read_bytes())
    # index at the end: (offset, nbytes) as uint64 per inner chunk, then a crc32c
    offset = struct.unpack_from("<Q", raw, len(raw) - 4 - 4 * 16)[0]
    raw[offset + 4:offset + 8] = struct.pack("<I", CLAIM)
    shard.write_bytes(bytes(raw))
    return path


def v2_filters_blosc(folder: Path) -> Path:
    path = _save(folder / "v2-filters-blosc.zspy", filters=[numcodecs.Delta("<f4")])
    assert json.loads((path / ARRAY / ".zarray").read_text())["filters"]
    _patch(path, "0/0", _claim_blosc)
    return path


def v2_filters_zlib(folder: Path) -> Path:
    path = _save(folder / "v2-filters-zlib.zspy", filters=[numcodecs.Delta("<f4")],
                 compressor=numcodecs.Zlib(1))
    (path / ARRAY / "0/0").write_bytes(
        hostile_zarr._repeated_deflate(STREAM_BOMB, 15)[0])
    return path


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "v3-blosc-header": v3_blosc,
    "v3-lz4-header": v3_lz4,
    "v3-gzip-stream": v3_gzip,
    "v3-sharded-blosc-header": v3_sharded_blosc,
    "v2-filters-blosc-header": v2_filters_blosc,
    "v2-filters-zlib-stream": v2_filters_zlib,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_bomb_is_refused_naming_the_store(tmp_path: Path, name: str) -> None:
    path = BUILDERS[name](tmp_path)
    start = time.perf_counter()
    with pytest.raises(CorruptChunkError, match=r"inflates past the \d+ bytes") as info, \
            dask.config.set(scheduler="synchronous"):
        lazyio.load(path, lazy=True)[0]["data"].compute()
    assert time.perf_counter() - start < 30
    assert str(path) in str(info.value)
    assert ARRAY in str(info.value)


def test_valid_bounded_arrays_read_back(tmp_path: Path) -> None:
    """The bounded decoders change nothing for honest chunks (each kind above, unpatched)."""
    for options in ({"zarr_format": 3}, {"zarr_format": 3, "compressor": numcodecs.LZ4()},
                    {"zarr_format": 3, "compressor": numcodecs.GZip(1)},
                    {"zarr_format": 3, "shards": (4, 6)},
                    {"filters": [numcodecs.Delta("<f4")]},
                    {"filters": [numcodecs.Delta("<f4")], "compressor": numcodecs.Zlib(1)}):
        path = _save(tmp_path / f"ok{len(os.listdir(tmp_path))}.zspy", **options)
        np.testing.assert_array_equal(lazyio.load(path, lazy=False)[0]["data"], DATA)


def test_bombs_allocate_nothing_of_their_claim(tmp_path: Path) -> None:
    """In a fresh process, reading every bomb grows peak RSS by far less than one
    claimed chunk (0.5 to 2 GiB): before, zarr-python allocated the claim."""
    paths = []
    for name, build in BUILDERS.items():
        folder = tmp_path / name
        folder.mkdir()
        paths.append(str(build(folder)))
    script = textwrap.dedent("""
        import json, resource, sys
        import dask
        import lazyio
        from lazyio.errors import CorruptChunkError
        lazyio.load(sys.argv[2])  # imports and first-use costs before the baseline
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        refused = 0
        for path in json.loads(sys.argv[1]):
            try:
                with dask.config.set(scheduler="synchronous"):
                    lazyio.load(path, lazy=True)[0]["data"].compute()
            except CorruptChunkError:
                refused += 1
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"base": base, "peak": peak, "refused": refused}))
    """)
    valid = _save(tmp_path / "valid.zspy", zarr_format=3)
    out = subprocess.run([sys.executable, "-c", script, json.dumps(paths), str(valid)],
                         check=True, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["refused"] == len(BUILDERS)
    assert (report["peak"] - report["base"]) / 1024 < 200, report


def test_gzip_bomb_is_small_on_disk() -> None:
    """The gzip bomb really is one: about 0.5 MB that a plain gzip reader inflates past
    the chunk's 24 bytes (checked on its first MiB only)."""
    bomb = _gzip_bomb()
    assert len(bomb) < 4 * 2**20
    assert len(zlib.decompressobj(31).decompress(bomb, 2**20)) == 2**20
