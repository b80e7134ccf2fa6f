"""HyperSpy's own stack as the oracle of lazyio's formats (issue 14).

Generated HyperSpy signals are written by HyperSpy, read by lazyio (lazily and eagerly),
written by lazyio to every format and read back by RosettaSciIO; everything the target
format can hold must equal what RosettaSciIO reads from the source. RosettaSciIO's .zspy
plugin needs zarr < 3: it runs in ``.venv-zarr2`` (``bash ci/oracle-env.sh``) as a worker
process, and the tests that need it skip, saying so, where that venv is absent.

CI runs a few examples per source format; a longer campaign is one command::

    .venv/bin/python tests/test_hyperspy_oracle.py --examples 200

Failures the oracle found are kept below as explicit regression tests.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import pickle
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lazyio
from lazyio.errors import LazyioError, LazyioWarning

sys.path.insert(0, str(Path(__file__).parent))
import hyperspy_oracle

ROOT = Path(__file__).resolve().parents[1]
ZARR2_PYTHON = ROOT / ".venv-zarr2" / "bin" / "python"
EXAMPLES = int(os.environ.get("LAZYIO_ORACLE_EXAMPLES", "4"))
HS_TESTS = Path(__import__("hyperspy").__file__).parent / "tests"
pytestmark = pytest.mark.timeout(240)


# ----------------------------------------------------------------------------- the oracle


class Zarr2Oracle:
    """RosettaSciIO with zarr 2, in a worker process of ``.venv-zarr2``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [str(ZARR2_PYTHON), str(ROOT / "tests" / "hyperspy_oracle.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )

    def _ask(self, request: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if not answer["ok"]:
            raise AssertionError(f"RosettaSciIO (zarr 2) failed: {answer['traceback']}")

    def read(self, path: Path) -> list[dict[str, Any]]:
        self.count += 1
        out = self.folder / f"read-{self.count}.pickle"
        self._ask({"op": "read", "format": "zspy", "path": str(path), "out": str(out)})
        with open(out, "rb") as f:
            result: list[dict[str, Any]] = pickle.load(f)
        return result

    def write(self, path: Path, signal: dict[str, Any]) -> None:
        self.count += 1
        pick = self.folder / f"signal-{self.count}.pickle"
        with open(pick, "wb") as f:
            pickle.dump(signal, f)
        self._ask({"op": "write", "path": str(path), "signal": str(pick)})

    def close(self) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def zarr2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zarr2Oracle]:
    if not ZARR2_PYTHON.exists():
        pytest.skip("no .venv-zarr2 (RosettaSciIO's zspy needs zarr<3): bash ci/oracle-env.sh")
    oracle = Zarr2Oracle(tmp_path_factory.mktemp("zarr2-oracle"))
    yield oracle
    oracle.close()


def rsciio_read(path: Path, fmt: str, zarr2: Zarr2Oracle | None) -> list[dict[str, Any]]:
    if fmt == "zspy":
        assert zarr2 is not None
        return zarr2.read(path)
    return hyperspy_oracle.read(str(path), fmt)


# ----------------------------------------------------------------------------- comparison


def assert_same(ours: Any, ref: Any, where: str) -> None:
    """Deep equality: structure, values, dtypes; NaN equals NaN, numpy vs Python scalars."""
    if isinstance(ref, dict):
        assert isinstance(ours, dict), f"{where}: {type(ours)} is not a dict"
        assert set(ours) == set(ref), f"{where}: keys {sorted(ours)} != {sorted(ref)}"
        for key in ref:
            assert_same(ours[key], ref[key], f"{where}.{key}")
    elif isinstance(ref, list | tuple):
        assert type(ours) is type(ref), f"{where}: {type(ours)} != {type(ref)}"
        assert len(ours) == len(ref), f"{where}: length {len(ours)} != {len(ref)}"
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(ref, np.ndarray):
        ours = np.asarray(ours.compute() if isinstance(ours, da.Array) else ours)
        assert ours.shape == ref.shape, f"{where}: shape {ours.shape} != {ref.shape}"
        assert ours.dtype == ref.dtype, f"{where}: dtype {ours.dtype} != {ref.dtype}"
        if ref.dtype.kind == "O":
            for idx in np.ndindex(ref.shape):
                assert_same(ours[idx], ref[idx], f"{where}{list(idx)}")
        elif ref.dtype.names:
            for name in ref.dtype.names:
                assert_same(ours[name], ref[name], f"{where}[{name!r}]")
        else:
            np.testing.assert_array_equal(ours, ref, err_msg=where)
    elif isinstance(ref, float | np.floating) and math.isnan(ref):
        assert isinstance(ours, float | np.floating), f"{where}: {ours!r}"
        assert math.isnan(ours), f"{where}: {ours!r}"
    else:
        assert ours == ref, f"{where}: {ours!r} != {ref!r}"
        assert isinstance(ours, str) == isinstance(ref, str), f"{where}: {ours!r} vs {ref!r}"


def assert_same_signal(ours: dict[str, Any], ref: dict[str, Any], where: str) -> None:
    """Everything a HyperSpy file holds: data, axes, metadata, original_metadata, models,
    learning results."""
    for key in ("data", "axes", "metadata", "original_metadata", "models",
                "learning_results"):
        if key in ref or key in ours:
            mine, theirs = ours.get(key), ref.get(key)
            if key == "metadata":  # the save history HyperSpy appends on each save
                mine, theirs = _without_fileio(mine), _without_fileio(theirs)
            assert_same(mine, theirs, f"{where}.{key}")


def _without_fileio(metadata: dict[str, Any]) -> dict[str, Any]:
    general = {k: v for k, v in metadata.get("General", {}).items() if k != "FileIO"}
    return {**metadata, "General": general}


# ----------------------------------------------------------------------------- generation

_KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1,
               max_size=6)
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)
_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)
_INT = st.integers(-(2**62), 2**62)
_SCALAR = st.one_of(st.none(), st.booleans(), _INT, _FLOAT, _TEXT)
_LEAF = st.one_of(
    _SCALAR,
    st.lists(_INT, max_size=4), st.lists(_FLOAT, max_size=4), st.lists(_TEXT, max_size=3),
    st.lists(st.one_of(_INT, _TEXT), max_size=4),  # mixed: HyperSpy stores strings
    st.tuples(_INT, _FLOAT), st.just([]), st.just(()),
    hnp.arrays(st.sampled_from(["i2", "u4", "f4", "f8", "c16", "?"]),
               hnp.array_shapes(min_dims=1, max_dims=2, max_side=3)),
)
METADATA = st.recursive(
    st.dictionaries(_KEY, _LEAF, max_size=4),
    lambda inner: st.dictionaries(_KEY, st.one_of(_LEAF, inner, st.lists(inner, max_size=2)),
                                  max_size=3),
    max_leaves=12,
)
DTYPES = ["?", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8",
          "c16", ">f4", ">i2", ">c16"]


@st.composite
def signals(draw: st.DrawFn) -> dict[str, Any]:
    """A HyperSpy signal dictionary: dtypes, 0-d..4-d with size-1 and zero-length axes,
    uniform and non-uniform axes, metadata trees, learning results, ragged data."""
    ragged = draw(st.integers(0, 9)) == 0
    if ragged:
        strings = draw(st.booleans())
        nav = draw(st.integers(1, 3))
        data = np.empty(nav, dtype=object)
        for i in range(nav):
            n = draw(st.integers(0, 3))
            data[i] = (np.array(draw(st.lists(_TEXT, min_size=n, max_size=n)), dtype="U")
                       if strings else np.arange(n * (i + 1), dtype="f8"))
        axes = [{"name": "x", "units": "", "size": nav, "scale": 1.0, "offset": 0.0,
                 "navigate": True}]
        return {"data": data, "axes": axes, "attributes": {"ragged": True},
                "metadata": {"General": {"title": "ragged"}}, "original_metadata": {}}
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
    data = draw(hnp.arrays(dtype, shape))
    nav = draw(st.integers(0, len(shape)))
    axes = []
    for i, size in enumerate(shape):
        axis: dict[str, Any] = {"name": draw(_KEY), "units": draw(st.sampled_from(["", "nm"])),
                                "size": size, "navigate": i < nav}
        if size > 1 and draw(st.integers(0, 4)) == 0:
            axis["axis"] = np.cumsum(np.arange(1, size + 1, dtype="f8") ** 2)
        else:
            axis["scale"] = draw(st.floats(0.01, 100))
            axis["offset"] = draw(st.floats(-100, 100))
        axes.append(axis)
    signal = {"data": data, "axes": axes,
              "metadata": {"General": {"title": draw(_TEXT)}, "Tree": draw(METADATA)},
              "original_metadata": draw(METADATA)}
    if draw(st.booleans()):
        signal["learning_results"] = {
            "factors": np.arange(6.0).reshape(3, 2), "loadings": np.ones((2, 2)),
            "decomposition_algorithm": "SVD", "output_dimension": None,
            "explained_variance": np.array([2.0, 1.0]),
        }
    return signal


# ----------------------------------------------------------------------------- round trips

TARGETS = ["hspy", "zspy", "npy", "usid"]
EXTENSION = {"hspy": "hspy", "zspy": "zspy", "npy": "npy", "usid": "h5"}


def _source(tmp: Path, fmt: str, signal: dict[str, Any], zarr2: Zarr2Oracle | None) -> Path:
    path = tmp / f"source.{EXTENSION[fmt]}"
    if fmt == "zspy":
        assert zarr2 is not None
        zarr2.write(path, signal)
    elif fmt == "usid":
        # HyperSpy's h5USID writer (pyUSID 0.0.12) fails under numpy 2 (np.product): lazyio
        # writes the source, RosettaSciIO's reader is the oracle of what it holds
        plain = {k: v for k, v in signal.items() if k != "extras"}  # HyperSpy's to make
        lazyio.save(path, plain, show_progressbar=False, overwrite=True)
    else:
        hyperspy_oracle.write(str(path), signal)
    return path


TREE = ("hspy", "zspy")  # the formats that hold the whole HyperSpy signal
# how many (source, target, verdict) checks ran: printed by the campaign
STATS: collections.Counter[tuple[str, str, str]] = collections.Counter()


def _hyperspy_copy(tmp: Path, target: str, expected: dict[str, Any],
                   zarr2: Zarr2Oracle | None) -> dict[str, Any] | None:
    """RosettaSciIO's read of HyperSpy's own write of ``expected`` to ``target``, or None
    where HyperSpy cannot write or read it back (then nothing is expected of lazyio)."""
    signal = {**expected, "attributes": {**expected.get("attributes", {}), "_lazy": False}}
    try:
        (copy,) = rsciio_read(_source(tmp, target, signal, zarr2), target, zarr2)
    except Exception:  # noqa: BLE001 - any failure of HyperSpy's own
        return None
    return copy


def _compare(back: dict[str, Any], ref: dict[str, Any], source_fmt: str, target: str,
             where: str) -> None:
    """Everything both the source and the target can hold."""
    if source_fmt in TREE and target in TREE:
        assert_same_signal(back, ref, where)
        return
    # .npy holds the array only and h5USID no HyperSpy tree; from them, lazyio's dictionary
    # keeps size-1 axes and a title from the file name where RosettaSciIO's does not
    # (docs/formats.md): the data, without size-1 axes, must agree
    ours, theirs = np.asarray(back["data"]), np.asarray(ref["data"])
    assert_same(ours.squeeze(), theirs.squeeze(), f"{where}.data")
    if target == "usid" and source_fmt != "npy":
        kept = [a for a in ref["axes"] if a["size"] > 1]
        for a, b in zip(back["axes"], kept, strict=True):
            assert (a["name"], a["units"], a["size"]) == (b["name"], b["units"], b["size"])
            assert float(a["offset"]) == pytest.approx(float(b["offset"]), rel=1e-6), where
            assert float(a["scale"]) == pytest.approx(float(b["scale"]), rel=1e-6), where


def round_trip(tmp: Path, source_fmt: str, signal: dict[str, Any],
               zarr2: Zarr2Oracle | None) -> None:
    """The oracle check of one generated signal: every target, lazy and eager reads."""
    try:
        source = _source(tmp, source_fmt, signal, zarr2)
        (expected,) = rsciio_read(source, source_fmt, zarr2)
    except Exception:  # noqa: BLE001 - any failure of HyperSpy's own, not lazyio's
        # HyperSpy cannot write or read back this signal itself (0-d data, unicode ragged
        # .hspy, ...): no oracle for it
        STATS[(source_fmt, "-", "rejected: HyperSpy cannot write or read it")] += 1
        reject()
    targets = [t for t in TARGETS if t != "zspy" or zarr2 is not None]
    # What a target can hold is what HyperSpy keeps when it writes what it read from the
    # source there itself (an empty ragged item of strings comes back as float64 from
    # HyperSpy's own .zspy)
    own = {t: expected if t == source_fmt else _hyperspy_copy(tmp, t, expected, zarr2)
           for t in targets}
    for lazy in (True, False):
        with warnings.catch_warnings():
            # a non-uniform h5USID dimension is read as an index axis, with a warning, as
            # RosettaSciIO does
            warnings.filterwarnings("ignore", "Ignoring non-uniformity", LazyioWarning)
            (ours,) = lazyio.load(source, lazy=lazy)
        for target in targets:
            path = tmp / f"{lazy}-out.{EXTENSION[target]}"
            where = f"{source_fmt} -> lazyio(lazy={lazy}) -> {target}"
            ref = own[target]
            if ref is None and target == "usid":
                # HyperSpy's h5USID writer needs numpy < 2: what the source holds is
                # expected, as far as h5USID holds it
                ref = expected
            if ref is None:
                # HyperSpy cannot write this there itself (0-d data, unicode ragged .hspy):
                # no oracle; lazyio writes it and reads back its data, or refuses cleanly
                STATS[(source_fmt, target, "no oracle: lazyio round trip")] += 1
                with contextlib.suppress(LazyioError):
                    lazyio.save(path, ours, show_progressbar=False, overwrite=True)
                    (mine,) = lazyio.load(path, lazy=False)
                    assert_same(mine["data"], np.asarray(ours["data"]), f"{where} (lazyio)")
                continue
            if target == "usid" and max(np.shape(ours["data"]) or (0,)) < 2:
                continue  # pyUSID cannot reshape a main dataset without a dimension > 1
            if target == "usid":
                try:  # h5USID holds no ragged, complex, bool or empty data: a clean refusal
                    lazyio.save(path, ours, show_progressbar=False, overwrite=True)
                except LazyioError:
                    STATS[(source_fmt, target, "refused by lazyio")] += 1
                    continue
            else:
                lazyio.save(path, ours, show_progressbar=False, overwrite=True)
            (back,) = rsciio_read(path, target, zarr2)
            _compare(back, ref, source_fmt, target, where)
            STATS[(source_fmt, target, "compared with HyperSpy")] += 1


def _settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@_settings(EXAMPLES)
@given(signal=signals())
def test_oracle_from_hspy(tmp_path_factory: pytest.TempPathFactory,
                          zarr2_or_none: Zarr2Oracle | None, signal: dict[str, Any]) -> None:
    round_trip(tmp_path_factory.mktemp("oracle"), "hspy", signal, zarr2_or_none)


@_settings(EXAMPLES)
@given(signal=signals())
def test_oracle_from_npy(tmp_path_factory: pytest.TempPathFactory,
                         zarr2_or_none: Zarr2Oracle | None, signal: dict[str, Any]) -> None:
    round_trip(tmp_path_factory.mktemp("oracle"), "npy", signal, zarr2_or_none)


@_settings(EXAMPLES)
@given(signal=signals())
def test_oracle_from_usid(tmp_path_factory: pytest.TempPathFactory,
                          zarr2_or_none: Zarr2Oracle | None, signal: dict[str, Any]) -> None:
    round_trip(tmp_path_factory.mktemp("oracle"), "usid", signal, zarr2_or_none)


@_settings(EXAMPLES)
@given(signal=signals())
def test_oracle_from_zspy(tmp_path_factory: pytest.TempPathFactory, zarr2: Zarr2Oracle,
                          signal: dict[str, Any]) -> None:
    round_trip(tmp_path_factory.mktemp("oracle"), "zspy", signal, zarr2)


@pytest.fixture(scope="module")
def zarr2_or_none(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zarr2Oracle | None]:
    """The zarr 2 oracle where it is built; without it the .zspy targets are left out."""
    if not ZARR2_PYTHON.exists():
        yield None
        return
    oracle = Zarr2Oracle(tmp_path_factory.mktemp("zarr2-oracle"))
    yield oracle
    oracle.close()


# ----------------------------------------------------------------------------- regressions
# Each failure of issue 14, as HyperSpy meets it: lazyio's rewrite read back by RosettaSciIO.


def _hyperspy_markers_file(path: Path) -> None:
    import hyperspy.api as hs

    signal = hs.signals.Signal2D(np.arange(3 * 3 * 4 * 5, dtype="f4").reshape(3, 3, 4, 5))
    offsets = np.empty((3, 3), dtype=object)
    texts = np.empty((3, 3), dtype=object)
    for idx in np.ndindex(3, 3):
        offsets[idx] = np.array([[1, 2], [3, 4]])
        texts[idx] = np.array(["a", f"\u00e9\u2202{idx}"])  # ragged, unicode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signal.add_marker(hs.plot.markers.Texts(offsets=offsets, texts=texts), permanent=True)
        signal.add_marker(hs.plot.markers.Texts(offsets=[[1, 2]], texts=["hi"]),
                          permanent=True)
        signal.save(path)


def _hyperspy_ragged_strings_file(path: Path) -> None:
    import hyperspy.api as hs

    data = np.empty(3, dtype=object)
    for i in range(3):
        data[i] = np.array(["x" * i, "\u00fc", "plain"][: i + 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hs.signals.BaseSignal(data, ragged=True).save(path)


@pytest.mark.parametrize("make", [_hyperspy_markers_file, _hyperspy_ragged_strings_file])
def test_zspy_ragged_strings_and_text_markers(tmp_path, zarr2, make):
    """Text markers, ragged string signals and ragged unicode markers wrote to .zspy with
    ``TypeError: can not serialize 'numpy.ndarray' object``; a plain text array came back
    as dtype object, which HyperSpy took for a ragged marker argument."""
    source = tmp_path / "source.hspy"
    make(source)
    # HyperSpy cannot read its own unicode ragged .hspy (h5py decodes it as ASCII), so the
    # reference is lazyio's eager read of the source
    (ref,) = lazyio.load(source, lazy=False)
    for lazy in (True, False):
        (ours,) = lazyio.load(source, lazy=lazy)
        out = tmp_path / f"{lazy}.zspy"
        lazyio.save(out, ours, show_progressbar=False)
        (back,) = zarr2.read(out)
        assert_same(back["data"], np.asarray(ref["data"]), f"data (lazy={lazy})")
        assert_same(_without_fileio(back["metadata"]), _without_fileio(ref["metadata"]),
                    f"metadata (lazy={lazy})")
        (again,) = lazyio.load(out, lazy=False)
        assert_same(again["data"], np.asarray(ref["data"]), "lazyio data")
        assert_same(again["metadata"], ref["metadata"], "lazyio metadata")


def test_zspy_ragged_text_after_an_empty_numeric_item(tmp_path, zarr2):
    """Found by the oracle: HyperSpy reads an empty ragged text item back as float64; a
    rewrite then took the text items for numbers (``could not convert string to float``)."""
    data = np.empty(2, dtype=object)
    data[0], data[1] = np.array([], dtype="f8"), np.array(["", "\u00e9"])
    signal = {"data": data, "axes": [{"name": "x", "navigate": True}],
              "attributes": {"ragged": True}}
    lazyio.save(tmp_path / "r.zspy", signal, show_progressbar=False)
    (back,) = zarr2.read(tmp_path / "r.zspy")
    assert back["data"][1].tolist() == ["", "\u00e9"]
    assert back["data"][0].size == 0


# each file once, lazy or eager in turn (the suite's time budget)
HYPERSPY_1X_MODELS = [("hs14_model.hspy", True), ("hs15_model.hspy", False),
                      ("hs16_model.hspy", True)]


@pytest.mark.parametrize(("name", "lazy"), HYPERSPY_1X_MODELS)
def test_zspy_models_of_hyperspy_1x(tmp_path, zarr2, name, lazy):
    """Models stored by HyperSpy 1.4-1.6 (parameter maps with sub-array fields) wrote to
    .zspy with ``TypeError: a bytes-like object is required, not 'int'``."""
    source = HS_TESTS / "component" / "data" / name
    if not source.exists():
        pytest.skip(f"HyperSpy's test data has no {name}")
    (ref,) = hyperspy_oracle.read(str(source), "hspy")
    (ours,) = lazyio.load(source, lazy=lazy)
    lazyio.save(tmp_path / "out.zspy", ours, show_progressbar=False)
    (back,) = zarr2.read(tmp_path / "out.zspy")
    assert_same(back["models"], ref["models"], f"{name} models (lazy={lazy})")
    assert_same(back["data"], ref["data"], f"{name} data")
    (again,) = lazyio.load(tmp_path / "out.zspy", lazy=False)
    assert_same(again["models"], ref["models"], f"{name} models read by lazyio")


def test_zspy_nonfinite_metadata_floats(tmp_path, zarr2):
    """inf and nan came back as the strings "Infinity" and "NaN" in HyperSpy (zarr 2)."""
    values = {"nan": float("nan"), "inf": float("inf"), "minf": -np.inf,
              "f32": np.float32("nan"), "fine": 1.5}
    signal = {"data": np.arange(3.0), "metadata": {"Values": dict(values)},
              "original_metadata": {"deep": {"Values": dict(values)}}}
    lazyio.save(tmp_path / "nf.zspy", signal, show_progressbar=False)
    (back,) = zarr2.read(tmp_path / "nf.zspy")
    expected = {k: float(v) for k, v in values.items()}
    assert_same(back["metadata"]["Values"], expected, "metadata")
    assert_same(back["original_metadata"]["deep"]["Values"], expected, "original_metadata")
    (ours,) = lazyio.load(tmp_path / "nf.zspy", lazy=False)
    assert_same(ours["metadata"]["Values"], expected, "lazyio")


def test_zspy_non_ascii_text_array_stays_text(tmp_path):
    """Only ASCII text arrays become ``|S`` (as RosettaSciIO writes them); others stay
    vlen-utf8, which HyperSpy cannot write itself, and read back as text."""
    signal = {"data": np.arange(2.0),
              "metadata": {"T": {"ascii": np.array(["ab", "c"]), "uni": np.array(["\u00e9"])}}}
    lazyio.save(tmp_path / "t.zspy", signal, show_progressbar=False)
    group = tmp_path / "t.zspy" / "Experiments" / "__unnamed__" / "metadata" / "T"
    assert json.loads((group / "ascii" / ".zarray").read_text())["dtype"] == "|S2"
    (back,) = lazyio.load(tmp_path / "t.zspy", lazy=False)
    assert_same(back["metadata"]["T"], signal["metadata"]["T"], "metadata")


def test_npy_size1_axes_differ_from_rosettasciio_only_by_the_squeeze(tmp_path):
    """RosettaSciIO's .npy reader drops size-1 axes ((1, 5, 1, 3) -> (5, 3)); lazyio keeps
    the file's shape, so a round trip writes the same file. Documented in docs/formats.md;
    without the size-1 axes the two dictionaries agree."""
    data = np.arange(15.0).reshape(1, 5, 1, 3)
    np.save(tmp_path / "a.npy", data)
    (ref,) = hyperspy_oracle.read(str(tmp_path / "a.npy"), "npy")
    for lazy in (True, False):
        (ours,) = lazyio.load(tmp_path / "a.npy", lazy=lazy)
        assert ours["data"].shape == (1, 5, 1, 3)
        assert_same(np.asarray(ours["data"]).squeeze(), ref["data"], "data")
        kept = [a for a in ours["axes"] if a["size"] > 1]
        for i, axis in enumerate(kept):
            axis = {**axis, "index_in_array": i}
            assert_same({k: axis[k] for k in ref["axes"][i]}, ref["axes"][i], f"axes[{i}]")
        lazyio.save(tmp_path / f"{lazy}.npy", ours, show_progressbar=False)
        assert np.load(tmp_path / f"{lazy}.npy").shape == (1, 5, 1, 3)


if __name__ == "__main__":
    # the longer campaign: --examples N per source format
    args = sys.argv[1:]
    if "--examples" in args:
        i = args.index("--examples")
        os.environ["LAZYIO_ORACLE_EXAMPLES"] = args[i + 1]
        del args[i:i + 2]
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    warnings.simplefilter("default")
    code = pytest.main([__file__, "-q", "-p", "no:cacheprovider", "-k", "oracle_from", *args])
    module = sys.modules.get("test_hyperspy_oracle")
    for (source_fmt, target, verdict), n in sorted(getattr(module, "STATS", {}).items()):
        sys.stdout.write(f"{source_fmt:>5} -> {target:<5} {verdict}: {n}\n")
    sys.exit(code)


def _hyperspy_markers_models_and_metadata_signal(path: Path) -> None:
    import hyperspy.api as hs

    signal = hs.signals.Signal1D(np.arange(2 * 3 * 16, dtype="f8").reshape(2, 3, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signal.metadata.set_item("Sub.reference", hs.signals.Signal1D(np.arange(3.0)))
        for marker in (hs.plot.markers.Points(offsets=np.array([[1, 2], [3, 4]])),
                       hs.plot.markers.Lines(segments=np.array([[[0, 0], [1, 1]]])),
                       hs.plot.markers.Texts(offsets=np.array([[1, 2]]),
                                             texts=np.array(["ab"]))):
            signal.add_marker(marker, permanent=True)
        model = signal.create_model()
        model.extend([hs.model.components1D.Gaussian(), hs.model.components1D.Offset()])
        model.store("m1")
        signal.save(path)


def test_hspy_markers_models_and_metadata_signals(tmp_path, zarr2_or_none):
    """Points, lines and text markers, a stored model with components and a signal inside
    metadata, written by HyperSpy, rewritten by lazyio and read back by RosettaSciIO. A
    text marker's ``texts`` (``<U2``) came back from lazyio's .hspy as dtype object (it was
    written as variable-length UTF-8; HyperSpy writes fixed-length ASCII)."""
    source = tmp_path / "source.hspy"
    _hyperspy_markers_models_and_metadata_signal(source)
    (ref,) = hyperspy_oracle.read(str(source), "hspy")
    assert set(ref["metadata"]["Markers"]) == {"Points", "Lines", "Texts"}
    assert "m1" in ref["models"]
    targets = ["hspy"] + (["zspy"] if zarr2_or_none is not None else [])
    for lazy in (True, False):
        (ours,) = lazyio.load(source, lazy=lazy)
        assert_same_signal(ours, ref, f"read (lazy={lazy})")
        for target in targets:
            out = tmp_path / f"{lazy}.{target}"
            lazyio.save(out, ours, show_progressbar=False)
            (back,) = rsciio_read(out, target, zarr2_or_none)
            assert_same_signal(back, ref, f"hspy -> lazyio(lazy={lazy}) -> {target}")
