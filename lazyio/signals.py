"""RosettaSciIO-style signal dictionaries: defaults and normalisation.

Readers return, and writers take, dictionaries with ``data``, ``axes``, ``metadata``,
``original_metadata``, ``attributes``, ``package``, ``package_version`` (and ``models`` for
hspy/zspy). A writer also accepts a bare numpy or dask array.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lazyio.backends.plan import is_dask_array

__all__ = ["as_signal_dict", "default_axes", "from_hyperspy", "is_hyperspy_signal", "is_signal",
           "make_signal_dict", "signal_axes_indices"]


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
        lazy = is_dask_array(data)
    return {
        "data": data,
        "axes": axes if axes is not None else default_axes(np.shape(data)),
        "metadata": metadata,
        "original_metadata": original_metadata or {},
        "attributes": {"_lazy": bool(lazy)},
        "package": "",
        "package_version": "",
    }


def is_hyperspy_signal(obj: Any) -> bool:
    """Whether ``obj`` is a HyperSpy signal (lazy or not), without importing HyperSpy.

    A HyperSpy signal can only exist once ``hyperspy.signal`` has been imported, so the
    check looks the class up in ``sys.modules``; ``import lazyio`` stays free of HyperSpy.
    """
    module = sys.modules.get("hyperspy.signal")
    base = getattr(module, "BaseSignal", None)
    return base is not None and isinstance(obj, base)


def is_signal(obj: Any) -> bool:
    """Whether ``obj`` is a signal rather than a file: a signal dictionary (a mapping with
    ``data``) or a HyperSpy signal."""
    return (isinstance(obj, Mapping) and "data" in obj) or is_hyperspy_signal(obj)


def from_hyperspy(signal: Any) -> dict[str, Any]:
    """A HyperSpy signal as a signal dictionary, its data not computed.

    Uses the signal's own dictionary export (the one ``BaseSignal.save`` hands to file
    writers), so axes (names, units, navigate, non-uniform vectors), metadata (markers
    included), original metadata, models and learning results are kept, and the data is
    the signal's own array: a lazy signal's dask array stays lazy.

    Parameters
    ----------
    signal : hyperspy.signal.BaseSignal
        Any HyperSpy signal, lazy or not.

    Returns
    -------
    dict
        A signal dictionary as :func:`lazyio.load` returns; learning results (when the
        signal has any) under ``attributes["learning_results"]``.
    """
    from hyperspy.misc.utils import get_object_package_info

    out = dict(signal._to_dictionary(add_learning_results=True, add_models=True))
    out.pop("tmp_parameters", None)  # where HyperSpy last read or wrote it: not signal data
    attributes = dict(out.get("attributes") or {})
    learning = {k: v for k, v in (out.pop("learning_results", None) or {}).items()
                if v is not None}
    if learning:
        attributes["learning_results"] = learning
    attributes["_lazy"] = bool(getattr(signal, "_lazy", False))
    out["attributes"] = attributes
    info = get_object_package_info(signal)
    out["package"] = str(info.get("package", "") or "")
    out["package_version"] = str(info.get("package_version", "") or "")
    out.setdefault("models", {})
    return out


def as_signal_dict(signal: Any) -> dict[str, Any]:
    """Accept a signal dict, a HyperSpy signal or a bare array; return a complete signal
    dict.

    Missing keys get defaults; ``axes`` are completed (``size``, ``navigate``, ...) from
    the data's shape. The caller's dictionary is not modified. A HyperSpy signal goes
    through :func:`from_hyperspy` first (checked before the array case: a signal has
    ``__array__``, which would compute a lazy one).
    """
    if is_hyperspy_signal(signal):
        signal = from_hyperspy(signal)
    if isinstance(signal, Mapping):
        if "data" not in signal:
            raise ValueError("A signal dictionary needs a 'data' entry")
        out = dict(signal)
    elif is_dask_array(signal) or isinstance(signal, np.ndarray) or hasattr(signal,
                                                                             "__array__"):
        data = signal if is_dask_array(signal) else np.asanyarray(signal)
        out = {"data": data}
    else:
        raise TypeError(
            f"Expected a signal dictionary, a HyperSpy signal or an array; got an instance of "
            f"{type(signal).__name__}"
        )
    data = out["data"]
    if not (is_dask_array(data) or isinstance(data, np.ndarray)):
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
