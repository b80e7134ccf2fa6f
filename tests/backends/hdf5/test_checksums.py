"""Fletcher32: computed as HDF5 does, verified on every read path, written when asked."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import lazyio
from lazyio.backends.hdf5.filters import fletcher32
from lazyio.errors import CorruptChunkError


def _hdf5_fletcher32(data: bytes) -> int:
    """A literal transcription of H5_checksum_fletcher32 (slow; the reference)."""
    words, s1, s2, i = len(data) // 2, 0, 0, 0
    while words:
        block = min(words, 360)
        words -= block
        for _ in range(block):
            s1 += (data[i] << 8) | data[i + 1]
            i += 2
            s2 += s1
        s1, s2 = (s1 & 0xFFFF) + (s1 >> 16), (s2 & 0xFFFF) + (s2 >> 16)
    if len(data) % 2:
        s1 += data[i] << 8
        s2 += s1
        s1, s2 = (s1 & 0xFFFF) + (s1 >> 16), (s2 & 0xFFFF) + (s2 >> 16)
    s1, s2 = (s1 & 0xFFFF) + (s1 >> 16), (s2 & 0xFFFF) + (s2 >> 16)
    return (s2 << 16) | s1


@pytest.mark.parametrize("n", [0, 1, 2, 3, 127, 128, 129, 719, 720, 721, 5001, 70001])
def test_fletcher32_matches_the_reference(rng, n):
    for data in (rng.integers(0, 256, n, dtype=np.uint8).tobytes(), b"\xff" * n, bytes(n)):
        assert fletcher32(data) == _hdf5_fletcher32(data)


@pytest.mark.parametrize("n", [1, 3, 11, 360, 721, 40001, 300001])
@pytest.mark.parametrize("dtype", ["u1", "<u2", ">f8"])
def test_fletcher32_matches_files_h5py_wrote(tmp_path, rng, n, dtype):
    """Odd-length payloads included: the stored checksum is little-endian after the data."""
    data = rng.integers(0, 255, n).astype(dtype)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        dset = f.create_dataset("x", data=data, chunks=(n,), fletcher32=True)
        raw = dset.id.read_direct_chunk((0,))[1]
    assert fletcher32(raw[:-4]) == int.from_bytes(raw[-4:], "little")


def _write(path, data, chunks, **options):
    with h5py.File(path, "w") as f:
        f.attrs["file_format"] = "HyperSpy"
        f.attrs["file_format_version"] = "3.3"
        g = f.create_group("Experiments/s")
        g.create_dataset("data", data=data, chunks=chunks, fletcher32=True, **options)
        g.create_group("axis-0")
        for i, n in enumerate(data.shape):
            a = g.require_group(f"axis-{i}")
            a.attrs.update({"name": f"a{i}", "size": n, "navigate": i == 0})
        g.create_group("metadata").create_group("General").attrs["title"] = "s"
        g.create_group("original_metadata")


def _flip_one_byte(path, chunk_index: int = 0, where: int = 10) -> None:
    with h5py.File(path, "r") as f:
        info = f["Experiments/s/data"].id.get_chunk_info(chunk_index)
    offset = info.byte_offset + min(where, info.size - 5)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x40]))


OPTIONS = {"fletcher32-only": {}, "gzip+shuffle+fletcher32": {"compression": "gzip",
                                                               "shuffle": True}}
# small chunks take the batched path; large ones the per-chunk and unshuffle-into paths
SHAPES = {"small": ((64, 40), (4, 10)), "large": ((64, 40000), (16, 40000))}


@pytest.mark.parametrize("size", sorted(SHAPES))
@pytest.mark.parametrize("kind", sorted(OPTIONS))
def test_intact_fletcher32_files_read_equal(tmp_path, rng, size, kind):
    shape, chunks = SHAPES[size]
    data = rng.integers(0, 1000, shape).astype("<u2")
    _write(tmp_path / "ok.hspy", data, chunks, **OPTIONS[kind])
    lazy = lazyio.load(tmp_path / "ok.hspy")[0]["data"]
    np.testing.assert_array_equal(lazy.compute(), data)
    np.testing.assert_array_equal(lazy[3:9, 5:17].compute(), data[3:9, 5:17])
    lazyio.close_all()


@pytest.mark.parametrize("size", sorted(SHAPES))
@pytest.mark.parametrize("kind", sorted(OPTIONS))
def test_one_flipped_byte_is_refused_lazily_and_eagerly(tmp_path, rng, size, kind):
    shape, chunks = SHAPES[size]
    data = rng.integers(0, 1000, shape).astype("<u2")
    path = tmp_path / "bad.hspy"
    _write(path, data, chunks, **OPTIONS[kind])
    _flip_one_byte(path)
    with h5py.File(path, "r") as f, pytest.raises(OSError, match=r"(?i)filter|checksum|read"):
        f["Experiments/s/data"][...]  # h5py refuses it: so must lazyio
    lazy = lazyio.load(path)[0]["data"]
    with pytest.raises(CorruptChunkError, match=r"chunk \(0, 0\) of dataset "
                       r"/Experiments/s/data.*Fletcher32 checksum mismatch") as err:
        lazy.compute()
    assert str(path) in str(err.value)
    # every read path that touches the chunk: the whole chunk, a part, with its neighbour
    for box in ((slice(0, chunks[0]), slice(0, chunks[1])), (slice(1, 2), slice(2, 5)),
                (slice(0, 2 * chunks[0]), slice(0, min(shape[1], 2 * chunks[1])))):
        with pytest.raises(CorruptChunkError, match="Fletcher32"):
            lazy[box].compute()
    np.testing.assert_array_equal(lazy[chunks[0]:].compute(), data[chunks[0]:])
    lazyio.close_all()
    with pytest.raises(CorruptChunkError, match="Fletcher32"):
        lazyio.load(path, lazy=False)
    lazyio.close_all()


def test_checksum_stored_with_swapped_halves_is_accepted(tmp_path, rng):
    """HDF5 accepts the checksum byte order of releases before 1.6.3; so does lazyio."""
    data = rng.integers(0, 1000, (8, 10)).astype("<u2")
    path = tmp_path / "old.hspy"
    _write(path, data, (8, 10))
    with h5py.File(path, "r") as f:
        info = f["Experiments/s/data"].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size - 4)
        c = fh.read(4)
        fh.seek(info.byte_offset + info.size - 4)
        fh.write(bytes((c[1], c[0], c[3], c[2])))
    np.testing.assert_array_equal(lazyio.load(path)[0]["data"].compute(), data)
    lazyio.close_all()


@pytest.mark.parametrize("compression", ["gzip", None])
def test_save_fletcher32_writes_checksums_h5py_verifies(tmp_path, rng, compression):
    data = rng.integers(0, 1000, (40, 30, 20)).astype("<u2")
    import dask.array as da

    path = tmp_path / "out.hspy"
    lazyio.save(path, {"data": da.from_array(data, chunks=(10, 30, 20))}, format="hspy",
                fletcher32=True, compression=compression, chunks=(5, 15, 20))
    with h5py.File(path, "r") as f:
        dset = f["Experiments/__unnamed__/data"]
        assert dset.fletcher32
        np.testing.assert_array_equal(dset[...], data)  # h5py verifies every checksum
        raw = dset.id.read_direct_chunk((0, 0, 0))[1]
        assert fletcher32(raw[:-4]) == int.from_bytes(raw[-4:], "little")
    np.testing.assert_array_equal(lazyio.load(path)[0]["data"].compute(), data)
    _flip_one_byte_in(path, "Experiments/__unnamed__/data")
    with h5py.File(path, "r") as f, pytest.raises(OSError, match=r"(?i)filter|checksum|read"):
        f["Experiments/__unnamed__/data"][...]
    lazyio.close_all()


def _flip_one_byte_in(path, dataset):
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 3)
        b = fh.read(1)
        fh.seek(info.byte_offset + 3)
        fh.write(bytes([b[0] ^ 1]))


def test_save_fletcher32_goes_through_the_direct_chunk_writer(tmp_path, rng, monkeypatch):
    """The chunks are encoded by lazyio (in the tasks), not by h5py under the lock."""
    import dask.array as da

    from lazyio.backends.hdf5 import target

    written = []
    original = target.H5ChunkTarget.write_encoded

    def spy(self, encoded):
        written.extend(type(d).__name__ for _, d in encoded)
        return original(self, encoded)

    monkeypatch.setattr(target.H5ChunkTarget, "write_encoded", spy)
    data = rng.integers(0, 1000, (40, 30)).astype("<u2")
    lazyio.save(tmp_path / "d.hspy", {"data": da.from_array(data, chunks=(10, 30))},
                fletcher32=True)
    assert written
    assert set(written) == {"bytes"}
    with h5py.File(tmp_path / "d.hspy", "r") as f:
        np.testing.assert_array_equal(f["Experiments/__unnamed__/data"][...], data)
