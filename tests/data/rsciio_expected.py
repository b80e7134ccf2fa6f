"""Decode the ``tests/data/rsciio/<name>.expected.json`` files.

Each JSON file holds what RosettaSciIO 0.15.0's ``file_reader(path, lazy=False)`` returned for
``tests/data/rsciio/<name>`` (see ``make_rsciio_fixtures.py``). Only ``json`` and ``numpy`` are
used here; nothing is unpickled (``np.load(..., allow_pickle=False)``).

Encoding (produced by ``make_rsciio_fixtures.to_jsonable``):

* ``{"__ndarray__": [...], "dtype": str, "shape": [...]}``: a numpy array, flattened in C order.
  ``dtype`` is ``dtype.str`` (byte order kept, e.g. ``">f4"``); complex items are
  ``[real, imag]``; ``"S"``/``"V"`` items are ``{"__bytes__": ...}``; ``"object"`` arrays hold
  encoded items (ragged data: one array per item); a structured dtype is a list of
  ``[field, dtype.str]`` and each item a list of field values.
* ``{"__npy__": file, "dtype": str, "shape": [...]}``: the array stored in ``file`` (``.npy``).
* ``{"__npscalar__": value, "dtype": str}``: a numpy scalar (e.g. ``np.int64`` from an HDF5
  attribute); ``{"__bytes__": base64}``: ``bytes``; ``{"__tuple__": [...]}``: a tuple;
  ``{"__complex__": [re, im]}``: a Python complex.
* Anything else is plain JSON (``dict`` / ``list`` / ``str`` / ``int`` / ``float`` / ``bool`` /
  ``None``); non-finite floats appear as ``NaN`` / ``Infinity``, which ``json`` reads.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "rsciio"


def fixture_path(name: str) -> Path:
    """Path of the file (or zarr directory) written by RosettaSciIO, e.g. ``basic.hspy``."""
    return DATA_DIR / name


def manifest() -> dict:
    """``MANIFEST.json``: versions, per-file writer arguments, RosettaSciIO limitations."""
    return json.loads((DATA_DIR / "MANIFEST.json").read_text(encoding="utf-8"))


def fixture_names(fmt: str | None = None) -> list[str]:
    """Names of all fixture files, optionally only those of format ``"hspy"`` or ``"zspy"``."""
    files = manifest()["files"]
    return sorted(n for n, info in files.items() if fmt is None or info["format"] == fmt)


def load_data(name: str) -> np.ndarray:
    """The main ``data`` array of ``name`` as RosettaSciIO read it (non-object data only)."""
    return np.load(DATA_DIR / f"{name}.data.npy", allow_pickle=False)


def _dtype(spec):
    if isinstance(spec, list):
        return np.dtype([(str(field), str(dt)) for field, dt in spec])
    if spec == "object":
        return np.dtype(object)
    return np.dtype(spec)


def _item(value, dtype):
    if dtype.kind == "c":
        return complex(value[0], value[1])
    if dtype.kind in "SV":
        return decode(value)
    return value


def _array(obj):
    dtype = _dtype(obj["dtype"])
    shape = tuple(obj["shape"])
    items = obj["__ndarray__"]
    if dtype.kind == "O":
        out = np.empty(len(items), dtype=object)
        for i, value in enumerate(items):
            out[i] = decode(value)
        return out.reshape(shape)
    if dtype.names is not None:
        fields = [dtype.fields[f][0] for f in dtype.names]
        rows = [tuple(_item(v, dt) for v, dt in zip(row, fields, strict=True)) for row in items]
        return np.array(rows, dtype=dtype).reshape(shape)
    if dtype.kind in "cSV":
        items = [_item(v, dtype) for v in items]
    return np.array(items, dtype=dtype).reshape(shape)


def decode(obj):
    """Turn one decoded-JSON value back into the Python/numpy object RosettaSciIO returned."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__ndarray__" in obj:
        return _array(obj)
    if "__npy__" in obj:
        arr = np.load(DATA_DIR / obj["__npy__"], allow_pickle=False)
        if arr.dtype != _dtype(obj["dtype"]) or list(arr.shape) != obj["shape"]:
            raise ValueError(f"{obj['__npy__']}: {arr.dtype}{arr.shape} does not match {obj}")
        return arr
    if "__npscalar__" in obj:
        dtype = _dtype(obj["dtype"])
        value = obj["__npscalar__"]
        if dtype.kind == "c":
            return dtype.type(complex(value[0], value[1]))
        if dtype.kind == "V":
            return np.void(decode(value))
        return dtype.type(decode(value))
    if "__bytes__" in obj:
        return base64.b64decode(obj["__bytes__"])
    if "__tuple__" in obj:
        return tuple(decode(v) for v in obj["__tuple__"])
    if "__complex__" in obj:
        return complex(*obj["__complex__"])
    return {k: decode(v) for k, v in obj.items()}


def load_expected(name: str) -> list[dict]:
    """What ``rsciio.<format>.file_reader(fixture_path(name), lazy=False)`` returned."""
    text = (DATA_DIR / f"{name}.expected.json").read_text(encoding="utf-8")
    return decode(json.loads(text))
