"""Shared pieces of the benchmark: result rows, interleaved timing, fresh-process runs."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CORES = os.cpu_count() or 1


@dataclass
class Row:
    """One measure of one format.

    ``lazyio``, ``baseline`` and ``limit`` share ``unit``. For times and memory lower is
    better: ``ratio`` is baseline / lazyio (how many times better lazyio is; for a
    throughput unit ``.../s``, lazyio / baseline) and
    ``vs_limit`` is lazyio / limit (1.0 is at the limit). ``target`` is checked by
    :meth:`met`: ``("ratio", x)`` ratio >= x, ``("limit", x)`` vs_limit <= x,
    ``("max", x)`` lazyio <= x, ``("share", x)`` vs_limit >= x (a throughput against
    the link's or machine's rate).
    """

    measure: str
    lazyio: float | None
    baseline: float | None = None
    unit: str = "s"
    baseline_name: str = "RosettaSciIO"
    limit: float | None = None
    targets: list[tuple[str, float]] = field(default_factory=list)
    note: str = ""

    @property
    def higher_is_better(self) -> bool:
        return self.unit.endswith("/s")

    @property
    def ratio(self) -> float | None:
        if not self.lazyio or self.baseline is None:
            return None
        if self.higher_is_better:  # throughput: lazyio / baseline
            return self.lazyio / self.baseline if self.baseline else None
        return self.baseline / self.lazyio

    @property
    def vs_limit(self) -> float | None:
        if self.lazyio is not None and self.limit:
            return self.lazyio / self.limit
        return None

    def met(self) -> bool | None:
        if not self.targets:
            return None
        checks = []
        for kind, value in self.targets:
            got = {"ratio": self.ratio, "limit": self.vs_limit, "share": self.vs_limit,
                   "max": self.lazyio}[kind]
            if got is None:
                return None
            checks.append(got >= value if kind in ("ratio", "share") else got <= value)
        return all(checks)

    def target_text(self) -> str:
        words = {"ratio": "≥ {:g}×", "limit": "≤ {:g}× limit", "share": "≥ {:g}× limit",
                 "max": "≤ {:g} " + self.unit}
        return ", ".join(words[k].format(v) for k, v in self.targets)


def interleaved(fns: dict[str, Callable[[], Any]], repeat: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per function; the functions alternate within each repetition.

    The order flips every repetition so neither side always runs right after the other.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(repeat):
        for name in names if rep % 2 == 0 else reversed(names):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def median_latency(fn: Callable[[Any], Any], points: Sequence[Any]) -> float:
    """Median seconds of ``fn(point)`` over ``points`` (one warm-up call first)."""
    fn(points[0])
    times = []
    for p in points:
        start = time.perf_counter()
        fn(p)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_json(args: Sequence[str], python: str = sys.executable, timeout: float = 900) -> Any:
    """Run ``python -m <args>`` from the repository root; parse its last stdout line as JSON."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [python, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fresh(cmd: str, spec: dict[str, Any], python: str = sys.executable) -> dict[str, Any]:
    """Run one job of :mod:`benchmarks.worker` in a fresh process (peak RSS is its own)."""
    return run_json(["benchmarks.worker", cmd, json.dumps(spec)], python=python)


def disk_size(path: str | os.PathLike) -> int:
    path = str(path)
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def warm(path: str | os.PathLike) -> None:
    """Read a file (or a directory's files) once so it sits in the page cache."""
    path = str(path)
    files = (
        [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
        if os.path.isdir(path) else [path]
    )
    buf = bytearray(16 * 2**20)
    for name in files:
        with open(name, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def rmtree(path: str | os.PathLike) -> None:
    import shutil

    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def compare_reads(
    opens: dict[str, Callable[[], Any]], points: Sequence[Any], repeat: int
) -> dict[str, dict[str, float]]:
    """Lazy open time, full ``sum`` time, one-signal latency and task count per side.

    ``opens`` maps a side's name to a function returning a fresh lazy dask array (it
    should drop cached handles first, so every open is a real one). Open and sum
    alternate between the sides within each repetition; the first round is a warm-up.
    """
    names = list(opens)
    got: dict[str, dict[str, list[float]]] = {n: {"open": [], "sum": []} for n in names}
    for rep in range(repeat + 1):
        for name in names if rep % 2 == 0 else reversed(names):
            start = time.perf_counter()
            arr = opens[name]()
            opened = time.perf_counter() - start
            start = time.perf_counter()
            arr.sum().compute()
            summed = time.perf_counter() - start
            if rep:
                got[name]["open"].append(opened)
                got[name]["sum"].append(summed)
    out = {}
    for name in names:
        arr = opens[name]()
        out[name] = {
            "open": statistics.median(got[name]["open"]),
            "sum": statistics.median(got[name]["sum"]),
            "one": median_latency(lambda p, a=arr: a[p].compute(), points),
            "tasks": arr.npartitions,
        }
    return out


def random_points(shape: Sequence[int], n: int, seed: int = 7) -> list[tuple[int, ...]]:
    """``n`` random navigation positions (tuples of ints) within ``shape``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(n)]


@dataclass
class Context:
    """What every format benchmark gets: where to write, the datasets, how often to repeat."""

    workdir: str
    data: Any  # benchmarks.datasets.Datasets
    repeat: int
    quick: bool
    cache: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def once(self, key: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` computed once per run (shared limits such as a memory-mapped sum)."""
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]


def write_pair(
    ctx: Context, fmt: str, impls: dict[str, tuple[str, dict[str, Any], str]], src: str,
    python: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Time and peak RSS of writes, each in a fresh process, alternating sides per repetition.

    ``extra`` is added to every job's spec (``chunks``: the source's dask chunks).

    ``impls`` maps a side's name to ``(implementation, writer kwargs, target file name)``.
    ``extra`` goes into every job's spec (``source_chunks``: another chunking of the
    source). Returns per side the median ``seconds``, ``peak`` (VmHWM, bytes) and ``added`` (peak
    minus the RSS just before the write).
    """
    python = python or {}
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in impls}
    names = list(impls)
    for rep in range(ctx.repeat):
        for name in names if rep % 2 == 0 else reversed(names):
            impl, kwargs, dst = impls[name]
            spec = {"impl": impl, "fmt": fmt, "src": src, "dst": ctx.path(dst),
                    "kwargs": kwargs, "workers": CORES, **(extra or {})}
            runs[name].append(fresh("write", spec, python=python.get(name, sys.executable)))
    return {
        n: {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "peak": statistics.median(r["peak"] for r in rs),
            "added": statistics.median(r["peak"] - r["baseline"] for r in rs),
        }
        for n, rs in runs.items()
    }


MiB = 2**20


def rss_row(measure: str, w: dict[str, dict[str, float]], ours: str, theirs: str,
            **kwargs: Any) -> Row:
    """A write's peak RSS above the process's RSS just before it (imports excluded, as
    the two sides may run in different environments); the total peaks go in the note."""
    note = (f"peak RSS above the RSS before the write; total peaks "
            f"{w[ours]['peak'] / MiB:.0f} vs {w[theirs]['peak'] / MiB:.0f} MiB")
    if kwargs.get("note"):
        note = f"{kwargs.pop('note')}; {note}"
    return Row(measure, w[ours]["added"] / MiB, w[theirs]["added"] / MiB, unit="MiB",
               note=note, **kwargs)
