"""The ``lazyio`` engine of xarray: ``xr.open_dataset(path_or_url, engine="lazyio")``.

Registered under the ``xarray.backends`` entry-point group (see ``pyproject.toml``), so
once lazyio is installed::

    xr.open_dataarray("scan.hspy", engine="lazyio", chunks={})
    xr.open_dataset("s3://bucket/scan.zspy", engine="lazyio",
                    storage_options={"anon": True})

open .hspy, .zspy, .npy and h5USID files (format detected from the content), locally or
at any fsspec URL. Each signal is one variable (named after its title) with
:func:`lazyio.to_xarray`'s coordinates and CF attributes. Nothing is read until values are
asked for; with ``chunks={}`` xarray's dask chunks are the file's, as lazyio reads it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from lazyio.interop import _safe_name, to_xarray

__all__ = ["LazyioBackendArray", "LazyioBackendEntrypoint"]

# What the engine claims by name alone; other files are claimed only when lazyio's content
# detection recognises them (an .h5 file may as well be netCDF).
_EXTENSIONS = (".hspy", ".zspy", ".npy")


class LazyioBackendArray(BackendArray):
    """A lazyio dask array behind xarray's lazy indexing.

    Each read computes the asked-for slice of the dask array on the synchronous
    scheduler: the blocks it needs are read in the calling thread (or dask task), so a
    read never starts a nested thread pool or submits to a cluster from a worker.
    """

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key: Any) -> Any:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._raw_indexing_method
        )

    def _raw_indexing_method(self, key: tuple[Any, ...]) -> Any:
        import dask

        part = self.array[key]
        if hasattr(part, "dask"):
            (part,) = dask.compute(part, scheduler="sync")
        return np.asarray(part)


def _variable_names(signals: list[dict[str, Any]]) -> list[str]:
    """One variable name per signal: its title, made unique (``signal_i`` without one)."""
    names: list[str] = []
    for i, signal in enumerate(signals):
        title = _safe_name(str(signal["metadata"].get("General", {}).get("title") or ""))
        name = title or f"signal_{i}"
        while name in names:
            name = f"{name}_{i}"
        names.append(name)
    return names


def signals_to_dataset(signals: list[dict[str, Any]], *, attrs: dict[str, Any] | None = None
                       ) -> Any:
    """Signal dictionaries as one :class:`xarray.Dataset`, one variable per signal.

    A dim two signals share with different coordinates is renamed ``<dim>_<i>`` in the
    later one, so each keeps its own axis.
    """
    import xarray as xr

    variables: dict[str, Any] = {}
    coords: dict[str, Any] = {}
    for name, signal in zip(_variable_names(signals), signals, strict=True):
        arr = to_xarray(signal)
        rename = {}
        for dim in arr.dims:
            taken = coords.get(dim)
            if taken is not None and not taken.identical(arr.coords[dim].variable):
                new = f"{dim}_{len(variables)}"
                while new in coords:
                    new += "_"
                rename[dim] = new
        if rename:
            arr = arr.rename(rename)
        for dim in arr.dims:
            coords.setdefault(dim, arr.coords[dim].variable)
        data = arr.variable.data
        chunks = getattr(data, "chunksize", None)
        variable = xr.Variable(
            arr.dims, indexing.LazilyIndexedArray(LazyioBackendArray(data))
            if hasattr(data, "dask") else data, attrs=arr.attrs)
        if chunks is not None:
            # xarray's chunks={} uses these: one xarray task per lazyio block
            variable.encoding["preferred_chunks"] = dict(
                zip(arr.dims, (int(c) for c in chunks), strict=True))
        variables[name] = variable
    return xr.Dataset(variables, coords=coords, attrs=attrs or {})


class LazyioBackendEntrypoint(BackendEntrypoint):
    """xarray's ``lazyio`` engine: HyperSpy .hspy/.zspy, .npy and h5USID files, local or
    at any fsspec URL, opened lazily."""

    description = "HyperSpy .hspy/.zspy, .npy and h5USID files through lazyio (lazy, remote)"
    url = "https://github.com/lazyio/lazyio/blob/main/docs/integration.md"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "storage_options",
                               "format", "untrusted", "allow_external")

    def open_dataset(
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        format: str | None = None,
        untrusted: bool | float = False,
        allow_external: bool = False,
    ) -> Any:
        """Open a file's signals as a Dataset (see :func:`lazyio.load` for the options)."""
        from lazyio._api import load

        signals = [s for s in load(filename_or_obj, format=format, lazy=True,
                                   storage_options=storage_options, untrusted=untrusted,
                                   allow_external=allow_external)
                   if isinstance(s, dict) and "data" in s]  # standalone models: no data
        ds = signals_to_dataset(signals)
        if drop_variables is not None:
            drop = [drop_variables] if isinstance(drop_variables, str) else list(drop_variables)
            ds = ds.drop_vars(drop, errors="ignore")
        return ds

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """True for the extensions lazyio writes, and for a file whose content lazyio's
        detection recognises (an HDF5 file with HyperSpy or USID markers, ...)."""
        if not isinstance(filename_or_obj, str | os.PathLike):
            return False
        path = os.fspath(filename_or_obj)
        if os.path.splitext(path.rstrip("/"))[1].lower() in _EXTENSIONS:
            return True
        from lazyio.formats import HEAD_BYTES, available_plugins
        from lazyio.location import as_location

        try:
            location = as_location(path)
            if not location.exists() or location.isdir():
                return False
            head = location.read_head(HEAD_BYTES)
            return any(plugin.sniff(location, head) for plugin in available_plugins().values())
        except Exception:  # noqa: BLE001 - any failure to look is "not ours"; xarray asks the next engine
            return False
