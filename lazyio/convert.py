"""``lazyio.convert``: any supported format to any other, streamed in bounded memory.

The source is loaded lazily and each signal's dask array is saved with
:func:`lazyio.save`, so no more than (chunk size x workers) is ever in memory. What the
target format cannot hold, read from its plugin's capabilities (``.npy`` keeps no axes or
metadata, h5USID keeps axes, title and quantity but no models), is named in a
:class:`~lazyio.errors.LazyioWarning`.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

from lazyio.errors import LazyioWarning
from lazyio.location import Location, as_location

if TYPE_CHECKING:
    from lazyio.backends.chunking import Chunks
    from lazyio.formats import Capabilities

__all__ = ["convert", "lost_in_conversion"]

# convert's own keywords, named in keyword errors beside the target writer's options
_CONVERT_KEYWORDS = frozenset({"format", "chunks", "overwrite", "verify", "storage_options",
                               "target_storage_options", "show_progressbar", "compute",
                               "resume"})

# what every signal has, even one read from a file without metadata
_DEFAULT_METADATA = {("General", "title"), ("Signal", "signal_type")}


def _protocol(location: Location) -> str:
    return location.url.split("://", 1)[0] if "://" in location.url else "file"


def _target_name(location: Location, index: int, count: int) -> Location:
    """``dst`` itself for one signal; ``stem_<i>.ext`` beside it for several."""
    if count == 1:
        return location
    stem, ext = os.path.splitext(location.url.rstrip("/"))
    return Location(f"{stem}_{index}{ext}", location.storage_options)


def _is_default_axis(axis: dict[str, Any]) -> bool:
    return (axis.get("axis") is None and not axis.get("name") and not axis.get("units")
            and float(axis.get("scale", 1.0)) == 1.0 and float(axis.get("offset", 0.0)) == 0.0)


def _flat_keys(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not isinstance(tree, dict):
        return [prefix]
    keys: list[tuple[str, ...]] = []
    for key, value in tree.items():
        keys += _flat_keys(value, (*prefix, str(key)))
    return keys


def lost_in_conversion(signal: dict[str, Any], target_format: str) -> list[str]:
    """What of ``signal`` a file of ``target_format`` cannot hold, in words.

    Parameters
    ----------
    signal : dict
        A signal dictionary, as :func:`lazyio.load` returns.
    target_format : str
        The registered format it is to be written in; its plugin's capabilities say what
        it keeps.

    Returns
    -------
    list of str
        Empty when nothing is lost.
    """
    from lazyio.formats import get_plugin

    return _lost(signal, get_plugin(target_format).capabilities)


def _lost(signal: dict[str, Any], caps: Capabilities) -> list[str]:
    lost = []
    axes = signal.get("axes", [])
    metadata = signal.get("metadata") or {}
    if not caps.keeps_axes:
        if any(not _is_default_axis(a) for a in axes):
            lost.append("axes calibration (names, units, scales, offsets)")
        if any(a.get("navigate") for a in axes):
            lost.append("navigation/signal roles of the axes")
    if not caps.keeps_metadata:
        meta_keys = [k for k in _flat_keys(metadata) if k not in _DEFAULT_METADATA]
        if meta_keys or metadata.get("General", {}).get("title"):
            lost.append("metadata")
    elif caps.metadata_kept is not None:
        extra = [k for k in _flat_keys(metadata)
                 if k[:2] not in caps.metadata_kept and len(k) > 1]
        if extra or (signal.get("original_metadata") and not caps.keeps_original_metadata):
            # the partial keep's own words cover original_metadata too
            lost.append(caps.metadata_loss)
    if (not caps.keeps_original_metadata and caps.metadata_kept is None
            and signal.get("original_metadata")):
        lost.append("original_metadata")
    if signal.get("models") and not caps.keeps_models:
        lost.append("models")
    if (signal.get("attributes") or {}).get("learning_results") and not (
            caps.keeps_learning_results):
        lost.append("learning results")
    return lost


def convert(
    src: Any,
    dst: Any,
    *,
    format: str | None = None,
    chunks: Chunks = None,
    overwrite: bool = False,
    verify: bool = False,
    storage_options: dict[str, Any] | None = None,
    target_storage_options: dict[str, Any] | None = None,
    show_progressbar: bool = True,
    resume: bool = False,
    **writer_kwds: Any,
) -> list[str]:
    """Convert a file from any supported format to any other, streamed.

    The source is loaded lazily (metadata only) and each signal is written with
    :func:`lazyio.save` chunk by chunk, on whatever dask scheduler is active (a
    ``distributed`` client included), so memory stays bounded by chunk size x workers.
    Metadata and axes are carried over where the target can hold them; what it cannot
    hold is named in a :class:`~lazyio.errors.LazyioWarning`.

    Parameters
    ----------
    src : str, os.PathLike, Location, signal dictionary or HyperSpy signal
        The file to convert: a local path or an fsspec URL; its format is detected. A
        signal in memory (a dictionary or a HyperSpy signal, lazy or not) is written as
        it is, streamed, with the same warning about what the target cannot hold.
    dst : str, os.PathLike or Location
        Where to write. With several signals in ``src``, they are written to
        ``<stem>_0<ext>``, ``<stem>_1<ext>``, ... beside ``dst``.
    format : str, optional
        A registered format name for ``dst``; by default taken from its extension.
    chunks : tuple of int, True or None
        Storage chunks of the target (see :func:`lazyio.save`); ``-1`` (or ``None``) in a
        tuple with one entry per axis stands for the whole axis.
    overwrite : bool, default False
        Replace an existing target; otherwise it raises
        :class:`~lazyio.errors.TargetExistsError` before anything is written.
    verify : bool, default False
        Re-read what was written and compare it with the source chunk by chunk
        (``lazyio.save(..., verify=True)``).
    storage_options : dict, optional
        fsspec options for ``src`` (and for ``dst`` when it uses the same protocol and
        ``target_storage_options`` is not given).
    target_storage_options : dict, optional
        fsspec options for ``dst``.
    show_progressbar : bool, default True
        Show a progress bar with throughput while writing.
    resume : bool, default False
        Continue a conversion of the same source to the same local target that was
        killed: the blocks it wrote (checked against their digests) are kept and not
        read again (``lazyio.save(..., resume=True)``). A target already complete
        (another signal of a multi-signal source) exists and needs ``overwrite=True``.
    **writer_kwds
        Options of the target's writer (``compression`` for hspy, ``compressor`` and
        ``zarr_format`` for zspy, ...); any other keyword raises ``TypeError`` before
        anything is read or written.

    Returns
    -------
    list of str
        The URLs (or paths) written, one per signal.
    """
    from lazyio._api import check_keywords, load, save
    from lazyio.formats import format_from_extension, get_plugin
    from lazyio.signals import as_signal_dict, is_signal

    in_memory = [as_signal_dict(src)] if is_signal(src) else None
    # a signal in memory has no location: dst's protocol decides its storage options
    source = as_location("" if in_memory else src, storage_options)
    if target_storage_options is None and isinstance(dst, str | os.PathLike):
        same = in_memory is not None or _protocol(as_location(dst)) == _protocol(source)
        target_storage_options = storage_options if same else None
    target = as_location(dst, target_storage_options)
    plugin = get_plugin(format if format is not None else format_from_extension(target))
    target_format = plugin.name
    compute = writer_kwds.pop("compute", True)
    check_keywords("convert", plugin, writer_kwds, _CONVERT_KEYWORDS, write=True)
    if compute is not True:
        from lazyio.errors import UnsupportedError

        raise UnsupportedError(f"{target}: compute={compute!r} (a delayed write) is not "
                               "supported yet; nothing was written")
    import dask

    from lazyio.backends.chunking import conversion_block_bytes

    if in_memory is not None:
        signals = in_memory
    else:
        with dask.config.set({"array.chunk-size": conversion_block_bytes()}):
            signals = load(source, lazy=True)
    if verify:
        writer_kwds["verify"] = True
    written = []
    for i, signal in enumerate(signals):
        out = _target_name(target, i, len(signals))
        lost = _lost(signal, plugin.capabilities)
        if lost:
            warnings.warn(
                f"{out}: the {target_format} format cannot hold the {', '.join(lost)} of "
                f"{_source_name(source, signal, in_memory is not None)}; they are not "
                "written", LazyioWarning, stacklevel=2,
            )
        save(out, signal, format=target_format, overwrite=overwrite,
             chunks=_storage_chunks(chunks, signal, plugin.capabilities),
             show_progressbar=show_progressbar, resume=resume, **writer_kwds)
        written.append(out.url)
    return written


def _source_name(source: Location, signal: dict[str, Any], in_memory: bool) -> str:
    if not in_memory:
        return source.name
    title = (signal.get("metadata") or {}).get("General", {}).get("title") or ""
    return f"the signal {title!r}" if title else "the signal"


def _storage_chunks(chunks: Chunks, signal: dict[str, Any], caps: Capabilities) -> Chunks:
    data = signal["data"]
    shape = tuple(int(s) for s in data.shape)
    if chunks is None:
        return _default_chunks(signal, caps)
    # Chunks of another shape than the signal's (USID's 2-D matrix) pass as given.
    if not isinstance(chunks, tuple | list) or not caps.nd_storage_chunks or len(chunks) != len(
            shape):
        return tuple(chunks) if isinstance(chunks, list) else chunks
    return tuple(s if c in (-1, None) else min(int(c), s) or 1
                 for c, s in zip(chunks, shape, strict=True))


def _default_chunks(signal: dict[str, Any], caps: Capabilities) -> tuple[int, ...] | None:
    """The writer's default, unless it would make one huge chunk of the whole array.

    HyperSpy's formats store at least one whole signal per chunk; a source without
    navigation axes (a ``.npy`` file) is one signal, so a big one would be written as one
    chunk, held whole in memory. Such arrays get chunks of whole trailing axes instead.
    """
    data = signal["data"]
    limit = int(caps.target_chunk_bytes or 0)
    has_navigation = any(a.get("navigate") for a in signal.get("axes", []))
    if not limit or has_navigation or not caps.nd_storage_chunks or data.nbytes <= limit:
        return None
    from lazyio.backends.chunking import trailing_storage_chunks  # keeps `import lazyio` light

    return trailing_storage_chunks(tuple(int(s) for s in data.shape), data.dtype.itemsize, limit)
