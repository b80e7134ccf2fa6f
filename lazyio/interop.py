"""xarray interop: signal dictionaries <-> :class:`xarray.DataArray`, lazy data kept lazy.

xarray is an optional dependency (``pip install lazyio[xarray]``); it is imported when
these functions are called.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lazyio.signals import as_signal_dict, make_signal_dict

__all__ = ["from_xarray", "to_xarray"]

# relative tolerance on the coordinate steps for an axis to count as uniform
_UNIFORM_RTOL = 1e-6


def _xarray() -> Any:
    try:
        import xarray
    except ImportError as err:
        raise ImportError(
            "lazyio.to_xarray/from_xarray need xarray: pip install 'lazyio[xarray]'"
        ) from err
    return xarray


def _dim_names(axes: list[dict[str, Any]]) -> list[str]:
    """Axis names as dims: unique, ``axis_i`` where a name is missing or repeated."""
    names = [str(a.get("name") or "") for a in axes]
    usable = [bool(n) and n != "<undefined>" and names.count(n) == 1 for n in names]
    taken = {n for n, ok in zip(names, usable, strict=True) if ok}
    dims = []
    for i, (name, ok) in enumerate(zip(names, usable, strict=True)):
        if not ok:
            name = f"axis_{i}"
            while name in taken:  # a real axis may already be called "axis_1"
                name += "_"
            taken.add(name)
        dims.append(name)
    return dims


def to_xarray(signal: Any) -> Any:
    """A signal dictionary as an :class:`xarray.DataArray`.

    Parameters
    ----------
    signal : dict or array
        A signal dictionary as :func:`lazyio.load` returns (or a bare array).

    Returns
    -------
    xarray.DataArray
        ``dims`` from the axis names (made unique; ``axis_i`` where a name is missing or
        repeated), one coordinate per axis (``offset + scale * i``, or the ``axis`` vector
        of a non-uniform axis) with ``units``, ``navigate`` and the original axis ``name``
        in its attrs; ``name`` is the signal's title; ``attrs`` hold ``metadata`` and
        ``original_metadata``. Dask data stay dask: nothing is read.

    Examples
    --------
    >>> [s] = lazyio.load("scan.hspy")                     # doctest: +SKIP
    >>> da = lazyio.to_xarray(s)                           # doctest: +SKIP
    >>> da.sel(x=slice(0, 10)).mean("kx").compute()        # doctest: +SKIP
    """
    xr = _xarray()
    signal = as_signal_dict(signal)
    data = signal["data"]
    axes = signal["axes"]
    dims = _dim_names(axes)
    coords = {}
    for dim, axis in zip(dims, axes, strict=True):
        size = int(axis.get("size", 0))
        if axis.get("axis") is not None:
            values = np.asarray(axis["axis"])
        else:
            scale, offset = float(axis.get("scale", 1.0)), float(axis.get("offset", 0.0))
            values = offset + scale * np.arange(size, dtype=np.float64)
        attrs = {"units": str(axis.get("units") or ""), "navigate": bool(axis.get("navigate")),
                 "name": str(axis.get("name") or "")}
        if axis.get("axis") is None:
            # keeps a length-0/1 axis's calibration, which its values cannot carry
            attrs.update(scale=float(axis.get("scale", 1.0)),
                         offset=float(axis.get("offset", 0.0)))
        if axis.get("is_binned") is not None:
            attrs["is_binned"] = bool(axis["is_binned"])
        coords[dim] = xr.Variable(dim, values, attrs=attrs)
    title = signal["metadata"].get("General", {}).get("title") or None
    return xr.DataArray(
        data, dims=dims, coords=coords, name=title,
        attrs={"metadata": signal["metadata"],
               "original_metadata": signal.get("original_metadata") or {}},
    )


def _axis_from_coord(dim: str, size: int, coord: Any) -> dict[str, Any]:
    attrs = dict(coord.attrs) if coord is not None else {}
    axis: dict[str, Any] = {
        "name": str(attrs["name"]) if "name" in attrs else dim,
        "units": str(attrs.get("units", "")),
        "navigate": bool(attrs.get("navigate", False)),
        "size": int(size),
    }
    if "is_binned" in attrs:
        axis["is_binned"] = bool(attrs["is_binned"])
    if coord is None:
        return {**axis, "scale": 1.0, "offset": 0.0}
    values = np.asarray(coord.values)
    if values.dtype.kind not in "biuf":
        # labels (strings, dates) have no calibration: an index axis
        return {**axis, "scale": 1.0, "offset": 0.0}
    values = values.astype(np.float64)
    if size < 2:
        offset = float(values[0]) if size else float(attrs.get("offset", 0.0))
        return {**axis, "scale": float(attrs.get("scale", 1.0)), "offset": offset}
    steps = np.diff(values)
    scale = float((values[-1] - values[0]) / (size - 1))
    if np.allclose(steps, scale, rtol=_UNIFORM_RTOL, atol=0) and scale != 0:
        return {**axis, "scale": scale, "offset": float(values[0])}
    return {**axis, "axis": values}


def from_xarray(dataarray: Any) -> dict[str, Any]:
    """An :class:`xarray.DataArray` as a signal dictionary that :func:`lazyio.save` writes.

    Parameters
    ----------
    dataarray : xarray.DataArray
        Any DataArray; dask-backed ones stay lazy.

    Returns
    -------
    dict
        ``data`` (the DataArray's numpy or dask array, not copied); one axis per dim, named
        after it, with ``offset``/``scale`` from an evenly spaced numeric coordinate (an
        ``axis`` vector for an uneven one, an index axis when there is no numeric
        coordinate), ``units`` and ``navigate`` from the coordinate's attrs;
        ``metadata`` and ``original_metadata`` from the attrs that :func:`to_xarray` sets
        (other attrs go to ``original_metadata``); the title from the DataArray's name.
    """
    xr = _xarray()
    if not isinstance(dataarray, xr.DataArray):
        raise TypeError(
            f"Expected an xarray.DataArray; got an instance of {type(dataarray).__name__}"
        )
    axes = []
    for i, (dim, size) in enumerate(zip(dataarray.dims, dataarray.shape, strict=True)):
        coord = dataarray.coords.get(dim)
        axis = _axis_from_coord(str(dim), int(size), coord)
        axis["index_in_array"] = i
        axes.append(axis)
    attrs = dict(dataarray.attrs)
    metadata = attrs.pop("metadata", None)
    original = attrs.pop("original_metadata", None)
    metadata = dict(metadata) if isinstance(metadata, dict) else {}
    original = dict(original) if isinstance(original, dict) else {}
    if attrs:
        original.setdefault("xarray_attrs", attrs)
    title = "" if dataarray.name is None else str(dataarray.name)
    if title:
        metadata.setdefault("General", {})
        metadata["General"] = {**metadata["General"], "title": title}
    return make_signal_dict(dataarray.data, axes, metadata, original)
