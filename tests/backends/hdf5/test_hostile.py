"""Hostile HDF5 and .npy inputs (issue 13): short and bomb chunks, huge declared sizes read
at load, block explosions and hard-link DAGs. Each is refused with a LazyioError naming the
file and the problem (or, where the file is merely odd, read correctly) in bounded time and
memory, measured in a child process (tests/hostile_hdf5.py ``probe``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import lazyio
from lazyio.backends.chunking import aligned_chunks, regular_chunks
from lazyio.errors import CorruptChunkError, FormatError, LazyioWarning

TESTS = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TESTS))
import hostile_hdf5 as hostile

# peak RSS of the child over its baseline (lazyio, dask, h5py imported: ~230 MB): the
# bombs inflate to 2 GiB and the huge arrays declare 0.4-5 GB if read
MAX_EXTRA_MB = 300
MAX_SECONDS = 20

# name -> (builder, expected error class or None for a read, words the message holds)
CASES: dict[str, tuple[object, str | None, tuple[str, ...]]] = {
    "gzip-short-chunk": (hostile.gzip_short_chunk, "CorruptChunkError",
                         ("/Experiments/__unnamed__/data", "(1, 0)", "8 bytes decoded")),
    "data-deflate-bomb-2GiB": (hostile.data_deflate_bomb, "CorruptChunkError",
                               ("/Experiments/__unnamed__/data", "(0, 0, 0)",
                                "longer than the chunk")),
    "metadata-deflate-bomb-2GiB": (hostile.metadata_deflate_bomb, "CorruptChunkError",
                                   ("metadata/General/bomb", "longer than the chunk")),
    "string-metadata-bomb-2GiB": (hostile.string_metadata_bomb, "CorruptChunkError",
                                  ("metadata/General/bomb", "longer than the chunk")),
    "list-5e7": (hostile.huge_list_metadata, "FormatError",
                 ("_list_hostile", "50000000 elements", "refuses more than")),
    "strings-5e7": (hostile.huge_string_metadata, "FormatError",
                    ("General/notes", "50000000 elements")),
    "usid-ancillary-1e8": (hostile.huge_usid_ancillary, "FormatError",
                           ("Position_Indices", "100000000 x 1", "refuses more than")),
    "zero-axis-1.5e15": (hostile.hspy_zero_length_axis, None, ("(1500000000000000, 0)",)),
    "global-heap-loop": (hostile.zeroed_global_heap, "HeapLoopError",
                         ("global heap collection at byte", "loop forever")),
    "usid-global-heap-loop": (lambda p: hostile.zeroed_global_heap(p, "usid"),
                              "HeapLoopError", ("global heap collection at byte",)),
    "dag-30": (hostile.hard_link_dag, None, ("(4, 6)",)),
    "usid-dag-30": (hostile.usid_hard_link_dag, None, ("(4, 5, 6)",)),
    # SIGSEGVs of libhdf5 found by the fuzz campaign: refused before the library reads
    "vlen-kind-10": (hostile.vlen_of_unknown_kind, "CrashHazardError",
                     ("hostile_vlen", "variable-length datatype of unknown kind 10")),
    "usid-vlen-kind-14": (lambda p: hostile.vlen_of_unknown_kind(p, "usid", 0x0E),
                          "CrashHazardError", ("hostile_vlen", "unknown kind 14")),
    # an unknown string padding does not crash the library: still read
    "string-padding-14": (lambda p: hostile.vlen_of_unknown_kind(p, "hspy", 0xE1), None,
                          ("(4, 5, 6)",)),
    "usid-vlen-length-1GiB": (hostile.vlen_length_flip, "CrashHazardError",
                              ("hostile_vlen", "declares a value of 1073741837 bytes")),
    "vlen-length-1GiB": (lambda p: hostile.vlen_length_flip(p, "hspy"), "CrashHazardError",
                         ("hostile_vlen", "declares a value of 1073741837 bytes")),
    "fill-value-size": (hostile.fill_value_size_flip, "CrashHazardError",
                        ("/Experiments/__unnamed__/data", "damaged fill value")),
}
NPY_ERRORS = {
    "npy-zero-axis-1.5e15": (None, ("(1500000000000000, 0)",)),
    "npy-zero-axis-1e30": ("FormatError", ("larger than numpy can index",)),
    "npy-V0-1e15": ("UnsupportedError", ("0 bytes per item", "|V0")),
    "npy-S0-1e15x1e3": ("UnsupportedError", ("0 bytes per item", "|S0")),
    "npy-U0-1e12": ("UnsupportedError", ("0 bytes per item", "<U0")),
    "npy-V0-1e30": ("FormatError", ("larger than numpy can index",)),
}


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    """Every case built, then read in one child process that measures each one."""
    folder = tmp_path_factory.mktemp("hostile-hdf5")
    paths = {}
    for name, (build, _error, _words) in CASES.items():
        suffix = ".h5" if name.startswith("usid") else ".hspy"
        paths[name] = build(folder / f"{name}{suffix}")  # type: ignore[operator]
    for name, descr, shape in hostile.NPY_EXPLOSIONS:
        paths[name] = hostile.npy_header(folder / f"{name}.npy", descr, shape)
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    done = subprocess.run(
        [sys.executable, str(TESTS / "hostile_hdf5.py"), *map(str, paths.values())],
        capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    by_path = {row["path"]: row for row in map(json.loads, done.stdout.splitlines())}
    baseline = min(float(row["peak_mb"]) for row in by_path.values())
    return {name: {**by_path[str(p)], "baseline": baseline} for name, p in paths.items()}


def _check(row: dict[str, object], error: str | None, words: tuple[str, ...],
           name: str) -> None:
    message = str(row["message"])
    if error is None:
        assert row["outcome"] == "read", row
    else:
        assert (row["outcome"], row["error"]) == ("lazyio-error", error), row
        assert name in message, message  # the file is named
    for word in words:
        assert word in message, (word, message)
    assert float(row["seconds"]) < MAX_SECONDS, row
    assert float(row["peak_mb"]) - float(row["baseline"]) < MAX_EXTRA_MB, row


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_hdf5_input_is_bounded(probed: dict[str, dict[str, object]], name: str) -> None:
    _build, error, words = CASES[name]
    _check(probed[name], error, words, name)


@pytest.mark.parametrize("name", sorted(NPY_ERRORS))
def test_hostile_npy_header_is_bounded(probed: dict[str, dict[str, object]], name: str) -> None:
    error, words = NPY_ERRORS[name]
    _check(probed[name], error, words, name)


# ------------------------------------------------------------- in-process, one at a time


def test_short_gzip_chunk_refused_on_every_path(tmp_path: Path) -> None:
    """The batched small-chunk path (many 64-byte chunks) and the one-chunk path both
    refuse a chunk decoding to 8 of its 64 bytes: no value is broadcast over the block."""
    path = hostile.gzip_short_chunk(tmp_path / "short.hspy")
    data = lazyio.load(path, lazy=True)[0]["data"]
    with pytest.raises(CorruptChunkError, match=r"chunk \(1, 0\).*8 bytes decoded"):
        data.compute()  # one block, 32 chunks: batched
    with pytest.raises(CorruptChunkError, match=r"chunk \(1, 0\)"):
        data[1, :16].compute()  # one chunk
    with pytest.raises(CorruptChunkError, match=r"chunk \(1, 0\)"):
        data[1:3, :40].compute()  # a few chunks, assembled one by one
    np.testing.assert_array_equal(data[2:, :].compute(),
                                  np.arange(8 * 64, dtype="<f4").reshape(8, 64)[2:])
    lazyio.close_all()


def test_deflate_bomb_helper_inflates_to_its_size() -> None:
    bomb = hostile.deflate_bomb(8 << 20)
    assert len(bomb) < 16_000
    assert len(__import__("zlib").decompress(bomb)) == 8 << 20


def test_hard_link_cycle_and_dag_walked_once(tmp_path: Path) -> None:
    path = hostile.hard_link_dag(tmp_path / "dag.hspy", levels=40)
    with h5py.File(path, "r+") as f:  # and a cycle: a group linking its ancestor
        f["Experiments/__unnamed__/metadata/dag/up"] = f["Experiments/__unnamed__/metadata"]
    start = time.perf_counter()
    with pytest.warns(LazyioWarning, match="hard link to"):
        signal = lazyio.load(path)[0]
    assert time.perf_counter() - start < 5
    dag = signal["metadata"]["dag"]
    # the first path to each group is decoded, the second link to it skipped
    depth = 0
    while "a" in dag:
        assert "b" not in dag
        dag, depth = dag["a"], depth + 1
    assert depth == 40
    lazyio.close_all()


def test_untrusted_and_info_walk_a_dag_once(tmp_path: Path) -> None:
    path = hostile.hard_link_dag(tmp_path / "dag.hspy", levels=40)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LazyioWarning)
        lazyio.load(path, untrusted=True, lazy=True)
        assert "4" in str(lazyio.info(path))
    assert time.perf_counter() - start < 10
    lazyio.close_all()


def test_metadata_list_cap_leaves_ordinary_lists(tmp_path: Path) -> None:
    from lazyio.formats.hyperspy.hdf5_node import METADATA_MAX_ITEMS

    path = hostile.huge_list_metadata(tmp_path / "ok.hspy", items=1000)
    assert len(lazyio.load(path)[0]["metadata"]["General"]["hostile"]) == 1000
    path = hostile.huge_list_metadata(tmp_path / "big.hspy", items=METADATA_MAX_ITEMS + 1)
    with pytest.raises(FormatError, match=f"{METADATA_MAX_ITEMS + 1} elements"):
        lazyio.load(path, lazy=True)
    lazyio.close_all()


# --------------------------------------------------------------------- the block guard


def test_empty_arrays_are_one_block() -> None:
    big = 1_500_000_000_000_000
    start = time.perf_counter()
    assert regular_chunks((big, 0), (1024, 1)) == ((big,), (0,))
    assert aligned_chunks((big, 0), (1024, 1), np.dtype("f4"), "auto") == ((big,), (0,))
    assert aligned_chunks((0, 7), None, np.dtype("f4"), "auto") == ((0,), (7,))
    assert time.perf_counter() - start < 1


def test_block_guard_refuses_axes_numpy_cannot_index() -> None:
    with pytest.raises(ValueError, match="longer than numpy can index"):
        regular_chunks((0, 10**30), (1, 1))
    with pytest.raises(ValueError, match="blocks"):
        regular_chunks((10**12, 10**6), (10, 10))


def test_global_heap_scan_on_a_large_file(tmp_path: Path) -> None:
    """Past 2 MiB the file's ends are scanned: h5py's heaps sit there; valid files pass."""
    from lazyio.backends.hdf5.files import HeapLoopError, check_global_heaps
    from lazyio.location import as_location

    path = tmp_path / "big.hspy"
    data = np.random.default_rng(0).random((64, 8192)).astype("<f4")  # 2 MiB, incompressible
    lazyio.save(path, {"data": data, "axes": [{"size": 64, "navigate": True},
                                              {"size": 8192, "navigate": False}]},
                show_progressbar=False, compression=None)
    assert path.stat().st_size > 2 << 20
    start = time.perf_counter()
    check_global_heaps(as_location(str(path)))
    assert time.perf_counter() - start < 1
    raw = bytearray(path.read_bytes())
    at = raw.find(b"GCOL\x01\x00\x00\x00")
    raw[at + 16:at + 32] = bytes(16)
    path.write_bytes(bytes(raw))
    with pytest.raises(HeapLoopError, match=f"big.hspy: the global heap collection at byte {at}"):
        lazyio.load(path, lazy=True)
    start = time.perf_counter()  # not after the child's 60 s timeout
    with pytest.raises(HeapLoopError):
        lazyio.load(path, lazy=True, untrusted=True)
    assert time.perf_counter() - start < 5
    lazyio.close_all()
