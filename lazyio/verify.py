"""``verify=True``: re-read what a writer wrote and compare it with the source, block by block.

Both arrays are cut on the same grid (the written array's own chunks, so each read task
stays storage-aligned) and every block is reduced to a short BLAKE2b digest inside a dask
task. Only the digests (8 bytes per block) come back to the client, so memory stays
bounded by the chunk size times the number of workers, whatever the array's size.

The cost: the written file is read once more, and the source is **computed again**. For a
numpy source that is free; for a dask source it repeats its whole graph (a file read, a
processing pipeline). A source that is not deterministic (random numbers without a seed,
data still being acquired) fails verification by construction.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import dask
import dask.array as da
import numpy as np

from lazyio.errors import VerificationError
from lazyio.signals import as_signal_dict

__all__ = ["verify_written"]

_logger = logging.getLogger("lazyio")
DIGEST_BYTES = 8


def _digest(block: np.ndarray) -> np.ndarray:
    # Native byte order first: a big-endian source written little-endian is the same data.
    block = np.asarray(block)
    if block.dtype.byteorder not in ("=", "|") and block.dtype.fields is None:
        block = block.astype(block.dtype.newbyteorder("="))
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    h.update(str(block.shape).encode())
    h.update(np.ascontiguousarray(block).reshape(-1).view(np.uint8).data)
    value = np.frombuffer(h.digest(), dtype=np.uint64)[0]
    return np.full((1,) * block.ndim, value, dtype=np.uint64)


def block_digests(array: da.Array) -> da.Array:
    """One 64-bit digest per block of ``array`` (an array of the block-grid's shape)."""
    # the module function, not the method: functools.wraps gives Array.map_blocks the
    # signature of map_blocks(func, *arrays), which type checkers then apply to the method
    return da.map_blocks(
        _digest, array, dtype=np.uint64, chunks=tuple((1,) * len(c) for c in array.chunks)
    )


def _same_dtype(a: np.dtype, b: np.dtype) -> bool:
    return a == b or (a.fields is None and a.newbyteorder("=") == b.newbyteorder("="))


def _pairs(
    source: dict[str, Any], written: list[dict[str, Any]], splits_fields: bool
) -> list[tuple[str, Any, Any]]:
    data = source["data"]
    dtype = np.dtype(data.dtype)
    if splits_fields and dtype.names and len(written) == len(dtype.names) > 1:
        # the format reads a structured dtype back as one signal per field
        return [(f"field {name!r}", data[name], sig["data"])
                for name, sig in zip(dtype.names, written, strict=True)]
    title = source.get("metadata", {}).get("General", {}).get("title")
    return [(f"signal {title!r}" if title else "the signal's data", data, written[0]["data"])]


def _digests(expected: da.Array, actual: da.Array, show: bool) -> tuple[Any, Any]:
    """Both digest grids, under the bar every write shows (local or cluster)."""
    from lazyio.backends.progress import cluster_progress, label_for, progress_bar
    from lazyio.backends.store import uses_distributed

    # the bar counts the bytes read back (the source is computed again beside them)
    label, nbytes = label_for("verifying"), int(actual.nbytes)
    if uses_distributed():
        from distributed import default_client

        client = default_client()
        futures = client.compute([block_digests(expected), block_digests(actual)])
        cluster_progress(futures, show, label, nbytes)
        want, got = client.gather(futures)
        return want, got
    with progress_bar(show, label, nbytes):
        want, got = dask.compute(block_digests(expected), block_digests(actual))
    return want, got


def compare_arrays(
    target: str, label: str, expected: Any, actual: Any, *, show_progressbar: bool = False
) -> None:
    """Raise :class:`VerificationError` unless ``actual`` holds ``expected``'s data.

    Parameters
    ----------
    target : str
        The written file, named in the error.
    label : str
        The signal or dataset compared, named in the error.
    expected, actual : numpy or dask array
        The source and the array read back from ``target``.
    show_progressbar : bool, default False
        Show a ``verifying <name>`` bar over the comparison.
    """
    if tuple(expected.shape) != tuple(actual.shape):
        raise VerificationError(
            f"{target}: {label} was written with shape {tuple(actual.shape)}, "
            f"expected {tuple(expected.shape)}"
        )
    if not _same_dtype(np.dtype(expected.dtype), np.dtype(actual.dtype)):
        raise VerificationError(
            f"{target}: {label} was written with dtype {actual.dtype}, expected {expected.dtype}"
        )
    if not isinstance(actual, da.Array):
        actual = da.from_array(np.asarray(actual), chunks=-1)
    if 0 in actual.shape:
        return
    expected = (expected if isinstance(expected, da.Array)
                else da.from_array(np.asarray(expected), chunks=actual.chunks))
    expected = expected.rechunk(actual.chunks)
    want, got = _digests(expected, actual, show_progressbar)
    bad = np.argwhere(want != got)
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        starts = tuple(int(sum(c[:i])) for c, i in zip(actual.chunks, index, strict=True))
        raise VerificationError(
            f"{target}: {label} does not match its source: {len(bad)} of {want.size} "
            f"chunk(s) differ, the first at chunk index {index} (element offset {starts})"
        )


def verify_written(
    target: Any,
    signal: Any,
    *,
    format: str,
    storage_options: dict[str, Any] | None = None,
    remove_on_mismatch: bool = True,
    show_progressbar: bool = False,
) -> None:
    """Check that what was written at ``target`` holds ``signal``'s data, chunk by chunk.

    The file is re-read lazily through the plugin of ``format``; ``signal``'s data are
    computed again (see the module's notes on cost).

    Parameters
    ----------
    target : str, os.PathLike, Location or zarr store
        What was just written.
    signal : dict or array
        The signal that was written.
    format : str
        The format plugin that wrote it.
    storage_options : dict, optional
        For URLs.
    remove_on_mismatch : bool, default True
        Delete a written file that fails verification, so that a bad copy is never left
        looking like a good one (zarr store instances are left as they are).
    show_progressbar : bool, default False
        Show a ``verifying <name>`` bar (what :func:`lazyio.save` passes on).

    Raises
    ------
    VerificationError
        The file's data differ from the source (or it cannot be read back), naming the
        file, the signal and the first mismatching chunk index.
    """
    from lazyio.formats import get_plugin
    from lazyio.location import Location, as_location

    source = as_signal_dict(signal)
    is_path = isinstance(target, Location | str) or hasattr(target, "__fspath__")
    where: Any = as_location(target, storage_options) if is_path else target
    name = str(where)
    plugin = get_plugin(format)
    try:
        try:
            written = plugin.read(where, lazy=True, chunks="auto")
        except (OSError, ValueError) as err:
            raise VerificationError(f"{name}: cannot read back what was written ({err})") from err
        if not written:
            raise VerificationError(f"{name}: no signal could be read back")
        for label, expected, actual in _pairs(source, written,
                                             plugin.capabilities.splits_fields):
            compare_arrays(name, label, expected, actual, show_progressbar=show_progressbar)
    except VerificationError:
        if remove_on_mismatch and is_path:
            _remove(where)
        raise
    _logger.debug("verified %s", name)


def _remove(location: Any) -> None:
    from lazyio import handles
    from lazyio.backends.atomic import remove_target

    handles.close_location(location)
    try:
        remove_target(location)
    except OSError:  # the error about the data matters more than a failed clean-up
        _logger.warning("could not remove %s after failed verification", location,
                        exc_info=True)
