"""The writer layer: every write of array data ends in one :func:`dask.array.store` call.

Targets are small picklable objects with ``__setitem__(region, block)``; the dask array
is rechunked first so that each task writes whole storage chunks and no two tasks touch
one chunk. Memory stays bounded by (chunk size x workers) whatever the array's size.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

# the rule lives with the other chunk-size rules; re-exported for the writers
from lazyio.backends.chunking import rechunk_to_storage

__all__ = ["progress", "rechunk_to_storage", "store", "uses_distributed"]

_logger = logging.getLogger("lazyio")


def uses_distributed() -> bool:
    """Whether the active dask scheduler is a ``distributed`` client."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return False
    scheduler = dask.config.get("scheduler", None)
    if scheduler not in (None, "dask.distributed", "distributed"):
        return False
    try:
        default_client()
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def progress(show: bool, label: str = "", nbytes: int | None = None) -> Iterator[None]:
    """Show a tqdm bar (bytes and MB/s when ``nbytes`` is known) over local dask
    computations in the block; see :func:`store` for clusters and :mod:`lazyio.backends.progress`."""
    from lazyio.backends.progress import progress_bar

    with progress_bar(show, label, nbytes):
        yield


def store(
    sources: Sequence[da.Array | np.ndarray],
    targets: Sequence[Any],
    *,
    show_progressbar: bool = True,
    lock: Any = False,
) -> None:
    """Stream ``sources`` into ``targets`` with one :func:`dask.array.store` call.

    Numpy sources are wrapped as single-block dask arrays. Works on any scheduler,
    including a ``distributed`` cluster, where a progress bar of the cluster is shown.
    In the pipeline of a delayed write (``save(..., compute=False)``) the arrays are
    handed to the coming computation instead (:mod:`lazyio.deferred`).
    """
    from lazyio.deferred import hand_off

    if hand_off(sources, targets, lock=lock, show_progressbar=show_progressbar):
        return
    if len(sources) != len(targets):
        raise ValueError(
            f"Different number of sources [{len(sources)}] and targets [{len(targets)}]"
        )
    if not sources:
        return
    arrays = [s if isinstance(s, da.Array) else da.from_array(s, chunks=-1) for s in sources]
    from lazyio.backends.journal import active

    resume = active()
    if resume is not None:  # a resumable write: journaled blocks are restored, not computed
        resume.store(arrays, list(targets), show_progressbar)
        return
    if uses_distributed():
        _store_distributed(arrays, list(targets), show_progressbar, lock)
        return
    from lazyio.backends.progress import label_for

    with progress(show_progressbar, label_for("writing"), int(sum(a.nbytes for a in arrays))):
        da.store(arrays, list(targets), lock=lock, compute=True)


def _store_distributed(
    arrays: list[da.Array], targets: list[Any], show_progressbar: bool, lock: Any
) -> None:
    from distributed import default_client, futures_of, wait

    from lazyio.backends.progress import cluster_progress, label_for

    client = default_client()
    region_pairs = [(a, t) for a, t in zip(arrays, targets, strict=True)
                    if not getattr(t, "single_writer", False)]
    if region_pairs:
        stored = da.store([a for a, _ in region_pairs], [t for _, t in region_pairs],
                          lock=lock, compute=False)
        # dask returns one array per source (a tuple of them for several), not the
        # Delayed its docstring names: persist them all
        persisted = dask.persist(*(stored if isinstance(stored, tuple) else (stored,)))
        # the bar local schedulers show, fed by the scheduler; it returns once all is done
        cluster_progress(persisted, show_progressbar, label_for("writing"),
                         int(sum(a.nbytes for a, _ in region_pairs)))
        wait(futures_of(persisted))
        for future in futures_of(persisted):
            future.result()  # re-raise a task's error here
    for array, target in zip(arrays, targets, strict=True):
        if getattr(target, "single_writer", False):
            _single_writer(client, array, target, show_progressbar)


def _single_writer(
    client: Any, array: da.Array, target: Any, show_progressbar: bool = False
) -> None:
    """Encode blocks on the workers; write them here, a bounded window at a time.

    Up to four blocks per worker thread are in flight (submitted a batch at a time, one
    ``compute`` call per batch), and their encoded bytes are fetched in the background
    while this thread writes, so the workers never wait for the writer unless it is the
    bottleneck. Memory stays bounded: at most the window's encoded blocks exist at once.
    The writer's busy time is logged at debug level (how far more workers would scale).
    """
    import itertools
    import time

    from dask.array.core import slices_from_chunks
    from distributed import as_completed

    from lazyio.backends.progress import label_for, step_bar

    regions = slices_from_chunks(array.chunks)
    blocks = array.to_delayed().ravel()
    threads = max(1, sum(client.nthreads().values()))
    # 2 blocks per thread left the workers idle while the client wrote and fetched
    window = 4 * threads
    todo = iter(zip(regions, blocks, strict=True))
    # the tasks carry the encoder only: the target names the writer's local file
    encoder = target.encoder() if hasattr(target, "encoder") else target
    encode = dask.delayed(encoder.encode_block, pure=True)

    def submit(count: int) -> list[Any]:
        batch = list(itertools.islice(todo, count))
        if not batch:
            return []
        futures: list[Any] = client.compute([encode(region, block) for region, block in batch])
        return futures

    pending = as_completed(submit(window), with_results=True)
    free = 0
    busy = 0.0
    started = time.perf_counter()
    with step_bar(show_progressbar, label_for("writing"), int(array.nbytes), len(regions)) as step:
        for _future, encoded in pending:
            tick = time.perf_counter()
            target.write_encoded(encoded)
            busy += time.perf_counter() - tick
            step()
            free += 1
            if free >= threads:  # refill a batch at a time: one round trip per batch
                for future in submit(free):
                    pending.add(future)
                free = 0
    _logger.debug("single writer: %d blocks, writing busy %.3f s of %.3f s", len(regions),
                  busy, time.perf_counter() - started)
