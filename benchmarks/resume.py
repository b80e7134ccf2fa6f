"""What resumable writes cost and save: ``python -m benchmarks.resume [--reps 3]``.

For each target format, from a gzip-compressed .hspy source of 128 MiB (decompressing it is
the source's cost, as for a real conversion): an ordinary write, a journaled write
(``resume=True`` with nothing to resume), and a write resumed after a child process was
killed half-way (``LAZYIO_TEST_KILL_AT=chunk-<half>``). Repetitions are interleaved and
medians reported as ratios to the ordinary write, with the load average (the machine is
shared). A standalone script: ``run.py`` does not run it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

SHAPE = (32, 64, 128, 128)  # float32: 128 MiB
READ_CHUNKS = (2, 64, 128, 128)
TARGETS = {"zspy": ".zspy", "npy": ".npy", "usid": ".h5"}


def _source(folder: str) -> str:
    import numpy as np

    import lazyio

    path = os.path.join(folder, "src.hspy")
    if not os.path.exists(path):
        # compressible, so that gzip has work to do
        data = np.random.default_rng(0).integers(0, 64, SHAPE).astype("f4")
        axes = [{"size": n, "navigate": i < 2} for i, n in enumerate(SHAPE)]
        lazyio.save(path, {"data": data, "axes": axes}, chunks=READ_CHUNKS,
                    show_progressbar=False)
    return path


def _save(src: str, dst: str, resume: bool) -> None:
    import lazyio

    signal = lazyio.load(src, chunks=READ_CHUNKS)[0]
    lazyio.save(dst, signal, resume=resume, show_progressbar=False, overwrite=True)


def _clean(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default=",".join(TARGETS))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _save(args.child[0], args.child[1], True)
        return
    from lazyio.backends import journal

    runs: list[journal.Resume] = []
    store = journal.Resume.store

    def recorded(self: journal.Resume, *a: Any) -> None:
        runs.append(self)
        store(self, *a)

    journal.Resume.store = recorded  # type: ignore[method-assign,assignment]
    targets = {k: v for k, v in TARGETS.items() if k in args.only.split(",")}
    times: dict[str, dict[str, list[float]]] = {f: {"plain": [], "journal": [], "resume": []}
                                              for f in targets}
    counts: dict[str, tuple[int, int, int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="lazyio-resume-") as folder:
        src = _source(folder)
        for _ in range(args.reps):
            for fmt, ext in targets.items():
                dst = os.path.join(folder, f"out{ext}")
                for mode in ("plain", "journal"):
                    _clean(dst)
                    start = time.perf_counter()
                    _save(src, dst, mode == "journal")
                    times[fmt][mode].append(time.perf_counter() - start)
                total = runs[-1].written
                _clean(dst)
                env = dict(os.environ, LAZYIO_TEST_KILL_AT=f"chunk-{total // 2}")
                code = subprocess.run([sys.executable, "-m", "benchmarks.resume", "--child",
                                       src, dst], env=env, check=False).returncode
                start = time.perf_counter()
                _save(src, dst, True)
                times[fmt]["resume"].append(time.perf_counter() - start)
                counts[fmt] = (total, code, runs[-1].restored, runs[-1].written)
                _clean(dst)
    print("load average " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    for fmt, t in times.items():
        plain, journaled, resumed = (statistics.median(t[k]) for k in ("plain", "journal",
                                                                       "resume"))
        total, code, restored, written = counts[fmt]
        print(f"hspy (gzip) -> {fmt:5} ordinary {plain:6.2f} s, journaled {journaled:6.2f} s "
              f"({journaled / plain:.2f}x), resumed after a kill at {restored}/{total} blocks "
              f"{resumed:6.2f} s ({resumed / plain:.2f}x; {written} written, child exit {code})")


if __name__ == "__main__":
    main()
