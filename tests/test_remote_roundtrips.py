"""Round trips to open a remote file and to read one signal, against the loopback HTTP
server with a per-request latency (issue 17's targets: open <= 4, one signal <= 3).

The server records when each request arrives; requests that arrive within half the
latency of the previous one went out together (one round trip), a request sent after an
answer arrives at least one latency later. ``benchmarks/bench_remote.py`` measures the
same on kernel-shaped links.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
import servers
from servers import STATS_PATH, RangeHTTPServer

import lazyio
from lazyio import location

LATENCY = 0.1


def _round_trips(times: list[float], latency: float) -> int:
    waves, last = 0, None
    for t in sorted(times):
        if last is None or t - last > latency / 2:
            waves += 1
        last = t
    return waves


@pytest.fixture
def timed_server(tmp_path, monkeypatch):
    """A RangeHTTPServer serving ``tmp_path`` with LATENCY per request, recording the
    arrival time of each request in ``.arrivals``."""
    arrivals: list[float] = []
    for name in ("do_GET", "do_HEAD"):
        original = getattr(servers._RangeHandler, name)

        def wrapped(self: Any, original: Any = original) -> None:
            if self.path != STATS_PATH:
                arrivals.append(time.monotonic())
            original(self)

        monkeypatch.setattr(servers._RangeHandler, name, wrapped)
    lazyio.close_all()
    with RangeHTTPServer(str(tmp_path), latency=LATENCY) as server:
        server.arrivals = arrivals
        yield server
    lazyio.close_all()


def _count(server: Any, fn: Any) -> tuple[Any, int, int]:
    server.arrivals.clear()
    out = fn()
    return out, len(server.arrivals), _round_trips(server.arrivals, LATENCY)


def _stack() -> np.ndarray:
    rng = np.random.default_rng(17)
    return rng.poisson(5.0, size=(16, 16, 32, 32)).astype(np.uint16)


def test_hspy_open_and_one_signal_round_trips(tmp_path, timed_server):
    # 128 gzip chunks of ~2 KB over ~300 KB: the chunk index is a version-1 B-tree whose
    # leaves lie among the chunks, past the first bytes fetched with the HEAD
    data = _stack()
    lazyio.save(str(tmp_path / "rt.hspy"), {"data": data}, chunks=(1, 2, 32, 32),
                show_progressbar=False)
    url = timed_server.url("rt.hspy")
    signal, requests, trips = _count(timed_server, lambda: lazyio.load(url)[0]["data"])
    assert trips <= 4, (requests, trips)
    assert requests <= 6, requests  # HEAD + first bytes, the index root's leaves at once
    got, requests, trips = _count(timed_server, lambda: signal[3, 5].compute())
    np.testing.assert_array_equal(got, data[3, 5])
    assert trips <= 3, (requests, trips)
    assert requests <= 3, (requests, trips)


def test_npy_open_and_one_signal_round_trips(tmp_path, timed_server):
    data = _stack()
    np.save(tmp_path / "rt.npy", data)
    url = timed_server.url("rt.npy")
    signal, requests, trips = _count(timed_server, lambda: lazyio.load(url)[0]["data"])
    # the HEAD and the first 64 KiB (the header) go out together
    assert trips == 1, (requests, trips)
    assert requests == 2, (requests, trips)
    got, requests, trips = _count(timed_server, lambda: signal[3, 5].compute())
    np.testing.assert_array_equal(got, data[3, 5])
    assert trips == 1, (requests, trips)
    assert requests == 1, (requests, trips)


def test_zspy_open_from_consolidated_metadata(tmp_path, timed_server):
    # lazyio writes .zmetadata last; the open takes the whole tree from it, fetched with
    # the root's documents (without it: 73 requests in 14 round trips for this tree)
    data = _stack()
    lazyio.save(str(tmp_path / "rt.zspy"), {"data": data}, show_progressbar=False)
    assert (tmp_path / "rt.zspy" / ".zmetadata").is_file()
    url = timed_server.url("rt.zspy")
    signal, requests, trips = _count(timed_server, lambda: lazyio.load(url)[0]["data"])
    assert trips <= 4, (requests, trips)
    assert requests <= 10, (requests, trips)
    got, requests, trips = _count(timed_server, lambda: signal[3, 5].compute())
    np.testing.assert_array_equal(got, data[3, 5])
    assert trips == 1, (requests, trips)


def test_zspy_consolidated_metadata_disagreeing_with_root_is_not_trusted(
    tmp_path, timed_server
):
    # a .zmetadata left behind by a tool that changed the tree without consolidating
    # again: its root no longer matches, so the tree is walked, the change is seen
    path = tmp_path / "stale.zspy"
    lazyio.save(str(path), {"data": _stack()}, show_progressbar=False)
    stale = json.loads((path / ".zmetadata").read_text())
    stale["metadata"][".zattrs"] = {"file_format": "HyperSpy", "file_format_version": "0.1"}
    stale["metadata"]["Experiments/__unnamed__/metadata/General/.zattrs"] = {"title": "old"}
    (path / ".zmetadata").write_text(json.dumps(stale))
    general = path / "Experiments/__unnamed__/metadata/General/.zattrs"
    general.write_text(json.dumps({**json.loads(general.read_text()), "title": "new"}))
    signal, requests, _ = _count(timed_server,
                                 lambda: lazyio.load(timed_server.url("stale.zspy"))[0])
    assert signal["metadata"]["General"]["title"] == "new"
    assert requests > 20, requests  # walked, not taken from .zmetadata


def test_zspy_metadata_update_keeps_consolidated_metadata_current(tmp_path, timed_server):
    path = tmp_path / "upd.zspy"
    data = _stack()
    lazyio.save(str(path), {"data": data}, show_progressbar=False)
    sig = lazyio.load(str(path))[0]
    sig["metadata"]["General"]["notes"] = "updated"
    lazyio.zspy.file_writer(str(path), sig, write_dataset=False)
    lazyio.close_all()
    signal, requests, trips = _count(timed_server,
                                     lambda: lazyio.load(timed_server.url("upd.zspy"))[0])
    assert signal["metadata"]["General"]["notes"] == "updated"
    assert trips <= 4, (requests, trips)  # still from .zmetadata, rewritten


def test_zspy_tree_is_walked_concurrently(tmp_path, timed_server):
    data = _stack()
    lazyio.save(str(tmp_path / "rt.zspy"), {"data": data}, show_progressbar=False)
    (tmp_path / "rt.zspy" / ".zmetadata").unlink()  # the walk without consolidated metadata
    url = timed_server.url("rt.zspy")
    signal, requests, trips = _count(timed_server, lambda: lazyio.load(url)[0]["data"])
    # one after the other the walk took a round trip per request (87 for this tree)
    assert trips < requests / 2, (requests, trips)
    got, requests, trips = _count(timed_server, lambda: signal[3, 5].compute())
    np.testing.assert_array_equal(got, data[3, 5])
    # the task reads through the store the load opened, its metadata remembered: the
    # chunk alone (a store of its own asked for the array's documents again first)
    assert trips == 1, (requests, trips)
    assert requests == 1, (requests, trips)


def test_full_read_reads_ahead_each_byte_once(tmp_path, timed_server):
    data = _stack()
    path = tmp_path / "ahead.hspy"
    lazyio.save(str(path), {"data": data}, chunks=(1, 2, 32, 32), show_progressbar=False)
    url = timed_server.url("ahead.hspy")
    # blocks of 4 chunks, 32 tasks on 2 threads: later tasks find their chunks read ahead
    signal = lazyio.load(url, chunks=(1, 4, 32, 32))[0]["data"]
    hits = location._AHEAD.hits
    timed_server.reset_stats()
    np.testing.assert_array_equal(signal.compute(scheduler="threads"), data)
    assert location._AHEAD.hits > hits
    # read ahead, never twice: at most the file's size went over the wire
    assert timed_server.stats()["bytes"] <= path.stat().st_size
