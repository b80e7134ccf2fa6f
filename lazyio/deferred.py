"""Delayed writes: ``save(..., compute=False)`` and :func:`save_many`.

A delayed write runs the normal write pipeline of :func:`lazyio.save` (checks, the
target's lock, the temporary, the plugin's metadata) in a thread of its own until it
reaches :func:`lazyio.backends.store.store`, the one place where array data is streamed.
There it hands its sources and targets over and waits. The returned
:class:`DeferredWrite` is a dask collection. :func:`save_many` and
:meth:`DeferredWrite.compute` stream every waiting array with ONE store call (so a source
block the writes share is computed once), then let each pipeline verify and commit its
target, and re-raise the first error; if streaming fails, every pipeline aborts
(temporaries removed, locks released, nothing committed).

``dask.compute(*writes)`` gets there through the graph optimisation, which dask calls
once for all collections of one kind, in the calling process, before the scheduler
starts: it streams, and the optimised graph holds one task per write that waits for its
commit. A finalising task would not do: dask runs those on the workers of a
``distributed`` cluster, away from the process holding the locks and temporaries, and a
failed computation never runs them. On a ``distributed`` client the scheduler optimises
in its own process, so there ``__dask_postcompute__`` (called in the client) writes
each target alone.
"""

from __future__ import annotations

import atexit
import contextvars
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from lazyio.errors import WriteError

__all__ = ["DeferredWrite", "hand_off", "save_deferred", "save_many"]

_STARTING, _HANDED, _FINISHED = "starting", "handed", "finished"


class _Pending:
    """What a delayed write's thread, its :class:`DeferredWrite` and the optimiser share.

    Holds no reference to the :class:`DeferredWrite`, so dropping that object abandons
    the write (see :func:`_abandon`).
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.cond = threading.Condition()
        self.phase = _STARTING
        self.sources: list[Any] = []
        self.targets: list[Any] = []
        self.lock: Any = False
        self.show = False
        self.verdict: tuple[str, BaseException | None] | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def wait_until(self, *phases: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.phase in phases)

    def release(self, verdict: str, error: BaseException | None = None) -> None:
        """Let the waiting pipeline go on: ``"stored"`` (commit) or ``"abort"``."""
        with self.cond:
            if self.verdict is None:
                self.verdict = (verdict, error)
            self.cond.notify_all()

    def join(self) -> None:
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


# the delayed write whose pipeline runs in the current thread (None elsewhere)
_CURRENT: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar(
    "lazyio_deferred", default=None)
# key -> shared state of every DeferredWrite not yet finished; read by the optimiser
_REGISTRY: dict[str, _Pending] = {}
# re-entrant: a write dropped during garbage collection abandons itself under it
_REGISTRY_LOCK = threading.RLock()
# streamed writes whose commit a task of the computation waits for (see _optimize)
_SETTLING: dict[str, _Pending] = {}


def deferring() -> bool:
    """Whether the current thread runs the pipeline of a delayed write (whose source may be
    shared with other writes of the same computation)."""
    return _CURRENT.get() is not None


def hand_off(
    sources: Sequence[Any], targets: Sequence[Any], *, lock: Any, show_progressbar: bool
) -> bool:
    """Called first by :func:`~lazyio.backends.store.store`. In a delayed write's thread,
    give the arrays to the coming computation and wait for it; return True once they
    are stored (raise if the computation failed or the write was abandoned). Elsewhere,
    and for a second store call of the same pipeline, return False: store normally."""
    pending = _CURRENT.get()
    if pending is None or pending.phase != _STARTING or not sources:
        return False  # (nothing to stream: the pipeline goes on and commits at once)
    with pending.cond:
        pending.sources = list(sources)
        pending.targets = list(targets)
        pending.lock = lock
        pending.show = show_progressbar
        pending.phase = _HANDED
        pending.cond.notify_all()
        pending.cond.wait_for(lambda: pending.verdict is not None)
        assert pending.verdict is not None
        verdict, error = pending.verdict
        # the arrays belong to the computation now; do not keep the graphs alive
        pending.sources, pending.targets = [], []
    if verdict == "abort":
        if error is not None:
            raise error
        raise WriteError(f"{pending.label}: the delayed write was dropped before it was "
                         "computed; nothing was written")
    return True


def _thread_main(pending: _Pending, write: Callable[[], None]) -> None:
    _CURRENT.set(pending)
    try:
        write()
    except BaseException as err:  # noqa: BLE001 - re-raised by whoever waits for it
        pending.error = err
    finally:
        with pending.cond:
            pending.phase = _FINISHED
            pending.cond.notify_all()


def _abandon(key: str) -> None:
    """Abort a delayed write that will not be computed: its pipeline removes the
    temporary and releases the lock; wait for that."""
    with _REGISTRY_LOCK:
        pending = _REGISTRY.pop(key, None)
    if pending is None:
        return
    pending.release("abort")
    pending.join()


@atexit.register
def _abandon_all() -> None:
    # the threads are daemons: without this, leaving Python would keep their temporaries
    for key in list(_REGISTRY):
        _abandon(key)


def _refuse(target: str) -> None:
    raise WriteError(f"{target}: a delayed lazyio write runs while dask optimises the graph; "
                     "compute it with graph optimisation on (the default)")


class DeferredWrite:
    """A write of :func:`lazyio.save` that happens when dask computes it.

    Returned by ``lazyio.save(..., compute=False)``. Compute it with ``write.compute()``
    or several at once with ``dask.compute(*writes)`` (one pass over the arrays they
    share); the result is ``None``, as for ``dask.array.store(..., compute=False)``.
    Until then the target's lock and a temporary are held; :meth:`abort`, or dropping
    the last reference, gives them up and writes nothing.
    """

    def __init__(self, pending: _Pending) -> None:
        self._pending = pending
        self._key = f"lazyio-save-{uuid.uuid4().hex}"
        with _REGISTRY_LOCK:
            _REGISTRY[self._key] = pending
        self._finalizer = weakref.finalize(self, _abandon, self._key)

    @property
    def target(self) -> str:
        """The target as the caller named it."""
        return self._pending.label

    @property
    def done(self) -> bool:
        """Whether the write is over (committed, failed or aborted)."""
        return self._pending.phase == _FINISHED

    def __repr__(self) -> str:
        state = "done" if self.done else "waiting"
        return f"<DeferredWrite {self.target} ({state})>"

    def abort(self) -> None:
        """Give up the write: nothing is written, the lock and temporary are released."""
        self._finalizer()

    def compute(self) -> None:
        """Write and commit the target now, on the current scheduler (a ``distributed``
        client included); raise what failed. Computing it again does nothing."""
        run_keys([self._key])

    # -- the dask collection protocol --------------------------------------------
    def __dask_graph__(self) -> dict[str, Any]:
        # Without optimisation the graph refuses instead of silently writing nothing;
        # the optimiser replaces it (see _optimize). The argument is not a key of the
        # graph, so dask passes it as a plain string.
        return {self._key: (_refuse, self._pending.label)}

    def __dask_keys__(self) -> list[str]:
        return [self._key]

    def __dask_layers__(self) -> tuple[str, ...]:
        return (self._key,)

    def __dask_tokenize__(self) -> str:
        return self._key

    def __dask_postcompute__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        from dask.delayed import single_key

        from lazyio.backends.store import uses_distributed

        if uses_distributed():
            # a distributed scheduler optimises graphs in its own process, away from our
            # threads: this is the last hook dask.compute calls here, so write now,
            # alone (lazyio.save_many shares one pass on a cluster too)
            run_keys([self._key])
        return single_key, ()

    def __dask_postpersist__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _persisted, (self,)

    @staticmethod
    def __dask_optimize__(dsk: Mapping[Any, Any], keys: Any, **kwargs: Any) -> dict[Any, Any]:
        return _optimize(dsk, keys)

    @staticmethod
    def __dask_scheduler__(dsk: Mapping[Any, Any], keys: Any, **kwargs: Any) -> Any:
        import dask.threaded

        return dask.threaded.get(dsk, keys, **kwargs)


def _persisted(dsk: Any, write: DeferredWrite, rename: Any = None) -> DeferredWrite:
    return write  # the write is done once the graph is optimised


def _flat(keys: Any) -> list[Any]:
    if isinstance(keys, list):  # dask nests lists of keys; a tuple is one array key
        return [k for sub in keys for k in _flat(sub)]
    return [keys]


def _optimize(dsk: Mapping[Any, Any], keys: Any) -> dict[Any, Any]:
    """Stream every delayed write among ``keys`` with one store call; the graph left
    waits for each pipeline's commit (one task per write)."""
    flat = _flat(keys)
    found = _take(flat)
    stream(list(found.values()))
    # Not waited for here: dask holds a lock while it optimises (Python 3.11's
    # cached_property lock, shared by all graphs) and a pipeline that verifies computes
    # a graph of its own; the tasks wait, in this process (local schedulers only get
    # here with a write: a distributed client runs them in __dask_postcompute__).
    with _REGISTRY_LOCK:
        _SETTLING.update(found)
    return {k: (_settle_key, k[len("lazyio-save-"):]) if k in found else None for k in flat}


def _settle_key(token: str) -> None:
    with _REGISTRY_LOCK:
        pending = _SETTLING.pop(f"lazyio-save-{token}", None)
    if pending is not None:
        settle([pending])


def _take(keys: Iterable[Any]) -> dict[str, _Pending]:
    # each write is taken off the registry first, so it runs once whoever asks
    with _REGISTRY_LOCK:
        found = {k: _REGISTRY.pop(k, None) for k in keys if isinstance(k, str)}
    return {k: p for k, p in found.items() if p is not None}


def run_keys(keys: Iterable[Any]) -> None:
    """Run the delayed writes of these keys that are still waiting, together."""
    run_writes(list(_take(keys).values()))


def run_writes(writes: Sequence[_Pending]) -> None:
    """Stream the arrays of every waiting write in one store call, then let each
    pipeline commit and wait for it; on failure abort them all. Raises the first
    write's error."""
    stream(writes)
    settle(writes)


def stream(writes: Sequence[_Pending]) -> None:
    """Stream the arrays of every waiting write in one store call and let the pipelines
    go on to commit; if streaming fails, abort them all, wait and raise."""
    from lazyio.backends.store import store

    waiting = [p for p in writes if p.phase == _HANDED and p.verdict is None]
    if waiting:
        # one store call per distinct lock (writers pass none): one pass over the sources
        groups: dict[int, list[_Pending]] = {}
        for p in waiting:
            groups.setdefault(id(p.lock), []).append(p)
        try:
            from lazyio.backends.progress import target_name

            label = waiting[0].label if len(waiting) == 1 else f"{len(waiting)} targets"
            with target_name(label):
                for group in groups.values():
                    store([s for p in group for s in p.sources],
                          [t for p in group for t in p.targets],
                          lock=group[0].lock, show_progressbar=any(p.show for p in group))
        except BaseException as err:  # noqa: BLE001 - re-raised below
            # the first pipeline re-raises the failure itself (so it is named and
            # classified as a save names it); the others say why they wrote nothing
            waiting[0].release("abort", err)
            for p in waiting[1:]:
                other = WriteError(f"{p.label}: nothing was written: the computation it "
                                   f"shared with {waiting[0].label} failed ({err})")
                other.__cause__ = err
                p.release("abort", other)
            for p in waiting:
                p.join()
            failed = next((p.error for p in waiting if p.error is not None), None)
            raise failed if failed is not None else err from None
        for p in waiting:
            p.release("stored")


def settle(writes: Sequence[_Pending]) -> None:
    """Wait for the pipelines to finish; raise the first error (the others as notes)."""
    for p in writes:
        p.join()
    errors = [p.error for p in writes if p.error is not None]
    if errors:
        first = errors[0]
        for other in errors[1:]:
            first.add_note(f"another delayed write also failed: {other}")
        raise first


def save_deferred(target: Any, write: Callable[[], None]) -> DeferredWrite:
    """Start ``write`` (a call of the write pipeline) in its own thread and return once
    it waits for the computation, or raise what stopped it before that."""
    from lazyio.location import Location

    label = target.url if isinstance(target, Location) else str(target)
    pending = _Pending(label)
    thread = threading.Thread(target=_thread_main, args=(pending, write),
                              name=f"lazyio-save {label}", daemon=True)
    pending.thread = thread
    thread.start()
    pending.wait_until(_HANDED, _FINISHED)
    if pending.phase == _FINISHED:
        thread.join()
        if pending.error is not None:
            raise pending.error  # refused before any array was written: nothing is left
    return DeferredWrite(pending)


def save_many(writes: Iterable[tuple[Any, ...] | DeferredWrite]) -> None:
    """Write several targets, of any formats, with one pass over the arrays they share.

    Every target is written as :func:`lazyio.save` writes it (lock, temporary,
    verification, commit); if one is refused before its data are streamed, nothing at
    all is written, and if the computation fails no target is committed. Works on any
    dask scheduler, a ``distributed`` client included.

    Parameters
    ----------
    writes : iterable of (target, signal), (target, signal, options) or DeferredWrite
        Each entry is what :func:`lazyio.save` takes: the target, the signal dictionary
        (or HyperSpy signal, or array), and a dict of its keywords (``format``,
        ``overwrite``, ``chunks``, ``verify``, format options, ...); or a write
        already returned by ``save(..., compute=False)``.
    """
    from lazyio._api import save

    deferred: list[DeferredWrite] = []
    try:
        for entry in writes:
            if isinstance(entry, DeferredWrite):
                deferred.append(entry)
                continue
            if not isinstance(entry, tuple | list) or len(entry) not in (2, 3):
                raise TypeError("save_many() takes (target, signal) or (target, signal, "
                                f"options) entries, not {entry!r}")
            target, signal, *rest = entry
            options = dict(rest[0]) if rest else {}
            written = save(target, signal, compute=False, **options)
            assert written is not None
            deferred.append(written)
    except BaseException:
        for written in deferred:
            written.abort()
        raise
    run_keys([w._key for w in deferred])
