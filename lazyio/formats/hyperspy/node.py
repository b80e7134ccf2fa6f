"""One interface over HDF5 and Zarr groups, for the tree hspy and zspy share.

The tree logic (:mod:`~lazyio.formats.hyperspy.decode`, :mod:`~lazyio.formats.hyperspy.encode`)
only sees :class:`Node`; :class:`~lazyio.formats.hyperspy.hdf5_node.H5Node` (h5py) and
:class:`~lazyio.formats.hyperspy.zarr_node.ZarrNode` (zarr) translate to the libraries, each
in its own module so that reading one format never imports the other's library.
Array data never goes through the Node as an open dataset: lazy reads get a picklable
chunk source and writes a picklable target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lazyio.backends.chunking import BlockChunks, Chunks, aligned_chunks, read_block_bytes
from lazyio.errors import FormatError

if TYPE_CHECKING:
    import dask.array as da

    from lazyio.backends import ChunkSource
    from lazyio.formats.hyperspy.hdf5_node import H5Node
    from lazyio.formats.hyperspy.zarr_node import ZarrNode

__all__ = [
    "METADATA_MAX_ITEMS",
    "H5Node",
    "Node",
    "ZarrNode",
    "decode_strings",
    "has_subarray_fields",
    "lazy_grid",
]

#: The most elements of an array read whole at load as metadata (a ``_list_``/``_tuple_``
#: or an array of strings), in either format: a 20 KB file can declare 5e7 never-written
#: elements, which ``tolist()`` turned into 2.6 GB at lazy load. 4 Mi elements make
#: ~130 MB of Python floats.
METADATA_MAX_ITEMS = 1 << 22


class Node(Protocol):
    """A group of a hierarchical file."""

    path: str
    where: str  # the file, for error messages

    def attrs(self) -> dict[str, Any]: ...
    def members(self) -> dict[str, str]: ...  # name -> "group" | "array"
    def child(self, name: str) -> Node: ...
    def read_array(self, name: str) -> np.ndarray: ...
    def lazy_array(self, name: str, chunks: Chunks = "auto") -> da.Array: ...
    def set_attrs(self, values: dict[str, Any]) -> None: ...
    def require_group(self, name: str) -> Node: ...
    def delete(self, name: str) -> None: ...
    def write_small_array(self, name: str, data: np.ndarray, **options: Any) -> None: ...
    def create_array(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any],
        chunks: tuple[int, ...] | None, **options: Any,
    ) -> Any: ...


def decode_strings(values: np.ndarray) -> np.ndarray:
    """Turn byte-string or object-of-str arrays into numpy unicode arrays."""
    if values.dtype.kind == "S":
        try:
            return values.astype("U")
        except UnicodeDecodeError:
            return values  # binary payloads stay bytes
    if values.dtype.kind == "O" and values.size and all(isinstance(v, str | bytes)
                                                        for v in values.flat):
        return np.array([v.decode() if isinstance(v, bytes) else v for v in values.flat],
                        dtype="U").reshape(values.shape)
    if values.dtype.kind == "T":  # numpy StringDType from zarr-python 3
        return np.array(values.tolist(), dtype="U").reshape(values.shape)
    return values


def has_subarray_fields(dtype: np.dtype[Any]) -> bool:
    """Structured dtypes with sub-array or nested fields, which zarr-python 3 cannot describe.

    HyperSpy 1.x stored model parameter maps so (``values``/``std`` of shape ``(n,)``).
    """
    if dtype.names is None:
        return False
    return any(
        sub.shape != () or sub.names is not None
        for sub, *_ in (dtype.fields or {}).values()
    )


def lazy_grid(
    node: Node, name: str, source: ChunkSource, chunks: Chunks, remote: bool = False
) -> BlockChunks:
    """The dask chunks of a lazy read of array ``name`` of ``node``.

    Blocks are whole storage chunks (:func:`~lazyio.backends.chunking.aligned_chunks`),
    smaller for remote data (:func:`~lazyio.backends.chunking.read_block_bytes`).

    Raises
    ------
    FormatError
        If the file's own shape or chunks make no valid grid (a damaged or hostile
        header); a bad request of the caller stays a ``ValueError``.
    """
    storage = getattr(source, "storage_chunks", None)
    try:
        return aligned_chunks(source.shape, storage, source.dtype, chunks,
                              limit=read_block_bytes(remote))
    except ValueError as err:
        if chunks is not None and not (isinstance(chunks, str) and chunks == "auto"):
            raise  # the caller's request, not the file, is at fault
        raise FormatError(f"{node.where}: {node.path}/{name}: {err}") from err


def __getattr__(name: str) -> Any:
    # H5Node and ZarrNode were defined here; each now lives in its own module so that one
    # format does not import the other's library. Imported on first use only.
    if name == "H5Node":
        from lazyio.formats.hyperspy.hdf5_node import H5Node

        return H5Node
    if name == "ZarrNode":
        from lazyio.formats.hyperspy.zarr_node import ZarrNode

        return ZarrNode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
