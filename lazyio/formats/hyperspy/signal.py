"""Whole files and ``Experiments/<title>`` groups <-> signal dictionaries.

Reading follows the spec of every version (see :mod:`~lazyio.formats.hyperspy.versions`);
writing produces version 3.3, as RosettaSciIO does, so HyperSpy reads lazyio's files.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from lazyio.backends.chunking import Chunks
from lazyio.backends.plan import is_lazy_array, lazy_whole
from lazyio.errors import FormatError, LazyioWarning
from lazyio.formats.hyperspy.decode import decode_attribute, group_to_dict, read_dataset
from lazyio.formats.hyperspy.encode import dict_to_group
from lazyio.formats.hyperspy.node import Node
from lazyio.formats.hyperspy.versions import (
    CURRENT_STR,
    METADATA_GROUPS,
    migrate_axes,
    migrate_metadata,
    parse_version,
)
from lazyio.signals import default_axes

__all__ = ["read_file_tree", "write_signal_tree"]

ArrayWriter = Callable[[Node, str, Any], None]


def file_version(root: Node) -> tuple[int, int]:
    """The spec version of a file, checking that it is a HyperSpy file at all."""
    attrs = root.attrs()
    members = root.members()
    if "file_format_version" in attrs:
        return parse_version(attrs["file_format_version"], root.where)
    if "Experiments" in members:
        return (1, 0)
    if "Analysis" in members:
        return (2, 0)
    raise FormatError(
        f"{root.where}: not a HyperSpy file (no 'Experiments' group and no "
        "'file_format_version' attribute)"
    )


# Axes are corrected to the data's shape only below this many elements (8 TB of float64):
# a header edited to claim 10**12 rows under axes that say 4 is a lie to refuse, not a
# dataset replaced in place, and would otherwise become a dask array of hundreds of TB.
MAX_CORRECTED_ELEMENTS = 2**40
_LIST_AXES = re.compile(r"_list_(\d+)_axes")


def _stored_axes(group: Node, ndim: int) -> tuple[list[Any], int]:
    """The axes as stored (``axis-i`` groups, else a ``_list_N_axes`` group) and how many
    ``axis-i`` groups lie beyond ``ndim`` (left over when the data lost dimensions)."""
    members = group.members()
    axes: list[Any] = []
    for i in range(ndim):
        name = f"axis-{i}"
        if name not in members:
            break
        axis = group_to_dict(group.child(name))
        for key, value in axis.items():
            if isinstance(value, np.bool_):
                axis[key] = bool(value)
        axes.append(axis)
    gap = next((j for j in range(len(axes) + 1, ndim) if f"axis-{j}" in members), None)
    if gap is not None:  # axis-i missing but a later one stored: damage, not a resize
        raise FormatError(
            f"{group.where}: {group.path}/data has {ndim} dimensions but axis-{len(axes)} "
            f"is missing while axis-{gap} is stored: the axis groups are damaged"
        )
    surplus = 0
    while f"axis-{ndim + surplus}" in members:
        surplus += 1
    if len(axes) == ndim or axes or surplus:
        return axes, surplus
    lists = [key for key in members if _LIST_AXES.fullmatch(key)]
    exact = f"_list_{ndim}_axes"
    for key in ([exact] if exact in lists else []) + sorted(k for k in lists if k != exact):
        stored = group_to_dict(group.child(key))
        items = [stored[k] for k in sorted(stored, key=lambda k: (not k.isdigit(), int(k)
                                                                  if k.isdigit() else 0, k))]
        return items[:ndim], max(0, len(items) - ndim)
    return [], 0


def _stored_size(axis: dict[str, Any]) -> int | None:
    size = axis.get("size")
    if size is None and isinstance(axis.get("axis"), np.ndarray | list | tuple):
        size = len(axis["axis"])
    try:
        return None if size is None else int(size)
    except (TypeError, ValueError):
        return None


def _axes(group: Node, shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """The axes of ``group``'s data, made to fit the data's ``shape``.

    A dataset replaced in place (e.g. with h5py) can disagree with the axes written beside
    it; the data's shape wins. Sizes are corrected (name, units, scale and offset kept; a
    non-uniform axis of the wrong length becomes an index axis), trailing axes the data
    gained get defaults and those it lost are dropped, with a :class:`LazyioWarning`
    naming each axis corrected. A gap in the axis groups (axis-1 missing, axis-2 stored)
    is damage, not a resize, and raises :class:`FormatError`. Writers refuse such axes
    (:func:`lazyio.formats.check_axes`).
    """
    ndim = len(shape)
    stored, surplus = _stored_axes(group, ndim)
    axes: list[dict[str, Any]] = []
    fixed: list[str] = []
    for i, n in enumerate(shape):
        if i >= len(stored) or not isinstance(stored[i], dict):
            axis = default_axes(shape)[i]
            del axis["index_in_array"]
            axes.append(axis)
            fixed.append(f"axis-{i} missing (a default axis of size {n} added)")
            continue
        axis = dict(stored[i])
        size = _stored_size(axis)
        if size is not None and size != n:
            if "axis" in axis:  # a non-uniform vector of the wrong length means nothing
                del axis["axis"]
                axis.setdefault("scale", 1.0)
                axis.setdefault("offset", 0.0)
                if axis.get("_type") == "DataAxis":  # HyperSpy's non-uniform axis type
                    axis["_type"] = "UniformDataAxis"
            if isinstance(axis.get("x"), dict):  # a functional axis evaluates on its x
                axis["x"] = {**axis["x"], "size": n}
            fixed.append(f"axis-{i} says {size}")
            axis["size"] = n
        axes.append(axis)
    if surplus:
        fixed.append(f"{surplus} surplus axis group(s) dropped")
    if fixed and math.prod(shape) > MAX_CORRECTED_ELEMENTS:
        raise FormatError(
            f"{group.where}: {group.path}/data has shape {shape}, which its axes do not "
            f"describe ({'; '.join(fixed)}), and declares more than 2**40 elements: "
            "refused as a damaged header rather than read as replaced data"
        )
    if fixed:
        warnings.warn(
            f"{group.where}: {group.path}/data has shape {shape}, which its axes do not "
            f"describe ({'; '.join(fixed)}); the data's shape is used (was the dataset "
            "replaced in place?)",
            LazyioWarning,
            stacklevel=2,
        )
    return axes


def read_signal_group(
    group: Node, version: tuple[int, int], *, lazy: bool, chunks: Chunks = "auto"
) -> dict[str, Any]:
    """Decode one signal group (an experiment, or a ``_sig_`` group in metadata)."""
    members = group.members()
    md_name, omd_name = METADATA_GROUPS["old" if version < (1, 2) else "new"]

    def read_signal(node: Node) -> dict[str, Any]:
        # signals inside metadata are small and always read eagerly, as HyperSpy does
        return read_signal_group(node, version, lazy=False)

    def tree(name: str) -> dict[str, Any]:
        if members.get(name) != "group":
            return {}
        return group_to_dict(group.child(name), lazy=lazy, read_signal=read_signal)

    if members.get("data") != "array":
        raise FormatError(f"{group.where}: {group.path} has no 'data' dataset")
    signal: dict[str, Any] = {
        "metadata": tree(md_name),
        "original_metadata": tree(omd_name),
        "attributes": tree("attributes"),
    }
    attrs = group.attrs()
    signal["package"] = decode_attribute(attrs.get("package", "")) or ""
    signal["package_version"] = decode_attribute(attrs.get("package_version", "")) or ""
    # The lazy view costs no data read; checking the axes against it first means a header
    # declaring an absurd shape is refused before an eager read tries to allocate it.
    data = read_dataset(group, "data", lazy=True, chunks=chunks, members=members)
    axes = _axes(group, tuple(int(n) for n in data.shape))
    if not lazy:
        data = read_dataset(group, "data", lazy=False, members=members)
    elif not is_lazy_array(data):
        data = lazy_whole(data)
    signal["attributes"]["_lazy"] = bool(lazy)
    signal["data"] = data
    metadata = migrate_metadata(signal["metadata"], version)
    signal["axes"] = migrate_axes(axes, metadata, version)
    for name, key in (("learning_results", "learning_results"),
                      ("peak_learning_results", "peak_learning_results"),
                      ("mva_results", "learning_results"),
                      ("peak_mva_results", "peak_learning_results")):
        if name in members and (version < (1, 1) or not name.endswith("mva_results")):
            signal["attributes"][key] = tree(name)
    general = metadata.get("General")
    if isinstance(general, dict) and general.get("title") == "__unnamed__":
        general["title"] = ""
    return signal


def read_file_tree(root: Node, *, lazy: bool, chunks: Chunks = "auto") -> list[dict[str, Any]]:
    """Every experiment of a HyperSpy file, with its models, as signal dictionaries."""
    version = file_version(root)
    members = root.members()
    models_with_signal: list[tuple[str, dict[str, Any]]] = []
    standalone: list[dict[str, Any]] = []
    if members.get("Analysis") == "group" and "models" in root.child("Analysis").members():
        models = root.child("Analysis").child("models")
        for name, kind in models.members().items():
            if kind != "group":
                continue
            node = models.child(name)
            model = group_to_dict(
                node, lazy=lazy,
                read_signal=lambda n: read_signal_group(n, version, lazy=lazy),
            )
            owner = model.pop("_signal", None)
            if owner:
                models_with_signal.append((str(owner), {name: model}))
            else:
                standalone.append({name: model})
    signals = []
    owned: set[str] = set()
    if members.get("Experiments") == "group":
        experiments = root.child("Experiments")
        for name, kind in experiments.members().items():
            if kind != "group":
                continue
            group = experiments.child(name)
            if "data" not in group.members():
                continue
            signal = read_signal_group(group, version, lazy=lazy, chunks=chunks)
            path = "/" + group.path.strip("/")
            owned.add(path)
            signal["models"] = {}
            for owner, model in models_with_signal:
                if "/" + owner.strip("/") == path:
                    signal["models"].update(model)
            signals.append(signal)
    standalone.extend(m for owner, m in models_with_signal if "/" + owner.strip("/") not in owned)
    signals.extend(standalone)
    if not signals:
        raise FormatError(f"{root.where}: the HyperSpy file holds no signal")
    return signals


def experiment_name(signal: dict[str, Any]) -> str:
    """The group name of a signal under ``Experiments``: its title, '/' replaced."""
    title = signal.get("metadata", {}).get("General", {}).get("title") or ""
    return str(title).replace("/", "-") or "__unnamed__"


def write_signal_tree(
    root: Node,
    signal: dict[str, Any],
    write_array: ArrayWriter,
    *,
    file_format: str,
    write_dataset: bool = True,
    **options: Any,
) -> Node:
    """Write ``signal`` as ``Experiments/<title>`` of ``root``; return the group.

    The main data goes through ``write_array`` (streamed by the caller) unless
    ``write_dataset`` is False, in which case only metadata and axes are rewritten.
    """
    root.set_attrs({"file_format": file_format, "file_format_version": CURRENT_STR})
    group = root.require_group("Experiments").require_group(experiment_name(signal))
    package_info = signal.get("package_info") or {
        "package": signal.get("package", "") or "",
        "package_version": signal.get("package_version", "") or "",
    }
    group.set_attrs(dict(package_info))
    for i, axis in enumerate(signal["axes"]):
        name = f"axis-{i}"
        group.delete(name)  # an axis of another kind must not keep stale attributes
        stored = dict(axis)
        if "axis" in stored:  # HyperSpy stores no size for a non-uniform axis: it is len(axis)
            stored.pop("size", None)
        dict_to_group(stored, group.require_group(name), write_array, **options)
    if write_dataset:
        write_array(group, "data", signal["data"])
    metadata = copy.copy(signal.get("metadata") or {})
    attributes = dict(signal.get("attributes") or {})
    learning = signal.get("learning_results", attributes.pop("learning_results", {})) or {}
    for name, tree in (
        ("metadata", metadata),
        ("original_metadata", signal.get("original_metadata") or {}),
        ("learning_results", learning),
        ("attributes", attributes),
    ):
        dict_to_group(tree, group.require_group(name), write_array, **options)
    models = signal.get("models") or {}
    if models:
        model_group = root.require_group("Analysis").require_group("models")
        dict_to_group(models, model_group, write_array, **options)
        for name in models:
            model_group.child(str(name)).set_attrs({"_signal": group.path})
    return group
