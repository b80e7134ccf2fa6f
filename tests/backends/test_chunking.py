"""The one chunk-size policy (lazyio.backends.chunking)."""

from __future__ import annotations

import importlib
import itertools
import math

import dask
import dask.array as da
import numpy as np
import pytest

from lazyio.backends import chunking
from lazyio.backends.chunking import (
    CONVERT_BLOCK_BYTES,
    MAX_BLOCKS,
    REMOTE_BLOCK_BYTES,
    aligned_chunks,
    auto_block_bytes,
    contiguous_chunks,
    conversion_block_bytes,
    default_block_bytes,
    flat_aligned_block,
    flattened_storage_chunks,
    memory_map_chunks,
    read_block_bytes,
    rechunk_to_storage,
    regular_chunks,
    reshaped_2d_chunks,
    signal_chunks,
    storage_chunks,
    write_chunks,
)

MiB = 2**20


def _starts(chunks):
    return [np.cumsum((0, *c[:-1])) for c in chunks]


@pytest.mark.parametrize(
    "request_",
    ["auto", None, 48, (48, -1, "auto"), (None, 8, 8), {0: 32, 2: -1}, {1: "auto"}],
)
def test_every_chunks_form_gives_whole_storage_chunks(request_):
    shape, storage = (100, 30, 20), (16, 8, 4)
    got = aligned_chunks(shape, storage, "f8", request_)
    assert tuple(sum(c) for c in got) == shape
    for starts, step in zip(_starts(got), storage, strict=True):
        assert all(s % step == 0 for s in starts)


def test_explicit_sizes_are_rounded_to_storage_chunks():
    assert aligned_chunks((100,), (16,), "u1", 45) == ((48, 48, 4),)
    assert aligned_chunks((100,), (16,), "u1", 3) == ((16,) * 6 + (4,),)
    assert aligned_chunks((100,), (16,), "u1", (-1,)) == ((100,),)


def test_block_chunks_are_checked_not_changed():
    assert aligned_chunks((10,), (5,), "u1", ((5, 5),)) == ((5, 5),)
    with pytest.raises(ValueError, match="not whole multiples"):
        aligned_chunks((10,), (5,), "u1", ((4, 6),))
    with pytest.raises(ValueError, match="sum to 9"):
        aligned_chunks((10,), (5,), "u1", ((4, 5),))


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="2 entries"):
        aligned_chunks((10, 10, 10), None, "u1", (5, 5))
    with pytest.raises(ValueError, match="chunks must be"):
        aligned_chunks((10,), None, "u1", 2.5)


def test_auto_blocks_fill_the_limit():
    got = aligned_chunks((4096, 4096), (64, 64), "f4", "auto", limit=4 * MiB)
    block = math.prod(c[0] for c in got) * 4
    assert 2 * MiB < block <= 4 * MiB


def test_too_many_blocks_are_refused():
    with pytest.raises(ValueError, match=f"more than {MAX_BLOCKS}"):
        regular_chunks((10**8, 10**8), (1, 1))
    assert regular_chunks((5, 0), (2, 3)) == ((2, 2, 1), (0,))


def test_block_budgets():
    assert default_block_bytes(0) == min(4 * MiB, auto_block_bytes())
    assert default_block_bytes(10**15) == auto_block_bytes() <= 16 * MiB
    assert read_block_bytes(remote=True) == REMOTE_BLOCK_BYTES
    assert read_block_bytes(remote=False) is None
    with dask.config.set({"array.chunk-size": "8MiB"}):
        assert conversion_block_bytes() == 8 * MiB
        assert auto_block_bytes() == 8 * MiB
    with dask.config.set({"array.chunk-size": "1GiB"}):
        assert conversion_block_bytes() == CONVERT_BLOCK_BYTES


def test_memory_map_chunks():
    # contiguous: trailing axes whole, a split axis cut evenly
    assert contiguous_chunks((10, 4, 4), 1, [0, 1, 2], 40) == ((2,) * 5, (4,), (4,))
    assert contiguous_chunks((6, 5), 1, [1, 0], 12) == ((6,), (2, 2, 1))
    assert memory_map_chunks("auto", (10, 4, 4), np.dtype("u1"), [0, 1, 2], 40) == (
        (2,) * 5, (4,), (4,))
    # explicit requests on a memory map are honoured as given (no storage chunks)
    assert memory_map_chunks((3, -1, 2), (10, 4, 4), np.dtype("u1"), [0, 1, 2], 40) == (
        (3, 3, 3, 1), (4,), (2, 2))
    assert memory_map_chunks("auto", (), np.dtype("u1"), [], 40) == ()


@pytest.mark.parametrize(
    ("shape", "storage", "target"),
    [((7, 6, 5), 3, 40), ((8, 8), 4, 20), ((5, 12), 6, 100), ((9,), 2, 4), ((3, 4), 5, 1)],
)
def test_flat_aligned_blocks_start_on_storage_chunks(shape, storage, target):
    block = flat_aligned_block(shape, storage, target)
    strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
    grid = [range(0, n, b) for n, b in zip(shape, block, strict=True)]
    for corner in np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, len(shape)):
        assert int(np.dot(corner, strides)) % storage == 0


def test_reshaped_2d_chunks_are_whole_storage_chunks():
    chunks = reshaped_2d_chunks((6, 8), (4, 5), (16, 10), itemsize=8, limit=4096)
    pos_rows = [b0 * 8 for b0 in chunks[0]]  # rows of one block
    assert all(r % 16 == 0 for r in pos_rows[:-1])
    assert all(c % 10 == 0 for c in [math.prod((b, 5)) for b in chunks[2]][:-1])
    assert tuple(sum(c) for c in chunks) == (6, 8, 4, 5)


def test_signal_chunks_hold_whole_signals():
    assert signal_chunks((100, 100, 1024), "f4", [2], 1e6) == (15, 15, 1024)
    assert signal_chunks((3, 2048, 2048), "f4", [1, 2], 1e6) == (1, 2048, 2048)
    assert signal_chunks((4, 5, 6), "u1", [2], 1e6) == (4, 5, 6)


@pytest.mark.parametrize(
    ("shape", "signal_axes", "expected"),
    [
        ((16384, 16384), [0, 1], (128, 16384)),  # a 1 GiB image: not one 1 GiB chunk
        ((64, 1024, 1024), [0, 1, 2], (2, 1024, 1024)),  # a stack without navigation
        ((2, 8192, 8192), [1, 2], (1, 256, 8192)),  # signals of 256 MiB each
        ((1000, 1000), [0, 1], (1000, 1000)),  # a small image stays one chunk
    ],
)
def test_signal_chunks_are_bounded_whatever_the_axes(shape, signal_axes, expected):
    chunks = signal_chunks(shape, "f4", signal_axes, 8 * MiB)
    assert chunks == expected
    assert math.prod(chunks) * 4 <= max(8 * MiB, 1000 * 1000 * 4)


def test_storage_chunks_resolve_the_writer_request():
    assert storage_chunks((100, 1024), "f4", None, [1], 1e6) == (100, 1024)
    assert storage_chunks((1000, 1024), "f4", False, [1], 1e6) == (244, 1024)
    assert storage_chunks((10, 20), "u1", (4, -1), [1], 1e6) == (4, 20)
    assert storage_chunks((10, 20), "u1", (40, None), [1], 1e6) == (10, 20)
    assert storage_chunks((0, 20), "u1", None, [1], 1e6) is None
    assert storage_chunks((), "u1", None, [], 1e6) is None
    guess = storage_chunks((1000, 1000), "f8", True, [1], 1e6)
    assert guess is not None
    assert len(guess) == 2
    with pytest.raises(ValueError, match="1 entries"):
        storage_chunks((10, 20), "u1", (4,), [1], 1e6)
    with pytest.raises(TypeError, match="chunks must be"):
        storage_chunks((10, 20), "u1", 4, [1], 1e6)


def test_flattened_storage_chunks():
    # whole spectra, about target bytes, whole scan lines where they fit
    assert flattened_storage_chunks(None, (10, 10), (100,), np.dtype("f8"), 8000) == (10, 100)
    assert flattened_storage_chunks(None, (0, 10), (100,), np.dtype("f8"), 8000) is None
    # a spectrum beyond 64 MiB is split along its own dimensions
    big = flattened_storage_chunks(None, (2,), (4096, 4096), np.dtype("f8"), 1e6)
    assert big is not None
    assert big[0] == 1
    assert big[1] < 4096 * 4096
    assert flattened_storage_chunks((5, -1), (10,), (7,), np.dtype("u1"), 1e6) == (5, 7)
    # 7 spectra of 128 KiB fit in 1 MB, but chunks of 7 straddle scan lines of 64: 4 tile
    # them, so N-D write blocks of whole lines are whole chunks
    assert flattened_storage_chunks(None, (64, 64), (256, 256), np.dtype("u2"),
                                    1e6) == (4, 65536)


def test_rechunk_to_storage_keeps_aligned_boundaries():
    # blocks of 4 MiB and more on storage boundaries are written as they are
    arr = da.zeros((1024, 1024), chunks=((512, 384, 128), (1024,)))
    assert rechunk_to_storage(arr, (128, 64)) is arr
    moved = rechunk_to_storage(da.zeros((1000, 2048), chunks=(300, 2048)), (200, 2048))
    assert moved.chunks[0] == (400, 400, 200)  # the storage grid near the source's length


def _sources_per_write(src: tuple[tuple[int, ...], ...], out: tuple[tuple[int, ...], ...]) -> int:
    """The most source blocks one write block overlaps."""
    worst = 1
    for s_sizes, w_sizes in zip(src, out, strict=True):
        s_edges = np.cumsum((0, *s_sizes))
        w_edges = np.cumsum((0, *w_sizes))
        axis_worst = max(
            int(np.searchsorted(s_edges, hi, "left") - np.searchsorted(s_edges, lo, "right") + 1)
            for lo, hi in itertools.pairwise(w_edges)
        )
        worst *= axis_worst
    return worst


def _aligned(out: tuple[tuple[int, ...], ...], storage: tuple[int, ...]) -> bool:
    return all(all(b % s == 0 for b in sizes[:-1]) for sizes, s in zip(out, storage, strict=True))


@pytest.mark.parametrize(
    ("shape", "source", "storage", "most_bytes", "most_sources"),
    [
        # finer along axis 0, coarser along axis 1: a write block is one storage row
        # along axis 0 (4 source blocks), cut along axis 1 to the budget (8 MiB)
        ((512, 64, 128, 64), (4, 64, 128, 64), (16, 16, 128, 64), 8 * 2**20, 4),
        # a 1 GiB image in 64 MiB source blocks, 8 MiB storage chunks: source blocks cut
        ((8192, 32768), (512, 32768), (64, 32768), 8 * 2**20, 1),
        # source blocks coarser and unaligned: a write block spans at most 2 per axis
        ((6000, 6000), (1100, 1100), (64, 64), 8 * 2**20, 4),
        # one storage chunk above the budget is still one block
        ((64, 4096, 4096), (1, 4096, 4096), (2, 4096, 4096), 128 * 2**20, 2),
    ],
)
def test_write_chunks_bounded_and_local(shape, source, storage, most_bytes, most_sources):
    src = da.empty(shape, chunks=source, dtype="f4").chunks
    out = write_chunks(src, storage, 4)
    assert tuple(sum(c) for c in out) == shape
    assert _aligned(out, storage)
    assert math.prod(max(c) for c in out) * 4 <= most_bytes
    assert _sources_per_write(src, out) <= most_sources


def test_write_chunks_merge_small_blocks():
    # 16384 source blocks of 4 KiB: a few large write blocks of whole storage chunks
    src = da.empty((4096, 4096), chunks=(32, 32), dtype="f4").chunks
    for storage in [(1, 1), (512, 4096), (64, 64)]:
        out = write_chunks(src, storage, 4)
        assert _aligned(out, storage)
        assert math.prod(len(c) for c in out) <= 16
        assert math.prod(max(c) for c in out) * 4 <= 8 * 2**20
    # merging keeps the source's boundaries where they are aligned
    src = ((40, 40, 20), (10,))
    assert write_chunks(src, (20, 5), 8) == ((100,), (10,))
    assert write_chunks(src, (20, 5), 8, limit=3200) == ((40, 40, 20), (10,))
    assert write_chunks(src, (20, 5), 8, limit=1600) == ((20, 20, 20, 20, 20), (10,))


def test_write_chunks_limit_cuts_slowest_axes_first():
    out = write_chunks(((1024,), (1024,)), (1, 1), 8, limit=2**20)
    assert out == ((128,) * 8, (1024,))  # contiguous runs of whole rows
    out = write_chunks(((1024,), (1024,)), (1, 1024), 8, limit=1)
    assert out == ((1,) * 1024, (1024,))  # never below one storage chunk
    # empty and zero-dimensional arrays are left alone
    assert write_chunks(((0,), (5,)), (1, 5), 4) == ((0,), (5,))
    assert write_chunks((), (), 4) == ()


def test_old_homes_use_the_policy():
    from lazyio.backends import store
    from lazyio.formats.usid import schema

    assert store.rechunk_to_storage is rechunk_to_storage
    assert schema.rows_block is flat_aligned_block
    assert schema.nd_chunks is reshaped_2d_chunks
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("lazyio.backends.layout")
    assert "Chunks" in chunking.__all__
    assert "BlockChunks" in chunking.__all__


@pytest.mark.parametrize(
    ("shape", "itemsize", "limit", "expected"),
    [
        ((4, 8, 16), 2, 10**6, (4, 8, 16)),  # fits whole
        ((100, 64, 64), 4, 64 * 64 * 4 * 10, (10, 64, 64)),  # whole frames, 10 per chunk
        ((3, 1000), 8, 800, (1, 100)),  # the last axis cut
        ((5,), 1, 0, (1,)),  # never empty
    ],
)
def test_trailing_storage_chunks(shape, itemsize, limit, expected):
    from lazyio.backends.chunking import trailing_storage_chunks

    chunks = trailing_storage_chunks(shape, itemsize, limit)
    assert chunks == expected
    assert all(1 <= c <= s for c, s in zip(chunks, shape, strict=True))


# ----------------------------------------------------------------------------- merged blocks


def _tasks(array: da.Array) -> int:
    return len(dict(array.__dask_graph__()))


def test_small_source_blocks_merge_into_one_task_per_write_block():
    # 4,096 literal blocks of (8, 8): one task per write block, no task per source block
    values = np.random.default_rng(0).random((512, 512), dtype="float32")
    source = da.from_array(values, chunks=(8, 8))
    new = ((128,) * 4, (512,))
    merged = chunking.merge_blocks(source, new)
    assert merged is not None
    assert merged.chunks == new
    assert _tasks(merged) == 4
    np.testing.assert_array_equal(merged.compute(scheduler="threads"), values)
    # and the write path takes it
    written = chunking.rechunk_to_storage(source, (1, 1))
    assert _tasks(written) <= 16
    np.testing.assert_array_equal(written.compute(scheduler="sync"), values)


class _CountingSource:
    """An array-like whose reads are counted (module level: dask may pickle it)."""

    shape, dtype, ndim = (64, 60), np.dtype("int64"), 2
    reads = 0

    def __getitem__(self, key):
        type(self).reads += 1
        return np.arange(64 * 60).reshape(64, 60)[key]


def test_shared_inputs_stay_tasks_computed_once():
    # getter tasks over one array object (a file's handle in real use) and a new grid
    # that cuts some source blocks: the object and the cut blocks stay scheduler tasks
    source = da.from_array(_CountingSource(), chunks=(4, 8), asarray=False)
    new = ((16, 16, 16, 16), (30, 30))  # cuts the source blocks of columns 24-32
    merged = chunking.merge_blocks(source, new)
    assert merged is not None
    graph = dict(merged.__dask_graph__())
    cut = [k for k in graph if isinstance(k, tuple) and k[0] == source.name]
    assert len(cut) == 16  # the 16 source blocks across column 30, once each
    _CountingSource.reads = 0
    np.testing.assert_array_equal(merged.compute(scheduler="threads"),
                                  np.arange(64 * 60).reshape(64, 60))
    assert _CountingSource.reads == source.npartitions  # every block read exactly once


def test_derived_sources_merge_whole_chains():
    values = np.arange(96 * 64, dtype="float64").reshape(96, 64)
    source = (da.from_array(values, chunks=(3, 4)) * 2 + 1)[::-1]
    new = ((48, 48), (64,))
    merged = chunking.merge_blocks(source, new)
    assert merged is not None
    assert _tasks(merged) == 2
    np.testing.assert_array_equal(merged.compute(), (values * 2 + 1)[::-1])


def test_blocks_not_worth_merging_or_not_numpy_are_rechunked():
    values = np.ones((64, 64))
    assert chunking.merge_blocks(da.from_array(values, chunks=(32, 64)), ((64,), (64,))) is None
    masked = da.ma.masked_equal(da.from_array(values, chunks=(4, 4)), 0)
    assert chunking.merge_blocks(masked, ((64,), (64,))) is None
    # a reduction every block needs: it and the blocks it reads stay scheduler tasks,
    # computed once; only the subtractions run inside the merged tasks
    base = da.from_array(values, chunks=(4, 4))
    shared = base - base.mean()
    merged = chunking.merge_blocks(shared, ((32, 32), (64,)))
    assert merged is not None
    graph = dict(merged.__dask_graph__())
    kept = [k for k in graph if isinstance(k, tuple) and k[0] == base.name]
    assert len(kept) == base.npartitions
    assert not [k for k in graph if isinstance(k, tuple) and k[0] == shared.name]
    np.testing.assert_array_equal(merged.compute(), np.zeros((64, 64)))
