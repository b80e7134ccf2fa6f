"""xarray interop: signal dictionaries <-> :class:`xarray.DataArray`, lazy data kept lazy.

xarray is an optional dependency (``pip install lazyio[xarray]``); it is imported when
these functions are called.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from lazyio.signals import as_signal_dict, make_signal_dict

__all__ = ["METADATA_ATTR", "cf_to_quantity", "from_xarray", "metadata_from_json",
           "metadata_to_json", "quantity_to_cf", "signal_attrs", "to_xarray"]

#: the attribute holding a signal's metadata and original metadata as one JSON string
METADATA_ATTR = "hyperspy_metadata"

# relative tolerance on the coordinate steps for an axis to count as uniform
_UNIFORM_RTOL = 1e-6
# "Intensity (counts)": HyperSpy's quantity is a name with its units in parentheses
_QUANTITY = re.compile(r"^(.*?)\s*\(([^()]*)\)$")
_NDARRAY = "__ndarray__"
# the largest lazy metadata array read into the JSON attribute
_JSON_ARRAY_BYTES = 2**20


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


def _safe_name(name: str) -> str:
    # netCDF (HDF5) names cannot hold "/", and to_netcdf refuses them
    return name.replace("/", "-")


def quantity_to_cf(quantity: str) -> tuple[str, str]:
    """HyperSpy's ``Signal.quantity`` (``"Intensity (counts)"``) as CF ``long_name`` and
    ``units`` (``("Intensity", "counts")``); a quantity without ``(units)`` is all name."""
    match = _QUANTITY.match(quantity.strip())
    if match:
        return match.group(1).strip(), match.group(2).strip()
    return quantity.strip(), ""


def cf_to_quantity(long_name: str, units: str) -> str:
    """CF ``long_name`` and ``units`` as HyperSpy's ``Signal.quantity``."""
    long_name, units = str(long_name or "").strip(), str(units or "").strip()
    if units:
        return f"{long_name} ({units})" if long_name else f"({units})"
    return long_name


def _json_default(value: Any) -> Any:
    if hasattr(value, "dask") and hasattr(value, "nbytes"):
        # metadata arrays are read lazily: small ones are read for the JSON; a big one is
        # left out (named with its shape), as an attribute is no place for bulk data
        if int(value.nbytes) > _JSON_ARRAY_BYTES:
            return {"omitted_array": {"shape": [int(n) for n in value.shape],
                                      "dtype": str(value.dtype)}}
        value = np.asarray(value.compute())
    if isinstance(value, np.ndarray):
        return {_NDARRAY: value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | tuple):
        return list(value)
    return str(value)  # dates, objects: their text, rather than refusing the whole tree


def _json_hook(obj: dict[str, Any]) -> Any:
    if _NDARRAY in obj and set(obj) == {_NDARRAY, "dtype"}:
        return np.asarray(obj[_NDARRAY], dtype=obj["dtype"])
    return obj


def metadata_to_json(metadata: dict[str, Any], original_metadata: dict[str, Any]) -> str:
    """Both metadata trees as the one JSON string stored in :data:`METADATA_ATTR`
    (numpy arrays kept with their dtype)."""
    return json.dumps({"metadata": metadata, "original_metadata": original_metadata},
                      default=_json_default, allow_nan=True)


def metadata_from_json(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """What :func:`metadata_to_json` wrote, as ``(metadata, original_metadata)``."""
    tree = json.loads(text, object_hook=_json_hook)
    if not isinstance(tree, dict):
        return {}, {}
    metadata, original = tree.get("metadata"), tree.get("original_metadata")
    return (metadata if isinstance(metadata, dict) else {},
            original if isinstance(original, dict) else {})


def _coords(axes: list[dict[str, Any]], dims: list[str]) -> dict[str, Any]:
    xr = _xarray()
    coords = {}
    for dim, axis in zip(dims, axes, strict=True):
        size = int(axis.get("size", 0))
        if axis.get("axis") is not None:
            values = np.asarray(axis["axis"])
        else:
            scale, offset = float(axis.get("scale", 1.0)), float(axis.get("offset", 0.0))
            values = offset + scale * np.arange(size, dtype=np.float64)
        # netCDF and Zarr attributes: strings and numbers only (0/1 for the roles)
        attrs: dict[str, Any] = {"long_name": str(axis.get("name") or "")}
        if axis.get("units"):
            attrs["units"] = str(axis["units"])
        attrs["navigate"] = int(bool(axis.get("navigate")))
        if axis.get("axis") is None:
            # keeps a length-0/1 axis's calibration, which its values cannot carry
            attrs.update(scale=float(axis.get("scale", 1.0)),
                         offset=float(axis.get("offset", 0.0)))
        if axis.get("is_binned") is not None:
            attrs["is_binned"] = int(bool(axis["is_binned"]))
        coords[dim] = xr.Variable(dim, values, attrs=attrs)
    return coords


def signal_attrs(signal: dict[str, Any]) -> dict[str, Any]:
    """The CF attributes of a signal's variable: ``long_name`` and ``units`` from
    ``Signal.quantity``, and the full metadata as one JSON string."""
    metadata = signal.get("metadata") or {}
    attrs: dict[str, Any] = {}
    quantity = (metadata.get("Signal") or {}).get("quantity")
    if quantity:
        long_name, units = quantity_to_cf(str(quantity))
        if long_name:
            attrs["long_name"] = long_name
        if units:
            attrs["units"] = units
    attrs[METADATA_ATTR] = metadata_to_json(metadata, signal.get("original_metadata") or {})
    return attrs


def to_xarray(signal: Any) -> Any:
    """A signal as an :class:`xarray.DataArray`, with attributes netCDF and Zarr accept.

    Parameters
    ----------
    signal : dict, HyperSpy signal or array
        A signal dictionary as :func:`lazyio.load` returns, a HyperSpy signal (lazy or
        not), or a bare array.

    Returns
    -------
    xarray.DataArray
        ``dims`` from the axis names (made unique; ``axis_i`` where a name is missing or
        repeated), one coordinate per axis (``offset + scale * i``, or the ``axis`` vector
        of a non-uniform axis) whose attrs are ``long_name`` (the axis name), ``units``,
        ``navigate`` (1 or 0) and, for uniform axes, ``scale`` and ``offset``. ``name`` is
        the signal's title; ``attrs`` hold CF ``long_name`` and ``units`` (from
        ``Signal.quantity``) and :data:`METADATA_ATTR`, the metadata and original
        metadata as one JSON string. Dask data stay dask: nothing is read. The result
        writes unchanged with ``to_netcdf`` (h5netcdf) and ``to_zarr``.

    Examples
    --------
    >>> [s] = lazyio.load("scan.hspy")                     # doctest: +SKIP
    >>> da = lazyio.to_xarray(s)                           # doctest: +SKIP
    >>> da.sel(x=slice(0, 10)).mean("kx").compute()        # doctest: +SKIP
    """
    xr = _xarray()
    signal = as_signal_dict(signal)
    dims = [_safe_name(d) for d in _dim_names(signal["axes"])]
    title = signal["metadata"].get("General", {}).get("title") or None
    return xr.DataArray(
        signal["data"], dims=dims, coords=_coords(signal["axes"], dims),
        name=_safe_name(str(title)) if title else None, attrs=signal_attrs(signal),
    )


def _axis_from_coord(dim: str, size: int, coord: Any) -> dict[str, Any]:
    attrs = dict(coord.attrs) if coord is not None else {}
    # a coordinate that to_xarray made (it has "navigate") names its axis in long_name;
    # anywhere else long_name is a label, and the dim is the axis name
    ours = "navigate" in attrs
    if ours and "long_name" in attrs:
        name = str(attrs["long_name"])
    else:
        name = str(attrs["name"]) if "name" in attrs else dim  # lazyio < 0.2 wrote "name"
    axis: dict[str, Any] = {
        "name": name,
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


def from_xarray(dataarray: Any, *, navigation_dims: Any = None) -> dict[str, Any]:
    """An :class:`xarray.DataArray` as a signal dictionary that :func:`lazyio.save` writes.

    Parameters
    ----------
    dataarray : xarray.DataArray
        Any DataArray (one from :func:`to_xarray`, the ``lazyio`` engine, a netCDF or Zarr
        file, or made by hand); dask-backed ones stay lazy.
    navigation_dims : iterable of str, optional
        The dims that are navigation axes. By default a dim is one when its coordinate's
        ``navigate`` attribute says so (as :func:`to_xarray` marks them), and no dim is
        otherwise.

    Returns
    -------
    dict
        ``data`` (the DataArray's numpy or dask array, not copied); one axis per dim, named
        after it (or after the ``long_name`` :func:`to_xarray` gave it), with
        ``offset``/``scale`` from an evenly spaced numeric coordinate (an ``axis`` vector
        for an uneven one, an index axis when there is no numeric coordinate), ``units``
        and ``navigate`` from the coordinate's attrs; ``metadata`` and
        ``original_metadata`` read back from :data:`METADATA_ATTR`; ``Signal.quantity``
        from the CF ``long_name`` and ``units`` attributes (other attrs go to
        ``original_metadata["xarray_attrs"]``); the title from the DataArray's name.
    """
    xr = _xarray()
    if not isinstance(dataarray, xr.DataArray):
        raise TypeError(
            f"Expected an xarray.DataArray; got an instance of {type(dataarray).__name__}"
        )
    navigation = None
    if navigation_dims is not None:
        navigation = {navigation_dims} if isinstance(navigation_dims, str) else set(
            navigation_dims)
        unknown = sorted(str(d) for d in navigation - set(dataarray.dims))
        if unknown:
            raise ValueError(f"navigation_dims names {', '.join(unknown)}, which the "
                             f"DataArray does not have (its dims: {dataarray.dims})")
    axes = []
    for i, (dim, size) in enumerate(zip(dataarray.dims, dataarray.shape, strict=True)):
        coord = dataarray.coords.get(dim)
        axis = _axis_from_coord(str(dim), int(size), coord)
        if navigation is not None:
            axis["navigate"] = dim in navigation
        axis["index_in_array"] = i
        axes.append(axis)
    attrs = dict(dataarray.attrs)
    metadata: Any = attrs.pop("metadata", None)  # lazyio < 0.2 kept the trees as dicts
    original: Any = attrs.pop("original_metadata", None)
    text = attrs.pop(METADATA_ATTR, None)
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if isinstance(text, str):
        metadata, original = metadata_from_json(text)
    metadata = dict(metadata) if isinstance(metadata, dict) else {}
    original = dict(original) if isinstance(original, dict) else {}
    quantity = cf_to_quantity(attrs.pop("long_name", ""), attrs.pop("units", ""))
    if quantity:
        metadata["Signal"] = {**(metadata.get("Signal") or {}), "quantity": quantity}
    if attrs:
        original.setdefault("xarray_attrs", attrs)
    title = "" if dataarray.name is None else str(dataarray.name)
    stored = str((metadata.get("General") or {}).get("title") or "")
    if title and _safe_name(stored) != title:  # a renamed DataArray: its name is the title
        metadata["General"] = {**(metadata.get("General") or {}), "title": title}
    return make_signal_dict(dataarray.data, axes, metadata, original)
