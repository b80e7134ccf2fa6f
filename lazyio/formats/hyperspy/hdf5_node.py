"""The :class:`~lazyio.formats.hyperspy.node.Node` of an HDF5 group, through h5py.

Array data is read through :class:`~lazyio.backends.hdf5.sources.H5Source` (lazy and
eager alike, so damaged chunks are named the same way) and written through the target
the hspy plugin makes from the created dataset.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import h5py
import numpy as np

from lazyio.backends import to_dask
from lazyio.backends.chunking import Chunks
from lazyio.backends.hdf5.filters import creation_options, ensure_filters
from lazyio.backends.hdf5.sources import H5Source, check_inflation
from lazyio.backends.plan import lazy_whole
from lazyio.errors import FormatError, LazyioWarning, UnsafeFileError, translate
from lazyio.formats.hyperspy.node import METADATA_MAX_ITEMS, decode_strings, lazy_grid
from lazyio.location import Location

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["METADATA_MAX_ITEMS", "H5Node"]

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _changes_members(method: _Method) -> _Method:
    """Forget the node's cached members after ``method`` (which adds or removes some)."""
    @functools.wraps(method)
    def wrapper(self: H5Node, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            self._members = None

    return cast("_Method", wrapper)



class H5Node:
    """A group of an HDF5 file opened with h5py."""

    def __init__(
        self, group: h5py.Group, location: Location, path: str | None = None,
        allow_external: bool = False, seen: dict[tuple[Any, int], str] | None = None,
    ) -> None:
        self.group = group
        self.location = location
        # the path from the file's root: an external link's target has another name
        self.path = path or group.name
        self.where = str(location)
        self.allow_external = allow_external
        # groups met so far in this walk, by (file, address) -> the first path to them:
        # hard links can make a DAG whose paths double at every level (2**30 for a 40 KB
        # file) or a cycle; each group is decoded once, at its first path
        self.seen: dict[tuple[Any, int], str] = {} if seen is None else seen
        self._members: dict[str, str] | None = None

    def attrs(self) -> dict[str, Any]:
        out = {}
        for key in self.group.attrs:
            if not isinstance(key, str):  # h5py gives bytes for names that are not UTF-8
                raise FormatError(f"{self.where}: {self.path} has an attribute named {key!r}, "
                                  "which is not text")
            try:
                out[key] = self.group.attrs[key]
            except (OSError, TypeError, ValueError) as err:
                warnings.warn(
                    f"{self.where}: attribute {key!r} of {self.path} cannot be read ({err}); "
                    "skipped",
                    LazyioWarning,
                    stacklevel=2,
                )
        return out

    def members(self) -> dict[str, str]:
        # asked several times per group while a file is read (the experiment group three
        # times): walked once per node, forgotten by every method that writes
        if self._members is None:
            self._members = self._walk_members()
        return dict(self._members)

    def _walk_members(self) -> dict[str, str]:
        out = {}
        gid = self.group.id
        for name in self.group:
            if not isinstance(name, str):
                raise FormatError(f"{self.where}: {self.path} has a member named {name!r}, "
                                  "which is not text")
            encoded = name.encode()
            if (gid.links.get_info(encoded).type == h5py.h5l.TYPE_EXTERNAL
                    and not self.allow_external):
                link = self.group.get(name, getlink=True)
                raise UnsafeFileError(
                    f"{self.where}: {self._sub(name)} is an external link to "
                    f"{link.filename}; pass allow_external=True to follow it"
                )
            # the object's type and address without opening it (opening each member was
            # two thirds of the time of a lazy open)
            try:
                info = h5py.h5o.get_info(gid, encoded)
            except (KeyError, RuntimeError, OSError, ValueError):
                # a dangling or unreadable link: h5py decides, as before
                obj = self.group.get(name)
                if isinstance(obj, h5py.Group):
                    try:
                        opened = h5py.h5o.get_info(obj.id)
                    except (OSError, ValueError, RuntimeError):
                        opened = None
                    if opened is not None and self._seen_before(name, opened.fileno,
                                                                 opened.addr):
                        continue
                    out[name] = "group"
                elif isinstance(obj, h5py.Dataset):
                    out[name] = "array"
                continue
            if info.type == h5py.h5o.TYPE_GROUP:
                if self._seen_before(name, info.fileno, info.addr):
                    continue
                out[name] = "group"
            elif info.type == h5py.h5o.TYPE_DATASET:
                out[name] = "array"
        return out

    def _seen_before(self, name: str, fileno: Any, addr: int) -> bool:
        """Whether the group at ``(fileno, addr)`` was reached before by another path
        (then warn and skip it)."""
        key = (fileno, addr)
        path = self._sub(name)
        first = self.seen.setdefault(key, path)
        if first == path:
            return False
        warnings.warn(
            f"{self.where}: {path} is a hard link to {first}, already read; skipped (a "
            "file whose groups link each other would otherwise be walked exponentially)",
            LazyioWarning, stacklevel=4,
        )
        return True

    def _sub(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def _source(self, name: str, dset: h5py.Dataset) -> H5Source:
        # A dataset reached through an external link lives in another file: its byte
        # offsets mean nothing in ours, so it is read through h5py by its path from our root.
        foreign = dset.file.filename != self.group.file.filename or dset.name != self._sub(name)
        return H5Source.from_dataset(self.location, dset, name=self._sub(name) if foreign
                                     else None)

    def child(self, name: str) -> H5Node:
        return H5Node(self.group[name], self.location, self._sub(name), self.allow_external,
                      self.seen)

    def _dataset(self, name: str) -> h5py.Dataset:
        dset = self.group[name]
        if h5py.check_ref_dtype(dset.dtype) is not None:
            raise FormatError(
                f"{self.where}: {self._sub(name)} holds HDF5 object references, not data"
            )
        return dset

    def _check_metadata_size(self, name: str, dset: h5py.Dataset) -> None:
        if dset.size > METADATA_MAX_ITEMS:
            raise FormatError(
                f"{self.where}: {self._sub(name)} declares {dset.size} elements of "
                f"{dset.dtype}, read whole at load as metadata; lazyio refuses more than "
                f"{METADATA_MAX_ITEMS} (a damaged or hostile file?)"
            )

    def read_array(self, name: str) -> np.ndarray:
        dset = self._dataset(name)
        numeric = dset.dtype.kind in "biufc"
        if not numeric or name.startswith(("_list_", "_tuple_")):
            self._check_metadata_size(name, dset)
        if numeric:
            # the same decoding path as lazy reads: corrupt chunks are named, not opaque
            return self._source(name, dset)[()]
        # h5py reads these: its filters inflate without bound, lazyio's check first
        check_inflation(self.location, dset)
        ensure_filters(dset)
        with translate(self.where, scope="chunk", what=f"dataset {dset.name}"):
            if h5py.check_string_dtype(dset.dtype) is not None:
                return decode_strings(np.asarray(dset.asstr()[()], dtype=object))
            return decode_strings(np.asarray(dset[()]))

    def lazy_array(self, name: str, chunks: Chunks = "auto") -> da.Array:
        dset = self._dataset(name)
        if h5py.check_string_dtype(dset.dtype) is not None:
            return lazy_whole(self.read_array(name))
        source = self._source(name, dset)
        grid = lazy_grid(self, name, source, chunks,
                         remote=source.location.local_path is None)
        return to_dask(source, grid, prefix=f"hspy-{name}", token_extra=source.token)

    # writing -------------------------------------------------------------------------

    def set_attrs(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            try:
                self.group.attrs[key] = value
            except (TypeError, ValueError) as err:
                warnings.warn(
                    f"{self.where}: cannot store {key!r} = {value!r} in {self.path} ({err})",
                    LazyioWarning,
                    stacklevel=2,
                )

    @_changes_members
    def require_group(self, name: str) -> H5Node:
        return H5Node(self.group.require_group(name), self.location, self._sub(name))

    @_changes_members
    def delete(self, name: str) -> None:
        if name in self.group:
            del self.group[name]

    @_changes_members
    def write_small_array(self, name: str, data: np.ndarray, **options: Any) -> None:
        self.delete(name)
        if data.dtype.kind == "U":
            if data.dtype.itemsize and all(str(v).isascii() for v in data.flat):
                # as HyperSpy writes them (fixed-length ASCII), which RosettaSciIO reads
                # back as a unicode array (a text marker's ``texts``); variable-length
                # UTF-8 came back as an object array
                self.group.create_dataset(name, data=data.astype("S"))
                return
            self.group.create_dataset(  # not ASCII: HyperSpy cannot write it at all
                name, data=data.astype(object), dtype=h5py.string_dtype()
            )
            return
        if data.dtype.kind == "O":
            self._write_ragged(name, data, **options)
            return
        kwargs = creation_options(options) if data.ndim and data.size > 1 else {}
        self.group.create_dataset(name, data=data, **kwargs)

    @_changes_members
    def _write_ragged(self, name: str, data: np.ndarray, **options: Any) -> None:
        flat = np.empty(data.shape, dtype=object)
        shapes = np.empty(data.shape, dtype=object)
        inner = None
        for idx in np.ndindex(data.shape):
            item = np.asarray(data[idx])
            if item.dtype.kind in "US":
                item = item.astype(object)
            inner = inner or item.dtype
            flat[idx] = item.ravel()
            shapes[idx] = np.asarray(item.shape, dtype=np.int64)
        if inner is None or inner.kind == "O":
            dtype = h5py.vlen_dtype(h5py.string_dtype())
        else:
            dtype = h5py.vlen_dtype(inner)
        # chunked, as HyperSpy's reader wraps these datasets with their chunks
        kwargs = {"chunks": tuple(max(1, s) for s in data.shape), **creation_options(options)}
        if not data.shape:
            kwargs = {}
        self.group.create_dataset(name, data=flat, dtype=dtype, **kwargs)
        self.delete(f"_ragged_shapes_{name}")
        self.group.create_dataset(
            f"_ragged_shapes_{name}", data=shapes, dtype=h5py.vlen_dtype(np.int64), **kwargs
        )

    @_changes_members
    def create_array(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any],
        chunks: tuple[int, ...] | None, **options: Any,
    ) -> h5py.Dataset:
        self.delete(name)
        kwargs = creation_options(options)
        if not shape or math.prod(shape) == 0:
            chunks, kwargs = None, {}
        return self.group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, **kwargs)
