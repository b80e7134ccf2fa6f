"""A real ``distributed`` cluster that shares no disk with its client.

:class:`NoDiskCluster` starts ``dask scheduler`` and two ``dask worker`` processes (the CLI,
through ``python -m dask``; not ``LocalCluster``), each in a mount namespace of its own made
by ``ci/nodisk-node.sh``: a private ``/tmp``, and the client's working directory, the
repository and the test data folder covered by empty tmpfs mounts. The nodes get a copy of
the code (``lazyio/`` and this module), as a cluster has the software installed but not the
data. Everything listens on 127.0.0.1. Data travel through S3 (the moto server of
``servers.py``) or through the client.

This module is imported on both sides. On the nodes (``--preload nodisk_cluster``):

- every worker records, through a Python audit hook, each attempt to open, list, create,
  rename or remove a path inside the client's hidden folders (:func:`hidden_accesses`);
- the scheduler looks through every task it is given for a client path in the task's
  pickled bytes (:func:`graph_leaks`);
- :class:`KillAfter`, a worker plugin, kills its worker process (``SIGKILL``) right after
  its Nth task of a given name finished, once per node (the nanny then starts a new worker
  process in the same namespace).

A machine where the namespaces cannot be made fails the tests with the reason (never a skip).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

HOST = "127.0.0.1"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NODE_SCRIPT = os.path.join(REPO, "ci", "nodisk-node.sh")
HIDDEN_ENV = "LAZYIO_NODISK_HIDDEN"
NODE_CODE = "/tmp/node/code"  # where a node finds its copy of the code (ci/nodisk-node.sh)
KILLED_MARKER = "/tmp/node/killed"  # in a node's private /tmp: survives its worker process

_EVENTS = frozenset({
    "open", "os.listdir", "os.scandir", "os.mkdir", "os.rename", "os.remove", "os.rmdir",
    "os.truncate", "os.chdir", "os.utime", "os.chmod", "os.link", "os.symlink",
    "shutil.rmtree", "shutil.copyfile", "shutil.move", "glob.glob",
})
_accesses: list[tuple[str, str]] = []
_leaks: list[tuple[str, str]] = []
_scanned = [0]
_looking = threading.local()  # set while node_facts looks at the hidden folders itself


class NodeError(RuntimeError):
    """The no-disk cluster could not be started (the message says why)."""


# --------------------------------------------------------------------------- on the nodes


def _hidden() -> tuple[str, ...]:
    return tuple(p for p in os.environ.get(HIDDEN_ENV, "").split(os.pathsep) if p)


def _audit_hook(hidden: tuple[str, ...]) -> Any:
    prefixes = tuple(p.rstrip("/") + "/" for p in hidden)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event not in _EVENTS or not args or getattr(_looking, "on", False):
            return
        path = args[0]
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        if not isinstance(path, str) or not path:
            return
        full = path if path.startswith("/") else os.path.join(os.getcwd(), path)
        if (full + "/").startswith(prefixes):
            _accesses.append((event, full))

    return hook


class _GraphScan(SchedulerPlugin):
    """A scheduler plugin: every task's pickled bytes are searched for a client path."""

    name = "lazyio-nodisk-graph-scan"

    def __init__(self, hidden: tuple[str, ...]) -> None:
        self.needles = [p.encode() for p in hidden]

    def update_graph(self, scheduler: Any, *, keys: Any = (), tasks: Any = (),
                     **kwargs: Any) -> None:
        for key in tasks or keys:
            ts = scheduler.tasks.get(key)
            spec = getattr(ts, "run_spec", None)
            if spec is None:
                continue
            try:
                blob = pickle.dumps(spec, protocol=5)
            except Exception:  # noqa: BLE001 - fall back to cloudpickle's wider reach
                import cloudpickle

                blob = cloudpickle.dumps(spec, protocol=5)
            _scanned[0] += 1
            for needle in self.needles:
                at = blob.find(needle)
                if at >= 0:
                    _leaks.append((str(key), blob[at:at + 120].decode(errors="replace")))


async def dask_setup(server: Any) -> None:
    """The ``--preload`` entry point of every node (scheduler and workers)."""
    hidden = _hidden()
    if type(server).__name__ == "Scheduler":
        server.add_plugin(_GraphScan(hidden))
    else:
        sys.addaudithook(_audit_hook(hidden))


def hidden_accesses() -> list[tuple[str, str]]:
    """On a worker: the accesses to a client path seen so far (``client.run``)."""
    return list(_accesses)


def graph_leaks(dask_scheduler: Any = None) -> dict[str, Any]:
    """On the scheduler: how many tasks were scanned, and the client paths found
    (``client.run_on_scheduler``)."""
    return {"scanned": _scanned[0], "leaks": list(_leaks)}


def node_facts() -> dict[str, Any]:
    """On a node: where its code comes from and what it sees of the client's folders."""
    import lazyio

    _looking.on = True
    try:
        return {
            "lazyio": lazyio.__file__,
            "hidden": {p: os.path.isdir(p) and os.listdir(p) for p in _hidden()},
            "cwd": os.getcwd(),
            "killed": os.path.exists(KILLED_MARKER),
            "pid": os.getpid(),
        }
    finally:
        _looking.on = False


class KillAfter(WorkerPlugin):
    """A worker plugin: the worker named ``worker_name`` (``"*"``: every worker) kills its
    own process right after
    its ``n``th finished task whose key name contains ``name`` (a seeded point, not a
    time), once per node: the marker in the node's private /tmp says it happened."""

    name = "lazyio-nodisk-kill"

    def __init__(self, worker_name: str, name: str, n: int) -> None:
        self.worker_name = worker_name
        self.task_name = name
        self.n = n
        self.count = 0
        self.worker: Any = None

    def setup(self, worker: Any) -> None:
        self.worker = worker

    def teardown(self, worker: Any) -> None:
        pass

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if self.worker is None or self.worker_name not in ("*", str(self.worker.name)):
            return
        if start != "executing" or finish != "memory" or os.path.exists(KILLED_MARKER):
            return
        from dask.utils import key_split

        if self.task_name not in key_split(key):
            return
        self.count += 1
        if self.count == self.n:
            with open(KILLED_MARKER, "w") as f:
                f.write(repr(key))
            os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- on the client


def check_namespaces() -> None:
    """Raise :class:`NodeError` saying why if this machine cannot make a node."""
    proc = subprocess.run(["bash", NODE_SCRIPT, "--check"], capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode:
        raise NodeError(
            "the no-shared-disk cluster needs mount namespaces with tmpfs mounts (root and "
            f"util-linux's unshare): {(proc.stderr or proc.stdout).strip()}"
        )


class NoDiskCluster:
    """``dask scheduler`` + ``n_workers`` ``dask worker`` (with nannies), each in its own
    mount namespace; ``hidden`` are the client's folders the nodes must not see."""

    def __init__(self, staging: str, hidden: list[str], n_workers: int = 2,
                 env: dict[str, str] | None = None, startup_timeout: float = 90.0) -> None:
        self.staging = staging
        self.hidden = [os.path.abspath(p) for p in hidden]
        self.n_workers = n_workers
        self.env = env
        self.startup_timeout = startup_timeout
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[str] = []
        self.address = ""

    def _stage_code(self) -> str:
        import lazyio

        code = os.path.join(self.staging, "code")
        shutil.rmtree(code, ignore_errors=True)
        os.makedirs(code)
        shutil.copytree(os.path.dirname(lazyio.__file__), os.path.join(code, "lazyio"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(os.path.abspath(__file__), code)
        return code

    def _start(self, name: str, args: list[str], code: str) -> None:
        log = os.path.join(self.staging, f"{name}.log")
        self.logs.append(log)
        env = {**(self.env if self.env is not None else os.environ),
               HIDDEN_ENV: os.pathsep.join(self.hidden),
               "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
               "PYTHONDONTWRITEBYTECODE": "1"}
        with open(log, "wb") as out:
            self.procs.append(subprocess.Popen(
                # a killed pytest leaves no node behind: the parent-death signal that
                # setpriv sets survives the execs of bash, unshare and python
                ["setpriv", "--pdeathsig", "TERM", "bash", NODE_SCRIPT, code, sys.prefix,
                 *self.hidden, "--", "-m", "dask", *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            ))

    def _log_tail(self) -> str:
        parts = []
        for log in self.logs:
            with contextlib.suppress(OSError), open(log, errors="replace") as f:
                parts.append(f"--- {os.path.basename(log)}\n{f.read()[-1500:]}")
        return "\n".join(parts)

    def start(self) -> Self:
        from servers import free_port

        check_namespaces()
        code = self._stage_code()
        port = free_port()
        self.address = f"tcp://{HOST}:{port}"
        self._start("scheduler", ["scheduler", "--host", HOST, "--port", str(port),
                                  "--no-dashboard", "--preload", "nodisk_cluster"], code)
        for i in range(self.n_workers):
            self._start(f"worker-{i}", [
                "worker", self.address, "--name", f"node-{i}", "--host", HOST,
                "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                "--memory-limit", "1GiB", "--death-timeout", "60",
                "--local-directory", "/tmp/node/work", "--preload", "nodisk_cluster",
            ], code)
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self) -> None:
        from distributed import Client

        deadline = time.monotonic() + self.startup_timeout
        while True:
            for p in self.procs:
                if p.poll() is not None:
                    raise NodeError(f"a node of the no-disk cluster exited ({p.returncode}):\n"
                                    + self._log_tail())
            try:
                with Client(self.address, timeout=5) as c:
                    c.wait_for_workers(self.n_workers,
                                       timeout=max(1.0, deadline - time.monotonic()))
                    return
            except (OSError, TimeoutError) as err:
                if time.monotonic() > deadline:
                    raise NodeError(f"the no-disk cluster did not start: {err}\n"
                                    + self._log_tail()) from err

    def stop(self) -> None:
        # workers first: a scheduler that goes first leaves them waiting to reconnect
        for p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def armed(client: Any, worker_name: str, name: str, n: int) -> Iterator[None]:
    """Kill the worker ``worker_name`` after its ``n``th ``name`` task while inside."""
    client.register_plugin(KillAfter(worker_name, name, n))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(KillAfter.name)

