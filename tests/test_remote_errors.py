"""Transport failures end in lazyio errors that name the URL and say what happened.

Every case runs on real peers on 127.0.0.1 (tests/servers.py): a port with nothing
listening, a port that accepts and never answers, an HTTP server that answers 500/403/404,
cuts bodies short or ignores ``Range`` (as does the real ``python -m http.server``, also
run here), and moto's S3 server stopped in the middle of a read or a write. DNS failures
use names under ``.invalid``, which never resolve.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import aiohttp
import dask.array as da
import fsspec
import numpy as np
import pytest
from remote_cases import CASES, FORMATS, example_data, example_signal, write_example
from servers import (
    ClosedPort,
    Fault,
    FaultyHTTPServer,
    S3Server,
    ServerError,
    SilentPort,
    free_port,
)

import lazyio
from lazyio.errors import (
    AccessDeniedError,
    CorruptChunkError,
    LazyioConnectionError,
    LazyioError,
    RangeNotSupportedError,
    SourceNotFoundError,
)

# botocore retries refused connections and 5xx answers with back-off (seconds each), and
# s3fs retries time-outs five times: one attempt keeps these tests fast
FAST_S3 = {"config_kwargs": {"retries": {"total_max_attempts": 1}, "connect_timeout": 2,
                             "read_timeout": 2}}
BIG = 16 * 2**20  # well above the loopback's socket buffers: an unread answer shows


def _s3_options(endpoint: str) -> dict[str, Any]:
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint},
            **FAST_S3}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """A FaultyHTTPServer serving every format's example file, plus large .npy, .hspy and
    USID files (``big.*``) for the Range tests."""
    root = tmp_path_factory.mktemp("faulty-root")
    for fmt, case in CASES.items():
        write_example(str(root / f"example{case.ext}"), fmt)
    big = np.arange(BIG // 8, dtype=np.float64).reshape(512, -1)
    np.save(root / "big.npy", big)
    for fmt in ("hspy", "usid"):
        lazyio.save(str(root / f"big{CASES[fmt].ext}"), big, format=fmt,
                    show_progressbar=False, compression=None)
    with FaultyHTTPServer(str(root)) as server:
        yield server


@pytest.fixture
def server(faulty):
    faulty.heal()
    faulty.reset_stats()
    yield faulty
    faulty.heal()
    lazyio.close_all()


def _url(server: FaultyHTTPServer, fmt: str) -> str:
    return server.url(f"example{CASES[fmt].ext}")


def _entry_points(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a user calls on a source: load, info, and an eager load."""
    return {
        "load": lambda: lazyio.load(url, storage_options=options),
        "info": lambda: lazyio.info(url, storage_options=options),
        "eager": lambda: lazyio.load(url, lazy=False, storage_options=options),
    }


def _assert_connection_error(err: BaseException, url: str, *words: str) -> None:
    assert isinstance(err, LazyioConnectionError), repr(err)
    assert isinstance(err, ConnectionError)
    assert isinstance(err, LazyioError)
    message = str(err)
    assert url in message, message
    for word in words:
        assert word in message, message


# ------------------------------------------------------------------ cannot connect


@pytest.mark.parametrize("fmt", FORMATS)
def test_refused_connection_is_a_connection_error(fmt):
    with ClosedPort() as port:
        url = f"{port.base_url}/example{CASES[fmt].ext}"
        for name, call in _entry_points(url).items():
            with pytest.raises(LazyioConnectionError) as err:
                call()
            _assert_connection_error(err.value, url, "refused", f"127.0.0.1:{port.port}")
            assert "No such file" not in str(err.value), name


@pytest.mark.parametrize("fmt", FORMATS)
def test_refused_s3_endpoint_on_read_and_write(fmt):
    with ClosedPort() as port:
        options = _s3_options(port.base_url)
        url = f"s3://bucket/example{CASES[fmt].ext}"
        calls = {**_entry_points(url, options),
                 "save": lambda: write_example(url, fmt, storage_options=options)}
        for call in calls.values():
            with pytest.raises(LazyioConnectionError) as err:
                call()
            _assert_connection_error(err.value, url, "cannot connect to the endpoint",
                                     port.base_url, "refused")


def test_dns_failure_is_a_connection_error_and_fast():
    for url, options in [
        ("http://lazyio-test.invalid/example.hspy", None),
        ("s3://bucket/example.zspy", _s3_options("http://lazyio-test.invalid:9000")),
    ]:
        started = time.monotonic()
        with pytest.raises(LazyioConnectionError) as err:
            lazyio.load(url, storage_options=options)
        assert time.monotonic() - started < 10
        _assert_connection_error(err.value, url, "could not be resolved")


# ------------------------------------------------------------------ HTTP statuses

STATUSES = [
    (500, LazyioConnectionError, "HTTP 500"),
    (503, LazyioConnectionError, "HTTP 503"),
    (403, AccessDeniedError, "HTTP 403"),
    (404, SourceNotFoundError, "No such file"),
]


@pytest.mark.parametrize(("status", "error", "words"), STATUSES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_http_status_on_open_and_on_compute(server, fmt, status, error, words):
    url = _url(server, fmt)
    server.fault = Fault(status=status)
    for call in _entry_points(url).values():
        with pytest.raises(error, match=words) as err:
            call()
        assert url in str(err.value)
    if fmt == "zspy" and status == 404:
        return  # Zarr reads a missing chunk as its fill value (see docs/remote.md)
    server.heal()
    data = lazyio.load(url)[0]["data"]
    server.fault = Fault(status=status)
    with pytest.raises(error, match=words) as err:
        data.compute(scheduler="threads")
    assert url in str(err.value)


@pytest.mark.parametrize(("status", "error"), [(500, LazyioConnectionError),
                                                (403, AccessDeniedError)])
@pytest.mark.parametrize("fmt", FORMATS)
def test_s3_endpoint_status_on_read_and_write(server, fmt, status, error):
    options = _s3_options(server.base_url)  # the faulty server stands in for S3
    url = f"s3://bucket/example{CASES[fmt].ext}"
    server.fault = Fault(status=status)
    calls = {**_entry_points(url, options),
             "save": lambda: write_example(url, fmt, storage_options=options)}
    for call in calls.values():
        with pytest.raises(error) as err:
            call()
        assert url in str(err.value)
        assert str(status) in str(err.value)


# ------------------------------------------------------------------ lost mid-transfer


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_body_is_a_connection_error_never_corrupt_chunk(server, fmt):
    url = _url(server, fmt)
    server.fault = Fault(truncate=100)
    with pytest.raises(LazyioConnectionError) as err:
        lazyio.load(url)
    _assert_connection_error(err.value, url, "lost during the transfer")
    server.heal()
    data = lazyio.load(url)[0]["data"]
    server.fault = Fault(truncate=10)
    with pytest.raises(LazyioConnectionError) as err:
        data.compute(scheduler="threads")
    _assert_connection_error(err.value, url, "lost during the transfer")
    assert not isinstance(err.value, CorruptChunkError)
    server.heal()  # the same lazy array reads once the link is back
    np.testing.assert_array_equal(data.compute(scheduler="threads"), example_data())


@pytest.mark.parametrize("fmt", FORMATS)
def test_silent_server_times_out_as_configured(server, fmt, monkeypatch):
    monkeypatch.setenv("LAZYIO_TIMEOUT", "1")
    with SilentPort() as port:
        url = f"{port.base_url}/example{CASES[fmt].ext}"
        started = time.monotonic()
        with pytest.raises(LazyioConnectionError) as err:
            lazyio.load(url)
        assert time.monotonic() - started < 8
        _assert_connection_error(err.value, url, "timed out", "LAZYIO_TIMEOUT")
    url = _url(server, fmt)
    data = lazyio.load(url)[0]["data"]
    server.fault = Fault(hang=True)  # the server stops answering after the load
    started = time.monotonic()
    with pytest.raises(LazyioConnectionError, match="timed out"):
        data.compute(scheduler="threads")
    assert time.monotonic() - started < 8


def test_timeout_given_in_storage_options_wins(server, monkeypatch):
    monkeypatch.setenv("LAZYIO_TIMEOUT", "600")
    options = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=1)}}
    with SilentPort() as port:
        started = time.monotonic()
        with pytest.raises(LazyioConnectionError, match="timed out"):
            lazyio.load(f"{port.base_url}/example.npy", storage_options=options)
        assert time.monotonic() - started < 8
    monkeypatch.setenv("LAZYIO_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="LAZYIO_TIMEOUT"):
        lazyio.load(_url(server, "npy"))


# ------------------------------------------------------------------ S3 gone mid-way


@pytest.fixture(scope="module")
def doomed_s3():
    """A moto server of its own, which the tests stop mid-read and mid-write."""
    server = S3Server()
    try:
        server.start()
    except ServerError:
        server.stop()
        raise
    yield server
    server.stop()


def _revive(server: S3Server) -> dict[str, Any]:
    if server.process is None:
        server.start()  # same port: the options stay valid; moto starts empty
    options = {**server.storage_options, **FAST_S3}
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    if not fs.exists(server.bucket):
        fs.mkdir(server.bucket)
    return options


def test_s3_unreachable_mid_read(doomed_s3):
    options = _revive(doomed_s3)
    arrays = {}
    for fmt, case in CASES.items():
        url = f"s3://{doomed_s3.bucket}/mid-read{case.ext}"
        write_example(url, fmt, storage_options=options)
        arrays[url] = lazyio.load(url, storage_options=options)[0]["data"]
    doomed_s3.stop()
    for url, data in arrays.items():
        with pytest.raises(LazyioConnectionError) as err:
            data.compute(scheduler="threads")
        _assert_connection_error(err.value, url, "cannot connect to the endpoint",
                                 doomed_s3.endpoint_url)
        assert not isinstance(err.value, CorruptChunkError)


@pytest.mark.parametrize("fmt", ["npy", "zspy", "hspy"])  # temporary, in place, upload
def test_s3_unreachable_mid_write(doomed_s3, fmt):
    options = _revive(doomed_s3)
    url = f"s3://{doomed_s3.bucket}/mid-write{CASES[fmt].ext}"

    stopping, stopped = threading.Event(), threading.Event()

    def stop_at_third(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        # once only: a second pass over the source must not stop it again
        if block_info and block_info[0]["chunk-location"][0] == 2 and not stopping.is_set():
            stopping.set()
            doomed_s3.stop()
            stopped.set()
        return block

    signal = example_signal()
    signal["data"] = da.map_blocks(stop_at_third, signal["data"].rechunk((1, 5, 16, 12)),
                                   dtype=signal["data"].dtype)
    kwargs = {"chunks": (1, 5, 16, 12)} if fmt != "npy" else {}
    with pytest.raises(LazyioConnectionError) as err:
        lazyio.save(url, signal, format=fmt, storage_options=options,
                    show_progressbar=False, **kwargs)
    # the failure can reach us while the stopping task still waits for the server to exit
    assert stopped.wait(30)
    _assert_connection_error(err.value, url, doomed_s3.endpoint_url)
    assert ".tmp" not in str(err.value)
    assert "lazyio-tmp" not in str(err.value)


# ------------------------------------------------------------------ servers without Range


@pytest.mark.parametrize("name", ["big.npy", "big.hspy", "big.h5"])
def test_server_ignoring_range_is_refused_unread(server, name):
    url = server.url(name)
    size = os.path.getsize(os.path.join(server.root, name))
    assert size > BIG
    server.fault = Fault(ignore_range=True)
    for call in _entry_points(url).values():
        with pytest.raises(RangeNotSupportedError,
                           match="does not support byte-range requests") as err:
            call()
        assert url in str(err.value)
        assert isinstance(err.value, lazyio.UnsupportedError)
    # the whole file was offered each time; lazyio hung up after the headers (what went
    # out is what the socket buffers took)
    assert server.wait_aborted(3)
    assert server.body_bytes / server.aborted < size / 4, (server.body_bytes, size)
    server.heal()
    data = lazyio.load(url)[0]["data"]
    server.fault = Fault(ignore_range=True)
    with pytest.raises(RangeNotSupportedError):
        data[:2].compute(scheduler="threads")


@pytest.mark.parametrize("fmt", FORMATS)
def test_small_files_read_whole_from_a_server_ignoring_range(server, fmt):
    # every example file is under 64 KiB: one answer is the whole file, read and cut
    url = _url(server, fmt)
    server.fault = Fault(ignore_range=True)
    data = lazyio.load(url)[0]["data"]
    np.testing.assert_array_equal(data.compute(scheduler="threads"), example_data())


@pytest.fixture(scope="module")
def stdlib_http(faulty):
    """The real ``python -m http.server`` (it ignores Range) serving the same folder."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", faulty.root],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            fs.info(f"{base}/big.npy")
            break
        except FileNotFoundError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise ServerError("python -m http.server did not start") from None
            time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(10)


@pytest.mark.parametrize("name", ["big.npy", "big.hspy", "big.h5", "example.hspy"])
def test_python_http_server(stdlib_http, name):
    url = f"{stdlib_http}/{name}"
    if name.startswith("big"):
        with pytest.raises(RangeNotSupportedError, match="byte-range") as err:
            lazyio.load(url)
        assert url in str(err.value)
        assert "damaged" not in str(err.value)
    else:
        data = lazyio.load(url)[0]["data"]
        np.testing.assert_array_equal(data.compute(scheduler="threads"), example_data())


@pytest.mark.parametrize("fmt", FORMATS)
def test_save_to_a_plain_http_server_is_a_lazyio_error(server, fmt):
    url = server.url(f"written{CASES[fmt].ext}")
    with pytest.raises(LazyioError) as err:  # read-only: 501 to PUT/POST, or no writer
        write_example(url, fmt)
    assert url in str(err.value)
    assert not os.path.exists(os.path.join(server.root, f"written{CASES[fmt].ext}"))


def test_silent_s3_endpoint_times_out_as_configured(monkeypatch):
    import s3fs

    monkeypatch.setenv("LAZYIO_TIMEOUT", "1")  # reaches s3fs's connect/read limits
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)  # s3fs retries time-outs 5 times
    with SilentPort() as port:
        options = {"key": "testing", "secret": "testing",
                   "client_kwargs": {"endpoint_url": port.base_url},
                   "config_kwargs": {"retries": {"total_max_attempts": 1}}}
        for url, call in [
            ("s3://bucket/example.hspy",
             lambda: lazyio.load("s3://bucket/example.hspy", storage_options=options)),
            ("s3://bucket/written.npy",
             lambda: write_example("s3://bucket/written.npy", "npy", storage_options=options)),
        ]:
            started = time.monotonic()
            with pytest.raises(LazyioConnectionError) as err:
                call()
            assert time.monotonic() - started < 8
            _assert_connection_error(err.value, url, "timed out")


@pytest.mark.parametrize("fmt", ["hspy", "zspy"])
def test_classified_on_cluster_workers(server, client, fmt):
    # the workers meet the failure; the client gets the same class and message
    url = _url(server, fmt)
    data = lazyio.load(url)[0]["data"]
    server.fault = Fault(truncate=10)
    with pytest.raises(LazyioConnectionError, match="lost during the transfer") as err:
        data.compute()
    assert url in str(err.value)
    server.fault = Fault(status=503)
    with pytest.raises(LazyioConnectionError, match="HTTP 503"):
        data.sum().compute()
