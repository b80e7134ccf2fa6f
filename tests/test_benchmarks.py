"""Smoke test of the benchmark: ``benchmarks/run.py --quick`` runs and prints every row.

No timing is asserted (the machine is shared); only that each measure and the machine's
limits are reported, with the malloc settings the benchmark requires.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("dtype", ["u1", "<u2", ">i2", "<f4", ">f4", "<f8", "c16", "V3"])
def test_numpy_shuffle_matches_numcodecs(dtype, rng):
    """The GIL-free shuffle of the HDF5 engine is byte-for-byte numcodecs' (HDF5's)."""
    import numcodecs
    import numpy as np

    from lazyio.backends.hdf5.shuffle import shuffle, unshuffle

    raw = rng.integers(0, 256, size=np.dtype(dtype).itemsize * 1001, dtype=np.uint8).tobytes()
    k = np.dtype(dtype).itemsize
    codec = numcodecs.Shuffle(elementsize=k)
    assert bytes(shuffle(raw, k)) == bytes(codec.encode(raw))
    assert bytes(unshuffle(codec.encode(raw), k)) == raw


@pytest.mark.parametrize(
    "options",
    [{"compression": "gzip", "shuffle": True}, {"compression": "gzip"}, {"shuffle": True},
     {}, {"fletcher32": True, "shuffle": True, "compression": "gzip"}],
)
@pytest.mark.parametrize("dtype", ["<u2", ">f4", "<f8", "i1"])
@pytest.mark.parametrize(("shape", "chunks"), [((37, 23, 5), (4, 3, 5)),
                                               ((45, 33, 1100), (8, 7, 1100))])
def test_chunk_reads_equal_h5py(tmp_path, rng, options, dtype, shape, chunks):
    """Small chunks are decoded together, large ones unshuffled in place; every box,
    edges included, reads as h5py does."""
    import h5py
    import numpy as np

    import lazyio

    data = (rng.random(shape) * 100).astype(dtype)
    path = tmp_path / "chunks.hspy"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, chunks=chunks, **options)
        f.attrs["file_format"] = "HyperSpy"
    from lazyio.backends.hdf5.sources import H5Source
    from lazyio.location import as_location

    with h5py.File(path, "r") as f:
        source = H5Source.from_dataset(as_location(str(path)), f["x"])
    assert source.filters is not None  # the direct path, not h5py
    for _ in range(30):
        lo = [int(rng.integers(0, s)) for s in data.shape]
        hi = [int(rng.integers(a + 1, s + 1)) for a, s in zip(lo, data.shape, strict=True)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        np.testing.assert_array_equal(source[box], data[box])
    lazyio.close_all()


@pytest.mark.parametrize("separator", ["/", "."])
@pytest.mark.parametrize("chunks", [(4, 5, 6), (4, 13, 6)])
def test_direct_zarr_reads_equal_zarr(tmp_path, rng, separator, chunks):
    """Local Zarr v2 chunks read without zarr-python: edges, missing chunks, fill value."""
    import numcodecs
    import numpy as np
    import zarr

    from lazyio.backends.zarr.sources import ZarrSource
    from lazyio.backends.zarr.stores import StoreSpec
    from lazyio.location import as_location

    data = (rng.random((19, 13, 6)) * 100).astype("<f4")
    data[:8] = 7  # whole chunks equal to the fill value are not written
    z = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=data.shape, chunks=chunks, dtype=data.dtype,
        zarr_format=2, fill_value=7, compressors=numcodecs.Blosc(cname="zstd", clevel=1),
        chunk_key_encoding={"name": "v2", "separator": separator},
    )
    z[...] = data
    source = ZarrSource(StoreSpec("dir", as_location(str(tmp_path / "a.zarr"))), "",
                        data.shape, data.dtype, chunks)
    assert source._plan() is not None  # the direct path, not zarr-python
    boxes = [(slice(0, 19), slice(0, 13), slice(0, 6)), (slice(4, 12), slice(0, 13))]
    for _ in range(20):
        lo = [int(rng.integers(0, s)) for s in data.shape]
        hi = [int(rng.integers(a + 1, s + 1)) for a, s in zip(lo, data.shape, strict=True)]
        boxes.append(tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)))
    for box in boxes:
        np.testing.assert_array_equal(source[box], data[box])
