"""Smoke test of the benchmark: ``benchmarks/run.py --quick`` runs and prints every row.

No timing is asserted (the machine is shared); only that each measure and the machine's
limits are reported, with the malloc settings the benchmark requires.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "hspy": ["gzip write (s)", "gzip write peak RSS (MiB)", "gzip open (ms)",
             "gzip full sum (s)", "gzip one signal (ms)", "gzip tasks (tasks)",
             "shuffled (rsciio None) sum (s)", "lazyio None (unshuffled) sum (s)",
             "1,024-chunk sum (s)", "1,024-chunk one spectrum (ms)", "1,024-chunk tasks"],
    "npy": ["full sum (s)", "open (ms)", "one signal (ms)", "tasks (tasks)",
            "1e6-chunk memmap graph (s)", "streamed write (s)",
            "streamed write peak RSS (MiB)"],
    "zspy": ["write (s)", "write peak RSS (MiB)", "open (ms)", "full sum (s)",
             "one signal (ms)"],
    "usid": ["open (ms)", "one spectrum (ms)"],
    "A/A: lazyio against lazyio (noise band)": ["hspy gzip full sum (s)", "npy full sum (s)"],
}


def test_quick_benchmark_prints_every_row(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--aa",
         "--repeat", "1", "--only", "hspy,npy,zspy,usid", "--workdir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "re-executing with MALLOC_MMAP_THRESHOLD_=33554432" in out
    report = out.rsplit("Run ", 1)[1]  # the final report after the per-format progress
    sections = {s.split("**", 1)[0]: s for s in report.split("\n**")[1:]}
    for title, measures in EXPECTED.items():
        assert title in sections, f"no {title} table in:\n{report}"
        rows = [line for line in sections[title].splitlines() if line.startswith("| ")]
        for measure in measures:
            assert any(line.startswith(f"| {measure}") for line in rows), (title, measure)
        for line in rows[1:]:
            assert line.count("|") == 9, line
    assert "Machine limits" in report
    assert "gzip-4+shuffle" in report
