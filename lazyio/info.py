"""``lazyio.info``: what a file holds and how it is stored, from its metadata alone.

The file is read as :func:`lazyio.load` reads it lazily, inside
:func:`~lazyio.backends.plan.planning`: the same code finds the shapes, axes, metadata and
dask blocks, but every lazy array is a :class:`~lazyio.backends.plan.PlannedArray`, so no
dask graph is built and ``dask.array`` is never imported (half a second of CPU, more than
the rest of the answer). The spec version and each signal's storage layout (chunks,
compression, bytes on disk) come from the format plugin's ``describe``, which reads the
stored arrays' descriptions (an HDF5 dataset's creation properties, a Zarr array's
metadata document, a ``.npy`` header). No array data are read.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from lazyio.errors import names_target
from lazyio.location import Location, as_location

if TYPE_CHECKING:
    from lazyio.backends import StorageLayout

__all__ = ["AxisInfo", "FileInfo", "SignalInfo", "info"]


@dataclass(frozen=True)
class AxisInfo:
    """One axis of a signal: calibration and role.

    ``scale`` and ``offset`` are ``None`` for a non-uniform axis (``non_uniform=True``),
    whose first and last values are then given as ``low`` and ``high``.
    """

    name: str
    size: int
    units: str
    navigate: bool
    scale: float | None = None
    offset: float | None = None
    non_uniform: bool = False
    low: float | None = None
    high: float | None = None

    def calibration(self) -> str:
        """``"offset + i*scale"`` or ``"non-uniform [low .. high]"``, for tables."""
        if self.non_uniform:
            return f"non-uniform [{self.low:g} .. {self.high:g}]"
        return f"{self.offset:g} + i*{self.scale:g}"


@dataclass(frozen=True)
class SignalInfo:
    """One signal of a file: array, storage layout and axes (prints as a table).

    Attributes
    ----------
    title : str
    shape : tuple of int
    dtype : str
    dataset : str or None
        Where the array lives in the file (HDF5 dataset or Zarr array path).
    storage_chunks : tuple of int or None
        Chunk shape on disk (``None``: contiguous, as in ``.npy``).
    dask_chunks : tuple of int
        The largest dask block along each axis, as lazyio reads the file.
    npartitions : int
        Number of dask blocks (tasks of a full read).
    compression : str or None
        The filter/codec pipeline, e.g. ``"shuffle+gzip(4)"``.
    nbytes : int
        Size of the array in memory.
    stored_nbytes : int or None
        Bytes the array occupies in the file, where the format tells.
    axes : list of AxisInfo
    metadata, original_metadata : dict
        The signal's trees as read (arrays in them are summarised, never read, by
        :meth:`to_dict` and the text rendering).
    """

    title: str
    shape: tuple[int, ...]
    dtype: str
    dataset: str | None
    storage_chunks: tuple[int, ...] | None
    dask_chunks: tuple[int, ...]
    npartitions: int
    compression: str | None
    nbytes: int
    stored_nbytes: int | None
    axes: list[AxisInfo] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    original_metadata: dict[str, Any] = field(default_factory=dict, repr=False,
                                              compare=False)

    def to_dict(self, *, metadata: bool = True) -> dict[str, Any]:
        """A JSON-serialisable dictionary (tuples as lists; arrays in the metadata trees
        summarised); ``metadata=False`` leaves the two trees out."""
        trees = {"metadata": self.metadata, "original_metadata": self.original_metadata}
        fields = {k: v for k, v in self.__dict__.items() if k not in trees}
        doc = _plain({**fields, "axes": [asdict(a) for a in self.axes]})
        if metadata:
            doc.update({k: _tree_json(v) for k, v in trees.items()})
        return dict(doc)

    def metadata_lines(self) -> list[str]:
        """The ``metadata`` and ``original_metadata`` trees, drawn as text trees."""
        lines: list[str] = []
        for name, tree in (("metadata", self.metadata),
                           ("original_metadata", self.original_metadata)):
            lines.append(name if tree else f"{name}: (empty)")
            lines += _tree_lines(tree, "")
        return lines

    def _rows(self) -> list[tuple[str, str]]:
        on_disk = _bytes(self.stored_nbytes) if self.stored_nbytes is not None else "?"
        ratio = ""
        if self.stored_nbytes:
            ratio = f" (x{self.nbytes / self.stored_nbytes:.2f})"
        return [
            ("dataset", self.dataset or "-"),
            ("shape", f"{self.shape} {self.dtype}"),
            ("storage chunks", str(self.storage_chunks) if self.storage_chunks else
             "contiguous"),
            ("dask chunks", f"{self.dask_chunks}, {self.npartitions} block(s)"),
            ("compression", self.compression or "none"),
            ("size", f"{_bytes(self.nbytes)} in memory, {on_disk} on disk{ratio}"),
        ]

    def _text_lines(self) -> list[str]:
        width = max(len(k) for k, _ in self._rows())
        lines = [f"  {k:<{width}}  {v}" for k, v in self._rows()]
        table = [("axis", "name", "size", "units", "nav", "calibration")]
        table += [(str(j), a.name or "-", str(a.size), a.units or "-",
                   "yes" if a.navigate else "no", a.calibration())
                  for j, a in enumerate(self.axes)]
        widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in
                                   zip(row, widths, strict=True)).rstrip()
                  for row in table]
        return lines

    def _html_tables(self) -> str:
        esc = html.escape
        rows = "".join(f"<tr><th style='text-align:left'>{esc(k)}</th>"
                       f"<td style='text-align:left'>{esc(v)}</td></tr>"
                       for k, v in self._rows())
        head = "".join(f"<th>{h}</th>" for h in
                       ("axis", "name", "size", "units", "navigate", "calibration"))
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in (
                j, a.name, a.size, a.units, "yes" if a.navigate else "no",
                a.calibration())) + "</tr>"
            for j, a in enumerate(self.axes))
        return f"<table>{rows}</table><table><tr>{head}</tr>{body}</table>"

    def __str__(self) -> str:
        return "\n".join([self.title or "(untitled)", *self._text_lines()])

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return f"<div><b>{html.escape(self.title or '(untitled)')}</b>{self._html_tables()}</div>"


@dataclass(frozen=True)
class FileInfo:
    """What :func:`info` returns: the file's format and its signals.

    Printing it gives a plain-text table; in Jupyter it renders as HTML.

    Attributes
    ----------
    url : str
    format : str
        The registered format name (``"hspy"``, ``"zspy"``, ``"npy"``, ``"usid"``, ...).
    spec_version : str or None
        What the format plugin reports: HyperSpy's ``file_format_version``, the ``.npy``
        format version, or the version of pyUSID that wrote an h5USID file (when it says).
    size_on_disk : int or None
        Bytes of the file (or of the whole directory of a Zarr store).
    signals : list of SignalInfo
    """

    url: str
    format: str
    spec_version: str | None
    size_on_disk: int | None
    signals: list[SignalInfo] = field(default_factory=list)

    def to_dict(self, *, metadata: bool = True) -> dict[str, Any]:
        """A JSON-serialisable dictionary (what ``lazyio info --json`` prints; the metadata
        trees only with ``metadata=True``, as ``--metadata`` asks)."""
        return {"url": self.url, "format": self.format, "spec_version": self.spec_version,
                "size_on_disk": self.size_on_disk,
                "signals": [s.to_dict(metadata=metadata) for s in self.signals]}

    def to_text(self, *, metadata: bool = False) -> str:
        """The text table (what printing gives); ``metadata=True`` adds each signal's
        metadata trees (``lazyio info --metadata``)."""
        version = f" {self.spec_version}" if self.spec_version else ""
        size = _bytes(self.size_on_disk) if self.size_on_disk is not None else "?"
        lines = [f"{self.url}", (f"  format: {self.format}{version}, {size} on disk, "
                 f"{len(self.signals)} signal(s)")]
        for i, sig in enumerate(self.signals):
            lines.append(f"  [{i}] {sig.title or '(untitled)'}")
            lines += ["    " + line for line in sig._text_lines()]
            if metadata:
                lines += ["    " + line for line in sig.metadata_lines()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        esc = html.escape
        version = f" {esc(self.spec_version)}" if self.spec_version else ""
        size = _bytes(self.size_on_disk) if self.size_on_disk is not None else "?"
        parts = [(f"<div><b>{esc(self.url)}</b><br>format: <code>{esc(self.format)}</code>"
                 f"{version}, {size} on disk, {len(self.signals)} signal(s)")]
        for i, sig in enumerate(self.signals):
            parts.append(f"<details open><summary>[{i}] {esc(sig.title or '(untitled)')}"
                         f"</summary>{sig._html_tables()}</details>")
        parts.append("</div>")
        return "".join(parts)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


_LIST_ITEMS = 8  # a longer list or array in a metadata tree is summarised
_TEXT_CHARS = 200


def _summary(value: Any) -> str | None:
    """A short description of an array-like leaf, or ``None`` for other values."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None:
        return None
    from lazyio.backends.plan import is_lazy_array

    lazy = "lazy " if is_lazy_array(value) else ""
    return f"<{lazy}array {tuple(int(s) for s in shape)} {dtype}>"


def _tree_json(value: Any) -> Any:
    """A metadata tree as JSON values, without reading any array data."""
    if isinstance(value, dict):
        return {str(k): _tree_json(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return _tree_json(value.item())
    if isinstance(value, np.ndarray) and value.size <= _LIST_ITEMS and value.dtype.kind in (
            "b", "i", "u", "f", "U", "S"):
        return _tree_json(value.tolist())
    described = _summary(value)
    if described is not None:
        return described
    if isinstance(value, list | tuple):
        return [_tree_json(v) for v in value]
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # dates, times and what else a reader put in a tree


def _leaf_text(value: Any) -> str:
    plain = _tree_json(value)
    text = plain if isinstance(plain, str) and plain else json.dumps(plain, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= _TEXT_CHARS else text[:_TEXT_CHARS - 3] + "..."


def _tree_lines(tree: dict[str, Any], indent: str) -> list[str]:
    lines = []
    items = list(tree.items())
    for i, (key, value) in enumerate(items):
        last = i == len(items) - 1
        branch, below = ("└── ", "    ") if last else ("├── ", "│   ")
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{branch}{key}")
            lines += _tree_lines(value, indent + below)
        else:
            lines.append(f"{indent}{branch}{key} = {_leaf_text(value)}")
    return lines


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    value: float = n
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value} B"  # pragma: no cover


@overload
def info(
    source: str | os.PathLike[str] | Location, *, format: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> FileInfo: ...


@overload
def info(
    source: Any, *, format: str | None = None, storage_options: dict[str, Any] | None = None
) -> FileInfo | SignalInfo: ...


@names_target("source")
def info(
    source: Any, *, format: str | None = None, storage_options: dict[str, Any] | None = None
) -> FileInfo | SignalInfo:
    """Describe a file: format, spec version, and for each signal its shape, dtype,
    storage and dask chunks, compression, axes and sizes, reading metadata only.

    Parameters
    ----------
    source : str, os.PathLike, Location, signal dictionary or HyperSpy signal
        A local path or an fsspec URL (``s3://``, ``https://``, ``memory://``, ...). A
        signal in memory (a dictionary or a HyperSpy signal, lazy or not) is described
        without computing its data, as a :class:`SignalInfo`.
    format : str, optional
        A registered format name, to skip detection (see :func:`lazyio.load`).
    storage_options : dict, optional
        Passed to fsspec for URLs.

    Returns
    -------
    FileInfo or SignalInfo
        A :class:`SignalInfo` for a signal in memory, else a :class:`FileInfo`. Prints as a text table, renders as HTML in Jupyter, and converts to a
        JSON-serialisable dict with :meth:`FileInfo.to_dict`.

    Examples
    --------
    >>> lazyio.info("scan.hspy")  # doctest: +SKIP
    >>> lazyio.info("s3://bucket/scan.zspy", storage_options={"anon": True}).to_dict()
    ... # doctest: +SKIP
    """
    from lazyio._api import load
    from lazyio.backends.plan import planning
    from lazyio.formats import detect_format, get_plugin
    from lazyio.signals import as_signal_dict, is_signal

    if is_signal(source):
        return _signal_info(as_signal_dict(source), None)
    location = as_location(source, storage_options)
    plugin = get_plugin(format) if format is not None else None  # unknown names fail first
    if plugin is None:
        plugin = get_plugin(detect_format(location))
    with planning():
        signals = load(location, format=plugin.name, lazy=True, **plugin.describe_read_options)
    description = plugin.describe(location)
    layouts = list(description.layouts)
    return FileInfo(
        url=location.url,
        format=plugin.name,
        spec_version=description.spec_version,
        size_on_disk=_size_on_disk(location),
        signals=[_signal_info(s, layouts[i] if i < len(layouts) else None)
                 for i, s in enumerate(signals)],
    )


def _size_on_disk(location: Location) -> int | None:
    try:
        if location.isdir():
            return int(location.fs.du(location.path, total=True))
        return location.size()
    except (OSError, ValueError, NotImplementedError):
        return None


def _axis_info(axis: dict[str, Any]) -> AxisInfo:
    name, units = str(axis.get("name") or ""), str(axis.get("units") or "")
    size, navigate = int(axis.get("size", 0)), bool(axis.get("navigate"))
    if axis.get("axis") is not None:
        values = np.asarray(axis["axis"], dtype=np.float64)
        return AxisInfo(name=name, units=units, size=size, navigate=navigate, non_uniform=True,
                        low=float(values[0]) if values.size else math.nan,
                        high=float(values[-1]) if values.size else math.nan)
    return AxisInfo(name=name, units=units, size=size, navigate=navigate,
                    scale=float(axis.get("scale", 1.0)), offset=float(axis.get("offset", 0.0)))


def _signal_info(signal: dict[str, Any], layout: StorageLayout | None) -> SignalInfo:
    from lazyio.backends import StorageLayout
    from lazyio.backends.plan import is_lazy_array

    data = signal["data"]
    layout = layout or StorageLayout()
    title = signal.get("metadata", {}).get("General", {}).get("title", "")
    dask_chunks = tuple(int(c) for c in data.chunksize) if is_lazy_array(data) else \
        tuple(int(s) for s in data.shape)
    return SignalInfo(
        title=str(title),
        shape=tuple(int(s) for s in data.shape),
        dtype=str(data.dtype),
        dataset=layout.dataset,
        storage_chunks=layout.chunks,
        dask_chunks=dask_chunks,
        npartitions=int(getattr(data, "npartitions", 1)),
        compression=layout.compression,
        nbytes=int(data.nbytes),
        stored_nbytes=layout.stored,
        axes=[_axis_info(a) for a in signal.get("axes", [])],
        metadata=dict(signal.get("metadata") or {}),
        original_metadata=dict(signal.get("original_metadata") or {}),
    )
