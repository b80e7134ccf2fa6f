"""The conformance suite every lazyio format subclasses once: :class:`FormatTests`.

A format is conformant when a signal written with :func:`lazyio.save` reads back with
:func:`lazyio.load` unchanged (as far as the format keeps axes and metadata), lazily and
eagerly alike, and when its lazy arrays behave as dask expects of file-backed arrays:
the graph pickles and computes in another process, its names are stable while the file
is, and it computes on process workers and from remote storage. Writing is refused over an
existing target without ``overwrite=True``, and a write that fails part-way leaves the
previous target as it was. The suite uses lazyio's public API and the format registry
only, so it holds for a format registered through the ``lazyio.formats`` entry points as for the built-ins.

Use it from a test module (pytest collects the subclass, not this module)::

    import pytest
    from lazyio.testing import FormatTests, example_signal

    class TestMyFormat(FormatTests):
        format_name = "myformat"  # registered in lazyio.formats; capabilities come from it

        @pytest.fixture
        def signal(self):
            return example_signal()

Fixtures the suite needs besides the ``signal`` of the subclass:

- ``remote_base``: ``(url, storage_options)`` of a writable remote folder (an fsspec URL
  such as ``s3://bucket/prefix``); the suite writes under fresh names inside it. A
  project's ``conftest.py`` supplies it (lazyio's own tests use a moto S3 server).
- ``tmp_path``, from pytest.

The cluster the suite computes on is one :class:`distributed.LocalCluster` with one worker
process per test module (the ``process_cluster`` fixture, which a subclass may override).
"""

from __future__ import annotations

import atexit
import io
import multiprocessing
import os
import pickle
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, ClassVar

import dask.array as da
import numpy as np
import pytest

import lazyio
from lazyio.formats import get_plugin

__all__ = [
    "FormatTests",
    "WriteInterrupted",
    "compute_in_subprocess",
    "example_signal",
    "interrupted",
    "snapshot",
]

#: the axis fields a format that keeps axes must return as written
AXIS_FIELDS = ("name", "size", "scale", "offset", "units", "navigate")


class WriteInterrupted(Exception):
    """Raised by one block of the source of the interrupted-write test."""


def example_signal(
    shape: tuple[int, ...] = (4, 5, 8, 6),
    dtype: Any = "<u2",
    chunks: tuple[int, ...] | None = (1, 5, 8, 6),
    seed: int = 20261121,
    nav: int = 2,
) -> dict[str, Any]:
    """A small seeded signal dictionary with distinct axes and a title.

    Parameters
    ----------
    shape : tuple of int
        The data shape; the first ``nav`` axes navigate.
    dtype : numpy dtype or str
        The data type (integer, float or complex).
    chunks : tuple of int, optional
        Dask chunks of the data; ``None`` gives a numpy array. The default splits the
        first axis into single rows, so an interrupted write fails after other blocks.
    seed : int
        Seed of the random data.
    nav : int
        How many leading axes navigate.

    Returns
    -------
    dict
        ``{"data", "axes", "metadata", "original_metadata"}`` as :func:`lazyio.save` takes.
    """
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype).kind
    if kind in "iu":
        values: np.ndarray = rng.integers(0, 100, shape).astype(dtype)
    elif kind == "c":
        values = (rng.random(shape) + 1j * rng.random(shape)).astype(dtype)
    else:
        values = rng.random(shape).astype(dtype)
    data: Any = values if chunks is None else da.from_array(values, chunks=chunks)
    axes = [
        {"name": f"axis{i}", "size": n, "scale": 0.5 + i, "offset": -1.0 * i, "units": "nm",
         "navigate": i < nav}
        for i, n in enumerate(shape)
    ]
    return {"data": data, "axes": axes, "metadata": {"General": {"title": "conformance"}},
            "original_metadata": {}}


def snapshot(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every byte under ``path`` (a file, or a directory such as a Zarr store), by name.

    Two equal snapshots mean the target was not touched, whatever its layout.
    """
    root = Path(path)
    if root.is_file():
        return {"": root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _fail_in_one_block(block: np.ndarray, fail_at: tuple[int, ...] = (),
                       block_info: Any = None) -> np.ndarray:
    if tuple(block_info[0]["chunk-location"]) == fail_at:
        raise WriteInterrupted("the source failed in the middle of the write")
    return block


def interrupted(data: Any) -> da.Array:
    """``data`` as a dask array whose middle block raises :class:`WriteInterrupted`.

    The other blocks compute normally, so a writer has written some of them when the
    failure arrives.
    """
    arr = data if isinstance(data, da.Array) else da.from_array(np.asarray(data))
    fail_at = tuple(n // 2 for n in arr.numblocks)
    return da.map_blocks(_fail_in_one_block, arr, fail_at=fail_at, dtype=arr.dtype)


def _compute_pickled(blob: bytes) -> bytes:
    arr = pickle.loads(blob)
    buf = io.BytesIO()
    # .npy bytes keep the byte order, which pickle protocols below 5 make native
    np.save(buf, np.asarray(arr.compute(scheduler="sync")), allow_pickle=False)
    return buf.getvalue()


_pool: ProcessPoolExecutor | None = None


def compute_in_subprocess(arr: da.Array, timeout: float = 120) -> np.ndarray:
    """Pickle ``arr`` (the standard library's pickle: a graph must not need cloudpickle's
    by-value functions) and compute it in another process.

    The process is a spawned one (nothing of this process's open files, caches or
    memory maps is inherited), started on first use and kept for the later calls: starting
    Python with numpy and dask costs seconds.
    """
    global _pool
    blob = pickle.dumps(arr)
    if _pool is None:
        _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        atexit.register(_pool.shutdown)
    try:
        result = _pool.submit(_compute_pickled, blob).result(timeout=timeout)
    except BrokenProcessPool:
        _pool = None  # the next test starts a fresh process rather than fail the same way
        raise
    return np.load(io.BytesIO(result), allow_pickle=False)


class FormatTests:
    """Conformance tests of one format; subclass once per format.

    The subclass names the format (``format_name``) and supplies the ``signal`` fixture
    (a small signal dictionary, see :func:`example_signal`); what the format keeps is read
    from its plugin in the registry (:mod:`lazyio.formats`), so a new format is tested
    against what it declares.

    Attributes
    ----------
    format_name : str
        The name :func:`lazyio.save` and :func:`lazyio.load` take as ``format=``.
    write_kwargs : dict
        Extra options for every :func:`lazyio.save` of the suite (storage chunks, ...).
    extension : str
        The file extension, with its dot (the plugin's first).
    keeps_axes : bool
        Axis names, scales, offsets, units and the navigation flags survive a round trip
        (the plugin's ``capabilities.keeps_axes``).
    keeps_metadata : bool
        ``metadata["General"]["title"]`` survives a round trip (the plugin keeps its
        metadata, or at least the title).
    """

    format_name: ClassVar[str]
    write_kwargs: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "format_name" not in cls.__dict__:
            return
        plugin = get_plugin(cls.format_name)
        caps = plugin.capabilities
        cls.extension = plugin.extensions[0]
        cls.keeps_axes = caps.keeps_axes
        cls.keeps_metadata = caps.keeps_metadata and (
            caps.metadata_kept is None or ("General", "title") in caps.metadata_kept)

    extension: ClassVar[str]
    keeps_axes: ClassVar[bool]
    keeps_metadata: ClassVar[bool]

    # ------------------------------------------------------------------ fixtures

    @pytest.fixture
    def signal(self) -> dict[str, Any]:
        """The signal every test writes; the subclass supplies it."""
        raise NotImplementedError(f"{type(self).__name__} must define the 'signal' fixture")

    @pytest.fixture(scope="module")
    @classmethod
    def process_cluster(cls) -> Iterator[Any]:
        """One worker process, shared by the tests of a module (starting one is slow)."""
        from distributed import LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                          dashboard_address=":0", host="127.0.0.1",
                          silence_logs=40) as cluster:
            yield cluster

    # ------------------------------------------------------------------- helpers

    def target(self, folder: Path, stem: str = "conformance") -> Path:
        """A path in ``folder`` with this format's extension."""
        return folder / f"{stem}{self.extension}"

    def save(self, target: Any, signal: Any, **kwds: Any) -> None:
        """:func:`lazyio.save` with this format, the suite's options and no progress bar."""
        lazyio.save(target, signal, format=self.format_name, show_progressbar=False,
                    **{**self.write_kwargs, **kwds})

    @staticmethod
    def expected(signal: dict[str, Any]) -> np.ndarray:
        """The data of ``signal`` as numpy."""
        data = signal["data"]
        return np.asarray(data.compute(scheduler="sync") if isinstance(data, da.Array) else data)

    @staticmethod
    def assert_same_data(got: Any, expected: np.ndarray) -> None:
        got = np.asarray(got)
        assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
        assert got.shape == expected.shape, (got.shape, expected.shape)
        np.testing.assert_array_equal(got, expected)

    def written(self, tmp_path: Path, signal: dict[str, Any]) -> Path:
        path = self.target(tmp_path)
        self.save(path, signal)
        return path

    # --------------------------------------------------------------------- tests

    def test_round_trip(self, tmp_path: Path, signal: dict[str, Any]) -> None:
        path = self.written(tmp_path, signal)
        [out] = lazyio.load(path, lazy=False)[:1]
        self.assert_same_data(out["data"], self.expected(signal))
        assert [int(a["size"]) for a in out["axes"]] == list(np.shape(signal["data"]))
        if self.keeps_axes:
            for got, sent in zip(out["axes"], signal["axes"], strict=True):
                for key in AXIS_FIELDS:
                    if key in sent:
                        assert got[key] == sent[key], (key, got, sent)
        if self.keeps_metadata:
            assert out["metadata"]["General"]["title"] == \
                signal["metadata"]["General"]["title"]

    def test_format_is_detected_and_described(self, tmp_path: Path,
                                              signal: dict[str, Any]) -> None:
        path = self.written(tmp_path, signal)
        described = lazyio.info(path)
        assert described.format == self.format_name
        assert tuple(described.signals[0].shape) == np.shape(signal["data"])
        self.assert_same_data(lazyio.load(path, lazy=False)[0]["data"], self.expected(signal))

    def test_lazy_equals_eager(self, tmp_path: Path, signal: dict[str, Any]) -> None:
        path = self.written(tmp_path, signal)
        lazy = lazyio.load(path)[0]["data"]
        eager = lazyio.load(path, lazy=False)[0]["data"]
        assert isinstance(lazy, da.Array)
        assert isinstance(eager, np.ndarray)
        assert lazy.dtype == eager.dtype
        self.assert_same_data(lazy.compute(scheduler="threads"), eager)
        # a block in the middle, as a viewer asks for one signal
        index = tuple(n // 2 for n in lazy.shape[:-1])
        np.testing.assert_array_equal(lazy[index].compute(), eager[index])

    def test_pickled_graph_computes_in_another_process(self, tmp_path: Path,
                                                      signal: dict[str, Any]) -> None:
        path = self.written(tmp_path, signal)
        lazy = lazyio.load(path)[0]["data"]
        lazyio.close_all()
        self.assert_same_data(compute_in_subprocess(lazy), self.expected(signal))

    def test_dask_names_are_stable_until_the_file_changes(self, tmp_path: Path,
                                                          signal: dict[str, Any]) -> None:
        path = self.written(tmp_path, signal)
        first = lazyio.load(path)[0]["data"].name
        assert lazyio.load(path)[0]["data"].name == first
        lazyio.close_all()
        assert lazyio.load(path)[0]["data"].name == first
        changed = dict(signal)
        changed["data"] = self.expected(signal)[::-1].copy()
        self.save(path, changed, overwrite=True)
        rewritten = lazyio.load(path)[0]["data"]
        assert rewritten.name != first  # dask must not reuse results of the old file
        self.assert_same_data(rewritten.compute(), changed["data"])

    def test_read_and_write_on_process_cluster(self, tmp_path: Path, signal: dict[str, Any],
                                               process_cluster: Any) -> None:
        from distributed import Client

        path = self.written(tmp_path, signal)
        expected = self.expected(signal)
        with Client(process_cluster, set_as_default=True) as client:
            lazy = lazyio.load(path)[0]
            self.assert_same_data(client.compute(lazy["data"], sync=True), expected)
            # the workers read the source and write the copy
            copy = self.target(tmp_path, "copy")
            self.save(copy, lazy)
        self.assert_same_data(lazyio.load(copy, lazy=False)[0]["data"], expected)
        assert sorted(os.listdir(tmp_path)) == sorted([path.name, copy.name])

    def test_remote_round_trip(self, remote_base: tuple[str, dict[str, Any]],
                               signal: dict[str, Any]) -> None:
        base, options = remote_base
        url = f"{base.rstrip('/')}/{uuid.uuid4().hex}{self.extension}"
        self.save(url, signal, storage_options=options)
        expected = self.expected(signal)
        lazy = lazyio.load(url, storage_options=options)[0]["data"]
        assert isinstance(lazy, da.Array)
        self.assert_same_data(lazy.compute(scheduler="threads"), expected)
        self.assert_same_data(
            lazyio.load(url, lazy=False, storage_options=options)[0]["data"], expected)
        with pytest.raises(lazyio.TargetExistsError):
            self.save(url, signal, storage_options=options)

    def test_overwrite_refused_leaves_target_identical(self, tmp_path: Path,
                                                      signal: dict[str, Any]) -> None:
        path = self.written(tmp_path, signal)
        before = snapshot(path)
        changed = dict(signal)
        changed["data"] = self.expected(signal)[::-1].copy()
        with pytest.raises(lazyio.TargetExistsError, match=path.name):
            self.save(path, changed)
        assert snapshot(path) == before
        self.save(path, changed, overwrite=True)
        self.assert_same_data(lazyio.load(path, lazy=False)[0]["data"], changed["data"])
        assert os.listdir(tmp_path) == [path.name]

    def test_interrupted_write_keeps_previous_target(self, tmp_path: Path,
                                                     signal: dict[str, Any]) -> None:
        path = self.written(tmp_path, signal)
        before = snapshot(path)
        failing = dict(signal)
        failing["data"] = interrupted(signal["data"])
        with pytest.raises(WriteInterrupted):
            self.save(path, failing, overwrite=True)
        assert snapshot(path) == before
        assert os.listdir(tmp_path) == [path.name]  # no temporary debris
        with pytest.raises(WriteInterrupted):
            self.save(self.target(tmp_path, "new"), failing)
        assert os.listdir(tmp_path) == [path.name]  # a failed new target leaves nothing
        self.assert_same_data(lazyio.load(path, lazy=False)[0]["data"], self.expected(signal))

    def test_verify_accepts_a_good_write(self, tmp_path: Path,
                                         signal: dict[str, Any]) -> None:
        path = self.target(tmp_path)
        self.save(path, signal, verify=True)
        self.assert_same_data(lazyio.load(path, lazy=False)[0]["data"], self.expected(signal))
        assert os.listdir(tmp_path) == [path.name]

    def test_unknown_keyword_on_load_raises_type_error(self, tmp_path: Path,
                                                       signal: dict[str, Any]) -> None:
        path = self.written(tmp_path, signal)
        with pytest.raises(TypeError, match="lazzy"):
            lazyio.load(path, lazzy=False)  # a typo must not leave the read lazy

    def test_unknown_keyword_on_save_raises_type_error(self, tmp_path: Path,
                                                       signal: dict[str, Any]) -> None:
        path = self.target(tmp_path)
        with pytest.raises(TypeError, match="compresor"):
            self.save(path, signal, compresor=None)
        assert os.listdir(tmp_path) == []  # refused before anything is written
