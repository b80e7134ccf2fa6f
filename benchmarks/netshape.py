"""Links shaped by the kernel for the remote benchmark: a private network namespace whose
loopback rate is limited by a ``tc`` token bucket, and a delaying proxy for round trips.

Layout inside the namespace (``unshare --net``, ``lo`` brought up; nothing leaves it)::

    client --TCP 127.0.0.1 (tbf-shaped lo)--> DelayProxy --Unix socket--> server

- The rate: ``tc qdisc replace dev lo root tbf rate R``. The proxy reaches the server over
  a Unix socket, so each byte crosses the shaped ``lo`` once (client <-> proxy); a TCP hop
  behind the proxy would cross it twice and halve the rate. This kernel has no ``netem``
  (delay) and no classful ``prio``: only the root ``tbf``.
- The delay: :class:`DelayProxy` holds every piece of data RTT/2 in each direction
  without limiting the rate (reads go on while earlier pieces wait), so a request waits one
  RTT for its first byte and a window of requests in flight is pipelined, as on a real link.
- The servers: the Range HTTP server of ``tests/servers.py`` (its handler, on a Unix
  socket) and moto's S3 server (werkzeug on a Unix socket), each in a process of its own.
- Counting: the proxy counts the requests it forwards (HTTP request lines), the bytes it
  sends back (compressed bytes on the wire) and groups requests into *round trips*: a
  request that arrives more than RTT/2 after the previous one starts a new round trip
  (a request sent after waiting on an answer arrives at least one RTT after the request
  it waited on; requests sent together arrive together).

:func:`run_in_namespace` runs a function of this package in a fresh process inside a new
namespace (root needed, as the test suite and CI run) and returns its JSON answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Link:
    """A link: round-trip time in seconds and rate in bits per second."""

    rtt: float
    rate_bits: float

    @property
    def rate_bytes(self) -> float:
        return self.rate_bits / 8

    @property
    def label(self) -> str:
        rate = (f"{self.rate_bits / 1e9:g} Gbit/s" if self.rate_bits >= 1e9
                else f"{self.rate_bits / 1e6:g} Mbit/s")
        return f"{self.rtt * 1e3:g} ms RTT + {rate}"


LINKS = (Link(0.010, 1e9), Link(0.050, 100e6))


def namespace_available() -> tuple[bool, str]:
    """Whether this process may make a network namespace and shape its loopback."""
    try:
        proc = subprocess.run(
            ["unshare", "--net", "sh", "-c",
             ("ip link set lo up && tc qdisc replace dev lo root tbf rate 1gbit "
              "burst 512kb latency 50ms")],
            capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err)
    return proc.returncode == 0, proc.stderr.strip()


def shape_loopback(link: Link | None) -> None:
    """Bring ``lo`` up and (with ``link``) limit its rate with a root ``tbf`` qdisc.

    The bucket holds at least a timer tick's worth of tokens at the rate (the kernel
    refills per tick) and two 64 KiB loopback packets; the queue holds 50 ms at the rate.
    """
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if link is None:
        return
    burst = max(int(link.rate_bytes / 250), 4 * 65536)
    subprocess.run(["tc", "qdisc", "replace", "dev", "lo", "root", "tbf",
                    "rate", f"{int(link.rate_bits)}bit", "burst", str(burst),
                    "latency", "50ms"], check=True)


# --------------------------------------------------------------------------- servers


def serve_http(sock: str, root: str) -> None:  # pragma: no cover - server process
    """The Range HTTP server of ``tests/servers.py`` on a Unix socket (forever)."""
    import socketserver

    sys.path.insert(0, str(ROOT / "tests"))
    import servers

    counter, link = servers._Counter(), servers._Link()
    handler = type("Handler", (servers._RangeHandler,), {
        "counter": counter, "link": link, "disable_nagle_algorithm": False,
        # a Unix peer has no (host, port): the handler logs nothing anyway
        "address_string": lambda self: "unix"})

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
        request_queue_size = 256

    def factory(request: Any, address: Any, server: Any) -> Any:
        return handler(request, ("unix", 0), server, directory=root)

    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)
    Server(sock, factory).serve_forever()


def serve_s3(sock: str) -> None:  # pragma: no cover - server process
    """moto's S3 server (with the request counter of ``tests/servers.py``) on a Unix
    socket (forever)."""
    import logging

    sys.path.insert(0, str(ROOT / "tests"))
    import servers
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    app = servers._counting_app(DomainDispatcherApplication(create_backend_app))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)
    run_simple(f"unix://{sock}", 0, app, threaded=True, use_reloader=False)


# --------------------------------------------------------------------------- delaying proxy

_REQUEST_LINE = re.compile(rb"(?:^|\r\n)(GET|HEAD|PUT|POST|DELETE) /")


class _Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.times: list[float] = []
        self.down = 0  # bytes sent to clients
        self.up = 0

    def snapshot(self, rtt: float) -> dict[str, Any]:
        waves, last = 0, None
        for t in sorted(self.times):
            if last is None or t - last > rtt / 2:
                waves += 1
            last = t
        return {"requests": len(self.times), "round_trips": waves, "bytes_down": self.down,
                "bytes_up": self.up}


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                stats: _Stats, upstream: bool) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
            if not upstream:
                stats.down += len(data)
        with contextlib.suppress(OSError):
            writer.write_eof()

    sender = asyncio.ensure_future(send())
    tail = b""
    try:
        while True:
            data = await reader.read(2**18)
            now = loop.time()
            if upstream and data:
                stats.up += len(data)
                # request lines may straddle reads: look at the tail of the last one too
                text = tail + data
                stats.times.extend(now for m in _REQUEST_LINE.finditer(text)
                                   if m.end() > len(tail))
                tail = text[-16:]
            queue.put_nowait((now + delay, data))
            if not data:
                break
        await sender
    except (OSError, asyncio.IncompleteReadError):
        sender.cancel()
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def _proxy_main(port: int, control: int, sock: str, rtt: float) -> None:
    stats = _Stats()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(sock)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer, rtt / 2, stats, True),
                             _pump(up_reader, writer, rtt / 2, stats, False),
                             return_exceptions=True)

    async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            if line.strip() == b"reset":
                stats.reset()
                writer.write(b"{}\n")
            else:
                writer.write(json.dumps(stats.snapshot(rtt)).encode() + b"\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(client, HOST, port, backlog=512)
    ctl = await asyncio.start_server(command, HOST, control)
    async with server, ctl:
        await asyncio.gather(server.serve_forever(), ctl.serve_forever())


def serve_proxy(port: int, control: int, sock: str, rtt: float) -> None:  # pragma: no cover
    """The delaying proxy: ``127.0.0.1:port`` to the server on Unix socket ``sock``."""
    asyncio.run(_proxy_main(port, control, sock, rtt))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ShapedServer:
    """A server process behind a :class:`DelayProxy` process, inside this namespace.

    ``kind`` is ``"http"`` (serving ``root``) or ``"s3"``. :attr:`base_url` is the proxy's
    address; :meth:`stats` / :meth:`reset` are the proxy's counts.
    """

    def __init__(self, kind: str, workdir: str, rtt: float, root: str = "") -> None:
        self.kind, self.rtt, self.root = kind, rtt, root
        self.sock = os.path.join(workdir, f"{kind}-{os.getpid()}.sock")
        self.port, self.control = _free_port(), _free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self._ctl: socket.socket | None = None
        self._ctl_file: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _spawn(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": _pythonpath(), "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "benchmarks.netshape", *args], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL))

    def start(self) -> Self:
        if self.kind == "http":
            self._spawn("serve-http", self.sock, self.root)
        else:
            self._spawn("serve-s3", self.sock)
        self._spawn("proxy", str(self.port), str(self.control), self.sock, str(self.rtt))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                self.stop()
                raise RuntimeError(f"the {self.kind} server or its proxy exited at start-up")
            if os.path.exists(self.sock):
                with contextlib.suppress(OSError):
                    self._ctl = socket.create_connection((HOST, self.control), timeout=30)
                    self._ctl_file = self._ctl.makefile("rwb")
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the {self.kind} server did not start")

    def _ask(self, what: str) -> dict[str, Any]:
        assert self._ctl_file is not None
        self._ctl_file.write(what.encode() + b"\n")
        self._ctl_file.flush()
        return dict(json.loads(self._ctl_file.readline()))

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- entry points


def _pythonpath() -> str:
    # the caller's PYTHONPATH first (a lazyio to compare), then this checkout
    return os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(ROOT)) if p)


def run_in_namespace(func: str, spec: dict[str, Any], timeout: float = 1800) -> Any:
    """Run ``benchmarks.<module>:<function>(spec)`` (``func``) in a fresh process inside a
    new network namespace; return its JSON answer (the last line it prints)."""
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    proc = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-m", "benchmarks.netshape", "call",
         func, json.dumps(spec)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{func} in a network namespace failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _call(func: str, spec: str) -> None:  # pragma: no cover - namespace process
    import importlib

    module, name = func.split(":")
    result = getattr(importlib.import_module(module), name)(json.loads(spec))
    sys.stdout.flush()
    print(json.dumps(result))


def main(argv: list[str]) -> None:  # pragma: no cover - subprocess entry points
    cmd, *args = argv
    if cmd == "serve-http":
        serve_http(*args)
    elif cmd == "serve-s3":
        serve_s3(*args)
    elif cmd == "proxy":
        serve_proxy(int(args[0]), int(args[1]), args[2], float(args[3]))
    elif cmd == "call":
        _call(args[0], args[1])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    # the servers exit with the namespace's driver; a watchdog as in tests/servers.py
    parent = os.getppid()

    def _watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    if sys.argv[1:2] != ["call"]:
        threading.Thread(target=_watch, daemon=True).start()
    main(sys.argv[1:])
