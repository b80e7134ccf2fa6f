"""Whole files and ``Experiments/<title>`` groups <-> signal dictionaries.

Reading follows the spec of every version (see :mod:`~lazyio.formats.hyperspy.versions`);
writing produces version 3.3, as RosettaSciIO does, so HyperSpy reads lazyio's files.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np

from lazyio.backends.chunking import Chunks
from lazyio.errors import FormatError
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


def _axes(group: Node, ndim: int) -> list[dict[str, Any]]:
    members = group.members()
    axes = []
    for i in range(ndim):
        name = f"axis-{i}"
        if name not in members:
            break
        axis = group_to_dict(group.child(name))
        for key, value in axis.items():
            if isinstance(value, np.bool_):
                axis[key] = bool(value)
        axes.append(axis)
    if len(axes) == ndim:
        return axes
    list_key = f"_list_{ndim}_axes"
    if list_key in members:
        stored = group_to_dict(group.child(list_key))
        axes = [stored[k] for k in sorted(stored, key=lambda k: (not k.isdigit(), int(k)
                                                                  if k.isdigit() else 0, k))]
        if len(axes) == ndim:
            return axes
    raise FormatError(
        f"{group.where}: {group.path}/data has {ndim} dimensions but {len(axes)} axis groups"
    )


def _check_sizes(group: Node, axes: list[dict[str, Any]], shape: tuple[int, ...]) -> None:
    for i, (axis, n) in enumerate(zip(axes, shape, strict=True)):
        size = axis.get("size") if isinstance(axis, dict) else None
        try:
            size = None if size is None else int(size)
        except (TypeError, ValueError):
            size = None
        if size is not None and size != n:
            raise FormatError(
                f"{group.where}: {group.path}/data has {n} elements along axis {i} but "
                f"its axis-{i} says {size}"
            )


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
    axes = _axes(group, data.ndim)
    _check_sizes(group, axes, tuple(data.shape))
    if not lazy:
        data = read_dataset(group, "data", lazy=False, members=members)
    elif not isinstance(data, da.Array):
        data = da.from_array(data, chunks=-1)
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
