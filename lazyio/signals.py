"""RosettaSciIO-style signal dictionaries: defaults and normalisation.

Readers return, and writers take, dictionaries with ``data``, ``axes``, ``metadata``,
``original_metadata``, ``attributes``, ``package``, ``package_version`` (and ``models`` for
hspy/zspy). A writer also accepts a bare numpy or dask array.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import dask.array as da
import numpy as np

__all__ = ["as_signal_dict", "default_axes", "make_signal_dict", "signal_axes_indices"]


def default_axes(
    shape: tuple[int, ...], navigation_axes: Iterable[int] | None = None
) -> list[dict[str, Any]]:
    """Uniform axes of scale 1 and offset 0; ``navigation_axes`` are marked ``navigate``."""
    nav = {int(i) % max(1, len(shape)) for i in (navigation_axes or ())}
    return [
        {
            "name": "",
            "units": "",
            "size": int(size),
            "scale": 1.0,
            "offset": 0.0,
            "navigate": i in nav,
            "index_in_array": i,
        }
        for i, size in enumerate(shape)
    ]


def make_signal_dict(
    data: Any,
    axes: list[dict[str, Any]] | None = None,
    metadata: dict[str, Any] | None = None,
    original_metadata: dict[str, Any] | None = None,
    *,
    title: str = "",
    lazy: bool | None = None,
) -> dict[str, Any]:
    """Build a complete signal dictionary around ``data``."""
    metadata = copy.deepcopy(metadata) if metadata else {}
    metadata.setdefault("General", {}).setdefault("title", title)
    metadata.setdefault("Signal", {}).setdefault("signal_type", "")
    if lazy is None:
        lazy = isinstance(data, da.Array)
    return {
        "data": data,
        "axes": axes if axes is not None else default_axes(np.shape(data)),
        "metadata": metadata,
        "original_metadata": original_metadata or {},
        "attributes": {"_lazy": bool(lazy)},
        "package": "",
        "package_version": "",
    }


def as_signal_dict(signal: Any) -> dict[str, Any]:
    """Accept a signal dict or a bare array and return a complete signal dict.

    Missing keys get defaults; ``axes`` are completed (``size``, ``navigate``, ...) from
    the data's shape. The caller's dictionary is not modified.
    """
    if isinstance(signal, Mapping):
        if "data" not in signal:
            raise ValueError("A signal dictionary needs a 'data' entry")
        out = dict(signal)
    elif isinstance(signal, da.Array | np.ndarray) or hasattr(signal, "__array__"):
        data = signal if isinstance(signal, da.Array) else np.asanyarray(signal)
        out = {"data": data}
    else:
        raise TypeError(
            f"Expected a signal dictionary or an array; got an instance of "
            f"{type(signal).__name__}"
        )
    data = out["data"]
    if not isinstance(data, da.Array | np.ndarray):
        data = out["data"] = np.asanyarray(data)
    base = make_signal_dict(data, out.get("axes"), out.get("metadata"), out.get("original_metadata"))
    for key, value in base.items():
        out.setdefault(key, value)
    out["metadata"] = base["metadata"]
    axes = [dict(a) for a in out["axes"]]
    ragged = bool(out.get("attributes", {}).get("ragged")) or data.dtype == object
    if not ragged and len(axes) != data.ndim:
        raise ValueError(
            f"The signal has {len(axes)} axes but its data has {data.ndim} dimensions"
        )
    for i, axis in enumerate(axes):
        if "axis" in axis:
            axis["axis"] = np.asarray(axis["axis"])
            axis.setdefault("size", len(axis["axis"]))
        elif i < data.ndim:
            axis.setdefault("size", int(data.shape[i]))
        axis.setdefault("navigate", False)
        axis.setdefault("name", "")
        axis.setdefault("units", "")
    out["axes"] = axes
    return out


def signal_axes_indices(signal: Mapping[str, Any]) -> list[int]:
    """Indices (in array order) of the axes that are not navigation axes."""
    return [i for i, a in enumerate(signal["axes"]) if not a.get("navigate", False)]
