"""A corpus of malformed files, built from small valid ones, for every format lazyio reads.

``CASES`` lists :class:`Case` objects; ``case.build(folder)`` writes the file and returns
its path. Every case must be refused with a :class:`~lazyio.errors.LazyioError` naming
the file (tests/test_errors.py), within a bounded time, without touching anything else.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import formats_table
import h5py
import numpy as np

import lazyio
from lazyio.errors import CorruptChunkError, FormatError, LazyioError, UnsafeFileError

DATA = np.arange(4 * 5 * 6, dtype="f4").reshape(4, 5, 6)
AXES = [{"size": 4, "navigate": True}, {"size": 5, "navigate": True},
        {"size": 6, "navigate": False}]
EXPERIMENT = "Experiments/__unnamed__"
USID_MAIN = "Measurement_000/Channel_000/Raw_Data"
SENTINEL = "EVALUATED"  # a file a successful code injection would create
KINDS = tuple(formats_table.KINDS)
FILE_KINDS = tuple(formats_table.FILE_KINDS)  # single files: byte-level mutations
SUFFIX = formats_table.SUFFIX


def write_valid(kind: str, path: Path, data: np.ndarray = DATA) -> Path:
    """A small valid file of ``kind`` with two compressed chunks (npy: raw payload)."""
    signal = {"data": data, "axes": [dict(a) for a in AXES[: data.ndim]]}
    extra: dict[str, Any] = {}
    if kind in formats_table.KIND_KWARGS:
        extra = dict(formats_table.KIND_KWARGS[kind])
    elif kind in ("hspy", "zspy"):
        extra = {"chunks": (2, 5, 6)}
    elif kind == "usid":
        extra = {"compression": "gzip", "chunks": (10, 6)}
    lazyio.save(path, signal, overwrite=True, show_progressbar=False, **extra)
    return path


@dataclass(frozen=True)
class Case:
    """One malformed file: ``kind`` is the valid file it starts from."""

    name: str
    kind: str
    mutate: Callable[[Path], Path | None]
    error: type[LazyioError] = LazyioError
    words: tuple[str, ...] = ()
    load_kwds: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.name}"

    def build(self, folder: Path) -> Path:
        path = write_valid(self.kind, folder / f"bad{SUFFIX[self.kind]}")
        return self.mutate(path) or path


# ------------------------------------------------------------------------- byte mutations


def truncate_at(fraction: float) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        raw = path.read_bytes()
        size = int(len(raw) * fraction) if fraction > 0 else len(raw) + int(fraction)
        path.write_bytes(raw[:size])

    return mutate


def wrong_magic(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[:8] = b"NOTMAGIC"
    path.write_bytes(bytes(raw))


def zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def corrupt_h5_chunk(dataset: str) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        with h5py.File(path, "r") as f:
            info = f[dataset].id.get_chunk_info(0)
        with open(path, "r+b") as fh:
            fh.seek(info.byte_offset + info.size // 4)
            fh.write(b"\x00\xff" * 8)

    return mutate


def corrupt_zarr_chunk(path: Path) -> None:
    chunk = f"{EXPERIMENT}/data/0/0/0"
    if path.is_dir():
        target = path / chunk
        raw = bytearray(target.read_bytes())
        raw[16:32] = b"\x00\xff" * 8
        target.write_bytes(bytes(raw))
        return
    rewrite_zip(path, lambda name, raw: (raw[:16] + b"\x00\xff" * 8 + raw[32:])
                if name == chunk else raw)


def rewrite_zip(path: Path, edit: Callable[[str, bytes], bytes | None],
                extra: dict[str, bytes] | None = None) -> None:
    """Rewrite a zip, passing every member through ``edit`` (None drops it)."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w") as zout:
        for info in zin.infolist():
            raw = edit(info.filename, zin.read(info))
            if raw is not None:
                zout.writestr(info, raw)
        for name, raw in (extra or {}).items():
            zout.writestr(name, raw)
    tmp.replace(path)


# ------------------------------------------------------------------------- npy headers


def npy_with_header(header: str, payload: bytes = b"\x00" * 64) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        text = header + " " * (-(len(header) + 11) % 64) + "\n"
        path.write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little")
                         + text.encode("latin1") + payload)

    return mutate


# ------------------------------------------------------------------------- HDF5 structure


def h5_edit(edit: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        with h5py.File(path, "a") as f:
            edit(f)

    return mutate


def outside_file(path: Path) -> Path:
    """An HDF5 file beside the target that external references point at."""
    other = path.parent / "outside.h5"
    if not other.exists():
        with h5py.File(other, "w") as f:
            f["d"] = DATA * 2
            f["flat"] = DATA.reshape(20, 6) * 2
    return other


def external_link(dataset: str) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        other = outside_file(path)
        with h5py.File(path, "a") as f:
            del f[dataset]
            f[dataset] = h5py.ExternalLink(str(other), "/d")

    return mutate


def virtual_dataset(dataset: str, source: str = "/d") -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        other = outside_file(path)
        with h5py.File(path, "a") as f:
            attrs = dict(f[dataset].attrs)
            shape = f[dataset].shape
            del f[dataset]
            layout = h5py.VirtualLayout(shape, "f4")
            layout[...] = h5py.VirtualSource(str(other), source, shape=shape)
            f.create_virtual_dataset(dataset, layout)
            f[dataset].attrs.update(attrs)

    return mutate


def external_storage(path: Path) -> None:
    raw = path.parent / "outside.raw"
    raw.write_bytes(DATA.tobytes())
    with h5py.File(path, "a") as f:
        del f[f"{EXPERIMENT}/data"]
        f.create_dataset(f"{EXPERIMENT}/data", shape=DATA.shape, dtype="f4",
                         external=[(str(raw), 0, DATA.nbytes)])


def deep_h5_metadata(levels: int) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        with h5py.File(path, "a") as f:
            group = f[f"{EXPERIMENT}/metadata"]
            for _ in range(levels):
                group = group.create_group("a")

    return mutate


def reference_h5_data(path: Path) -> None:
    with h5py.File(path, "a") as f:
        del f[f"{EXPERIMENT}/data"]
        f.create_dataset(f"{EXPERIMENT}/data", shape=DATA.shape, dtype=h5py.ref_dtype)


def hspy_raw_truncated(path: Path) -> None:
    """Uncompressed data (read by offset, not decoded) cut short by the file's end."""
    lazyio.save(path, {"data": DATA, "axes": AXES}, overwrite=True, show_progressbar=False,
                compression=None, chunks=(2, 5, 6))
    with h5py.File(path, "r") as f:
        dset = f[f"{EXPERIMENT}/data"]
        last = max(dset.id.get_chunk_info(i).byte_offset
                   for i in range(dset.id.get_num_chunks()))
    with open(path, "r+b") as fh:
        fh.truncate(last + 8)


# ------------------------------------------------------------------------- Zarr structure


def deep_zarr_metadata(levels: int) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        key = f"{EXPERIMENT}/metadata"
        members = {}
        for _ in range(levels):
            key += "/a"
            members[f"{key}/.zgroup"] = json.dumps({"zarr_format": 2}).encode()
        if path.is_dir():
            for name, raw in members.items():
                (path / name).parent.mkdir(parents=True, exist_ok=True)
                (path / name).write_bytes(raw)
        else:
            rewrite_zip(path, lambda _n, raw: raw, members)

    return mutate


def zarray_edit(**changes: Any) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        meta_path = path / EXPERIMENT / "data" / ".zarray"
        meta = json.loads(meta_path.read_text())
        meta.update(changes)
        meta_path.write_text(json.dumps(meta))

    return mutate


def remove(relative: str) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        target = path / relative
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return mutate


def escaping_member(name: str) -> Callable[[Path], None]:
    return lambda path: rewrite_zip(path, lambda _n, raw: raw, {name: b"{}"})


# ------------------------------------------------------------------------- the corpus


def _generic(kind: str) -> list[Case]:
    cases = [Case(f"truncated-{int(f * 100)}%", kind, truncate_at(f)) for f in (0.1, 0.5, 0.9)]
    cases += [
        Case("truncated-last-byte", kind, truncate_at(-1)),
        Case("wrong-magic", kind, wrong_magic, load_kwds={"format": kind[:4]}),
        Case("zero-bytes", kind, zero_bytes, load_kwds={"format": kind[:4]}),
    ]
    return cases


def _cases() -> list[Case]:
    cases: list[Case] = []
    for kind in FILE_KINDS:
        cases += _generic(kind)
    sentinel = f"__import__('os').system('touch {SENTINEL}')"
    cases += [
        # ---- npy
        Case("huge-shape", "npy", npy_with_header(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"),
            FormatError),
        Case("negative-shape", "npy", npy_with_header(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (-8,), }"), FormatError),
        Case("object-dtype", "npy", npy_with_header(
            "{'descr': '|O', 'fortran_order': False, 'shape': (8,), }"), LazyioError,
            ("object",)),
        Case("code-in-header", "npy", npy_with_header(
            f"{{'descr': {sentinel}, 'fortran_order': False, 'shape': (8,), }}"),
            FormatError),
        Case("missing-shape", "npy", npy_with_header(
            "{'descr': '<f8', 'fortran_order': False, }"), FormatError),
        Case("header-not-a-dict", "npy", npy_with_header("[1, 2, 3]"), FormatError),
        # ---- hspy
        Case("corrupt-chunk", "hspy", corrupt_h5_chunk(f"{EXPERIMENT}/data"),
             CorruptChunkError, ("/Experiments/__unnamed__/data", "(0, 0, 0)")),
        Case("raw-data-truncated", "hspy", hspy_raw_truncated, LazyioError, ("truncated",)),
        Case("missing-axis", "hspy", h5_edit(lambda f: f.__delitem__(f"{EXPERIMENT}/axis-1")),
             FormatError, ("axis",)),
        Case("missing-data", "hspy", h5_edit(lambda f: f.__delitem__(f"{EXPERIMENT}/data")),
             FormatError),
        Case("deep-metadata-10000", "hspy", deep_h5_metadata(10_000), FormatError,
             ("nested",)),
        Case("reference-data", "hspy", reference_h5_data, FormatError, ("references",)),
        Case("external-link", "hspy", external_link(f"{EXPERIMENT}/data"), UnsafeFileError,
             ("external link", "outside.h5", "allow_external")),
        Case("virtual-dataset", "hspy", virtual_dataset(f"{EXPERIMENT}/data"),
             UnsafeFileError, ("virtual dataset", "outside.h5")),
        Case("external-storage", "hspy", external_storage, UnsafeFileError,
             ("outside.raw",)),
        # ---- usid
        Case("corrupt-chunk", "usid", corrupt_h5_chunk(USID_MAIN), CorruptChunkError,
             (USID_MAIN,)),
        Case("missing-position-indices", "usid", h5_edit(
            lambda f: f[USID_MAIN].attrs.__delitem__("Position_Indices")), FormatError),
        Case("wrong-position-indices", "usid", h5_edit(
            lambda f: f[USID_MAIN].attrs.__setitem__(
                "Position_Indices",
                f["Measurement_000/Channel_000/Spectroscopic_Indices"].ref)), FormatError),
        Case("external-link", "usid", external_link(USID_MAIN), UnsafeFileError,
             ("external link",)),
        Case("virtual-dataset", "usid", virtual_dataset(USID_MAIN, "/flat"),
             UnsafeFileError, ("virtual dataset",)),
        # ---- zspy directory
        Case("corrupt-chunk", "zspy", corrupt_zarr_chunk, CorruptChunkError,
             ("Experiments/__unnamed__/data",)),
        Case("missing-zarray", "zspy", remove(f"{EXPERIMENT}/data/.zarray"), FormatError),
        Case("missing-zgroup", "zspy", remove(".zgroup"), FormatError),
        Case("missing-axis", "zspy", remove(f"{EXPERIMENT}/axis-1"), FormatError),
        Case("huge-shape", "zspy", zarray_edit(shape=[10**12, 5, 6]), FormatError),
        Case("object-dtype", "zspy", zarray_edit(dtype="|O"), LazyioError),
        Case("deep-metadata-300", "zspy", deep_zarr_metadata(300), FormatError,
             ("nested",)),
        # ---- zspy zip
        Case("corrupt-chunk", "zspy-zip", corrupt_zarr_chunk, CorruptChunkError,
             ("Experiments/__unnamed__/data",)),
        Case("member-escapes-dotdot", "zspy-zip", escaping_member("../x"), UnsafeFileError,
             ("../x",)),
        Case("member-escapes-nested", "zspy-zip", escaping_member(
            f"{EXPERIMENT}/../../../x/.zattrs"), UnsafeFileError),
        Case("member-absolute", "zspy-zip", escaping_member("/tmp/x"), UnsafeFileError),
        Case("deep-metadata-10000", "zspy-zip", deep_zarr_metadata(10_000), UnsafeFileError,
             ("nested",)),
    ]
    return cases


CASES = _cases()


def outside_snapshot(folder: Path, exclude: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file in ``folder`` except ``exclude`` (and below it)."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            full = Path(root, name)
            if full == exclude or exclude in full.parents:
                continue
            st = full.stat()
            out[str(full)] = (st.st_size, st.st_mtime_ns)
    return out


# ------------------------------------------------------------------------- fuzzing

FUZZ_KINDS = FILE_KINDS
# Outcomes of one mutated input. "differs" is a read without error whose data differ from
# the original: possible only where the format keeps no checksum (raw .npy payloads and
# headers, uncompressed or blosc chunks, HDF5's unchecksummed v0 metadata).
OUTCOMES = ("equal", "differs", "lazyio-error", "other-error")


def mutate_bytes(raw: bytes, op: str, a: int, b: int, c: int) -> bytes:
    """One mutation of ``raw``: ``flip`` xors byte ``a % n`` with ``b % 255 + 1``,
    ``truncate`` keeps ``a % n`` bytes, ``splice`` copies ``c % 64 + 1`` bytes from
    ``a % n`` to ``b % n``, ``zero`` blanks ``c % 64 + 1`` bytes at ``a % n``."""
    n = len(raw)
    out = bytearray(raw)
    if op == "flip":
        out[a % n] ^= b % 255 + 1
    elif op == "truncate":
        del out[a % n:]
    elif op == "splice":
        src, dst, length = a % n, b % n, c % 64 + 1
        piece = raw[src:src + length]
        out[dst:dst + len(piece)] = piece
        del out[n:]
    elif op == "zero":
        start, length = a % n, c % 64 + 1
        out[start:start + length] = bytes(min(length, n - start))
    else:
        raise ValueError(op)
    return bytes(out)


def read_all(path: Path) -> list[np.ndarray]:
    """Load lazily (detecting the format) and compute every signal's data."""
    import warnings

    import dask

    from lazyio.errors import LazyioWarning

    with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
        # best-effort reads warn (e.g. a non-uniform USID dimension): a read, not an error
        warnings.simplefilter("ignore", LazyioWarning)
        signals = lazyio.load(path, lazy=True)
        return [np.asarray(s["data"].compute() if hasattr(s["data"], "compute")
                           else s["data"]) for s in signals]


def classify(path: Path, expected: np.ndarray) -> tuple[str, str]:
    """Read ``path`` and name the outcome (one of :data:`OUTCOMES`) with a detail."""
    try:
        arrays = read_all(path)
    except LazyioError as err:
        return "lazyio-error", type(err).__name__
    except Exception as err:  # noqa: BLE001 - what the fuzzer looks for
        return "other-error", f"{type(err).__name__}: {err}"[:300]
    same = (len(arrays) == 1 and arrays[0].shape == expected.shape
            and arrays[0].dtype == expected.dtype
            and np.array_equal(arrays[0], expected, equal_nan=True))
    return ("equal", "") if same else ("differs", "")


# ------------------------------------------------------------------------- hostile inputs
# Inputs that attack the process rather than the parser (issue 13): FIFOs and symlinks as
# the input path, zero-length axes, bombs, huge declared sizes, hard-link DAGs. Each runs
# in a forked child (run_isolated) so that a hang, a crash or a peak of memory is measured
# and attributed to its input.

# a read must not take longer than this (s) nor peak above this RSS (MiB), for inputs
# under 1 MB
HOSTILE_SECONDS = 20.0
HOSTILE_PEAK_MB = 1024.0


def generic_hostile_inputs(folder: Path) -> list[tuple[str, Path]]:
    """FIFOs, symlinks (to a valid file, to /dev/zero, in a loop) as the input path, and a
    zero-length axis of 1.5e15 rows in a .zspy header, for every format."""
    folder.mkdir(parents=True, exist_ok=True)
    out: list[tuple[str, Path]] = []
    for kind in KINDS:
        suffix = SUFFIX[kind]
        valid = write_valid(kind, folder / f"valid-{kind}{suffix}")
        fifo = folder / f"{kind}-fifo{suffix}"
        os.mkfifo(fifo)
        out.append((f"{kind}-fifo", fifo))
        link = folder / f"{kind}-symlink-to-valid{suffix}"
        link.symlink_to(valid)
        out.append((f"{kind}-symlink-to-valid", link))
        loop = folder / f"{kind}-symlink-loop{suffix}"
        loop.symlink_to(loop.name)
        out.append((f"{kind}-symlink-loop", loop))
        if kind in FILE_KINDS:
            zero = folder / f"{kind}-symlink-dev-zero{suffix}"
            zero.symlink_to("/dev/zero")
            out.append((f"{kind}-symlink-dev-zero", zero))
    zspy = write_valid("zspy", folder / f"zero-axis{SUFFIX['zspy']}")
    zarray_edit(shape=[1_500_000_000_000_000, 0, 6])(zspy)
    out.append(("zspy-zero-axis-1.5e15", zspy))
    return out


def hostile_inputs(folder: Path) -> list[tuple[str, Path]]:
    """Every hostile input: the generic ones, tests/hostile_hdf5.py's and, when present,
    tests/hostile_zarr.py's."""
    import hostile_hdf5

    out = generic_hostile_inputs(folder / "generic")
    (folder / "hdf5").mkdir(parents=True, exist_ok=True)
    out += hostile_hdf5.hostile_hdf5_inputs(folder / "hdf5")
    try:
        from hostile_zarr import hostile_zarr_inputs  # type: ignore[import-not-found]
    except ImportError:  # written on another branch: picked up after the merge
        pass
    else:
        (folder / "zarr").mkdir(parents=True, exist_ok=True)
        out += [(name, Path(p)) for name, p in hostile_zarr_inputs(folder / "zarr")]
    return out


def input_size(path: Path) -> int:
    """Bytes of a file (not followed through a symlink) or of all files of a directory."""
    import stat

    mode = path.lstat().st_mode
    if stat.S_ISREG(mode):
        return path.lstat().st_size
    if stat.S_ISDIR(mode):
        return sum(p.lstat().st_size for p in path.rglob("*") if stat.S_ISREG(p.lstat().st_mode))
    return 0  # a symlink, a FIFO, a device: nothing stored


def _isolated_child(path: str, out: str) -> None:
    import hostile_hdf5

    row = hostile_hdf5.probe(Path(path))
    Path(out).write_text(json.dumps(row))


def run_isolated(path: Path, timeout: float = HOSTILE_SECONDS) -> dict[str, Any]:
    """Read ``path`` in a forked child (:func:`hostile_hdf5.probe`): its outcome (``read``,
    ``lazyio-error``, ``other-error``, ``crash`` or ``hang``), error, message, seconds
    and peak RSS during the read (MiB, counting the pages the child shares with its parent:
    ~250 MB with lazyio, dask and h5py imported)."""
    import multiprocessing
    import signal
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "row.json")
        proc = multiprocessing.get_context("fork").Process(
            target=_isolated_child, args=(str(path), str(out)))
        start = time.perf_counter()
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            return {"outcome": "hang", "error": "", "message": f"over {timeout:g} s",
                    "seconds": round(time.perf_counter() - start, 3), "peak_mb": float("nan")}
        if not out.exists():
            code = proc.exitcode or 0
            what = signal.Signals(-code).name if code < 0 else f"exit status {code}"
            return {"outcome": "crash", "error": "", "message": what,
                    "seconds": round(time.perf_counter() - start, 3), "peak_mb": float("nan")}
        row: dict[str, Any] = json.loads(out.read_text())
        return row
