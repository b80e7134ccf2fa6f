"""What a Zarr array's storage looks like: chunks, codecs, bytes stored."""

from __future__ import annotations

import zipfile

from lazyio.backends import StorageLayout
from lazyio.backends.zarr.codecs import describe_codecs
from lazyio.backends.zarr.stores import DirSpec, StoreSpec, ZipSpec, node_kind, open_store

__all__ = ["array_layout"]


def array_layout(spec: StoreSpec, path: str) -> StorageLayout:
    """Describe the array at ``path`` of the store ``spec`` from its metadata document."""
    _, fmt, meta = node_kind(open_store(spec), path)
    meta = meta or {}
    if fmt == 3:
        chunks = tuple(meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
                       or ()) or None
    else:
        chunks = tuple(meta.get("chunks") or ()) or None
    return StorageLayout(dataset="/" + path.strip("/"), chunks=chunks,
                         compression=describe_codecs(meta, fmt),
                         stored=_zarr_stored_bytes(spec, path))


def _zarr_stored_bytes(spec: StoreSpec, path: str) -> int | None:
    try:
        if isinstance(spec, DirSpec):
            location = spec.location
            return int(location.fs.du(f"{location.path.rstrip('/')}/{path.strip('/')}",
                                      total=True))
        if isinstance(spec, ZipSpec) and spec.location.local_path:
            prefix = path.strip("/") + "/"
            with zipfile.ZipFile(spec.location.local_path) as zf:
                return sum(i.compress_size for i in zf.infolist()
                           if i.filename.startswith(prefix))
    except (OSError, ValueError, NotImplementedError):
        return None
    return None
