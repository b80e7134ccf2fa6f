"""How fast ``lazyio info`` answers: wall time, CPU time and peak RSS of a fresh
``python -m lazyio info FILE`` on a small local file of each format.

    .venv/bin/python benchmarks/bench_cli.py [--repeat 7] [--workdir DIR]

Each run is a new process (what a user typing the command gets), so imports dominate. The
table also gives floors measured the same way: the interpreter alone, ``import numpy,
h5py`` (what an info of an HDF5 file needs; it imports no dask), and those plus ``dask``
and ``dask.array``, which an info no longer imports. Bytecode is cached, as for an installed package. CPU time (user +
system, from ``wait4``) is printed beside wall time because on a shared machine the wall
time mostly measures the other jobs. Not asserted anywhere: a figure for the docs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("dask", "dask.array", "pandas", "xarray", "zarr", "hyperspy", "scipy", "sparse", "numba", "distributed",
         "numcodecs", "hdf5plugin", "fsspec")


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """(wall s, cpu s, peak RSS MB, stdout) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{argv} failed: {err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out


def _files(workdir: Path) -> dict[str, Path]:
    import numpy as np

    import lazyio

    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(16, 16, 64, 64), dtype=np.uint16)
    axes = [{"name": n, "units": "nm", "size": s, "scale": 0.5, "offset": 0.0,
             "navigate": i < 2} for i, (n, s) in enumerate(zip("yxab", data.shape, strict=True))]
    signal = {"data": data, "axes": axes, "metadata": {"General": {"title": "bench"}}}
    files = {}
    for fmt, ext in (("hspy", ".hspy"), ("zspy", ".zspy"), ("npy", ".npy"), ("usid", ".h5")):
        path = workdir / f"scan{ext}"
        lazyio.save(path, signal, format=fmt, overwrite=True, show_progressbar=False)
        files[fmt] = path
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        # bytecode cached as an installed package has it (PYTHONDONTWRITEBYTECODE, set in
        # the development environment, made every run compile lazyio: +0.2 s of CPU)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        # made in a child: a fork of a parent holding numpy and dask would count its pages
        # in each measured child's peak RSS
        made = subprocess.run(
            [sys.executable, "-c", ("import sys; from benchmarks.bench_cli import _files; "
             f"print(*_files(__import__('pathlib').Path({tmp!r})).values())")],
            env=env, check=True, capture_output=True, text=True).stdout.split()
        files = {Path(p).suffix: Path(p) for p in made}
        probe = ("import sys; sys.argv = ['lazyio', 'info', {path!r}]\n"
                 "from lazyio.cli import main; code = main(sys.argv[1:])\n"
                 "print('MODULES', *sorted(m for m in {heavy!r} if m in sys.modules))")
        cases: list[tuple[str, list[str]]] = [
            ("python (floor)", [sys.executable, "-c", "pass"]),
            ("import numpy, h5py", [sys.executable, "-c", "import numpy, h5py"]),
            ("import numpy, h5py, dask", [sys.executable, "-c", "import numpy, h5py, dask"]),
            ("import numpy, h5py, dask.array", [sys.executable, "-c",
                                                "import numpy, h5py, dask.array"]),
        ]
        cases += [(f"lazyio info {p.name}", [sys.executable, "-m", "lazyio", "info", str(p)])
                  for p in files.values()]
        print(f"{args.repeat} fresh processes each; load average before: "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print("| command | wall median (s) | wall min (s) | CPU median (s) | peak RSS (MB) |")
        print("|---|---|---|---|---|")
        for label, argv in cases:
            _run(argv, env)  # writes the bytecode cache
            runs = [_run(argv, env) for _ in range(args.repeat)]
            walls, cpus, rss = zip(*[(w, c, r) for w, c, r, _ in runs], strict=True)
            print(f"| {label} | {statistics.median(walls):.2f} | {min(walls):.2f} | "
                  f"{statistics.median(cpus):.2f} | {max(rss):.0f} |", flush=True)
        for ext, path in files.items():
            code = probe.format(path=str(path), heavy=HEAVY)
            *_, out = _run([sys.executable, "-c", code], env)
            imported = out.rsplit("MODULES", 1)[-1].split()
            print(f"{ext}: heavy modules imported by `lazyio info`: "
                  f"{', '.join(imported) or 'none'}")


if __name__ == "__main__":
    main()
