"""Builders of hostile HDF5 (.hspy, USID) and .npy inputs: bombs, huge declared sizes,
block explosions and hard-link DAGs (issue 13, "Hostile input").

Each builder writes one small file and returns its path; :func:`hostile_hdf5_inputs`
builds them all (the fuzz campaign and tests/test_hostile_hdf5.py use it). Every input
must be refused with a :class:`~lazyio.errors.LazyioError` naming the file and the
problem, in bounded time and memory -- or, where the file is merely unusual (an empty
array of a huge declared length), read correctly.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

import lazyio

EXPERIMENT = "Experiments/__unnamed__"
USID_MAIN = "Measurement_000/Channel_000/Raw_Data"
AXES = [{"size": 4, "navigate": True}, {"size": 5, "navigate": True},
        {"size": 6, "navigate": False}]


def deflate_bomb(inflated: int) -> bytes:
    """A zlib stream of about ``inflated // 1000`` bytes that inflates to ``inflated`` zero
    bytes (a multiple of 1 MiB), built without compressing them all: after a full flush the
    compressor's state is reset, so every further MiB of zeros compresses to the same bytes."""
    mib = 1 << 20
    zeros = bytes(mib)
    comp = zlib.compressobj(9)
    first = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    repeat = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush()  # the final empty block and the adler32 of 2 MiB of zeros
    count = max(inflated // mib, 2)
    # adler32 of n zero bytes: a = 1, b = n (mod 65521)
    adler = ((count * mib) % 65521) << 16 | 1
    return first + repeat * (count - 1) + tail[:-4] + adler.to_bytes(4, "big")


def _hspy(path: Path, data: np.ndarray, **kwargs: object) -> Path:
    axes = [{"size": n, "navigate": i < data.ndim - 1} for i, n in enumerate(data.shape)]
    lazyio.save(path, {"data": data, "axes": axes}, overwrite=True,
                show_progressbar=False, **kwargs)  # type: ignore[arg-type]
    return path


# ----------------------------------------------------------------- decoding: short, bombs


def gzip_short_chunk(path: Path) -> Path:
    """Many tiny gzip chunks (the batched small-chunk path); chunk (1, 0) decodes to 8 of
    its 64 bytes."""
    data = np.arange(8 * 64, dtype="<f4").reshape(8, 64)
    _hspy(path, data, chunks=(1, 16), compression="gzip")
    with h5py.File(path, "r+") as f:
        f[f"{EXPERIMENT}/data"].id.write_direct_chunk((1, 0), zlib.compress(bytes(8)))
    return path


def data_deflate_bomb(path: Path, inflated: int = 2 << 30) -> Path:
    """A 120-byte gzip chunk of the data replaced by a stream inflating to ``inflated``."""
    data = np.arange(4 * 5 * 6, dtype="<f4").reshape(4, 5, 6)
    _hspy(path, data, chunks=(1, 5, 6), compression="gzip")
    with h5py.File(path, "r+") as f:
        f[f"{EXPERIMENT}/data"].id.write_direct_chunk((0, 0, 0), deflate_bomb(inflated))
    return path


def _metadata_bomb(path: Path, dtype: str, inflated: int) -> Path:
    data = np.arange(4 * 5 * 6, dtype="<f4").reshape(4, 5, 6)
    _hspy(path, data)
    with h5py.File(path, "r+") as f:
        group = f.require_group(f"{EXPERIMENT}/metadata/General")
        dset = group.create_dataset("bomb", shape=(64,), dtype=dtype, chunks=(16,),
                                    compression="gzip")
        dset.id.write_direct_chunk((0,), deflate_bomb(inflated))
    return path


def metadata_deflate_bomb(path: Path, inflated: int = 2 << 30) -> Path:
    """A numeric metadata array (read eagerly at lazy load) holding a deflate bomb."""
    return _metadata_bomb(path, "<f8", inflated)


def string_metadata_bomb(path: Path, inflated: int = 2 << 30) -> Path:
    """A fixed-length string metadata array (read by h5py, not lazyio's decoders)."""
    return _metadata_bomb(path, "S8", inflated)


# ----------------------------------------------------------- huge declared sizes at load


def huge_list_metadata(path: Path, items: int = 50_000_000) -> Path:
    """A ``_list_`` metadata dataset declaring ``items`` float64 (never written: tiny)."""
    _hspy(path, np.arange(24, dtype="<f4").reshape(4, 6))
    with h5py.File(path, "r+") as f:
        f.require_group(f"{EXPERIMENT}/metadata/General").create_dataset(
            "_list_hostile", shape=(items,), dtype="<f8", chunks=(min(items, 1 << 16),),
            compression="gzip")
    return path


def huge_string_metadata(path: Path, items: int = 50_000_000) -> Path:
    """A variable-length string metadata dataset declaring ``items`` entries."""
    _hspy(path, np.arange(24, dtype="<f4").reshape(4, 6))
    with h5py.File(path, "r+") as f:
        f.require_group(f"{EXPERIMENT}/metadata/General").create_dataset(
            "notes", shape=(items,), dtype=h5py.string_dtype(), chunks=(1 << 16,),
            compression="gzip")
    return path


def huge_usid_ancillary(path: Path, rows: int = 100_000_000) -> Path:
    """A USID main dataset of ``rows`` positions whose ancillary datasets declare ``rows``
    rows, none of them written (a 15 KB file)."""
    with h5py.File(path, "w") as f:
        chan = f.create_group("Measurement_000/Channel_000")
        main = chan.create_dataset("Raw_Data", shape=(rows, 4), dtype="<f4",
                                   chunks=(1 << 16, 4), compression="gzip")
        main.attrs["quantity"] = "q"
        main.attrs["units"] = "u"
        for prefix, shape, dtype in (("Position", (rows, 1), None),
                                     ("Spectroscopic", (1, 4), None)):
            for kind in ("Indices", "Values"):
                dt = "<u4" if kind == "Indices" else "<f4"
                anc = chan.create_dataset(f"{prefix}_{kind}", shape=shape, dtype=dtype or dt,
                                          chunks=(min(shape[0], 1 << 16), shape[1]),
                                          compression="gzip")
                anc.attrs["labels"] = np.array([b"X"])
                anc.attrs["units"] = np.array([b"m"])
                main.attrs[f"{prefix}_{kind}"] = anc.ref
        f["Measurement_000/Channel_000/Spectroscopic_Indices"][...] = np.arange(4)[None]
        f["Measurement_000/Channel_000/Spectroscopic_Values"][...] = np.arange(4)[None]
    return path


def zeroed_global_heap(path: Path, suffix_kind: str = "hspy") -> Path:
    """A valid file whose global heap (its string attributes) has its first object header
    zeroed: HDF5 walks such a collection forever on the first string attribute read."""
    if suffix_kind == "usid":
        data = np.arange(4 * 5 * 6, dtype="<f4").reshape(4, 5, 6)
        lazyio.save(path, {"data": data, "axes": AXES}, overwrite=True,
                    show_progressbar=False)
    else:
        _hspy(path, np.arange(24, dtype="<f4").reshape(4, 6))
    raw = bytearray(path.read_bytes())
    at = raw.find(b"GCOL\x01\x00\x00\x00")
    assert at >= 0, "no global heap"
    raw[at + 16:at + 32] = bytes(16)
    path.write_bytes(bytes(raw))
    return path


# ------------------------------------------------------------------- block explosions


def hspy_zero_length_axis(path: Path) -> Path:
    """A data array of shape (1.5e15, 0): no bytes, but a naive grid of ~1e9 blocks."""
    _hspy(path, np.arange(24, dtype="<f4").reshape(4, 6))
    with h5py.File(path, "r+") as f:
        group = f[EXPERIMENT]
        del group["data"]
        group.create_dataset("data", shape=(1_500_000_000_000_000, 0), dtype="<f4",
                             maxshape=(None, None), chunks=(1024, 1))
        group["axis-0"].attrs["size"] = 1_500_000_000_000_000
        group["axis-1"].attrs["size"] = 0
    return path


def npy_header(path: Path, descr: str, shape: tuple[int, ...]) -> Path:
    """A .npy file whose header declares ``descr`` and ``shape`` (no payload needed when
    the array has no bytes)."""
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    text = header + " " * (-(len(header) + 11) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little")
                     + text.encode("latin1"))
    return path


#: (name, descr, shape) of .npy headers whose arrays hold no bytes but declare huge grids
NPY_EXPLOSIONS: list[tuple[str, str, tuple[int, ...]]] = [
    ("npy-zero-axis-1.5e15", "<f4", (1_500_000_000_000_000, 0)),
    ("npy-zero-axis-1e30", "<f4", (0, 10**30)),
    ("npy-V0-1e15", "|V0", (10**15,)),
    ("npy-S0-1e15x1e3", "|S0", (10**15, 1000)),
    ("npy-U0-1e12", "<U0", (10**12,)),
    ("npy-V0-1e30", "|V0", (10**30,)),
]


# ------------------------------------------------------------------------ hard-link DAGs


def hard_link_dag(path: Path, levels: int = 30, where: str = f"{EXPERIMENT}/metadata") -> Path:
    """Groups below ``where`` that hard-link a DAG: each level links the next twice, so
    ``levels`` groups are reached by 2**levels paths."""
    _hspy(path, np.arange(24, dtype="<f4").reshape(4, 6))
    with h5py.File(path, "r+") as f:
        top = f[where]
        node = top.create_group("dag")
        for i in range(levels):
            child = f.create_group(f"/dag-store/{i}")
            node["a"] = child
            node["b"] = child
            node = child
    return path


def usid_hard_link_dag(path: Path, levels: int = 30) -> Path:
    """A valid USID file beside a hard-link DAG of ``levels`` groups."""
    data = np.arange(4 * 5 * 6, dtype="<f4").reshape(4, 5, 6)
    lazyio.save(path, {"data": data, "axes": AXES}, overwrite=True, show_progressbar=False)
    with h5py.File(path, "r+") as f:
        node = f.create_group("dag")
        for i in range(levels):
            child = f.create_group(f"/dag-store/{i}")
            node["a"] = child
            node["b"] = child
            node = child
    return path


def _valid(path: Path, kind: str) -> Path:
    data = np.arange(4 * 5 * 6, dtype="<f4").reshape(4, 5, 6)
    if kind == "usid":
        lazyio.save(path, {"data": data, "axes": AXES}, overwrite=True,
                    show_progressbar=False)
        return path
    return _hspy(path, data, chunks=(2, 5, 6))


def vlen_of_unknown_kind(path: Path, kind: str = "hspy", flags: int = 0x0A) -> Path:
    """A string attribute whose variable-length datatype declares kind ``flags & 15``
    (only 0, a sequence, and 1, a string, exist): reading it was a SIGSEGV in libhdf5
    2.0 (H5VL_blob_put), found by the fuzz campaign in .hspy and USID files."""
    _valid(path, kind)
    name = "hostile_vlen"
    with h5py.File(path, "r+") as f:
        where = f[EXPERIMENT + "/metadata"] if kind == "hspy" else f
        where.attrs[name] = "a variable-length string"
    raw = bytearray(path.read_bytes())
    at = raw.index(name.encode() + b"\x00")
    dtype_at = at + (len(name) + 1 + 7) // 8 * 8  # attribute message v1: name padded to 8
    assert raw[dtype_at] & 0x0F == 9, "not the variable-length datatype"
    raw[dtype_at + 1] = flags  # kind in the low nibble, string padding in the high one
    path.write_bytes(bytes(raw))
    return path


def vlen_length_flip(path: Path, kind: str = "usid") -> Path:
    """A string attribute whose stored length (the first 4 bytes of its 16-byte
    variable-length reference) claims 1 GiB: libhdf5 allocated it before reading (the
    fuzz campaign's USID input peaking at 1,175 MiB)."""
    _valid(path, kind)
    name = "hostile_vlen"
    with h5py.File(path, "r+") as f:
        (f[EXPERIMENT + "/metadata"] if kind == "hspy" else f).attrs[name] = "thirteen char"
    raw = bytearray(path.read_bytes())
    body = raw.index(name.encode() + b"\x00") - 8  # attribute message, version 1
    assert raw[body] == 1
    sizes = [int.from_bytes(raw[body + i:body + i + 2], "little") for i in (2, 4, 6)]
    data = body + 8 + sum((n + 7) // 8 * 8 for n in sizes)
    assert int.from_bytes(raw[data:data + 4], "little") == 13
    raw[data + 3] ^= 0x40  # 13 -> 1 GiB + 13
    path.write_bytes(bytes(raw))
    return path


def fill_value_size_flip(path: Path) -> Path:
    """The data's fill value message (version 2, defined) with the top byte of its size
    set: h5py's ``fillvalue`` was a SIGSEGV in libhdf5 2.0, found by the fuzz campaign."""
    _valid(path, "hspy")
    raw = bytearray(path.read_bytes())
    # message header (type 5, size 8, constant) then version 2, alloc/write times, defined
    at = raw.index(b"\x05\x00\x08\x00\x01\x00\x00\x00\x02\x03\x02\x01")
    raw[at + 15] ^= 0xD9
    path.write_bytes(bytes(raw))
    return path


# --------------------------------------------------------------------------- the corpus

Builder = Callable[[Path], Path]

#: (name, suffix, builder) of every hostile HDF5/.npy input; the bombs here inflate to
#: 900 MiB so that each file stays under the campaign's 1 MB input size
BUILDERS: list[tuple[str, str, Builder]] = [
    ("hspy-gzip-short-chunk", ".hspy", gzip_short_chunk),
    ("hspy-data-deflate-bomb", ".hspy", lambda p: data_deflate_bomb(p, 900 << 20)),
    ("hspy-metadata-deflate-bomb", ".hspy", lambda p: metadata_deflate_bomb(p, 900 << 20)),
    ("hspy-string-metadata-bomb", ".hspy", lambda p: string_metadata_bomb(p, 900 << 20)),
    ("hspy-list-5e7", ".hspy", huge_list_metadata),
    ("hspy-strings-5e7", ".hspy", huge_string_metadata),
    ("usid-ancillary-1e8", ".h5", huge_usid_ancillary),
    ("hspy-zero-axis-1.5e15", ".hspy", hspy_zero_length_axis),
    ("hspy-global-heap-loop", ".hspy", zeroed_global_heap),
    ("usid-global-heap-loop", ".h5", lambda p: zeroed_global_heap(p, "usid")),
    ("hspy-dag-30", ".hspy", hard_link_dag),
    ("usid-dag-30", ".h5", usid_hard_link_dag),
    ("hspy-vlen-kind-10", ".hspy", vlen_of_unknown_kind),
    ("usid-vlen-kind-14", ".h5", lambda p: vlen_of_unknown_kind(p, "usid", 0x0E)),
    ("hspy-fill-value-size", ".hspy", fill_value_size_flip),
    ("usid-vlen-length-1GiB", ".h5", vlen_length_flip),
    ("hspy-vlen-length-1GiB", ".hspy", lambda p: vlen_length_flip(p, "hspy")),
    *[(name, ".npy", lambda p, d=descr, s=shape: npy_header(p, d, s))
      for name, descr, shape in NPY_EXPLOSIONS],
]


def hostile_hdf5_inputs(directory: Path) -> list[tuple[str, Path]]:
    """Build every hostile HDF5/.npy input in ``directory``: ``[(name, path), ...]``."""
    directory = Path(directory)
    out = []
    for name, suffix, build in BUILDERS:
        out.append((name, build(directory / f"{name}{suffix}")))
    return out


# ----------------------------------------------------------------- measuring one input


def peak_rss_reset() -> None:
    """Restart the process's peak-RSS counter (Linux: ``VmHWM`` in /proc/self/status)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_rss_mb() -> float:
    """The process's peak RSS since start or the last :func:`peak_rss_reset`, in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def read_everything(path: Path) -> str:
    """Load ``path`` lazily and compute every signal, then load it eagerly (metadata
    arrays are read at an eager load only); ``"read <shapes>"`` or the exception raised."""
    import warnings

    import dask

    with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shapes = []
        for lazy in (True, False):
            for sig in lazyio.load(path, lazy=lazy):
                data = sig["data"]
                data = data.compute() if hasattr(data, "compute") else data
                shapes.append(tuple(np.shape(data)))
    return f"read {shapes}"


def probe(path: Path) -> dict[str, object]:
    """Read ``path`` (:func:`read_everything`) and measure it: ``outcome`` (``"read"``,
    ``"lazyio-error"`` or ``"other-error"``), ``error`` (class name), ``message``,
    ``seconds`` and ``peak_mb`` (peak RSS of this process during the read)."""
    import time

    from lazyio.errors import LazyioError

    peak_rss_reset()
    start = time.perf_counter()
    try:
        message = read_everything(path)
        outcome, error = "read", ""
    except LazyioError as err:
        outcome, error, message = "lazyio-error", type(err).__name__, str(err)
    except Exception as err:  # noqa: BLE001 - what the probe looks for
        outcome, error, message = "other-error", type(err).__name__, str(err)
    finally:
        lazyio.close_all()
    return {"outcome": outcome, "error": error, "message": message[:500],
            "seconds": round(time.perf_counter() - start, 3), "peak_mb": round(peak_rss_mb(), 1)}


def main(argv: list[str]) -> int:
    """``python tests/hostile_hdf5.py PATH...``: one JSON line per input (:func:`probe`)."""
    import json

    for arg in argv:
        print(json.dumps({"path": arg, **probe(Path(arg))}), flush=True)  # noqa: T201
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
