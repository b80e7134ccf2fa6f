"""Write reference .hspy / .zspy files with RosettaSciIO 0.15.0 and record what it reads back.

The files in ``tests/data/rsciio/`` let lazyio's tests check that lazyio reads HyperSpy files
exactly like RosettaSciIO does. For every file ``<name>`` (e.g. ``basic.hspy``) this script
writes:

* ``<name>``                  the file (or zarr directory) written by ``rsciio.*.file_writer``;
* ``<name>.expected.json``    what ``rsciio.*.file_reader(path, lazy=False)`` returns, in a
                              JSON-safe form (decode it with ``tests/data/rsciio_expected.py``);
* ``<name>.data.npy``         the main ``data`` array of the first signal (not for object /
                              ragged data; ``np.save`` of a non-object array pickles nothing).

It also writes ``MANIFEST.json`` (one entry per file: kind, format, writer keyword arguments,
rsciio/zarr/h5py versions, notes) and ``TREES.txt`` (an ``h5ls -r``-like dump of every .hspy
file with dataset creation properties and attribute types, and the ``.zarray``/``.zattrs``
content of every .zspy store).

RosettaSciIO's zspy plugin needs zarr 2, so run this from a throwaway virtual environment,
never from the project's ``.venv`` (which has zarr 3)::

    python3 -m venv /tmp/rsciio-zarr2-venv
    /tmp/rsciio-zarr2-venv/bin/pip install "rosettasciio[hdf5,zspy]==0.15.0" \
        "zarr>=2.18,<3" "numcodecs<0.16" msgpack h5py
    cd /work/main   # the repository root
    /tmp/rsciio-zarr2-venv/bin/python tests/data/make_rsciio_fixtures.py

The script is rerunnable: it deletes and recreates ``tests/data/rsciio/``. Rerunning it gives
byte-identical files except ``basic_zip.zspy`` (zip members carry modification times).
"""

# ruff: noqa: T201  (this is a script: it reports what it wrote)
from __future__ import annotations

import base64
import copy
import json
import shutil
import sys
import warnings
import zipfile
from importlib.metadata import version as dist_version
from pathlib import Path

import h5py
import numpy as np
import rsciio
import zarr
from rsciio.hspy import file_reader as hspy_reader
from rsciio.hspy import file_writer as hspy_writer
from rsciio.zspy import file_reader as zspy_reader
from rsciio.zspy import file_writer as zspy_writer

warnings.filterwarnings("ignore", message="The NestedDirectoryStore is deprecated")
# zarr 2's ZipStore appends a new member each time a .zattrs is updated (reported in TREES.txt)
warnings.filterwarnings("ignore", message="Duplicate name:")

HERE = Path(__file__).resolve().parent
OUT = HERE / "rsciio"

MAX_TOTAL_BYTES = 3 * 1024 * 1024
MAX_FILE_COUNT = 2000


# --------------------------------------------------------------------------------------
# Signal dictionaries shaped like what HyperSpy passes to the writer
# (``BaseSignal._to_dictionary(add_models=True)`` + ``package_info``).
# --------------------------------------------------------------------------------------


def uniform_axis(name, units, size, scale=1.0, offset=0.0, navigate=False, is_binned=False):
    return {
        "_type": "UniformDataAxis",
        "name": name,
        "units": units,
        "navigate": navigate,
        "is_binned": is_binned,
        "size": size,
        "scale": scale,
        "offset": offset,
    }


def signal_dict(
    data,
    axes,
    title,
    *,
    metadata_extra=None,
    original_metadata=None,
    learning_results=None,
    models=None,
    ragged=False,
    package_info=None,
    signal_type="",
):
    """The dict HyperSpy's ``io.save`` hands to ``file_writer``."""
    metadata = {
        "_HyperSpy": {
            "Folding": {
                "original_axes_manager": None,
                "original_shape": None,
                "signal_unfolded": False,
                "unfolded": False,
            }
        },
        "General": {"title": title},
        "Signal": {"signal_type": signal_type},
    }
    for key, value in (metadata_extra or {}).items():
        if isinstance(value, dict) and isinstance(metadata.get(key), dict):
            metadata[key].update(value)
        else:
            metadata[key] = value
    return {
        "data": data,
        "axes": axes,
        "metadata": metadata,
        "original_metadata": original_metadata if original_metadata is not None else {},
        "tmp_parameters": {},
        "attributes": {"_lazy": False, "ragged": ragged},
        "learning_results": learning_results if learning_results is not None else {},
        "models": models if models is not None else {},
        "package_info": package_info or {"package": "", "package_version": ""},
    }


def nested_signal_dict(data, axes, title):
    """What ``DictionaryTreeBrowser.as_dictionary`` stores under ``_sig_<key>``.

    It is ``BaseSignal._to_dictionary()`` (no ``models``, no ``package_info``).
    """
    d = signal_dict(data, axes, title)
    del d["models"], d["package_info"]
    return d


def make_basic(include_nul_bytes=True):
    rng = np.random.default_rng(0)
    data = rng.random((4, 5, 16), dtype=np.float32)
    axes = [
        uniform_axis("y", "nm", 4, scale=0.5, offset=-1.0, navigate=True),
        uniform_axis("x", "nm", 5, scale=0.25, offset=2.0, navigate=True),
        uniform_axis("Energy", "eV", 16, scale=0.1, offset=100.0, navigate=False),
    ]
    misc = {
        "nested": {"level1": {"level2": {"leaf": "deep", "number": 7}}, "sibling": 1.5},
        "mixed_list": [1, 2.5, "three"],
        "int_list": [1, 2, 3],
        "float_list": [0.5, 1.5, -2.25],
        "bool_list": [True, False, True],
        "str_list": ["alpha", "beta", "déjà vu"],
        "nested_list": [[1, 2], [3, 4]],
        "dict_list": [{"a": 1}, {"b": "x"}],
        # >10 items: rsciio rebuilds lists from groups "0".."11" sorted as *strings*
        "long_dict_list": [{"i": i} for i in range(12)],
        "a_tuple": (1, 2, 3),
        "str_tuple": ("u", "v"),
        "empty_list": [],
        "empty_tuple": (),
        "nothing": None,
        "bytes_plain": b"plain bytes",
        "unicode_text": "µm \u2013 Å",  # \u2013 is an en dash
        "empty_str": "",
        "flag_true": True,
        "flag_false": False,
        "an_int": 42,
        "big_int": 2**40 + 1,
        "negative_int": -7,
        "a_float": 3.25,
        "np_float32": np.float32(1.5),
        "np_int16": np.int16(-3),
        "an_array": np.arange(6).reshape(2, 3),
        "float_array": np.linspace(0.0, 1.0, 5),
    }
    if include_nul_bytes:
        misc["bytes_with_nul"] = b"ab\x00cd"
    metadata_extra = {
        "General": {
            "original_filename": "basic.raw",
            "date": "2024-01-02",
            "time": "03:04:05",
            "FileIO": {
                "0": {
                    "operation": "save",
                    "hyperspy_version": "2.3.0",
                    "io_plugin": "rsciio.hspy",
                    "timestamp": "2024-01-02T03:04:05+00:00",
                }
            },
        },
        "Signal": {"quantity": "Intensity (counts)"},
        "Misc": misc,
    }
    original_metadata = {
        "Header": {"version": 3, "detector": "det-1", "Gain": {"value": 1.5, "units": "e/ADU"}},
        "Raw": {"values": [10, 20, 30], "comment": "from original file"},
    }
    return signal_dict(
        data,
        axes,
        "basic",
        metadata_extra=metadata_extra,
        original_metadata=original_metadata,
        package_info={"package": "hyperspy", "package_version": "2.3.0"},
    )


DTYPES = {
    "bool": np.dtype(bool),
    "uint8": np.dtype(np.uint8),
    "int16": np.dtype(np.int16),
    "uint32": np.dtype(np.uint32),
    "int64": np.dtype(np.int64),
    "float64": np.dtype(np.float64),
    "complex64": np.dtype(np.complex64),
    "f4be": np.dtype(">f4"),
}


def make_dtype(tag):
    dtype = DTYPES[tag]
    rng = np.random.default_rng(1)
    shape = (3, 7)
    if dtype.kind == "b":
        data = rng.random(shape) > 0.5
    elif dtype.kind == "u":
        info = np.iinfo(dtype)
        data = rng.integers(0, info.max, size=shape, dtype=dtype, endpoint=True)
        data[0, 0], data[0, 1] = 0, info.max
    elif dtype.kind == "i":
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        data[0, 0], data[0, 1] = info.min, info.max
    elif dtype.kind == "c":
        data = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    else:
        data = rng.standard_normal(shape).astype(dtype)
        data[0, 0], data[0, 1], data[0, 2] = np.nan, np.inf, -0.0
    data = np.asarray(data, dtype=dtype)
    axes = [
        uniform_axis("row", "", 3, navigate=True),
        uniform_axis("channel", "a.u.", 7, scale=2.0, offset=1.0, navigate=False),
    ]
    return signal_dict(data, axes, f"dtypes_{tag}")


def make_nonuniform():
    axis_values = np.array([0.0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3, 12.7])
    data = np.cos(axis_values).astype(np.float64)
    axes = [
        {
            "_type": "DataAxis",
            "name": "Time",
            "units": "s",
            "navigate": False,
            "is_binned": False,
            "axis": axis_values,
        }
    ]
    return signal_dict(data, axes, "nonuniform")


def _ragged(shape, make_item):
    arr = np.empty(shape, dtype=object)
    for i, idx in enumerate(np.ndindex(shape)):
        arr[idx] = make_item(i)
    return arr


def make_ragged():
    data = _ragged((3,), lambda i: np.arange(10 * i, 10 * i + 2 + 3 * i, dtype=np.int64))
    axes = [uniform_axis("position", "µm", 3, scale=0.5, navigate=True)]
    return signal_dict(data, axes, "ragged", ragged=True)


def make_ragged_2d():
    lengths = [4, 0, 1, 6]
    data = _ragged((2, 2), lambda i: np.linspace(0.0, 1.0, lengths[i]) + i)
    axes = [
        uniform_axis("y", "nm", 2, navigate=True),
        uniform_axis("x", "nm", 2, navigate=True),
    ]
    return signal_dict(data, axes, "ragged_2d", ragged=True)


def make_ragged_points():
    """Ragged array whose items are 2-D (n, 2), e.g. peak positions from ``find_peaks``."""
    counts = [3, 1]
    data = _ragged(
        (2,),
        lambda i: np.arange(2 * counts[i], dtype=np.float64).reshape(counts[i], 2) + 0.5 * i,
    )
    axes = [uniform_axis("frame", "", 2, navigate=True)]
    return signal_dict(data, axes, "ragged_points", ragged=True)


def make_ragged_str(ascii_only=True):
    """Ragged array of string arrays (HyperSpy's markers store texts this way).

    Non-ASCII texts are written fine to .hspy but rsciio 0.15.0 cannot read them back
    (UnicodeDecodeError in ``unflatten_data``), see ``probe_limitations``.
    """
    texts = [["a"], ["bb", "ccc"], ["mu", "A", "xyz"]]
    if not ascii_only:
        texts[2] = ["µ", "Å", "xyz"]
    data = _ragged((3,), lambda i: np.array(texts[i]))
    axes = [uniform_axis("index", "", 3, navigate=True)]
    return signal_dict(data, axes, "ragged_str", ragged=True)


def make_sig_in_metadata():
    rng = np.random.default_rng(2)
    data = rng.standard_normal((2, 8)).astype(np.float32)
    axes = [
        uniform_axis("scan", "", 2, navigate=True),
        uniform_axis("E", "keV", 8, scale=0.01, navigate=False),
    ]
    inner = nested_signal_dict(
        np.linspace(1.0, 2.0, 6),
        [uniform_axis("t", "ms", 6, scale=0.2, offset=0.1, navigate=False)],
        "intensity",
    )
    inner["metadata"]["Signal"]["quantity"] = "Intensity"
    inner["original_metadata"] = {"source": "simulated"}
    metadata_extra = {"Sample": {"elements": ["Fe", "O"], "_sig_intensity": inner}}
    return signal_dict(data, axes, "sig_in_metadata", metadata_extra=metadata_extra)


def _parameter(name, value, nav_shape, rng, std=None, bounds=(None, None)):
    pmap = np.zeros(nav_shape, dtype=[("values", "<f8"), ("std", "<f8"), ("is_set", "?")])
    pmap["values"] = value + rng.standard_normal(nav_shape)
    pmap["std"] = np.abs(rng.standard_normal(nav_shape)) * 0.1
    pmap["is_set"] = True
    whitelist = {
        "_id_name": "",
        "value": "",
        "std": "",
        "free": "",
        "units": "",
        "map": "",
        "_bounds": "",
        "ext_bounded": "",
        "name": "",
        "ext_force_positive": "",
        "twin_function_expr": "",
        "twin_inverse_function_expr": "",
        "self": "id",
    }
    return {
        "_twins": [],
        "_id_name": name,
        "value": value,
        "std": std,
        "free": True,
        "units": None,
        "map": pmap,
        "_bounds": bounds,
        "ext_bounded": False,
        "name": name,
        "ext_force_positive": False,
        "twin_function_expr": "x",
        "twin_inverse_function_expr": "x",
        "self": 140000000000000 + len(name),
        "_whitelist": whitelist,
    }


def _component(id_name, name, parameters):
    return {
        "parameters": parameters,
        "_id_name": id_name,
        "name": name,
        "active_is_multidimensional": False,
        "_active_array": None,
        "active": True,
        "_whitelist": {
            "_id_name": "",
            "name": "",
            "active_is_multidimensional": "",
            "_active_array": "",
            "active": "",
        },
    }


def make_models():
    rng = np.random.default_rng(3)
    nav = (2,)
    x = np.arange(32, dtype=np.float64)
    data = np.stack([5.0 * np.exp(-((x - 16 - i) ** 2) / 8.0) + 1.0 for i in range(2)])
    nav_axis = uniform_axis("frame", "", 2, navigate=True)
    axes = [nav_axis, uniform_axis("Energy", "eV", 32, scale=1.0, navigate=False)]
    chisq = nested_signal_dict(rng.random(nav), [copy.deepcopy(nav_axis)], "chisq")
    dof = nested_signal_dict(np.full(nav, 29.0), [copy.deepcopy(nav_axis)], "dof")
    model_dict = {
        "components": [
            _component(
                "Gaussian",
                "Gaussian",
                [
                    _parameter("A", 5.0, nav, rng, std=0.1, bounds=(0.0, None)),
                    _parameter("centre", 16.0, nav, rng),
                    _parameter("sigma", 2.0, nav, rng),
                ],
            ),
            _component("Offset", "background", [_parameter("offset", 1.0, nav, rng)]),
        ],
        "channel_switches": np.ones(32, dtype=bool),
        "chisq": chisq,
        "dof": dof,
        "free_parameters_boundaries": None,
        "low_loss": None,
        "convolved": False,
        "_whitelist": {
            "channel_switches": "",
            "chisq": "sig",
            "dof": "sig",
            "free_parameters_boundaries": "",
            "low_loss": "sig",
            "convolved": "",
        },
    }
    models = {
        "a": {
            "date": "2024-01-02 03:04:05",
            "dimensions": "(2|32)",
            "components": {"Gaussian": {}, "background": {}},
            "_dict": model_dict,
        }
    }
    return signal_dict(data, axes, "models", models=models)


def make_learning():
    rng = np.random.default_rng(4)
    data = rng.random((5, 4, 12))
    axes = [
        uniform_axis("y", "", 5, navigate=True),
        uniform_axis("x", "", 4, navigate=True),
        uniform_axis("E", "eV", 12, navigate=False),
    ]
    learning_results = {
        "factors": rng.random((12, 3)),
        "loadings": rng.random((20, 3)),
        "explained_variance": np.array([3.0, 2.0, 0.5]),
        "explained_variance_ratio": None,
        "decomposition_algorithm": "SVD",
        "poissonian_noise_normalized": False,
        "output_dimension": 3,
        "mean": None,
        "centre": None,
        "navigation_mask": None,
        "signal_mask": np.array([True] * 10 + [False] * 2),
        "unfolded": True,
        "original_shape": (5, 4, 12),
        "bss_algorithm": None,
        "unmixing_matrix": None,
    }
    return signal_dict(data, axes, "learning", learning_results=learning_results)


def make_chunked_small():
    i = np.arange(512, dtype=np.uint32)
    data = ((i[:, None] * 7 + i[None, :] * 3) % 4093).astype(np.uint16)
    axes = [
        uniform_axis("y", "px", 512, navigate=False),
        uniform_axis("x", "px", 512, navigate=False),
    ]
    return signal_dict(data, axes, "chunked_small")


def make_chunked_edges():
    """Chunks that do not divide the shape, so edge chunks are partial."""
    data = np.arange(50 * 70, dtype=np.int32).reshape(50, 70)
    axes = [
        uniform_axis("y", "", 50, navigate=True),
        uniform_axis("x", "", 70, navigate=False),
    ]
    return signal_dict(data, axes, "chunked_edges")


def make_uncompressed():
    rng = np.random.default_rng(5)
    data = rng.integers(-1000, 1000, size=(6, 8, 32), dtype=np.int32)
    axes = [
        uniform_axis("y", "", 6, navigate=True),
        uniform_axis("x", "", 8, navigate=True),
        uniform_axis("E", "eV", 32, navigate=False),
    ]
    return signal_dict(data, axes, "uncompressed")


# --------------------------------------------------------------------------------------
# JSON encoding of what the reader returns
# --------------------------------------------------------------------------------------


def _scalar_to_json(value):
    if isinstance(value, (bytes, np.bytes_)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (complex, np.complexfloating)):
        return {"__complex__": [float(value.real), float(value.imag)]}
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_jsonable(obj):
    """Encode rsciio reader output as JSON-safe data (see tests/data/rsciio_expected.py)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, tuple):
        return {"__tuple__": [to_jsonable(v) for v in obj]}
    if isinstance(obj, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, np.ndarray):
        dt = obj.dtype
        out = {"shape": list(obj.shape)}
        if dt.kind == "O":
            out["dtype"] = "object"
            out["__ndarray__"] = [to_jsonable(v) for v in obj.ravel(order="C")]
        elif dt.names is not None:
            out["dtype"] = [[name, dt.fields[name][0].str] for name in dt.names]
            out["__ndarray__"] = [
                [_scalar_to_json(v) for v in row] for row in obj.ravel(order="C").tolist()
            ]
        else:
            out["dtype"] = dt.str
            flat = obj.ravel(order="C")
            if dt.kind == "c":
                out["__ndarray__"] = [[float(v.real), float(v.imag)] for v in flat]
            elif dt.kind in "SV":
                out["__ndarray__"] = [_scalar_to_json(bytes(v)) for v in flat]
            else:
                out["__ndarray__"] = flat.tolist()
        return out
    if isinstance(obj, np.generic):
        if isinstance(obj, np.void) and obj.dtype.names is None:
            payload = _scalar_to_json(obj.tobytes())
        elif isinstance(obj, np.complexfloating):
            payload = [float(obj.real), float(obj.imag)]
        else:
            payload = _scalar_to_json(obj)
        return {"__npscalar__": payload, "dtype": obj.dtype.str}
    if isinstance(obj, complex):
        return {"__complex__": [obj.real, obj.imag]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot encode {type(obj)!r}: {obj!r}")


# --------------------------------------------------------------------------------------
# Tree dumps
# --------------------------------------------------------------------------------------


def _attr_type(attrs, key):
    try:
        dt = attrs.get_id(key).dtype
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"?({exc})"
    info = h5py.check_string_dtype(dt)
    if info is not None:
        kind = "vlen" if info.length is None else f"fixed[{info.length}]"
        return f"str {kind} {info.encoding}"
    shape = attrs.get_id(key).shape
    return f"{dt.str}{' ' + str(shape) if shape else ''}"


def hspy_tree(path):
    lines = []
    with h5py.File(path, "r") as f:

        def describe(name, obj):
            indent = "  " * name.count("/")
            label = "/" + name if name else "/"
            if isinstance(obj, h5py.Dataset):
                dcpl = obj.id.get_create_plist()
                filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
                vlen = h5py.check_vlen_dtype(obj.dtype)
                dtype = f"vlen<{vlen}>" if vlen is not None else obj.dtype.str
                if obj.dtype.names:
                    dtype = str(obj.dtype.descr)
                strinfo = h5py.check_string_dtype(obj.dtype)
                if strinfo is not None:
                    dtype = f"str({strinfo.encoding}, length={strinfo.length})"
                lines.append(
                    f"{indent}{label}  Dataset shape={obj.shape} dtype={dtype} "
                    f"chunks={obj.chunks} compression={obj.compression} "
                    f"opts={obj.compression_opts} shuffle={obj.shuffle} "
                    f"filter_ids={filters}"
                )
            else:
                lines.append(f"{indent}{label}  Group")
            for key in obj.attrs:
                value = obj.attrs[key]
                lines.append(
                    f"{indent}    @{key} = {value!r}  "
                    f"[py {type(value).__module__}.{type(value).__name__}; "
                    f"h5 {_attr_type(obj.attrs, key)}]"
                )

        describe("", f)
        f.visititems(describe)
    return lines


_ZARR_META = (".zarray", ".zattrs", ".zgroup", ".zmetadata")


def _zarr_entries(path):
    """List (key, parsed metadata or None) for every file of a zarr 2 store (dir or zip)."""
    path = Path(path)
    out = []
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                key = p.relative_to(path).as_posix()
                is_meta = key.rsplit("/", 1)[-1] in _ZARR_META
                out.append((key, json.loads(p.read_bytes()) if is_meta else None))
    else:
        with zipfile.ZipFile(path) as zf:
            for key in sorted(zf.namelist()):
                is_meta = key.rsplit("/", 1)[-1] in _ZARR_META
                out.append((key, json.loads(zf.read(key)) if is_meta else None))
    return out


def zspy_tree(path):
    lines = []
    codec_ids = set()
    path = Path(path)
    entries = _zarr_entries(path)
    is_zip = not path.is_dir()
    array_paths = {k[: -len(".zarray")].rstrip("/") for k, m in entries if k.endswith(".zarray")}
    chunk_counts = {}
    meta = {}
    for key, content in entries:
        if content is not None:
            meta[key] = content
            continue
        # chunk key: "<array path>/<i>/<j>/..." (NestedDirectoryStore, '/' separator)
        parts = key.split("/")
        arr = next(
            (
                "/".join(parts[:n])
                for n in range(len(parts) - 1, -1, -1)
                if "/".join(parts[:n]) in array_paths
            ),
            "?",
        )
        chunk_counts[arr] = chunk_counts.get(arr, 0) + 1
    lines.append(f"store files: {len(entries)} ({'zip' if is_zip else 'nested directory'})")
    if is_zip:
        names = [k for k, _ in entries]
        dups = sorted({k for k in names if names.count(k) > 1})
        lines.append(
            f"zip entries with duplicate names (the last one is current): {len(dups)} {dups}"
        )
    for key in sorted(meta):
        if key.endswith(".zmetadata"):
            lines.append(f"{key}: consolidated, {len(meta[key]['metadata'])} entries")
            continue
        content = meta[key]
        if key.endswith(".zarray"):
            for flt in content.get("filters") or []:
                codec_ids.add(("filter", flt["id"]))
            if content.get("compressor"):
                codec_ids.add(("compressor", content["compressor"]["id"]))
            arr = key[: -len(".zarray")].rstrip("/")
            content = dict(content, _n_chunk_files=chunk_counts.get(arr, 0))
        if key.endswith(".zgroup"):
            lines.append(f"{key[: -len('.zgroup')] or '/'}  (group)")
            continue
        lines.append(f"{key}: {json.dumps(content, ensure_ascii=False, sort_keys=True)}")
    return lines, codec_ids


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def _check_environment():
    versions = {
        "rosettasciio": rsciio.__version__,
        "zarr": zarr.__version__,
        "numcodecs": dist_version("numcodecs"),
        "h5py": h5py.__version__,
        "numpy": np.__version__,
        "hdf5": h5py.version.hdf5_version,
        "python": sys.version.split()[0],
    }
    if versions["rosettasciio"] != "0.15.0":
        raise SystemExit(f"need rosettasciio 0.15.0, found {versions['rosettasciio']}")
    if int(versions["zarr"].split(".")[0]) >= 3:
        raise SystemExit("rsciio's zspy plugin needs zarr<3: use the venv in the docstring")
    return versions


def _size_and_count(path):
    path = Path(path)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        return sum(p.stat().st_size for p in files), len(files)
    return path.stat().st_size, 1


def main():
    versions = _check_environment()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    # (file name, builder, format, writer kwargs, notes)
    jobs = []
    common = [
        ("basic", lambda: make_basic(include_nul_bytes=True)),
        ("nonuniform", make_nonuniform),
        ("ragged", make_ragged),
        ("ragged_2d", make_ragged_2d),
        ("ragged_points", make_ragged_points),
        ("ragged_str", make_ragged_str),
        ("sig_in_metadata", make_sig_in_metadata),
        ("models", make_models),
        ("learning", make_learning),
        ("chunked_edges", make_chunked_edges),
    ] + [(f"dtypes_{tag}", lambda tag=tag: make_dtype(tag)) for tag in DTYPES]
    chunks_for = {"chunked_edges": (16, 16)}
    for stem, builder in common:
        kw = {"chunks": chunks_for[stem]} if stem in chunks_for else {}
        jobs.append((f"{stem}.hspy", stem, builder, "hspy", kw))
        zbuilder = zspy_basic if stem == "basic" else builder
        jobs.append((f"{stem}.zspy", stem, zbuilder, "zspy", dict(kw)))
    jobs.append(("basic_zip.zspy", "basic", zspy_basic, "zspy", {"store_type": "zip"}))
    jobs.append(
        ("chunked_small.hspy", "chunked_small", make_chunked_small, "hspy", {"chunks": (4, 4)})
    )
    jobs.append(
        ("uncompressed.hspy", "uncompressed", make_uncompressed, "hspy", {"compression": None})
    )

    manifest = {
        "versions": versions,
        "rsciio_limitations": probe_limitations(OUT / "_probe"),
        "files": {},
    }
    header = (
        f"Trees of the files written by RosettaSciIO {versions['rosettasciio']} "
        f"(zarr {versions['zarr']}, h5py {versions['h5py']}, HDF5 {versions['hdf5']}). "
        "Regenerate with tests/data/make_rsciio_fixtures.py."
    )
    trees = [header, ""]
    all_codecs = {}

    for fname, stem, builder, fmt, kw in jobs:
        path = OUT / fname
        sig = builder()
        notes = []
        writer = hspy_writer if fmt == "hspy" else zspy_writer
        reader = hspy_reader if fmt == "hspy" else zspy_reader
        writer(str(path), sig, show_progressbar=False, **kw)
        if fmt == "zspy" and stem == "basic":
            notes.append(
                "metadata.Misc.bytes_with_nul omitted: rsciio's zspy writer cannot store "
                "bytes containing NUL (see MANIFEST rsciio_limitations)"
            )
        result = reader(str(path), lazy=False)
        encoded = to_jsonable(result)
        data = result[0]["data"]
        has_npy = data.dtype != object
        if has_npy:
            # The main array is kept only once, in the .npy file; the JSON points to it.
            np.save(OUT / f"{fname}.data.npy", data, allow_pickle=False)
            encoded[0]["data"] = {
                "__npy__": f"{fname}.data.npy",
                "dtype": data.dtype.str,
                "shape": list(data.shape),
            }
        (OUT / f"{fname}.expected.json").write_text(
            json.dumps(encoded, indent=1, ensure_ascii=False, allow_nan=True) + "\n",
            encoding="utf-8",
        )

        size, count = _size_and_count(path)
        manifest["files"][fname] = {
            "kind": stem,
            "format": fmt,
            "writer_kwargs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()},
            "n_signals": len(result),
            "data_dtype": data.dtype.str,
            "data_shape": list(data.shape),
            "data_npy": has_npy,
            "bytes": size,
            "n_files": count,
            "notes": notes,
        }

        trees.append("=" * 100)
        trees.append(f"{fname}")
        trees.append("=" * 100)
        if fmt == "hspy":
            trees.extend(hspy_tree(path))
        else:
            lines, codecs = zspy_tree(path)
            trees.extend(lines)
            for codec in codecs:
                all_codecs.setdefault(f"{codec[0]}:{codec[1]}", []).append(fname)
        trees.append("")

    manifest["zarr_codec_ids"] = {k: sorted(v) for k, v in sorted(all_codecs.items())}
    (OUT / "TREES.txt").write_text("\n".join(trees) + "\n", encoding="utf-8")
    (OUT / "MANIFEST.json").write_text(
        json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )

    total, count = _size_and_count(OUT)
    print(f"wrote {len(manifest['files'])} fixtures into {OUT}")
    print(f"total: {total} bytes, {count} files")
    print("zarr codec ids:", json.dumps(manifest["zarr_codec_ids"], indent=1))
    print("rsciio limitations:", json.dumps(manifest["rsciio_limitations"], indent=1))
    if total > MAX_TOTAL_BYTES or count > MAX_FILE_COUNT:
        raise SystemExit(f"output too large: {total} bytes / {count} files")


def zspy_basic():
    # zarr 2 attributes are JSON: the np.void rsciio uses for bytes with NUL is rejected.
    return make_basic(include_nul_bytes=False)


def probe_limitations(tmp):
    """Record what RosettaSciIO 0.15.0 itself fails to round-trip (nothing is kept on disk)."""
    found = {}
    probes = [
        (
            "zspy_bytes_with_nul",
            "x.zspy",
            zspy_writer,
            zspy_reader,
            lambda: make_basic(include_nul_bytes=True),
        ),
        (
            "hspy_ragged_non_ascii_str",
            "x.hspy",
            hspy_writer,
            hspy_reader,
            lambda: make_ragged_str(ascii_only=False),
        ),
        (
            "zspy_ragged_non_ascii_str",
            "y.zspy",
            zspy_writer,
            zspy_reader,
            lambda: make_ragged_str(ascii_only=False),
        ),
    ]
    for label, fname, writer, reader, builder in probes:
        path = tmp / fname
        stage = "write"
        try:
            writer(str(path), builder(), show_progressbar=False)
            stage = "read"
            reader(str(path), lazy=False)
            found[label] = "ok"
        except Exception as exc:  # noqa: BLE001 - that is what we record
            found[label] = f"{stage} fails: {type(exc).__name__}: {exc}"
    shutil.rmtree(tmp)
    return found


if __name__ == "__main__":
    main()
