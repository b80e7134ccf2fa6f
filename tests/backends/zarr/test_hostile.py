"""Hostile .zspy stores (issue 13, Zarr part): every attack of tests/hostile_zarr.py is
refused with a LazyioError naming the store and the problem, in bounded time and memory,
and nothing outside the store is ever returned; and a lazily opened .zspy never reads a
version written by another process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask
import hostile_zarr
import numpy as np
import pytest

import lazyio
from lazyio.backends.zarr import safe
from lazyio.errors import (
    CorruptChunkError,
    FormatError,
    LazyioError,
    StaleFileError,
    UnsafeFileError,
)

# attack -> (error class, words the message must hold besides the store's path)
EXPECTED: dict[str, tuple[type[LazyioError], str]] = {
    "bz2-bomb": (LazyioError, r"bytes"),
    "zlib-bomb": (LazyioError, r"bytes"),
    "blosc-header-bomb": (CorruptChunkError, r"inflates past the 24 bytes"),
    "zip-zattrs-bomb": (FormatError, r"'\.zattrs' inflates to 1610612736 bytes"),
    "zip-chunk-bomb": (FormatError, r"inflates to 1610612736 bytes"),
    "sparse-chunk": (FormatError, r"holds 100000000000 bytes"),
    "sparse-zattrs": (FormatError, r"'\.zattrs' holds 2000000000 bytes"),
    "chunk-symlink": (UnsafeFileError, r"data/0/0' is or passes through a symbolic link"),
    "chunk-dir-symlink": (UnsafeFileError, r"symbolic link"),
    "zattrs-symlink": (UnsafeFileError, r"'\.zattrs' is or passes through a symbolic link"),
    "group-symlink": (UnsafeFileError, r"'Experiments/.*symbolic link"),
    "symlink-dag": (UnsafeFileError, r"symbolic link"),
    "dev-zero-chunk": (UnsafeFileError, r"symbolic link"),
    "device-chunk": (UnsafeFileError, r"(a device|symbolic link)"),
    "fifo-chunk": (UnsafeFileError, r"is a FIFO"),
    "fifo-zgroup": (UnsafeFileError, r"'\.zgroup' is a FIFO"),
    "ragged-traversal": (FormatError, r"separator '/\.\./\.\./"),
    "zero-chunks": (FormatError, r"chunk shape \[0, 3\]"),
    "zip-chunk-bad-crc": (CorruptChunkError, r"'Experiments/__unnamed__/data/0/0'.*Bad CRC"),
    "zip-zarray-header-mismatch": (FormatError, r"damaged zip member '.*/\.zarray'"),
    "zip-directory-offset": (FormatError, r"damaged zip member .*offset -"),
    "metadata-list-5e7": (FormatError, r"_list_huge declares 50000000 elements"),
    "metadata-strings-5e7": (FormatError, r"huge_strings declares 50000000 elements"),
}
TIME_LIMIT = 30.0  # seconds per attack, on a busy 2-core machine; each takes < 1 s alone


def _read_everything(path: Path, lazy: bool) -> list[np.ndarray]:
    with dask.config.set(scheduler="synchronous"):
        signals = lazyio.load(path, lazy=lazy)
        got = [np.asarray(s["data"]) for s in signals]
    # reached only if nothing was refused: the secret must not be among the data
    assert all(hostile_zarr.SECRET not in a.tobytes() for a in got)
    return got


def test_every_attack_class_has_a_builder_and_an_expectation():
    assert set(hostile_zarr.BUILDERS) == set(EXPECTED) | {"many-groups-zip"}


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "eager"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_store_is_refused(tmp_path: Path, name: str, lazy: bool) -> None:
    path = hostile_zarr.BUILDERS[name](tmp_path)
    error, words = EXPECTED[name]
    start = time.perf_counter()
    with pytest.raises(error, match=words) as info:
        _read_everything(path, lazy)
    assert time.perf_counter() - start < TIME_LIMIT
    assert str(path) in str(info.value)
    assert hostile_zarr.SECRET.decode() not in str(info.value)


def test_attacks_are_refused_without_openat2(tmp_path, monkeypatch):
    """Where the kernel (or a seccomp filter) has no openat2, the component-by-component
    O_NOFOLLOW walk refuses the same things."""
    monkeypatch.setattr(safe, "_openat2_works", False)
    for name in ("chunk-symlink", "chunk-dir-symlink", "group-symlink", "fifo-chunk",
                 "device-chunk", "zattrs-symlink"):
        folder = tmp_path / name
        folder.mkdir()
        path = hostile_zarr.BUILDERS[name](folder)
        lazyio.close_all()
        error, words = EXPECTED[name]
        with pytest.raises(error, match=words):
            _read_everything(path, lazy=False)
    valid = hostile_zarr.write_store(tmp_path / "valid.zspy")
    np.testing.assert_array_equal(_read_everything(valid, lazy=True)[0], hostile_zarr.DATA)


def test_keys_that_climb_out_are_refused(tmp_path):
    root = safe.RootDir(str(tmp_path), "store")
    (tmp_path / "a").mkdir()
    for key in ("../x", "a/../../x", "/etc/passwd", "a/./b", "a//b", "a/\x00"):
        with pytest.raises(UnsafeFileError, match=r"store: .*outside the store"):
            root.read(key, 100)


BOMBS = ("bz2-bomb", "zlib-bomb", "blosc-header-bomb", "zip-zattrs-bomb", "zip-chunk-bomb",
         "sparse-chunk", "sparse-zattrs")


def test_bombs_stay_in_bounded_memory(tmp_path):
    """Peak RSS of a fresh process loading every bomb (lazily and eagerly) stays small:
    before, these peaked at 2.4-4.5 GB."""
    paths = []
    for name in BOMBS:
        folder = tmp_path / name
        folder.mkdir()
        paths.append(str(hostile_zarr.BUILDERS[name](folder)))
    script = textwrap.dedent("""
        import json, resource, sys
        import dask, numpy as np
        import lazyio
        from lazyio.errors import LazyioError
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        refused = 0
        for path in json.loads(sys.argv[1]):
            for lazy in (True, False):
                try:
                    with dask.config.set(scheduler="synchronous"):
                        [np.asarray(s["data"]) for s in lazyio.load(path, lazy=lazy)]
                except LazyioError:
                    refused += 1
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"base": base, "peak": peak, "refused": refused}))
    """)
    out = subprocess.run([sys.executable, "-c", script, json.dumps(paths)], check=True,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["refused"] == 2 * len(BOMBS)
    peak_mib = report["peak"] / 1024
    assert peak_mib < 1024, report
    # beyond the interpreter and its imports, the bombs cost almost nothing
    assert (report["peak"] - report["base"]) / 1024 < 200, report


# ---------------------------------------------------------- huge metadata arrays


@pytest.mark.parametrize("kind", ["list", "strings"])
def test_huge_metadata_array_is_refused_in_bounded_memory(tmp_path, kind):
    """A metadata ``_list_`` or string array declaring 5e7 elements (a 1.5 KB store) is
    refused at load with a FormatError naming the store and the array, before anything of
    its size is allocated: the same cap as the HDF5 side (METADATA_MAX_ITEMS). Measured in
    a fresh process: its peak RSS grows by less than 100 MiB over the load."""
    from lazyio.formats.hyperspy.node import METADATA_MAX_ITEMS

    assert hostile_zarr.HUGE_METADATA_ITEMS > 10 * METADATA_MAX_ITEMS
    path = hostile_zarr.huge_metadata_array(tmp_path, kind)
    script = textwrap.dedent(f"""
        import json, resource
        import lazyio
        from lazyio.errors import FormatError
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            lazyio.load({str(path)!r}, lazy=True)
            outcome = "read"
        except FormatError as err:
            outcome = str(err)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"outcome": outcome, "grew_kib": peak - base}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], check=True, timeout=300,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert str(path) in report["outcome"], report
    name = "_list_huge" if kind == "list" else "huge_strings"
    assert f"metadata/{name} declares 50000000 elements" in report["outcome"], report
    assert report["grew_kib"] / 1024 < 100, report


# ------------------------------------------------------------- damaged zip members


@pytest.mark.parametrize("damage", sorted(hostile_zarr.ZIP_MEMBER_DAMAGE))
def test_damaged_zip_chunk_member_is_a_corrupt_chunk(tmp_path, damage):
    """A zip chunk member with a bad CRC-32, a local header that disagrees with the
    directory, an unknown compression method, undecodable deflate data or an encryption
    flag: the store loads, and computing raises CorruptChunkError naming the store, the
    array and the chunk (the fuzz campaign found bare BadZipFile, zlib.error,
    NotImplementedError and RuntimeError)."""
    member = f"{hostile_zarr.ARRAY}/0/0"
    path = hostile_zarr.damaged_zip_member(tmp_path, damage, member)
    for lazy in (True, False):
        lazyio.close_all()
        with pytest.raises(CorruptChunkError) as info:
            _read_everything(path, lazy)
        message = str(info.value)
        assert str(path) in message, message
        assert f"'{member}'" in message, message


@pytest.mark.parametrize("member", [".zattrs", f"{hostile_zarr.ARRAY}/.zarray"])
@pytest.mark.parametrize("damage", sorted(hostile_zarr.ZIP_MEMBER_DAMAGE))
def test_damaged_zip_metadata_member_is_a_format_error(tmp_path, damage, member):
    """The same damage to a metadata member: FormatError at load, naming the store (and
    the member, unless the damage hides the whole zip)."""
    path = hostile_zarr.damaged_zip_member(tmp_path, damage, member)
    lazyio.close_all()
    with pytest.raises(FormatError) as info:
        lazyio.load(path, lazy=True)
    message = str(info.value)
    assert str(path) in message, message
    if not (damage == "header-magic" and member == ".zattrs"):
        # (a blanked first local header makes the file no zip at all)
        assert f"'{member}'" in message, message


def test_zip_directory_offset_past_its_place_is_a_format_error(tmp_path):
    """An end record that moves the central directory shifts every member's offset below
    0: FormatError naming the store and a member (was a bare OSError EINVAL)."""
    path = hostile_zarr.zip_directory_offset(tmp_path)
    lazyio.close_all()
    with pytest.raises(FormatError, match=r"damaged zip member '.*' .*offset -") as info:
        _read_everything(path, lazy=True)
    assert str(path) in str(info.value)


def test_zip_listing_is_linear(tmp_path):
    """A zip store of 20,000 groups loads (it is valid) in time linear in the groups:
    zarr's zip store lists every member per group (111 s before)."""
    timings = {}
    for groups in (2_000, 20_000):
        folder = tmp_path / str(groups)
        folder.mkdir()
        path = hostile_zarr.many_groups_zip(folder, groups)
        lazyio.close_all()
        start = time.perf_counter()
        signal = lazyio.load(path, lazy=True)[0]
        timings[groups] = time.perf_counter() - start
        assert len(signal["metadata"]) >= 1
        np.testing.assert_array_equal(signal["data"].compute(), hostile_zarr.DATA)
    # 10 x the groups: linear is ~10 x the time, quadratic ~100 x
    assert timings[20_000] < 30 * max(timings[2_000], 0.05), timings


# ------------------------------------------------------------------------ stale reads


def _save_in_another_process(path: Path, value: float, **kwds: object) -> None:
    script = textwrap.dedent(f"""
        import numpy as np, lazyio
        lazyio.save({str(path)!r}, np.full((8, 6), {value}, "f4"), overwrite=True,
                    chunks=(2, 3), show_progressbar=False, **{kwds!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": os.getcwd()})


def _compute_or_stale(array: object) -> np.ndarray | StaleFileError:
    try:
        return np.asarray(array.compute())  # type: ignore[attr-defined]
    except StaleFileError as err:
        return err


def _replace_as_another_process_would(path: Path, value: float, zarr_format: int,
                                      keep_old: bool) -> None:
    """Write a new store beside ``path`` and swap it in by renames, as a writer in
    another process does (nothing in this process is told: no handle is closed)."""
    new, old = path.with_name("new.zspy"), path.with_name("aside.zspy")
    lazyio.save(new, np.full((8, 6), value, "f4"), chunks=(2, 3), zarr_format=zarr_format,
                show_progressbar=False)
    os.rename(path, old)
    os.rename(new, path)
    if not keep_old:
        shutil.rmtree(old)


def test_replaced_by_another_process_is_stale(tmp_path: Path) -> None:
    """A real second process overwrites the store with lazyio (its commit deletes the
    old directory): the old lazy array raises StaleFileError or reads old values, never
    the new ones; a new load reads the new version."""
    path = tmp_path / "s.zspy"
    lazyio.save(path, np.full((8, 6), 1.0, "f4"), chunks=(2, 3), show_progressbar=False)
    old = lazyio.load(path)[0]["data"]
    np.testing.assert_array_equal(old[:2].compute(), 1.0)
    _save_in_another_process(path, 2.0)
    got = _compute_or_stale(old)
    if isinstance(got, StaleFileError):
        assert str(path) in str(got)
    else:
        np.testing.assert_array_equal(got, 1.0)
    np.testing.assert_array_equal(lazyio.load(path)[0]["data"].compute(), 2.0)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("computed_before", [True, False], ids=["opened", "not-opened"])
@pytest.mark.parametrize("keep_old", [True, False], ids=["old-kept", "old-deleted"])
def test_replaced_store_never_reads_new_bytes(
    tmp_path: Path, zarr_format: int, computed_before: bool, keep_old: bool
) -> None:
    """An old lazy array of a replaced store reads the old values (from the old directory,
    if it survives and was opened) or raises StaleFileError; never the new values. A new
    load reads the new version. (The zarr_format=3 case reads through zarr-python.)"""
    path = tmp_path / "s.zspy"
    lazyio.save(path, np.full((8, 6), 1.0, "f4"), chunks=(2, 3), zarr_format=zarr_format,
                show_progressbar=False)
    old = lazyio.load(path)[0]["data"]
    if computed_before:
        np.testing.assert_array_equal(old[:2].compute(), 1.0)  # the store is now open
    _replace_as_another_process_would(path, 2.0, zarr_format, keep_old)
    got = _compute_or_stale(old)
    if isinstance(got, StaleFileError):
        assert str(path) in str(got)
        assert not (computed_before and keep_old), "the old version was there to read"
    else:
        np.testing.assert_array_equal(got, 1.0)
    np.testing.assert_array_equal(lazyio.load(path)[0]["data"].compute(), 2.0)


def test_ragged_store_replaced_is_stale_not_new(tmp_path):
    """The object-array (ragged) reader pins the version too."""
    path = tmp_path / "r.zspy"

    def ragged(n: int) -> dict:
        data = np.empty(2, dtype=object)
        data[0], data[1] = np.arange(n, dtype="i8"), np.arange(n + 1, dtype="i8")
        return {"data": data, "axes": [{"name": "x", "navigate": True}],
                "attributes": {"ragged": True}}

    lazyio.save(path, ragged(2), show_progressbar=False)
    old = lazyio.load(path)[0]["data"]
    os.rename(path, tmp_path / "aside.zspy")
    lazyio.save(path, ragged(5), show_progressbar=False)
    try:
        got = old.compute()
    except StaleFileError:
        return
    assert [len(x) for x in got] == [2, 3]


def test_concurrent_listings_of_one_store_see_every_entry(tmp_path):
    """Threads listing the root of one open store at once each see every entry (the
    root descriptor's read position is not shared between listings)."""
    from concurrent.futures import ThreadPoolExecutor

    root = safe.RootDir(str(tmp_path), "store")
    names = {f"n{i:03d}" for i in range(300)}
    for name in names:
        (tmp_path / name).touch()
    with ThreadPoolExecutor(8) as pool:
        listings = list(pool.map(lambda _: set(root.listdir("")), range(64)))
    assert all(listing == names for listing in listings)
