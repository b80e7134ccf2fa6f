"""What ``describe`` needs of a HyperSpy tree (hspy and zspy alike), from metadata only."""

from __future__ import annotations

from typing import Any

from lazyio.formats.hyperspy.node import Node

__all__ = ["experiment_data_paths", "spec_version"]


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def experiment_data_paths(root: Node) -> list[str]:
    """The array of each signal :func:`~lazyio.formats.hyperspy.signal.read_file_tree`
    returns, in the same order (experiments holding ``data``)."""
    if root.members().get("Experiments") != "group":
        return []
    experiments = root.child("Experiments")
    paths = []
    for name, kind in experiments.members().items():
        if kind == "group" and "data" in experiments.child(name).members():
            paths.append(f"Experiments/{name}/data")
    return paths


def spec_version(root: Node) -> str | None:
    """``"<file_format> <file_format_version>"`` from the root's attributes, if written."""
    attrs = root.attrs()
    version = _text(attrs.get("file_format_version"))
    if version is None:
        return None
    fmt = _text(attrs.get("file_format"))
    return f"{fmt} {version}" if fmt else str(version)
