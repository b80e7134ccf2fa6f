"""The HyperSpy file format's versions: what changed, and how old files are migrated.

Every difference between spec versions 1.0 and 3.3 that a reader must undo lives here, as
data where possible, so :mod:`~lazyio.formats.hyperspy.decode` stays version-agnostic.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from lazyio.errors import FormatError, LazyioWarning

__all__ = ["CURRENT", "METADATA_GROUPS", "migrate_metadata", "parse_version"]

CURRENT = (3, 3)
CURRENT_STR = "3.3"

# Before 1.2 the metadata trees had other names.
METADATA_GROUPS = {
    "old": ("mapped_parameters", "original_parameters"),
    "new": ("metadata", "original_metadata"),
}

# [(old path, new path[, path that must exist for the move]), ...] applied in order.
_MOVES_BEFORE_1_2: list[tuple[str, ...]] = [
    ("_internal_parameters", "_HyperSpy"),
    ("_HyperSpy.stacking_history", "_HyperSpy.Stacking_history"),
    ("_HyperSpy.folding", "_HyperSpy.Folding"),
    ("Variance_estimation", "Noise_properties.Variance_linear_model"),
    ("TEM", "Acquisition_instrument.TEM"),
    # these four were EELS settings only where an EELS node existed
    ("Acquisition_instrument.TEM.dwell_time", "Acquisition_instrument.TEM.EELS.dwell_time",
     "Acquisition_instrument.TEM.EELS"),
    ("Acquisition_instrument.TEM.dwell_time_units",
     "Acquisition_instrument.TEM.EELS.dwell_time_units", "Acquisition_instrument.TEM.EELS"),
    ("Acquisition_instrument.TEM.exposure", "Acquisition_instrument.TEM.EELS.exposure",
     "Acquisition_instrument.TEM.EELS"),
    ("Acquisition_instrument.TEM.exposure_units",
     "Acquisition_instrument.TEM.EELS.exposure_units", "Acquisition_instrument.TEM.EELS"),
    ("Acquisition_instrument.TEM.EELS", "Acquisition_instrument.TEM.Detector"),
    ("Acquisition_instrument.TEM.EDS", "Acquisition_instrument.TEM.Detector.EDS"),
    ("SEM", "Acquisition_instrument.SEM"),
    ("Acquisition_instrument.SEM.EDS", "Acquisition_instrument.SEM.Detector.EDS"),
    ("Sample.Xray_lines", "Sample.xray_lines"),
    ("title", "General.title"),
    ("date", "General.date"),
    ("time", "General.time"),
    ("original_filename", "General.original_filename"),
    ("record_by", "Signal.record_by"),
    ("signal_origin", "Signal.signal_origin"),
    ("signal_type", "Signal.signal_type"),
]
_MOVES_BEFORE_1_1: list[tuple[str, str]] = [
    ("signal", "Signal.signal_type"),
    ("name", "General.title"),
]
_MOVES_BEFORE_3_0: list[tuple[str, str]] = [
    ("Acquisition_instrument.TEM.tilt_stage", "Acquisition_instrument.TEM.Stage.tilt_alpha"),
    ("Acquisition_instrument.SEM.tilt_stage", "Acquisition_instrument.SEM.Stage.tilt_alpha"),
    # exposure_time (written by the DigitalMicrograph reader) wins over exposure, as in HyperSpy
    ("Acquisition_instrument.TEM.exposure", "Acquisition_instrument.TEM.Detector.Camera.exposure"),
    ("Acquisition_instrument.TEM.exposure_time",
     "Acquisition_instrument.TEM.Detector.Camera.exposure"),
]


def parse_version(value: Any, where: str) -> tuple[int, int]:
    """Parse a ``file_format_version`` attribute (str, bytes or the float of old files)."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float | np.floating):
        value = f"{float(value):.2f}".rstrip("0").rstrip(".")
    text = str(value).strip()
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?.*", text)
    if not match:
        raise FormatError(f"{where}: unreadable file_format_version {value!r}")
    version = (int(match.group(1)), int(match.group(2) or 0))
    if version > CURRENT:
        warnings.warn(
            f"{where} was written with format version {text}, newer than {CURRENT_STR}, the "
            "newest lazyio knows; reading it as best it can",
            LazyioWarning,
            stacklevel=3,
        )
    return version


def _pop(tree: dict[str, Any], path: str) -> tuple[bool, Any]:
    *parents, leaf = path.split(".")
    node: Any = tree
    for p in parents:
        node = node.get(p)
        if not isinstance(node, dict):
            return False, None
    if leaf not in node:
        return False, None
    return True, node.pop(leaf)


def _put(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
    if isinstance(node.get(leaf), dict) and isinstance(value, dict):
        node[leaf].update(value)
    else:
        node[leaf] = value


def _exists(tree: dict[str, Any], path: str) -> bool:
    node: Any = tree
    for p in path.split("."):
        if not isinstance(node, dict) or p not in node:
            return False
        node = node[p]
    return True


def _apply(tree: dict[str, Any], moves: Sequence[tuple[str, ...]]) -> None:
    for old, new, *required in moves:
        if required and not _exists(tree, required[0]):
            continue
        found, value = _pop(tree, old)
        if found:
            _put(tree, new, value)


def migrate_metadata(metadata: dict[str, Any], version: tuple[int, int]) -> dict[str, Any]:
    """Move metadata written by an older spec version to today's places (in place)."""
    if version < (1, 1):
        _apply(metadata, _MOVES_BEFORE_1_1)
    if version < (1, 2):
        _apply(metadata, _MOVES_BEFORE_1_2)
    if version < (3, 0):
        _apply(metadata, _MOVES_BEFORE_3_0)
    return metadata


def migrate_axes(
    axes: list[dict[str, Any]], metadata: dict[str, Any], version: tuple[int, int]
) -> list[dict[str, Any]]:
    """Fill ``navigate`` (from ``record_by``, before 2.1) and ``is_binned`` (before 3.1)."""
    signal = metadata.get("Signal", {}) if isinstance(metadata.get("Signal"), dict) else {}
    if any("navigate" not in a for a in axes):
        # As HyperSpy: the last 1 (spectrum) or 2 (image) axes are the signal; without a
        # known record_by every axis is a signal axis.
        record_by = signal.get("record_by", "")
        n_signal = {"spectrum": 1, "image": 2}.get(record_by, len(axes))
        for i, axis in enumerate(axes):
            axis["navigate"] = i < len(axes) - n_signal
    if version < (3, 1) and "binned" in signal:
        for axis in axes:
            if not axis["navigate"]:
                axis.setdefault("is_binned", bool(signal["binned"]))
    return axes


# the repr of a date or time: anything up to the first "(", then only integers to the end
_DATETIME = re.compile(r"[^(]*\(([\d,\s]*)\)\s*")


def parse_old_datetime(key: str, value: str, where: str) -> tuple[str, str]:
    """Decode a ``_datetime_date``/``_datetime_time`` attribute of files before v2.

    The value is the repr of a ``datetime.date``/``time``; only its integers are read,
    nothing is evaluated.
    """
    import datetime

    match = _DATETIME.fullmatch(str(value))
    if match is None:
        raise FormatError(f"{where}: cannot read {key} = {value!r} (not a date or time repr)")
    numbers = [int(n) for n in match.group(1).split(",") if n.strip()]
    try:
        if key.startswith("_datetime_date"):
            iso = datetime.date(*numbers).isoformat()
        else:
            hour, minute, second, micro = (*numbers, 0, 0, 0, 0)[:4]
            if len(numbers) > 4:
                raise TypeError(f"time() takes at most 4 numbers ({len(numbers)} given)")
            iso = datetime.time(hour, minute, second, micro).isoformat()
    except (TypeError, ValueError) as err:
        raise FormatError(f"{where}: cannot read {key} = {value!r} ({err})") from err
    return key.replace("_datetime_", ""), iso
