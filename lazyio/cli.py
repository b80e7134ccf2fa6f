"""The ``lazyio`` command line (``python -m lazyio``)."""

from __future__ import annotations

import argparse
import sys

from lazyio.errors import LazyioError


def _shape(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(p) for p in text.lower().replace("x", ",").split(",") if p)
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError("shape needs four positive sizes, e.g. 64,64,128,128")
    return parts  # type: ignore[return-value]


def _demo(args: argparse.Namespace) -> int:
    from lazyio.demo import run_demo

    shape = args.shape
    mb = 2 * shape[0] * shape[1] * shape[2] * shape[3] / 1e6
    print(f"lazyio demo: a {shape} uint16 dataset ({mb:.0f} MB) in {args.outdir}/")
    rows = run_demo(args.outdir, shape, show_progressbar=args.progress)
    cols = ["format", "write MB/s", "open ms", "read MB/s", "on disk MB", "tasks", "correct"]
    print(" | ".join(f"{c:>10}" for c in cols))
    for row in rows:
        cells = [f"{row[c]:10.1f}" if isinstance(row[c], float) else f"{row[c]!s:>10}"
                 for c in cols]
        print(" | ".join(cells))
    print(f"virtual bright-field images and mean patterns: {args.outdir}/*.png")
    return 0 if all(r["correct"] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lazyio`` command."""
    parser = argparse.ArgumentParser(prog="lazyio", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="write and read a generated dataset in every format")
    demo.add_argument("--outdir", default="demo-output")
    demo.add_argument("--shape", type=_shape, default=(64, 64, 128, 128))
    demo.add_argument("--progress", action="store_true", help="show progress bars")
    demo.set_defaults(func=_demo)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["demo", *argv]  # the demo is the default job
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LazyioError as err:
        print(f"lazyio: error: {err}", file=sys.stderr)
        return 2
