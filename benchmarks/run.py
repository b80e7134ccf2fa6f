"""The lazyio benchmark: one command, a Markdown table of ratios against RosettaSciIO and
the machine's limits.

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        .venv/bin/python benchmarks/run.py [--quick] [--aa] [--repeat N] [--only hspy,npy]
                                           [--write-readme] [--workdir DIR]

glibc's malloc trimming makes HDF5-backed timings bimodal in this VM (HDF5's 8-16 MiB
chunk buffers are unmapped and faulted in again), so the script re-executes itself with
those two variables when they are missing; they apply to both sides.
"""


from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
FORMATS = ("hspy", "npy", "zspy", "usid")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _ensure_env(argv: list[str]) -> None:
    missing = {k: v for k, v in MALLOC_ENV.items() if os.environ.get(k) != v}
    if missing:
        print(f"re-executing with {' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())}",
              flush=True)
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv],
                  {**os.environ, **MALLOC_ENV})


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if unit == "tasks":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.01:
        return f"{value:.3g}" if unit in ("", "x") else f"{value:.3f}"
    return f"{value:.2g}"


def table(title: str, rows: list) -> str:
    head = ("| measure | lazyio | baseline | ratio | limit | lazyio/limit | target | met? |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [f"**{title}**", "", head]
    notes = []
    for r in rows:
        met = r.met()
        base = (f"{_fmt(r.baseline, r.unit)} ({r.baseline_name})"
                if r.baseline is not None else "–")
        lines.append(
            f"| {r.measure} ({r.unit}) | {_fmt(r.lazyio, r.unit)} | {base} | "
            f"{_fmt(r.ratio, 'x')}{'×' if r.ratio else ''} | {_fmt(r.limit, r.unit)} | "
            f"{_fmt(r.vs_limit, 'x')}{'×' if r.vs_limit else ''} | {r.target_text() or '–'} | "
            f"{'–' if met is None else ('yes' if met else '**no**')} |"
        )
        if r.note:
            notes.append(f"{r.measure}: {r.note}")
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))


def machine_limits(ctx) -> tuple[str, list[str]]:
    import numpy as np

    from benchmarks import limits
    from benchmarks.common import CORES, MiB, warm

    lines = []
    floats = ctx.data.floats
    warm(floats)
    bw = limits.page_cache_read(floats)
    mm = ctx.once(f"mmap:{floats}", lambda: limits.mmap_sum(floats))
    size = os.path.getsize(floats)
    lines.append(f"- page-cache read, {CORES} threads: {bw / 1e9:.2f} GB/s")
    lines.append(f"- memory-mapped sum (float32), {CORES} threads: {size / mm / 1e9:.2f} GB/s")
    det = np.load(ctx.data.detector, mmap_mode="r")
    sample = limits.sample_chunks(det, (2, 2, *det.shape[2:]), 8 * MiB if ctx.quick else 32 * MiB)
    for name, codec in limits.codecs(det.itemsize).items():
        r = limits.codec_rates(codec, sample)
        lines.append(
            f"- {name} on the detector stack (ratio {r['ratio']:.2f}): encode "
            f"{r['encode'] / 1e6:.0f} MB/s/core, decode+sum {r['decode+sum'] / 1e6:.0f} "
            f"MB/s/core (× {CORES} cores: {CORES * r['encode'] / 1e6:.0f} / "
            f"{CORES * r['decode+sum'] / 1e6:.0f} MB/s)"
        )
    return "Machine limits (same run)", lines


def remote_rows(quick: bool) -> list:
    """Rows of ``benchmarks/bench_remote.py`` (another module's), when it exists."""
    from benchmarks.common import Row

    try:
        module = importlib.import_module("benchmarks.bench_remote")
    except ImportError:
        return []
    return [
        Row(d["measure"], d.get("lazyio"), d.get("baseline"), unit=d.get("unit", ""),
            baseline_name=d.get("baseline_name", "baseline"), limit=d.get("limit"),
            targets=[tuple(t) for t in d.get("targets", [])], note=d.get("note", ""))
        for d in module.run(quick)
    ]


def header(args: argparse.Namespace, elapsed: float) -> str:
    import psutil

    vers = ", ".join(
        f"{p} {version(p)}" for p in ("lazyio", "rosettasciio", "h5py", "zarr", "numcodecs",
                                       "dask", "numpy")
    )
    return (
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} "
        f"cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python "
        f"{platform.python_version()}; {vers}. Medians of {args.repeat} interleaved "
        f"repetitions, page cache warm, threaded scheduler with {os.cpu_count()} threads, "
        f"{' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())} for both sides"
        f"{' (--quick sizes)' if args.quick else ''}; {elapsed:.0f} s; load average "
        f"{args.load_before:.1f} before, {os.getloadavg()[0]:.1f} after (the machine is "
        "shared: a load above the core count slows both sides and erodes the parallel "
        "gains). Ratio: baseline / lazyio (above 1: lazyio is better); lazyio/limit: 1 is "
        "at the machine's limit."
    )


def write_readme(text: str) -> None:
    readme = ROOT / "docs/performance.md"
    content = readme.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"docs/performance.md has no {START} ... {END} markers")
    before, rest = content.split(START, 1)
    after = rest.split(END, 1)[1]
    readme.write_text(f"{before}{START}\n{text}\n{END}{after}")


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    _ensure_env(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--aa", action="store_true",
                        help="A/A run: lazyio against itself, to show the noise band")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (medians)")
    parser.add_argument("--only", default=",".join((*FORMATS, "remote")),
                        help="comma-separated subset of " + ",".join((*FORMATS, "remote")))
    parser.add_argument("--write-readme", action="store_true",
                        help="replace the table between the bench markers in docs/performance.md")
    parser.add_argument("--workdir", default=None, help="where to write the files")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)
    args.load_before = os.getloadavg()[0]

    import dask

    from benchmarks import datasets
    from benchmarks.common import CORES, Context

    dask.config.set(scheduler="threads", num_workers=CORES)
    started = time.perf_counter()
    workdir = args.workdir or tempfile.mkdtemp(prefix="lazyio-bench-")
    os.makedirs(workdir, exist_ok=True)
    sections: list[str] = []
    failed = []
    try:
        ctx = Context(workdir, datasets.make(workdir, args.quick), args.repeat, args.quick)
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        if args.aa:
            from benchmarks import bench_aa

            aa = bench_aa.run(ctx)
            ratios = [r.ratio for r in aa if r.ratio]
            band = (f"A/A ratios (noise) ranged {min(ratios):.2f}–{max(ratios):.2f} in this "
                    "run; ratios inside that band are not differences.")
            sections.append(table("A/A: lazyio against lazyio (noise band)", aa) + "\n\n" + band)
        for name in only:
            try:
                if name == "remote":
                    rows = remote_rows(args.quick)
                else:
                    rows = importlib.import_module(f"benchmarks.bench_{name}").run(ctx)
            except Exception:  # noqa: BLE001  (one failing format must not lose the rest)
                traceback.print_exc()
                failed.append(name)
                continue
            if rows:
                sections.append(table(name, rows))
            print(sections[-1] if rows else f"({name}: no rows)", "\n", flush=True)
        title, lines = machine_limits(ctx)
        sections.append(f"**{title}**\n\n" + "\n".join(lines))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    text = header(args, time.perf_counter() - started) + "\n\n" + "\n\n".join(sections)
    print("\n" + text)
    if args.write_readme:
        write_readme(text)
    if failed:
        raise SystemExit(f"benchmarks failed: {', '.join(failed)}")
    return text


if __name__ == "__main__":
    main()
