"""A longer mutation-fuzzing campaign of lazyio's four readers.

    .venv/bin/python benchmarks/fuzz.py --minutes 5 [--workers 2] [--seed 0]

Mutates small valid files (byte flips, truncation, splicing, blanking; 1-3 mutations per
input, the same operators as tests/test_fuzz.py), loads each one lazily and computes it,
and counts the outcomes per format: ``equal`` (read back unchanged), ``differs`` (read
without error but different: only where the format keeps no checksum), ``lazyio-error``
(refused with a lazyio exception: the expected outcome for damage), ``other-error`` (any
other exception: a bug), ``crash`` (the worker process died: the HDF5 C library, most
likely; the signal is shown) and ``hang`` (over SLOW_SECONDS on one input). Each batch of
inputs runs in a forked child process, so a crash or hang is attributed to its input and
the campaign goes on. Each input's peak RSS is measured (``peak MB``: the largest;
``>1GB``: how many inputs peaked above 1 GiB).

Before the mutations, the hostile corpus (tests/malformed.py ``hostile_inputs``: FIFOs and
symlinks as the input path, zero-length axes, decompression bombs, huge declared sizes,
hard-link DAGs, and tests/hostile_zarr.py's inputs when present) is read once, each input
in a forked child, and listed with its outcome, time and peak RSS. Prints the tables and
the first failing inputs; exits 1 if any input failed (an other-error, a crash, a hang, or
a peak above 1 GiB for an input under 1 MB).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

BATCH = 25
SLOW_SECONDS = 20  # no input of these tiny files should take this long: a hang
OPS = ("flip", "flip", "truncate", "splice", "zero")
PEAK_MB = 1024  # no input of these tiny files may peak above this RSS (MiB)


def _batch(kind: str, original: bytes, seed: int, folder: str) -> None:
    """Child process: read BATCH mutated inputs, appending each outcome to a file of its
    own (no lock is shared with other children: a child killed while holding one would
    block them all)."""
    from hostile_hdf5 import peak_rss_mb, peak_rss_reset
    from malformed import DATA, SUFFIX, classify, mutate_bytes

    import lazyio

    rng = random.Random(seed)
    marker = Path(folder, f"current-{seed}")
    log = Path(folder, f"results-{seed}.jsonl").open("a")  # noqa: SIM115 - flushed per line
    for i in range(BATCH):
        mutations = [(rng.choice(OPS), rng.getrandbits(31), rng.getrandbits(31),
                      rng.getrandbits(31)) for _ in range(rng.randint(1, 3))]
        raw = original
        for m in mutations:
            raw = mutate_bytes(raw, *m) or raw[:1]
        path = Path(folder) / f"{kind}-{seed}-{i}{SUFFIX[kind]}"
        path.write_bytes(raw)
        # the input to blame if this process dies
        marker.write_text(repr(mutations))
        # HDF5 can loop forever in C, where no Python signal handler runs: faulthandler's
        # watchdog thread ends the process with status 1, which the parent counts as a hang.
        faulthandler.dump_traceback_later(SLOW_SECONDS, exit=True, file=sys.stderr)
        peak_rss_reset()
        try:
            outcome, detail = classify(path, DATA)
        finally:
            faulthandler.cancel_dump_traceback_later()
            lazyio.close_all()
            path.unlink()
        peak = peak_rss_mb()
        log.write(json.dumps([kind, outcome, repr(mutations), detail, peak]) + "\n")
        log.flush()
    log.close()
    marker.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-hostile", action="store_true",
                        help="skip the hostile corpus, mutate only")
    args = parser.parse_args(argv)

    from malformed import FUZZ_KINDS, OUTCOMES, SUFFIX, write_valid

    folder = tempfile.mkdtemp(prefix="lazyio-fuzz-")
    hostile_failed = 0 if args.no_hostile else hostile_campaign(Path(folder) / "hostile")
    originals = {k: write_valid(k, Path(folder) / f"orig-{k}{SUFFIX[k]}").read_bytes()
                 for k in FUZZ_KINDS}
    columns = (*OUTCOMES, "crash", "hang")
    totals = {k: dict.fromkeys(columns, 0) for k in FUZZ_KINDS}
    peaks = {k: [0.0, 0] for k in FUZZ_KINDS}  # the largest peak RSS (MiB), count > 1 GiB
    failures: list[tuple[str, str, str]] = []
    ctx = multiprocessing.get_context("fork")  # children start in ms, lazyio imported
    deadline = time.monotonic() + args.minutes * 60
    start = time.monotonic()
    seed = args.seed * 1_000_000
    running: dict[Any, tuple[str, int]] = {}

    def collect(batch_seed: int) -> None:
        log = Path(folder, f"results-{batch_seed}.jsonl")
        if not log.exists():
            return
        for line in log.read_text().splitlines():
            try:
                kind, outcome, mutations, detail, peak = json.loads(line)
            except ValueError:  # a line cut short by the child's death
                continue
            totals[kind][outcome] += 1
            peaks[kind][0] = max(peaks[kind][0], peak)
            if peak > PEAK_MB:
                peaks[kind][1] += 1
                failures.append((kind, mutations, f"peak RSS {peak:.0f} MiB"))
            if outcome == "other-error":
                failures.append((kind, mutations, detail))
        log.unlink()

    while running or time.monotonic() < deadline:
        while len(running) < args.workers and time.monotonic() < deadline:
            kind = FUZZ_KINDS[seed % len(FUZZ_KINDS)]
            proc = ctx.Process(target=_batch, args=(kind, originals[kind], seed, folder))
            proc.start()
            running[proc] = (kind, seed)
            seed += 1
        time.sleep(0.05)
        for proc in [p for p in running if not p.is_alive()]:
            kind, batch_seed = running.pop(proc)
            proc.join()
            collect(batch_seed)
            marker = Path(folder, f"current-{batch_seed}")
            if proc.exitcode == 0 or not marker.exists():
                continue
            mutations = marker.read_text()
            if proc.exitcode < 0:
                totals[kind]["crash"] += 1
                failures.append((kind, mutations, f"killed by {signal.Signals(-proc.exitcode).name}"))
            else:
                totals[kind]["hang"] += 1
                failures.append((kind, mutations, f"hang (over {SLOW_SECONDS} s)"))
    elapsed = time.monotonic() - start

    header = (f"{'format':<10}{'inputs':>8}" + "".join(f"{o:>14}" for o in columns)
              + f"{'peak MB':>9}{'>1GB':>6}")
    print(f"lazyio fuzz campaign: {elapsed / 60:.1f} min, {args.workers} workers, "
          f"seed {args.seed}")
    print(header)
    for kind, row in totals.items():
        n = sum(row.values())
        print(f"{kind:<10}{n:>8}" + "".join(f"{row[o]:>14}" for o in columns)
              + f"{peaks[kind][0]:>9.0f}{peaks[kind][1]:>6}")
    print(f"{'total':<10}{sum(sum(r.values()) for r in totals.values()):>8}")
    for kind, mutations, detail in failures[:12]:
        print(f"FAIL {kind} {mutations}: {detail}")
    return 1 if failures or hostile_failed else 0


def hostile_campaign(folder: Path) -> int:
    """Read every hostile input once, each in a forked child; print one row per input and
    return how many failed."""
    from malformed import HOSTILE_PEAK_MB, hostile_inputs, input_size, run_isolated

    inputs = hostile_inputs(folder)
    print(f"hostile corpus: {len(inputs)} inputs, {SLOW_SECONDS} s limit each")
    print(f"{'input':<34}{'bytes':>9}{'outcome':>14}{'error':>22}{'seconds':>9}{'peak MB':>9}")
    failed = 0
    for name, path in inputs:
        size = input_size(path)
        row = run_isolated(path, SLOW_SECONDS)
        bad = (row["outcome"] in ("other-error", "crash", "hang")
               or (size < 1_000_000 and float(row["peak_mb"]) > HOSTILE_PEAK_MB))
        failed += bad
        print(f"{name:<34}{size:>9}{row['outcome']:>14}{row['error']:>22}"
              f"{row['seconds']:>9.2f}{row['peak_mb']:>9.0f}{'  FAIL' if bad else ''}",
              flush=True)
        if bad:
            print(f"    {row['message'][:200]}")
    print(f"hostile corpus: {failed} failed of {len(inputs)}\n", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
