"""Real servers on loopback for the remote tests and the remote benchmark.

- :class:`S3Server`: moto's S3 server in a subprocess (its own state, its own GIL), wrapped
  in a small WSGI middleware that counts requests and ranged GETs and reports them at
  ``GET /__lazyio_stats__`` (``DELETE`` resets them).
- :class:`RangeHTTPServer`: a threaded HTTP server serving a folder, honouring single
  ``Range`` requests (206) and ``HEAD`` with ``Content-Length``, counting requests and
  bytes served.
- Misbehaving peers for the error tests: :class:`FaultyHTTPServer` (a RangeHTTPServer
  whose :class:`Fault` can be switched at any moment: ignore ``Range`` as
  ``python -m http.server`` does, answer a fixed status such as 500/403/404, cut bodies
  short, or accept a request and never answer), :class:`SilentPort` (accepts
  connections, never reads or answers) and :class:`ClosedPort` (a port with nothing
  listening: connections are refused).

Both bind 127.0.0.1 only. A server that fails to start raises :class:`ServerError`; the
tests never turn that into a skip.

Run ``python tests/servers.py s3 PORT`` to start the wrapped moto server by hand.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = [
    "TAG_HEADER", "ClosedPort", "Fault", "FaultyHTTPServer", "HTTPServerProcess",
    "RangeHTTPServer", "S3Server", "ServerError", "SilentPort", "free_port",
]

HOST = "127.0.0.1"
STATS_PATH = "/__lazyio_stats__"
TAG_HEADER = "X-Lazyio-Test"  # counted by the HTTP server when a client sends it


class ServerError(RuntimeError):
    """A test server did not start (or stopped answering)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- S3 (moto)


def _counting_app(app: Any) -> Any:
    """Wrap a WSGI app: count requests (and ranged GETs), serve/reset the counts."""
    lock = threading.Lock()
    stats = {"requests": 0, "ranged_gets": 0, "gets": 0, "puts": 0, "heads": 0}

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == STATS_PATH:
            with lock:
                if environ["REQUEST_METHOD"] == "DELETE":
                    for k in stats:
                        stats[k] = 0
                body = json.dumps(stats).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        method = environ["REQUEST_METHOD"]
        with lock:
            stats["requests"] += 1
            if method == "GET":
                stats["gets"] += 1
                if environ.get("HTTP_RANGE"):
                    stats["ranged_gets"] += 1
            elif method == "PUT":
                stats["puts"] += 1
            elif method == "HEAD":
                stats["heads"] += 1
        return app(environ, start_response)

    return wrapped


def _exit_with_parent() -> None:  # pragma: no cover - runs in the server subprocess
    """Stop this server process when the test process dies without stopping it (a killed
    pytest run must not leave servers behind)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _serve_s3(port: int) -> None:  # pragma: no cover - runs in the server subprocess
    _exit_with_parent()
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    app = _counting_app(DomainDispatcherApplication(create_backend_app))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    run_simple(HOST, port, app, threaded=True, use_reloader=False)


@dataclass
class S3Server:
    """moto's S3 server in a subprocess on 127.0.0.1, with request counting.

    Use :meth:`start`/:meth:`stop` or as a context manager. ``storage_options`` are the
    s3fs options that reach it (no environment variables needed, so they travel to
    ``distributed`` workers inside a :class:`~lazyio.location.Location`).
    """

    port: int = 0
    startup_timeout: float = 60.0
    process: subprocess.Popen | None = None
    _log: Any = None
    key: str = "testing"
    secret: str = "testing"
    bucket: str = "lazyio-test"  # created by the test fixture

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url},
        }

    def start(self) -> S3Server:
        if not self.port:
            self.port = free_port()
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.key,
               "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1"}
        # a file, not a pipe: nobody reads the server's request log, and a full pipe
        # would block the server
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "s3", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=self._log, env=env,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")[-2000:]
                raise ServerError(f"moto S3 server exited at start-up:\n{err}")
            with contextlib.suppress(OSError):
                self.stats()
                return self
            time.sleep(0.1)
        self.stop()
        raise ServerError(f"moto S3 server did not answer on {self.endpoint_url}")

    def stats(self) -> dict[str, int]:
        """Request counts since the last :meth:`reset_stats`."""
        with urllib.request.urlopen(self.endpoint_url + STATS_PATH, timeout=5) as r:
            return json.loads(r.read())

    def reset_stats(self) -> None:
        req = urllib.request.Request(self.endpoint_url + STATS_PATH, method="DELETE")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def reset_auth(self, unauthenticated_actions: int) -> None:
        """Enforce IAM authentication after this many further actions (moto's switch)."""
        req = urllib.request.Request(
            self.endpoint_url + "/moto-api/reset-auth",
            data=str(unauthenticated_actions).encode(), method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would hide the value
        )
        with urllib.request.urlopen(req, timeout=5):
            pass

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- HTTP + Range

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class _Counter:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    ranged: int = 0
    heads: int = 0
    bytes_sent: int = 0
    tagged: int = 0  # requests carrying the TAG_HEADER (storage_options pass-through)

    def add(self, *, ranged: bool = False, head: bool = False, nbytes: int = 0,
            tagged: bool = False) -> None:
        with self.lock:
            self.requests += 1
            self.tagged += tagged
            self.ranged += ranged
            self.heads += head
            self.bytes_sent += nbytes

    def reset(self) -> None:
        with self.lock:
            self.requests = self.ranged = self.heads = self.bytes_sent = self.tagged = 0

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {"requests": self.requests, "ranged_gets": self.ranged,
                    "heads": self.heads, "bytes": self.bytes_sent, "tagged": self.tagged}


class _TaggingCounter:
    def __init__(self, counter: _Counter, handler: SimpleHTTPRequestHandler) -> None:
        self._counter, self._handler = counter, handler

    def add(self, **kwargs: Any) -> None:
        tagged = self._handler.headers.get(TAG_HEADER) is not None
        self._counter.add(tagged=tagged, **kwargs)


class _Link:
    """A simulated network link shared by all connections: a first-byte latency per
    request and an aggregate bandwidth (bytes/s), both optional."""

    def __init__(self, latency: float = 0.0, bandwidth: float | None = None) -> None:
        self.latency, self.bandwidth = latency, bandwidth
        self._lock = threading.Lock()
        self._free_at = 0.0  # when the link has sent everything queued so far

    def delay_request(self) -> None:
        if self.latency:
            time.sleep(self.latency)

    def send(self, nbytes: int) -> None:
        if not self.bandwidth:
            return
        with self._lock:
            start = max(time.monotonic(), self._free_at)
            self._free_at = start + nbytes / self.bandwidth
            done = self._free_at
        time.sleep(max(0.0, done - time.monotonic()))


class _RangeHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connections
    # headers and body go out in separate writes: with Nagle's algorithm each response
    # would wait for the client's delayed ACK (~40 ms), which real servers do not do
    disable_nagle_algorithm = True
    counter: _Counter  # set on the per-server subclass
    link: _Link

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet test output

    def setup(self) -> None:
        super().setup()
        counter = self.__class__.counter
        # every add() of this request also records whether the client sent TAG_HEADER
        self.counter = _TaggingCounter(counter, self)

    def _file(self) -> str | None:
        path = self.translate_path(self.path)
        return path if os.path.isfile(path) else None

    def do_DELETE(self) -> None:
        if self.path != STATS_PATH:
            self.send_error(405)
            return
        self.counter._counter.reset()
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self.link.delay_request()
        path = self._file()
        if path is None:
            self.counter.add(head=True)
            super().do_HEAD()
            return
        self.counter.add(head=True)
        self.send_response(200)
        self.send_header("Content-Length", str(os.path.getsize(path)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path == STATS_PATH:  # for a server in another process (the benchmark)
            body = json.dumps(self.counter._counter.snapshot()).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.link.delay_request()
        path = self._file()
        if path is None:
            self.counter.add()
            super().do_GET()  # directory listings and 404s
            return
        size = os.path.getsize(path)
        header = self.headers.get("Range")
        start, stop = 0, size
        match = _RANGE.match(header.strip()) if header else None
        if header and match is None:
            # several ranges at once are not needed by fsspec: refuse them clearly
            self.counter.add()
            self.send_error(416, "Only single byte ranges are supported")
            return
        if match:
            first, last = match.groups()
            if first == "":  # suffix range: the last N bytes
                start, stop = max(0, size - int(last or 0)), size
            else:
                start = int(first)
                stop = min(size, int(last) + 1) if last else size
            if start >= size and size:
                self.counter.add(ranged=True)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        length = max(0, stop - start)
        self.counter.add(ranged=bool(match), nbytes=length)
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            while left:
                buf = f.read(min(left, 2**20))
                if not buf:
                    break
                self.link.send(len(buf))
                self.wfile.write(buf)
                left -= len(buf)


class _Server(ThreadingHTTPServer):
    # fsspec opens up to 100 connections at once; socketserver's default listen backlog
    # of 5 drops the rest, which then wait seconds for a SYN retransmission
    request_queue_size = 256
    daemon_threads = True


class RangeHTTPServer:
    """A threaded HTTP server on 127.0.0.1 serving ``root``, honouring ``Range``.

    Parameters
    ----------
    root : str
        The folder served at ``base_url``.
    latency : float, default 0
        Seconds to wait before answering each request (a simulated network).
    bandwidth : float, optional
        Bytes per second shared by all responses (a simulated link); unlimited by default.
    """

    def __init__(self, root: str, latency: float = 0.0,
                 bandwidth: float | None = None) -> None:
        self.root = os.path.abspath(root)
        self.counter = _Counter()
        self.link = _Link(latency, bandwidth)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        """The URL of ``name`` (a path relative to ``root``)."""
        return f"{self.base_url}/{name.lstrip('/')}"

    def stats(self) -> dict[str, int]:
        return self.counter.snapshot()

    def reset_stats(self) -> None:
        self.counter.reset()

    def start(self) -> RangeHTTPServer:
        handler = type("Handler", (_RangeHandler,), {"counter": self.counter,
                                                     "link": self.link})
        root = self.root

        def factory(*args: Any, **kwargs: Any) -> Any:
            return handler(*args, directory=root, **kwargs)

        try:
            self._server = _Server((HOST, 0), factory)
        except OSError as err:
            raise ServerError(f"HTTP server could not bind {HOST}: {err}") from err
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        try:
            with urllib.request.urlopen(self.base_url + "/", timeout=10):
                pass
        except (OSError, urllib.error.URLError) as err:
            self.stop()
            raise ServerError(f"HTTP server on {HOST} does not answer: {err}") from err
        self.counter.reset()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- misbehaving peers


@dataclass
class Fault:
    """What a :class:`FaultyHTTPServer` does wrong; all off, it is a RangeHTTPServer.

    Attributes
    ----------
    status : int, optional
        Answer every request (GET and HEAD, any path: it can stand in for an S3
        endpoint) with this status and no body.
    ignore_range : bool
        Answer ranged GETs with 200 and the whole file, and HEAD without
        ``Accept-Ranges``, as ``python -m http.server`` does.
    truncate : int, optional
        Announce the full ``Content-Length`` but send only this many body bytes, then
        close the connection (a connection lost mid-body).
    hang : bool
        Read every request and never answer (until the server stops).
    """

    status: int | None = None
    ignore_range: bool = False
    truncate: int | None = None
    hang: bool = False


class _FaultyHandler(_RangeHandler):
    state: FaultyHTTPServer  # set on the per-server subclass

    def _misbehaved(self, *, head: bool) -> bool:
        """Apply a status or hang fault; whether the request has been dealt with."""
        fault = self.state.fault
        if fault.hang:
            self.counter.add(head=head)
            self.state.released.wait()
            self.close_connection = True
            return True
        if fault.status is not None:
            self.counter.add(head=head)
            self.send_response(fault.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    def do_HEAD(self) -> None:
        if self._misbehaved(head=True):
            return
        path = self._file()
        if path is None or not self.state.fault.ignore_range:
            super().do_HEAD()
            return
        self.counter.add(head=True)
        self.send_response(200)
        self.send_header("Content-Length", str(os.path.getsize(path)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path == STATS_PATH or self._misbehaved(head=False):
            if self.path == STATS_PATH:
                super().do_GET()
            return
        fault = self.state.fault
        path = self._file()
        if path is None or not (fault.ignore_range or fault.truncate is not None):
            super().do_GET()
            return
        size = os.path.getsize(path)
        start, stop, status = 0, size, 200
        match = _RANGE.match(self.headers.get("Range", "").strip())
        if match and not fault.ignore_range and match.group(1):
            start = int(match.group(1))
            stop = min(size, int(match.group(2)) + 1) if match.group(2) else size
            status = 206
        sent = stop - start if fault.truncate is None else min(fault.truncate, stop - start)
        self.counter.add(ranged=status == 206, nbytes=sent)
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        else:
            self.send_header("Last-Modified", self.date_time_string(
                int(os.path.getmtime(path))))
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        written = 0
        with open(path, "rb") as f:
            f.seek(start)
            try:
                while written < sent:
                    piece = f.read(min(sent - written, 2**16))
                    self.wfile.write(piece)
                    written += len(piece)
            except (BrokenPipeError, ConnectionResetError):
                # the client read the headers and hung up, as it should on an unwanted
                # whole file: `aborted` counts these, `bytes` what went out before
                self.close_connection = True
                with self.state.lock:
                    self.state.aborted += 1
                    self.state.lock.notify_all()
                return
            finally:
                with self.state.lock:
                    self.state.body_bytes += written
        if sent < stop - start:
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class _QuietServer(_Server):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # clients hang up on faulty answers by design: no traceback for that
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FaultyHTTPServer(RangeHTTPServer):
    """A :class:`RangeHTTPServer` that misbehaves as its :attr:`fault` says.

    The fault can be changed at any moment (``server.fault = Fault(status=500)``), e.g.
    between a lazy load and its compute; :meth:`heal` restores good behaviour.
    """

    def __init__(self, root: str, fault: Fault | None = None) -> None:
        super().__init__(root)
        self.fault = fault or Fault()
        self.released = threading.Event()  # ends hanging requests when the server stops
        self.lock = threading.Condition()
        self.aborted = 0  # faulty answers the client hung up on before their end
        self.body_bytes = 0  # body bytes of faulty answers that went out

    def heal(self) -> None:
        """Behave again (hanging requests stay hung until :meth:`stop`)."""
        self.fault = Fault()

    def reset_stats(self) -> None:
        super().reset_stats()
        self.aborted = self.body_bytes = 0

    def wait_aborted(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until clients have hung up on ``count`` faulty answers (the server learns
        it only when its next write fails)."""
        with self.lock:
            return self.lock.wait_for(lambda: self.aborted >= count, timeout)

    def start(self) -> FaultyHTTPServer:
        handler = type("Handler", (_FaultyHandler,), {
            "counter": self.counter, "link": self.link, "state": self})
        root = self.root

        def factory(*args: Any, **kwargs: Any) -> Any:
            return handler(*args, directory=root, **kwargs)

        self.released.clear()
        try:
            self._server = _QuietServer((HOST, 0), factory)
        except OSError as err:
            raise ServerError(f"HTTP server could not bind {HOST}: {err}") from err
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        super().stop()


class SilentPort:
    """A port on 127.0.0.1 that accepts connections (the kernel completes them) and never
    reads or answers: a client waits until its own timeout."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind((HOST, 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClosedPort:
    """A port on 127.0.0.1 with nothing listening: connecting is refused at once. The
    port is held (bound, not listening) so that no other server takes it meanwhile."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind((HOST, 0))
        self.port: int = self._sock.getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HTTPServerProcess:
    """A :class:`RangeHTTPServer` in a subprocess (its own GIL), same interface: the
    benchmark uses it so that serving does not compete with the client for the GIL."""

    def __init__(self, root: str, latency: float = 0.0,
                 bandwidth: float | None = None, startup_timeout: float = 30.0) -> None:
        self.root = os.path.abspath(root)
        self.port = free_port()
        self._args = [sys.executable, os.path.abspath(__file__), "http", str(self.port),
                      self.root, str(latency), str(bandwidth or 0)]
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name.lstrip('/')}"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.base_url + STATS_PATH, timeout=5) as r:
            return json.loads(r.read())

    def reset_stats(self) -> None:
        req = urllib.request.Request(self.base_url + STATS_PATH, method="DELETE")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def start(self) -> Self:
        self.process = subprocess.Popen(self._args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"HTTP server exited at start-up ({self.process.returncode})")
            with contextlib.suppress(OSError):
                self.reset_stats()
                return self
            time.sleep(0.1)
        self.stop()
        raise ServerError(f"HTTP server did not answer on {self.base_url}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve_http(port: int, root: str, latency: float, bandwidth: float) -> None:
    # pragma: no cover - runs in the server subprocess
    _exit_with_parent()
    server = RangeHTTPServer(root, latency=latency, bandwidth=bandwidth or None)
    handler = type("Handler", (_RangeHandler,), {"counter": server.counter,
                                                 "link": server.link})

    def factory(*args: Any, **kwargs: Any) -> Any:
        return handler(*args, directory=server.root, **kwargs)

    _Server((HOST, port), factory).serve_forever()


if __name__ == "__main__":  # pragma: no cover - the subprocess entry points
    if len(sys.argv) == 3 and sys.argv[1] == "s3":
        _serve_s3(int(sys.argv[2]))
    elif len(sys.argv) == 6 and sys.argv[1] == "http":
        _serve_http(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit("usage: python tests/servers.py s3 PORT | http PORT ROOT LATENCY BANDWIDTH")
