"""Dictionary -> tree: HyperSpy's metadata encoding, written through a :class:`Node`.

The inverse of :mod:`~lazyio.formats.hyperspy.decode` (its docstring describes the encoding).
Large arrays are not written here: they are handed to ``write_array``, which the caller
turns into one streamed :func:`dask.array.store` at the end.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from lazyio.backends.plan import is_dask_array
from lazyio.errors import LazyioWarning
from lazyio.formats.hyperspy.node import Node

__all__ = ["dict_to_group"]

ArrayWriter = Callable[[Node, str, Any], None]


def _homogenise(values: list[Any] | tuple[Any, ...]) -> np.ndarray | None:
    """The items as a 1-D numpy array under numpy's safe casting, or None if they are not.

    Mixed numbers and strings become strings, as HyperSpy documents.
    """
    if any(isinstance(v, dict | list | tuple | np.ndarray | bytes) or is_dask_array(v)
           or v is None for v in values):
        return None
    try:
        arr = np.array(values)
    except (ValueError, TypeError):
        return None
    if arr.dtype.kind == "O" or arr.ndim != 1:
        return None
    return arr


def dict_to_group(
    mapping: dict[str, Any],
    node: Node,
    write_array: ArrayWriter,
    **options: Any,
) -> None:
    """Encode ``mapping`` into ``node``.

    ``write_array(node, key, array)`` stores numpy/dask arrays (so the caller decides
    chunking, compression and streaming); ``options`` reach small datasets.
    """
    attrs: dict[str, Any] = {}
    for key, value in mapping.items():
        key = str(key)
        if isinstance(value, dict):
            dict_to_group(value, node.require_group(key), write_array, **options)
        elif isinstance(value, np.ndarray) or is_dask_array(value):
            if isinstance(value, np.ndarray) and value.dtype.kind in "UO":
                node.write_small_array(key, value, **options)
            else:
                write_array(node, key, value)
        elif value is None:
            attrs[key] = "_None_"
        elif isinstance(value, bytes):
            if b"\x00" in value:
                attrs[f"_bs_{key}"] = np.void(value)
            else:
                try:
                    attrs[key] = value.decode()
                except UnicodeDecodeError:
                    attrs[f"_bs_{key}"] = np.void(value)
        elif isinstance(value, str):
            attrs[key] = value
        elif isinstance(value, list | tuple):
            kind = "_list_" if isinstance(value, list) else "_tuple_"
            if not value:
                attrs[f"{kind}empty_{key}"] = "_None_"
                continue
            arr = _homogenise(value)
            if arr is None:
                items = {str(i): v for i, v in enumerate(value)}
                group = node.require_group(f"{kind}{len(value)}_{key}")
                dict_to_group(items, group, write_array, **options)
            else:
                node.write_small_array(f"{kind}{key}", arr)
        elif isinstance(value, bool | int | float | complex | np.generic):
            attrs[key] = value
        else:
            warnings.warn(
                f"{node.where}: {node.path}/{key} of type {type(value).__name__} cannot be "
                "stored; skipped",
                LazyioWarning,
                stacklevel=2,
            )
    node.set_attrs(attrs)
