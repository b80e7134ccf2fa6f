"""``save(..., compute=False)`` and ``save_many``: several targets, one pass over the data,
every guarantee of the normal pipeline kept (lock, temporary, verify, commit, refusals)."""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest

import lazyio
from lazyio.deferred import DeferredWrite, save_many
from lazyio.formats import format_names, get_plugin

FORMATS = format_names()[:4]
SHAPE, CHUNKS = (8, 6, 10, 12), (2, 3, 10, 12)


def path_for(folder: Path, fmt: str, stem: str = "a") -> Path:
    return folder / f"{stem}{get_plugin(fmt).extensions[0]}"


class CountingSource:
    """A dask array whose blocks count how often each is computed (and may fail)."""

    def __init__(self, fail_at: tuple[int, ...] | None = None) -> None:
        self.reads: collections.Counter[tuple[int, ...]] = collections.Counter()
        self.lock = threading.Lock()
        self.fail_at = fail_at
        self.array = da.map_blocks(self._block, chunks=da.core.normalize_chunks(CHUNKS, SHAPE),
                                   dtype="f4", meta=np.empty((0,) * 4, "f4"))

    def _block(self, block_info: dict[Any, Any] | None = None) -> np.ndarray:
        if block_info is None:  # dask probing the function
            return np.empty((0,) * 4, "f4")
        where = tuple(block_info[None]["chunk-location"])
        with self.lock:
            self.reads[where] += 1
        if where == self.fail_at:
            raise RuntimeError(f"source block {where} is unreadable")
        return expected()[tuple(slice(a, b) for a, b in block_info[None]["array-location"])]


def expected() -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype="f4").reshape(SHAPE) % 251


def loaded(path: Path) -> np.ndarray:
    return np.asarray(lazyio.load(path)[0]["data"])


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_shared_source_is_read_once_for_four_formats(tmp_path):
    source = CountingSource()
    virtual = source.array.sum(axis=(2, 3))  # the virtual image beside the full data
    writes = [
        lazyio.save(path_for(tmp_path, "zspy"), {"data": source.array}, compute=False,
                    show_progressbar=False),
        lazyio.save(path_for(tmp_path, "hspy", "virtual"), {"data": virtual}, compute=False,
                    show_progressbar=False),
        lazyio.save(path_for(tmp_path, "npy"), source.array, compute=False,
                    show_progressbar=False),
        lazyio.save(path_for(tmp_path, "usid"), source.array, compute=False,
                    show_progressbar=False, verify=True),
    ]
    assert all(isinstance(w, DeferredWrite) and not w.done for w in writes)
    assert not source.reads  # nothing streamed yet: only metadata and temporaries
    assert dask.compute(*writes) == (None,) * 4
    assert all(w.done for w in writes)
    # one pass for the four targets; usid's verification re-reads the source once more
    blocks = source.array.npartitions
    assert len(source.reads) == blocks
    assert sum(source.reads.values()) == 2 * blocks
    assert all(n == 2 for n in source.reads.values())
    data = expected()
    for fmt in ("zspy", "npy", "usid"):
        np.testing.assert_array_equal(loaded(path_for(tmp_path, fmt)), data)
    np.testing.assert_allclose(loaded(path_for(tmp_path, "hspy", "virtual")),
                               data.sum(axis=(2, 3)))
    assert not [n for n in listing(tmp_path) if n.startswith(".")]  # no lock, no temporary


def test_save_many_writes_every_target_in_one_pass(tmp_path):
    source = CountingSource()
    options = {"show_progressbar": False}
    save_many([
        (path_for(tmp_path, "zspy"), {"data": source.array}, options),
        (path_for(tmp_path, "hspy"), source.array.max(axis=(0, 1)), options),
        (path_for(tmp_path, "npy"), source.array[::2], {**options, "format": "npy"}),
    ])
    assert sum(source.reads.values()) == source.array.npartitions
    np.testing.assert_array_equal(loaded(path_for(tmp_path, "zspy")), expected())
    np.testing.assert_array_equal(loaded(path_for(tmp_path, "hspy")),
                                  expected().max(axis=(0, 1)))
    np.testing.assert_array_equal(np.load(path_for(tmp_path, "npy")), expected()[::2])
    assert listing(tmp_path) == ["a.hspy", "a.npy", "a.zspy"]


@pytest.mark.parametrize("runner", ["dask.compute", "save_many"])
def test_failing_source_commits_nothing_and_keeps_previous_versions(tmp_path, runner):
    old = {fmt: path_for(tmp_path, fmt) for fmt in ("zspy", "hspy", "npy")}
    for path in old.values():
        lazyio.save(path, np.ones((2, 3), "f4"), show_progressbar=False)
    before = {p: loaded(p) for p in old.values()}
    names = listing(tmp_path)
    source = CountingSource(fail_at=(1, 1, 0, 0))
    signals = [source.array, source.array.sum(axis=(2, 3)), source.array]
    if runner == "save_many":
        def run() -> None:
            save_many([(p, s, {"overwrite": True, "show_progressbar": False})
                       for p, s in zip(old.values(), signals, strict=True)])
    else:
        writes = [lazyio.save(p, s, overwrite=True, compute=False, show_progressbar=False)
                  for p, s in zip(old.values(), signals, strict=True)]

        def run() -> None:
            dask.compute(*writes)
    with pytest.raises(RuntimeError, match=r"source block \(1, 1, 0, 0\) is unreadable"):
        run()
    assert listing(tmp_path) == names  # no temporary, no lock file left
    for path, data in before.items():
        np.testing.assert_array_equal(loaded(path), data)  # previous versions intact
    # every lock was released: the same targets are writable at once
    save_many([(p, np.zeros(3, "f4"), {"overwrite": True, "show_progressbar": False})
               for p in old.values()])


def test_uncomputed_write_holds_the_lock_until_dropped(tmp_path):
    path = path_for(tmp_path, "zspy")
    write = lazyio.save(path, CountingSource().array, compute=False, show_progressbar=False)
    assert sorted(n.split(".lazyio-")[1].split("-")[0] for n in listing(tmp_path)) == [
        "lock", "tmp"]
    with pytest.raises(lazyio.TargetBusyError, match=str(path)):
        lazyio.save(path, np.zeros(3), show_progressbar=False)
    del write  # the last reference: its pipeline aborts at once
    assert listing(tmp_path) == []  # lock and temporary gone, nothing committed
    aborted = lazyio.save(path, da.zeros((100, 100), chunks=10), compute=False,
                          show_progressbar=False)
    assert not aborted.done
    aborted.abort()
    assert aborted.done
    assert listing(tmp_path) == []
    aborted.compute()  # an aborted write computes to nothing
    assert listing(tmp_path) == []
    lazyio.save(path, np.zeros(3), show_progressbar=False)
    assert listing(tmp_path) == ["a.zspy"]


def test_refusals_are_raised_by_save_itself(tmp_path):
    existing = path_for(tmp_path, "hspy")
    lazyio.save(existing, np.zeros(3), show_progressbar=False)
    foreign = tmp_path / "notes.npy"
    foreign.write_text("not an array")
    data = CountingSource().array
    with pytest.raises(lazyio.TargetExistsError, match=str(existing)):
        lazyio.save(existing, data, compute=False, show_progressbar=False)
    with pytest.raises(lazyio.ForeignTargetError, match=str(foreign)):
        lazyio.save(foreign, data, compute=False, overwrite=True, show_progressbar=False)
    with pytest.raises(TypeError, match="compresion"):
        lazyio.save(tmp_path / "b.zspy", data, compute=False, compresion=None)
    # save_many refuses its third entry: the first two are abandoned, nothing is written
    with pytest.raises(lazyio.TargetExistsError):
        save_many([(tmp_path / "c.zspy", data), (tmp_path / "c.npy", data), (existing, data)])
    assert listing(tmp_path) == ["a.hspy", "notes.npy"]
    assert foreign.read_text() == "not an array"


def test_computing_again_or_without_optimisation(tmp_path):
    path = path_for(tmp_path, "npy")
    write = lazyio.save(path, CountingSource().array, compute=False, show_progressbar=False)
    with pytest.raises(lazyio.WriteError, match="graph optimisation"):
        dask.compute(write, optimize_graph=False)
    assert not write.done  # still waiting: nothing was written by the refused graph
    write.compute()
    assert write.done
    first = path.read_bytes()
    write.compute()  # once committed, computing again writes nothing
    assert dask.compute(write) == (None,)
    assert path.read_bytes() == first
    np.testing.assert_array_equal(np.load(path), expected())


def test_small_numpy_data_are_written_at_once(tmp_path):
    # nothing is left to stream: the write is committed when save returns
    write = lazyio.save(tmp_path / "a.hspy", np.arange(12.0), compute=False,
                        show_progressbar=False)
    assert write is not None
    assert write.done
    np.testing.assert_array_equal(loaded(tmp_path / "a.hspy"), np.arange(12.0))


def test_distributed_client(tmp_path, client):
    # zspy and npy are written by the workers (two region targets in one store call),
    # hspy through the client, the one process holding the file
    source = da.from_array(expected(), chunks=CHUNKS)
    save_many([(path_for(tmp_path, "zspy"), source),
               (path_for(tmp_path, "hspy"), source.sum(axis=(2, 3))),
               (path_for(tmp_path, "npy"), source)])
    write = lazyio.save(path_for(tmp_path, "zspy", "b"), source[:, :, :5], compute=False)
    dask.compute(write)  # on a cluster, written in __dask_postcompute__, client side
    for fmt in ("zspy", "npy"):
        np.testing.assert_array_equal(loaded(path_for(tmp_path, fmt)), expected())
    np.testing.assert_allclose(loaded(path_for(tmp_path, "hspy")), expected().sum(axis=(2, 3)))
    np.testing.assert_array_equal(loaded(path_for(tmp_path, "zspy", "b")), expected()[:, :, :5])
    assert listing(tmp_path) == ["a.hspy", "a.npy", "a.zspy", "b.zspy"]
    # a block failing on a worker: nothing committed, no temporary, the old files intact
    broken = source.map_blocks(_fail_on_second_row, dtype=source.dtype)
    with pytest.raises(RuntimeError, match="unreadable on the worker"):
        save_many([(path_for(tmp_path, fmt), broken, {"overwrite": True})
                   for fmt in ("zspy", "hspy", "npy")])
    assert listing(tmp_path) == ["a.hspy", "a.npy", "a.zspy", "b.zspy"]
    np.testing.assert_array_equal(loaded(path_for(tmp_path, "zspy")), expected())


def _fail_on_second_row(block: np.ndarray, block_info: dict[Any, Any] | None = None
                        ) -> np.ndarray:
    if block_info is not None and block_info[None]["chunk-location"][0] == 1:
        raise RuntimeError("source block unreadable on the worker")
    return block


def test_remote_targets_on_s3(s3_server):
    # a Zarr store written in place (under its marker) and an .hspy written to a local
    # temporary and uploaded: one pass (a remote .npy is streamed in order by its own
    # writer, not through store(): it is written when save returns)
    import fsspec

    base, options = f"s3://{s3_server.bucket}/save-many", s3_server.storage_options
    source = CountingSource()
    save_many([(f"{base}/a{get_plugin(fmt).extensions[0]}", source.array,
                {"storage_options": options, "show_progressbar": False})
               for fmt in ("zspy", "hspy")])
    assert sum(source.reads.values()) == source.array.npartitions
    for fmt in ("zspy", "hspy"):
        url = f"{base}/a{get_plugin(fmt).extensions[0]}"
        np.testing.assert_array_equal(
            np.asarray(lazyio.load(url, storage_options=options)[0]["data"]), expected())
    fs = fsspec.filesystem("s3", **options)
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(base)) == ["a.hspy", "a.zspy"]


def test_leaving_python_with_an_uncomputed_write_leaves_nothing(tmp_path):
    import subprocess
    import sys

    script = ("import dask.array as da, lazyio\n"
              "kept = [lazyio.save(f'{name}', da.ones((100, 100), chunks=10), compute=False,"
              " show_progressbar=False) for name in ('a.zspy', 'a.hspy')]\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert listing(tmp_path) == []  # no temporary, no lock file
