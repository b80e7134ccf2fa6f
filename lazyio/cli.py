"""The ``lazyio`` command line (``python -m lazyio``): info, convert, demo.

Every failure is reported on one line (``lazyio: error: ...``) on stderr, without a
traceback: exit code 2 for a bad command line, 1 for a failure (``LAZYIO_DEBUG=1`` shows
the traceback of an unexpected one). Without a command, the usage is printed and nothing
runs. Messages name the command's flags (``--overwrite``, ``--format``), not the Python
keywords the library's messages name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lazyio.errors import LazyioError

if TYPE_CHECKING:
    from lazyio.backends.chunking import Chunks

# The library's wording of an option -> the command line's (re.sub patterns)
_FLAG_WORDS = (
    (re.compile(r"\bpass overwrite=True\b"), "pass --overwrite"),
    (re.compile(r"\boverwrite=True\b"), "--overwrite"),
    (re.compile(r"\bpass format=\s*"), "pass --format, "),
    (re.compile(r"(?<![\w-])format=(?=\s|$)"), "--format"),
    (re.compile(r"\bverify=True\b"), "--verify"),
    (re.compile(r"\bresume=True\b"), "--resume"),
    (re.compile(r"\bstorage_options\b"), "--storage-option"),
)

# `info` reads files without dask (lazyio.backends.plan): no dask graph is built and
# dask.array, which would import xarray, pandas, sparse when installed, is never imported.


# 254 MB of uint16: "a few hundred MB", written and read in every format within a minute
DEMO_SHAPE = (88, 88, 128, 128)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so :func:`main` returns the code."""

    def error(self, message: str) -> Any:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


class _UsageError(Exception):
    pass


def _shape(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(p) for p in text.lower().replace("x", ",").split(",") if p)
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError("shape needs four positive sizes, e.g. 64,64,128,128")
    return parts[0], parts[1], parts[2], parts[3]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _storage_options(pairs: list[str] | None) -> dict[str, Any] | None:
    """``KEY=VALUE`` pairs; values parsed as JSON where they can be, dotted keys nest."""
    if not pairs:
        return None
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _UsageError(f"--storage-option needs KEY=VALUE, got {pair!r}")
        *parents, leaf = key.split(".")
        node = options
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = _value(value)
    return options


def _chunks(text: str) -> Chunks:
    lowered = text.strip().lower()
    if lowered in ("auto", "none", "default"):
        return None
    if lowered in ("true", "h5py"):
        return True
    try:
        return tuple(int(p) for p in lowered.replace("x", ",").split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"chunks must be sizes like 16,16,-1,-1, 'auto' or 'true', not {text!r}"
        ) from None


def _compressor(text: str) -> Any:
    """A numcodecs codec from ``zstd:3``, ``blosc:lz4:5``, ``gzip:6`` or a JSON config."""
    import numcodecs

    try:
        if text.lstrip().startswith("{"):
            return numcodecs.get_codec(json.loads(text))
        name, *args = text.split(":")
        name = name.strip().lower()
        if name == "blosc":
            cname = args[0] if args else "zstd"
            clevel = int(args[1]) if len(args) > 1 else 5
            return numcodecs.Blosc(cname=cname, clevel=clevel, shuffle=numcodecs.Blosc.SHUFFLE)
        config: dict[str, Any] = {"id": name}
        if args:
            config["level"] = int(args[0])
        return numcodecs.get_codec(config)
    except (ValueError, KeyError, TypeError) as err:
        raise argparse.ArgumentTypeError(
            f"unknown compressor {text!r} ({err}); e.g. zstd:3, blosc:lz4:5, gzip:6"
        ) from None


def _compression(text: str) -> tuple[Any, Any]:
    """``gzip``, ``gzip:9``, ``lzf``, ``szip`` or ``none`` -> (compression, options)."""
    name, _, level = text.partition(":")
    name = name.strip().lower()
    if name in ("none", "off", ""):
        return None, None
    if name not in ("gzip", "lzf", "szip"):
        raise argparse.ArgumentTypeError(
            f"compression must be gzip[:level], lzf, szip or none, not {text!r}"
        )
    try:
        return name, int(level) if level else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad compression level in {text!r}") from None


@contextlib.contextmanager
def _scheduler(name: str | None) -> Iterator[None]:
    """Run the block on a local dask scheduler by name, or on a cluster by address."""
    if not name:
        yield
        return
    if "://" in name:
        from distributed import Client

        with Client(name, timeout="20s"):
            yield
        return
    if name not in ("threads", "processes", "synchronous", "sync", "single-threaded"):
        raise _UsageError(f"--scheduler must be threads, processes, synchronous or a "
                          f"scheduler address such as tcp://127.0.0.1:8786, not {name!r}")
    import dask

    with dask.config.set(scheduler=name):
        yield


@contextlib.contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                print(f"lazyio: warning: {w.message}", file=sys.stderr)


def _info(args: argparse.Namespace) -> int:
    from lazyio.info import info

    storage_options = _storage_options(args.storage_option)
    documents: list[dict[str, Any]] = []
    failed = 0
    for n, source in enumerate(args.sources):
        try:
            with _warnings_to_stderr():
                result = info(source, format=args.format, storage_options=storage_options)
        except (KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception as err:
            if len(args.sources) == 1:
                raise
            # one file's failure is that file's line; the others are still described
            print(f"lazyio: error: {_one_line(err)}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            documents.append(result.to_dict(metadata=args.metadata))
            continue
        if n:
            print()
        print(result.to_text(metadata=args.metadata))
    if args.json and (documents or not failed):
        # one file: its object, as before; several: a list, in the order given
        doc: Any = documents[0] if len(args.sources) == 1 else documents
        print(json.dumps(doc, indent=2))
    return 1 if failed else 0


def _convert(args: argparse.Namespace) -> int:
    from lazyio.convert import convert

    kwds: dict[str, Any] = {}
    if args.compression is not None:
        compression, level = args.compression
        kwds["compression"] = compression
        if level is not None:
            kwds["compression_opts"] = level
    if args.compressor is not None:
        kwds["compressor"] = args.compressor
    from lazyio.backends.progress import record_phases

    start = time.perf_counter()
    with _scheduler(args.scheduler), _warnings_to_stderr(), record_phases() as recorded:
        written = convert(
            args.src, args.dst, format=args.format, chunks=args.chunks,
            overwrite=args.overwrite, verify=args.verify, resume=args.resume,
            storage_options=_storage_options(args.storage_option),
            target_storage_options=_storage_options(args.target_storage_option),
            show_progressbar=not args.no_progress, **kwds,
        )
    elapsed = time.perf_counter() - start
    from lazyio.info import _bytes, info

    for url in written:
        # a summary from metadata only; the data were just streamed
        summary = info(url, storage_options=_storage_options(
            args.target_storage_option or args.storage_option))
        name = url.rstrip("/").rsplit("/", 1)[-1]
        # the figures the bars showed (same bytes, same clock), then the command's time
        parts = [f"{p.label.split(' ', 1)[0]} {_bytes(p.nbytes)} in {p.seconds:.2f} s"
                 + (f" ({p.rate / 1e6:.1f} MB/s)" if p.rate else "")
                 for p in recorded if p.label.endswith(f" {name}")]
        if not parts:
            parts = [_bytes(sum(s.nbytes for s in summary.signals))]
        verified = ", verified" if args.verify else ""
        print(f"{url}: {summary.format}, {'; '.join(parts)}; {elapsed:.2f} s in all{verified}")
    return 0


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
    print(f"virtual bright-field and dark-field images, mean pattern: {args.outdir}/*.png")
    return 0 if all(r["correct"] for r in rows) else 1


def _accepting(option: str, full_help: bool) -> str:
    """The registered formats whose writer takes ``option``, for help texts (importing
    every plugin to ask, so only when the help is printed)."""
    if not full_help:
        return "..."
    from lazyio.formats import available_plugins

    return ", ".join(n for n, p in available_plugins().items() if option in p.write_options)


def _parser(full_help: bool = True) -> argparse.ArgumentParser:
    from lazyio import __version__
    from lazyio.formats import format_names

    # names only, and only for the help: listing them scans the installed entry points
    formats = format_names() if full_help else []
    listed = ", ".join(formats) or "HyperSpy .hspy/.zspy, .npy, h5USID and plugin-format"
    parser = _Parser(prog="lazyio", description=f"Lazy, streamed access to {listed} files.",
                     epilog="'lazyio COMMAND --help' describes a command's options.")
    parser.add_argument("--version", action="version", version=f"lazyio {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    info = sub.add_parser("info", help="describe files (format, signals, chunks, axes, "
                          "metadata), reading metadata only")
    info.add_argument("sources", nargs="+", metavar="SOURCE",
                      help="paths or fsspec URLs (s3://, https://, memory://...)")
    info.add_argument("--format", metavar="FORMAT", type=str.lower,
                      help=f"skip format detection ({', '.join(formats) or '...'})")
    info.add_argument("--metadata", action="store_true",
                      help="also print each signal's metadata and original_metadata trees")
    info.add_argument("--json", action="store_true",
                      help="machine-readable output (an object; a list for several files; "
                           "the metadata trees with --metadata)")
    info.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                      help="fsspec option (repeatable; JSON values; dotted keys nest)")
    info.set_defaults(func=_info)

    conv = sub.add_parser("convert", help="convert between formats, streamed")
    conv.add_argument("src", help="the file to convert (path or URL)")
    conv.add_argument("dst", help="the target (path or URL); format from its extension")
    conv.add_argument("--format", metavar="FORMAT", type=str.lower,
                      help=f"target format ({', '.join(formats) or '...'})")
    conv.add_argument("--chunks", type=_chunks, help="storage chunks, e.g. 16,16,-1,-1")
    group = conv.add_mutually_exclusive_group()
    group.add_argument("--compression", type=_compression,
                       help=f"HDF5 targets ({_accepting('compression', full_help)}): gzip[:level], "
                            "lzf, szip or none")
    group.add_argument("--compressor", type=_compressor,
                       help=f"Zarr targets ({_accepting('compressor', full_help)}): a numcodecs codec, "
                            "e.g. zstd:3, blosc:lz4:5")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing target")
    conv.add_argument("--scheduler", metavar="NAME_OR_ADDRESS",
                      help="threads, processes, synchronous, or tcp://host:port of a "
                           "distributed scheduler")
    conv.add_argument("--verify", action="store_true",
                      help="re-read the result and compare chunk checksums")
    conv.add_argument("--resume", action="store_true",
                      help="continue a killed conversion of the same source to the same "
                           "target, keeping the blocks it wrote")
    conv.add_argument("--no-progress", action="store_true", help="no progress bar")
    conv.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                      help="fsspec option for the source (and a target of the same kind)")
    conv.add_argument("--target-storage-option", action="append", metavar="KEY=VALUE",
                      help="fsspec option for the target")
    conv.set_defaults(func=_convert)

    demo = sub.add_parser("demo", help="write and read a generated dataset in every format")
    demo.add_argument("--outdir", default="demo-output")
    demo.add_argument("--shape", type=_shape, default=DEMO_SHAPE,
                      help="scan y, scan x, detector y, detector x (default 88,88,128,128)")
    demo.add_argument("--progress", action="store_true", help="show progress bars")
    demo.set_defaults(func=_demo)
    return parser


def _check_format(name: str | None) -> None:
    """Refuse an unknown ``--format`` as a usage error (argparse's wording)."""
    if name is None:
        return
    from lazyio.formats import BUILTINS, format_names

    if name.lstrip(".") not in BUILTINS:
        known = format_names()
        if name.lstrip(".") not in known:
            raise _UsageError(f"argument --format: invalid choice: {name!r} "
                              f"(choose from {', '.join(known)})")


def _one_line(err: BaseException) -> str:
    """``err`` as one line that names the command line's flags."""
    message = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, LazyioError | OSError | ValueError | NotImplementedError):
        # a KeyError's message is a bare key, an ImportError's a module name, and anything
        # else is unexpected: the type says what happened
        message = f"{type(err).__name__}: {message}"
    for pattern, words in _FLAG_WORDS:
        message = pattern.sub(words, message)
    from lazyio.errors import TargetExistsError

    if isinstance(err, TargetExistsError) and "--overwrite" not in message:
        message += "; pass --overwrite to replace it"
    return message


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lazyio`` command; returns the exit code.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 on failure, 2 for a bad command line (and for no command: the usage
        is printed, nothing runs).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _parser(full_help=any(a in ("-h", "--help") for a in argv))
        if not argv:
            parser.print_help(sys.stderr)
            return 2
        args = parser.parse_args(argv)
        if args.command is None:
            raise _UsageError("a command is needed")
        _check_format(args.format if args.command != "demo" else None)
        return int(args.func(args))
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    except _UsageError as err:
        print(f"lazyio: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lazyio: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (``lazyio info x --json | head``): not a failure to report;
        # point stdout at devnull so the interpreter's final flush stays quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as err:
        if os.environ.get("LAZYIO_DEBUG"):
            raise
        print(f"lazyio: error: {_one_line(err)}", file=sys.stderr)
        return 1
