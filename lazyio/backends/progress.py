"""Progress bars: one bar, whatever runs the computation.

Every bar lazyio shows is a :class:`Bar`: labelled with what it does and the target's file
name (``writing scan.hspy``), counting bytes so that it shows a throughput. How it is drawn
depends on where the process runs, not on the scheduler:

- in Jupyter, a ``tqdm.auto`` widget (ipywidgets; its state is stored with the notebook, so
  a static render shows the finished bar);
- on a terminal, a tqdm text bar on stderr;
- otherwise (a log file, CI, a pipe), one plain line on stderr once the phase is done:
  ``writing scan.hspy: 253.8 MB in 3.10 s (81.9 MB/s)``.

The local schedulers feed the bar through a dask callback (:class:`TqdmCallback`); a
``distributed`` cluster through the scheduler's progress feed (:func:`cluster_progress`);
the client's single-writer loop step by step (:func:`step_bar`). Each finished phase is
also recorded (:func:`record_phases`), with the same byte count and clock as its bar, so a
summary printed afterwards agrees with the bar. Nothing is shown unless asked for, and a
phase shorter than :data:`DELAY` stays silent.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dask.callbacks import Callback

__all__ = [
    "Bar",
    "Phase",
    "TqdmCallback",
    "cluster_progress",
    "current_target",
    "progress_bar",
    "record_phases",
    "step_bar",
    "target_name",
]

# Seconds before a bar appears, so that instant computations stay silent.
DELAY = 0.5

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("lazyio_target",
                                                                    default=None)
_PHASES: contextvars.ContextVar[list[Phase] | None] = contextvars.ContextVar(
    "lazyio_phases", default=None)


@dataclass(frozen=True)
class Phase:
    """One finished phase (a write, a verification): what its bar showed at the end."""

    label: str
    nbytes: int | None
    seconds: float

    @property
    def rate(self) -> float | None:
        """Bytes per second, when the phase counted bytes."""
        return self.nbytes / self.seconds if self.nbytes and self.seconds > 0 else None


@contextlib.contextmanager
def target_name(name: str) -> Iterator[None]:
    """Bars started in the block name ``name`` (the file the caller asked for, never a
    temporary it is written to)."""
    token = _TARGET.set(name)
    try:
        yield
    finally:
        _TARGET.reset(token)


def current_target() -> str | None:
    """The name set by the innermost :func:`target_name`, if any."""
    return _TARGET.get()


def label_for(action: str) -> str:
    """``"writing scan.hspy"``: the action and the current target's name."""
    name = current_target()
    return f"{action} {name}" if name else action


@contextlib.contextmanager
def record_phases() -> Iterator[list[Phase]]:
    """Collect the :class:`Phase` of every bar (shown or not) finished in the block."""
    phases: list[Phase] = []
    token = _PHASES.set(phases)
    try:
        yield phases
    finally:
        _PHASES.reset(token)


def _in_jupyter() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:  # pragma: no cover - an IPython without get_ipython
        return False
    return ip is not None and getattr(ip, "kernel", None) is not None


def _interactive(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _size(n: float) -> str:
    """``32.8 kB``, ``253.8 MB``: decimal units, as tqdm scales the bar's bytes."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


class Bar:
    """A progress bar over ``total`` units (bytes when ``unit="B"``), drawn as the process
    allows (see the module notes), recorded as a :class:`Phase` when closed.

    Parameters
    ----------
    label : str
        Shown before the bar.
    total : int
        Units to do.
    unit : str, default "B"
        ``"B"`` counts bytes (scaled to kB/MB/GB, with a throughput); any other unit is
        counted as is.
    show : bool, default True
        ``False`` draws nothing but still records the phase.
    delay : float, optional
        Seconds before the bar appears (default :data:`DELAY`).
    **tqdm_kwargs
        Passed to ``tqdm`` (e.g. ``file=``).
    """

    def __init__(
        self, label: str, total: int, *, unit: str = "B", show: bool = True,
        delay: float | None = None, **tqdm_kwargs: Any,
    ) -> None:
        self.label = label
        self.total = max(0, int(total))
        self.unit = unit
        self.n = 0
        self.delay = DELAY if delay is None else delay
        self._start = time.perf_counter()
        self._lock = threading.Lock()
        self._closed = False
        self._stream = tqdm_kwargs.pop("file", None) or sys.stderr
        self._tqdm: Any = None
        self._widget: _Widget | None = None
        if show and _in_jupyter():
            self._widget = _Widget.make(self, **tqdm_kwargs)
            self._tqdm = self._widget.bar if self._widget is not None else None
        if show and self._tqdm is None and _interactive(self._stream):
            self._tqdm = self._make_tqdm(**tqdm_kwargs)
        self._plain = show and self._tqdm is None

    def _scale(self) -> dict[str, Any]:
        return {"unit_scale": True, "unit_divisor": 1000} if self.unit == "B" else {}

    def _make_tqdm(self, **kwargs: Any) -> Any:
        from tqdm import tqdm

        return tqdm(desc=self.label or None, total=self.total, unit=self.unit,
                    delay=self.delay, leave=True, file=self._stream, **self._scale(), **kwargs)

    def update_to(self, n: float) -> None:
        """Move the bar to ``n`` units done (whole units, never back, never past the end)."""
        with self._lock:
            target = min(self.total, max(self.n, round(n)))
            step = target - self.n
            if step <= 0:
                return
            self.n = target
            if self._tqdm is not None:
                self._tqdm.update(step)
            if self._widget is not None:
                self._widget.show_if_due(self._start)

    def close(self, ok: bool = True) -> Phase:
        """Finish the bar (at 100 % when ``ok``) and record its phase."""
        with self._lock:
            seconds = time.perf_counter() - self._start
            phase = Phase(self.label, self.total if self.unit == "B" else None, seconds)
            if self._closed:
                return phase
            self._closed = True
        if ok:
            self.update_to(self.total)
        if self._widget is not None:
            self._widget.close(self._start)
        elif self._tqdm is not None:
            self._tqdm.close()
        elif self._plain and ok and seconds >= self.delay:
            self._stream.write(self._summary(phase) + "\n")
            self._stream.flush()
        phases = _PHASES.get()
        if phases is not None and ok:
            phases.append(phase)
        return phase

    def _summary(self, phase: Phase) -> str:
        if self.unit != "B":
            return f"{self.label}: {self.total} {self.unit} in {phase.seconds:.2f} s"
        rate = phase.rate
        speed = f" ({rate / 1e6:.1f} MB/s)" if rate is not None else ""
        return f"{self.label}: {_size(self.total)} in {phase.seconds:.2f} s{speed}"


class _Widget:
    """tqdm's notebook widget, displayed by us (once :data:`DELAY` has passed) under a
    display id, so that closing it can replace the text shown where widgets are not
    rendered (a static render of the notebook) with the finished bar's line."""

    def __init__(self, bar: Any, delay: float) -> None:
        self.bar = bar
        self.delay = delay
        self.handle: Any = None

    @classmethod
    def make(cls, owner: Bar, **kwargs: Any) -> _Widget | None:
        try:
            from tqdm.notebook import tqdm as notebook_tqdm

            bar = notebook_tqdm(desc=owner.label or None, total=owner.total, unit=owner.unit,
                                leave=True, display=False, **owner._scale(), **kwargs)
        except ImportError:  # no ipywidgets: a text bar instead
            return None
        return cls(bar, owner.delay)

    def _bundle(self) -> dict[str, Any]:
        return {"text/plain": self.bar.format_meter(**self.bar.format_dict),
                "application/vnd.jupyter.widget-view+json": {
                    "version_major": 2, "version_minor": 0,
                    "model_id": self.bar.container.model_id}}

    def show_if_due(self, start: float) -> None:
        if self.handle is None and time.perf_counter() - start >= self.delay:
            from IPython.display import display

            self.handle = display(self._bundle(), raw=True, display_id=True)

    def close(self, start: float) -> None:
        self.bar.close()
        self.show_if_due(start)
        if self.handle is not None:
            self.handle.update(self._bundle(), raw=True)  # the finished bar's text


class TqdmCallback(Callback):
    """A :class:`Bar` advanced once per finished dask task (local schedulers only).

    Parameters
    ----------
    label : str
        Shown before the bar.
    nbytes : int, optional
        Bytes the computation moves. When given the bar counts bytes (scaled to kB/MB/GB)
        and shows the throughput; otherwise it counts tasks.
    delay : float, optional
        Seconds before the bar appears (default :data:`DELAY`).
    show : bool, default True
        ``False`` draws nothing but still records the phase.
    **tqdm_kwargs
        Passed to ``tqdm`` (e.g. ``file=``).
    """

    def __init__(
        self, label: str = "", nbytes: int | None = None, delay: float | None = None,
        show: bool = True, **tqdm_kwargs: Any,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # dask leaves Callback untyped
        self.label = label
        self.nbytes = int(nbytes) if nbytes else None
        self.delay = delay
        self.show = show
        self.tqdm_kwargs = tqdm_kwargs
        self.bar: Bar | None = None
        self._per_task = 1.0
        self._done = 0.0

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        self._done = 0.0
        ntasks = max(1, sum(len(state[k]) for k in ("ready", "waiting", "running", "finished")
                            if k in state))
        if self.nbytes:
            self._per_task = self.nbytes / ntasks
            total, unit = self.nbytes, "B"
        else:
            self._per_task, total, unit = 1.0, ntasks, "task"
        self.bar = Bar(self.label, total, unit=unit, show=self.show, delay=self.delay,
                       **self.tqdm_kwargs)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        bar = self.bar
        if bar is not None:
            # the threaded scheduler calls back from its pool; Bar serialises the update
            self._done += self._per_task
            bar.update_to(self._done)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if self.bar is not None:
            self.bar.close(ok=not errored)
            self.bar = None


@contextlib.contextmanager
def progress_bar(show: bool, label: str = "", nbytes: int | None = None) -> Iterator[None]:
    """A :class:`TqdmCallback` bar over the dask computations run inside the block.

    ``show=False`` draws nothing; the phase is still recorded for :func:`record_phases`.
    """
    with TqdmCallback(label, nbytes=nbytes, show=show):
        yield


def cluster_progress(
    futures: Any, show: bool, label: str = "", nbytes: int | None = None
) -> None:
    """Block until ``futures`` (and everything they depend on) finish on the cluster,
    moving a :class:`Bar` from the scheduler's progress feed.

    The bar is the one local schedulers show: same label, bytes and throughput. Errors of
    the tasks are left to the caller (``future.result()``).
    """
    from distributed import futures_of, wait
    from distributed.diagnostics.progressbar import TextProgressBar

    keys = futures_of(futures)
    total = int(nbytes) if nbytes else 0
    bar = Bar(label, total or 1, unit="B" if total else "task", show=show)

    class _Feed(TextProgressBar):
        # the scheduler's feed of (all, remaining) tasks, drawn on our bar
        def _draw_bar(self, remaining: int = 0, all: int = 0, **kwargs: Any) -> None:
            if all:
                bar.update_to(bar.total * (all - remaining) / all)

        def _draw_stop(self, **kwargs: Any) -> None:
            pass

    ok = False
    try:
        if show and keys:
            _Feed(keys, start=True)  # type: ignore[no-untyped-call]  # distributed
        wait(keys)
        ok = all(f.status == "finished" for f in keys)
    finally:
        bar.close(ok=ok)


@contextlib.contextmanager
def step_bar(show: bool, label: str, nbytes: int, steps: int) -> Iterator[Callable[[], None]]:
    """A :class:`Bar` of ``nbytes`` in ``steps`` equal steps, for loops dask does not run
    (e.g. the client writing blocks encoded on a cluster); yields the step function."""
    bar = Bar(label, int(nbytes), show=show)
    per_step = nbytes / max(1, steps)
    done = [0.0]

    def step() -> None:
        done[0] += per_step
        bar.update_to(done[0])

    ok = False
    try:
        yield step
        ok = True
    finally:
        bar.close(ok=ok)
