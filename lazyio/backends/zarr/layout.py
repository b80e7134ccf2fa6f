"""What a Zarr array's storage looks like: chunks, codecs, bytes stored."""

from __future__ import annotations

import zipfile
from typing import Any

from lazyio.backends import StorageLayout
from lazyio.backends.zarr.stores import StoreSpec, node_kind, open_store

__all__ = ["array_layout"]


def _codec_name(config: dict[str, Any]) -> str:
    # Zarr v2: {"id": ..., options}; Zarr v3: {"name": ..., "configuration": {...}}
    name = config.get("id") or config.get("name") or "?"
    options = config.get("configuration", config)
    shown = {k: v for k, v in options.items()
             if k not in ("id", "name", "blocksize", "typesize", "endian", "checksum")
             and not isinstance(v, dict | list)}
    args = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"{name}({args})" if args else str(name)


def array_layout(spec: StoreSpec, path: str) -> StorageLayout:
    """Describe the array at ``path`` of the store ``spec`` from its metadata document."""
    _, fmt, meta = node_kind(open_store(spec), path)
    meta = meta or {}
    if fmt == 3:
        chunks = tuple(meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
                       or ()) or None
        codecs = []
        for codec in meta.get("codecs") or []:
            if codec.get("name") == "sharding_indexed":
                conf = codec.get("configuration", {})
                inner = [_codec_name(c) for c in conf.get("codecs", [])
                         if c.get("name") not in ("bytes", "transpose")]
                codecs.append(f"sharding(chunks={tuple(conf.get('chunk_shape', ()))}"
                              + (f": {'+'.join(inner)}" if inner else "") + ")")
            elif codec.get("name") not in ("bytes", "transpose"):
                codecs.append(_codec_name(codec))
    else:
        chunks = tuple(meta.get("chunks") or ()) or None
        codecs = [_codec_name(c) for c in (*(meta.get("filters") or ()),
                                           meta.get("compressor")) if c]
    return StorageLayout(dataset="/" + path.strip("/"), chunks=chunks,
                         compression="+".join(codecs) or None,
                         stored=_zarr_stored_bytes(spec, path))


def _zarr_stored_bytes(spec: StoreSpec, path: str) -> int | None:
    location = getattr(spec, "location", None)
    try:
        if spec.kind == "dir" and location is not None:
            return int(location.fs.du(f"{location.path.rstrip('/')}/{path.strip('/')}",
                                      total=True))
        if spec.kind == "zip" and location is not None and location.local_path:
            prefix = path.strip("/") + "/"
            with zipfile.ZipFile(location.local_path) as zf:
                return sum(i.compress_size for i in zf.infolist()
                           if i.filename.startswith(prefix))
    except (OSError, ValueError, NotImplementedError):
        return None
    return None
