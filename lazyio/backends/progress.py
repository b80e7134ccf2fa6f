"""Progress bars: tqdm for local dask schedulers, the cluster's own under ``distributed``.

A :class:`TqdmCallback` is a dask :class:`~dask.callbacks.Callback` that moves a tqdm bar
(``tqdm.auto``: a widget in Jupyter, text on a terminal) by one step per finished task. When
the number of bytes the computation moves is known, the bar counts bytes instead of tasks,
so it shows a throughput (MB/s). Nothing is shown unless asked for; the library never
prints otherwise.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from dask.callbacks import Callback

__all__ = ["TqdmCallback", "cluster_progress", "progress_bar", "step_bar"]

# Seconds before a bar appears, so that instant computations stay silent.
DELAY = 0.5


def _make_tqdm(**kwargs: Any) -> Any:
    # tqdm.auto picks the notebook widget when ipywidgets is there, text otherwise
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


class TqdmCallback(Callback):
    """A tqdm bar advanced once per finished dask task (local schedulers only).

    Parameters
    ----------
    label : str
        Shown before the bar.
    nbytes : int, optional
        Bytes the computation moves. When given the bar counts bytes (``B``, scaled to
        kB/MB/GB) and shows the throughput; otherwise it counts tasks.
    delay : float, optional
        Seconds before the bar appears (default :data:`DELAY`).
    **tqdm_kwargs
        Passed to ``tqdm`` (e.g. ``file=``, ``disable=``).
    """

    def __init__(
        self, label: str = "", nbytes: int | None = None, delay: float | None = None,
        **tqdm_kwargs: Any,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # dask leaves Callback untyped
        self.label = label
        self.nbytes = int(nbytes) if nbytes else None
        self.delay = DELAY if delay is None else delay
        self.tqdm_kwargs = tqdm_kwargs
        self.bar: Any = None
        self._per_task = 1.0
        self._done = 0.0
        self._lock = threading.Lock()

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        self._done = 0.0
        ntasks = max(1, sum(len(state[k]) for k in ("ready", "waiting", "running", "finished")
                            if k in state))
        if self.nbytes:
            self._per_task = self.nbytes / ntasks
            kwargs = {"total": self.nbytes, "unit": "B", "unit_scale": True,
                      "unit_divisor": 1000}
        else:
            kwargs = {"total": ntasks, "unit": "task"}
        self.bar = _make_tqdm(desc=self.label or None, delay=self.delay, leave=True,
                              **kwargs, **self.tqdm_kwargs)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if self.bar is not None:
            with self._lock:  # the threaded scheduler calls back from its pool
                self._done += self._per_task
                # whole units, never past the total (float steps would overshoot it)
                step = min(self.bar.total, round(self._done)) - self.bar.n
                if step > 0:
                    self.bar.update(step)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if self.bar is None:
            return
        if not errored and self.bar.total > self.bar.n:
            # float steps may fall short of the total; update() (unlike refresh()) keeps
            # a bar that has not appeared yet hidden
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()
        self.bar = None


@contextlib.contextmanager
def progress_bar(show: bool, label: str = "", nbytes: int | None = None) -> Iterator[None]:
    """Show a :class:`TqdmCallback` bar over dask computations run inside the block.

    ``show=False`` shows nothing at all.
    """
    if not show:
        yield
        return
    with TqdmCallback(label, nbytes=nbytes):
        yield


def cluster_progress(futures: Any, show: bool) -> None:
    """The ``distributed`` progress bar of ``futures`` (a widget in Jupyter, text else).

    In a terminal it blocks until the futures finish; in Jupyter it returns at once and
    the widget keeps updating.
    """
    if not show:
        return
    from distributed import progress

    widget = progress(futures)
    if widget is not None:
        # in Jupyter, progress returns a widget that shows only when displayed
        from IPython.display import display

        display(widget)


@contextlib.contextmanager
def step_bar(show: bool, label: str, nbytes: int, steps: int) -> Iterator[Callable[[], None]]:
    """A tqdm bar of ``nbytes`` in ``steps`` equal steps, for loops dask does not run
    (e.g. the client writing blocks encoded on a cluster); yields the step function."""
    if not show:
        yield lambda: None
        return
    bar = _make_tqdm(desc=label or None, total=int(nbytes), unit="B", unit_scale=True,
                     unit_divisor=1000, delay=DELAY)
    per_step = nbytes / max(1, steps)
    done = [0.0]

    def step() -> None:
        done[0] += per_step
        delta = min(bar.total, round(done[0])) - bar.n
        if delta > 0:
            bar.update(delta)

    try:
        yield step
    finally:
        bar.close()
