"""Tree -> dictionary: HyperSpy's metadata encoding, read through a :class:`Node`.

The encoding (shared by .hspy and .zspy): a dict is a group; scalars and strings are
attributes; ``None`` is the string ``"_None_"``; empty lists and tuples are attributes
``_list_empty_<key>`` / ``_tuple_empty_<key>``; binary strings with NUL bytes are
``_bs_<key>`` attributes; homogeneous lists and tuples are datasets ``_list_<key>`` /
``_tuple_<key>``; other lists and tuples are groups ``_list_<N>_<key>`` /
``_tuple_<N>_<key>`` whose children are named by position; signals inside metadata are
groups ``_sig_<name>``; ragged arrays store their item shapes in
``_ragged_shapes_<key>``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from lazyio.backends.chunking import Chunks
from lazyio.backends.plan import is_dask_array, plan, planned
from lazyio.errors import FormatError
from lazyio.formats.hyperspy.node import Node, decode_strings
from lazyio.formats.hyperspy.versions import parse_old_datetime

__all__ = ["decode_attribute", "group_to_dict", "read_dataset"]

# HyperSpy metadata is a few levels deep; a hostile file could nest thousands of groups to
# exhaust the stack or (zip stores list every member per group) the CPU.
MAX_DEPTH = 256
_SEQUENCE_GROUP = re.compile(r"_(list|tuple)_(\d+)_(.*)", re.DOTALL)


def decode_attribute(value: Any) -> Any:
    """An attribute value as Python: text decoded, ``"_None_"`` to ``None``, bools."""
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return value
    if isinstance(value, str | np.str_):
        return None if value == "_None_" else str(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        value = value.astype("U")
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        value = np.array([v.decode() if isinstance(v, bytes) else v for v in value.flat],
                         dtype="U" if all(isinstance(v, str | bytes) for v in value.flat)
                         else object).reshape(value.shape)
    return value


def _unflatten(data: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    out = np.empty(data.shape, dtype=object)
    for idx in np.ndindex(data.shape):
        item = decode_strings(np.asarray(data[idx]))
        out[idx] = np.reshape(item, tuple(int(s) for s in shapes[idx]))
    return out


def _ragged_shapes_key(node: Node, key: str, members: dict[str, str]) -> str | None:
    if f"_ragged_shapes_{key}" in members:
        return f"_ragged_shapes_{key}"
    if key == "data" and "ragged_shapes" in members:  # files of RosettaSciIO <= 0.1
        return "ragged_shapes"
    return None


def read_dataset(
    node: Node, key: str, *, lazy: bool, chunks: Chunks = "auto", members: dict[str, str] | None
    = None,
) -> Any:
    """Read dataset ``key`` of ``node``: numpy (eager) or dask (lazy), ragged restored."""
    members = node.members() if members is None else members
    shapes_key = _ragged_shapes_key(node, key, members)
    if shapes_key is not None:
        if lazy:
            data = node.lazy_array(key, chunks)
            if planned():
                return plan(data.shape, object, data.chunks)
            import dask.array as da

            shapes = node.lazy_array(shapes_key, chunks=data.chunks).rechunk(data.chunks)
            return da.map_blocks(_unflatten, data, shapes, dtype=object)
        return _unflatten(node.read_array(key), node.read_array(shapes_key))
    if lazy:
        return node.lazy_array(key, chunks)
    return node.read_array(key)


def group_to_dict(
    node: Node,
    *,
    lazy: bool = False,
    read_signal: Any = None,
    chunks: Chunks = "auto",
) -> dict[str, Any]:
    """Decode a metadata group into a (nested) dictionary.

    ``read_signal(node) -> dict`` decodes ``_sig_`` groups (signals stored in metadata).
    """
    if node.path.count("/") > MAX_DEPTH:
        raise FormatError(
            f"{node.where}: metadata nested more than {MAX_DEPTH} levels deep "
            f"(at {node.path[:60]}...); refused"
        )
    out: dict[str, Any] = {}
    for key, raw in node.attrs().items():
        value = decode_attribute(raw)
        if key.startswith("_sig_"):
            continue
        if key.startswith("_list_empty_"):
            out[key[len("_list_empty_") :]] = []
        elif key.startswith("_tuple_empty_"):
            out[key[len("_tuple_empty_") :]] = ()
        elif key.startswith("_bs_"):
            out[key[len("_bs_") :]] = _to_bytes(raw)
        elif key.startswith(("_datetime_date", "_datetime_time")):
            new_key, iso = parse_old_datetime(key, value, f"{node.where}: {node.path}")
            out[new_key] = iso
        else:
            out[key] = value
    members = node.members()
    for key, kind in members.items():
        if key.startswith("_ragged_shapes_") or (key == "ragged_shapes" and "data" in members):
            continue
        if kind == "array":
            if key.startswith("_list_") and not _SEQUENCE_GROUP.fullmatch(key):
                out[key[len("_list_") :]] = node.read_array(key).tolist()
            elif key.startswith("_tuple_") and not _SEQUENCE_GROUP.fullmatch(key):
                out[key[len("_tuple_") :]] = tuple(node.read_array(key).tolist())
            else:
                out[key] = _small_or_lazy(node, key, lazy, members)
            continue
        child = node.child(key)
        if key.startswith("_sig_"):
            if read_signal is None:
                raise TypeError("group_to_dict needs read_signal to decode _sig_ groups")
            out[key] = read_signal(child)
        elif key.startswith("_hspy_AxesManager_"):
            out[key] = _ordered_values(group_to_dict(child, lazy=lazy, read_signal=read_signal))
        elif (match := _SEQUENCE_GROUP.fullmatch(key)) is not None:
            kind_name, _, name = match.groups()
            items = _ordered_values(group_to_dict(child, lazy=lazy, read_signal=read_signal))
            out[name] = items if kind_name == "list" else tuple(items)
        else:
            out[key] = group_to_dict(child, lazy=lazy, read_signal=read_signal)
    return out


def _small_or_lazy(node: Node, key: str, lazy: bool, members: dict[str, str]) -> Any:
    value = read_dataset(node, key, lazy=lazy, members=members)
    if is_dask_array(value) and value.dtype.kind in "SUO":
        return value.compute()
    return value


def _ordered_values(items: dict[str, Any]) -> list[Any]:
    """Children named by position, in numeric order (``"10"`` after ``"9"``)."""

    def position(key: str) -> tuple[int, Any]:
        return (0, int(key)) if key.isdigit() else (1, key)

    return [items[k] for k in sorted(items, key=position)]


def _to_bytes(raw: Any) -> bytes:
    if isinstance(raw, np.void | np.ndarray):
        return raw.tobytes()
    if isinstance(raw, list):  # lazyio's zspy: JSON has no bytes
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode()
    return bytes(raw)
