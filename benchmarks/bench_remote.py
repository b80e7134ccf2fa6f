"""Remote reads on links shaped by the kernel: lazyio against h5py on an fsspec file,
kerchunk references and zarr-python 3, for the gzip .hspy, the .zspy and the .npy.

Method (see :mod:`benchmarks.netshape`): everything runs in a private network namespace
whose loopback rate is limited by a root ``tbf`` qdisc; the Range HTTP server of
``tests/servers.py`` and moto's S3 server each sit behind a delaying proxy that adds the
round-trip time and counts requests, round trips and the bytes sent to the client. Two
links: 10 ms RTT + 1 Gbit/s and 50 ms RTT + 100 Mbit/s. S3 is measured without
``--quick`` only, with one repetition fewer (moto is slow to serve).

The files: a seeded detector-like stack (Poisson counts with a bright disk), uint16,
(64, 64, 128, 128) = 134 MB (``--quick``: (16, 16, 64, 64)), in chunks of one half scan
row of whole patterns (~2 MB) as gzip+shuffle .hspy and as .zspy (lazyio's default
compressor); the .npy holds a (32, 32, 128, 128) part (34 MB, uncompressed: about the
bytes of the compressed files).

Per format and client, in a fresh state (``lazyio.close_all()``, new file objects):

- open: the requests and round trips (requests that arrive at the proxy more than half
  an RTT after the previous one start a new one) to open the file lazily;
- one signal after open: those of reading signal (3, 5) (the navigation index);
- full read: open + read all, in bytes on the wire (what the proxy sent) per second,
  against the link's rate (target >= 80 %) and against one plain GET of the .hspy file
  on the same link (``fsspec cat_file``: what one stream reaches through this proxy on
  this machine). Medians of interleaved repetitions.

Clients: lazyio (``lazyio.load(url)``, threaded scheduler); ``h5py.File(fs.open(url))``
(fsspec's default 5 MB read-ahead file); kerchunk (``SingleHdf5ToZarr`` references, made
once beforehand for the read, made on open for the open count, read through fsspec's
reference file system and zarr-python 3); zarr-python 3 on ``FsspecStore``; numpy on an
fsspec file for the .npy.

Usage::

    .venv/bin/python benchmarks/bench_remote.py [--quick] [--repeat N]

Runs as root (``unshare --net``, ``tc``). ``run(quick)`` returns rows for
``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import netshape

DATASET = "Experiments/bench/data"
SIGNAL = (3, 5)
TARGET_SHARE = 0.8
OPEN_ROUND_TRIPS = 4
SIGNAL_ROUND_TRIPS = 3


def _stack(shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(20261121)
    ky, kx = np.mgrid[: shape[2], : shape[3]]
    disk = ((ky - shape[2] / 2) ** 2 + (kx - shape[3] / 2) ** 2) < (shape[2] / 6) ** 2
    lam = np.where(disk, 200.0, 2.0)
    data = np.empty(shape, dtype=np.uint16)
    for i in range(shape[0]):
        data[i] = rng.poisson(lam, size=shape[1:]).astype(np.uint16)
    return data


def make_files(root: str, quick: bool) -> dict[str, Any]:
    """Write the .hspy, .zspy and .npy into ``root``; return their names and sums."""
    import dask.array as da

    import lazyio

    shape = (16, 16, 64, 64) if quick else (64, 64, 128, 128)
    data = _stack(shape)
    chunks = (1, shape[1] // 2, *shape[2:])
    signal = {"data": da.from_array(data, chunks=(4, shape[1], *shape[2:])),
              "metadata": {"General": {"title": "bench"}}}
    for name in ("bench.hspy", "bench.zspy"):
        lazyio.save(os.path.join(root, name), signal, chunks=chunks, show_progressbar=False,
                    overwrite=True)
    part = data[: shape[0] // 2, : shape[1] // 2]
    np.save(os.path.join(root, "bench.npy"), part)
    return {
        "bench.hspy": int(data.sum(dtype=np.int64)),
        "bench.zspy": int(data.sum(dtype=np.int64)),
        "bench.npy": int(part.sum(dtype=np.int64)),
        "signal": int(data[SIGNAL].sum(dtype=np.int64)),
        "npy_signal": int(part[SIGNAL].sum(dtype=np.int64)),
    }


# --------------------------------------------------------------------------- clients
# Each client: open(url) -> handle, signal(handle) -> array, full(handle) -> array.


def _lazyio_open(url: str) -> Any:
    import lazyio

    lazyio.close_all()  # every open reads the file's metadata again, as a fresh process
    return lazyio.load(url)[0]["data"]


def _lazyio_client() -> dict[str, Callable[..., Any]]:
    return {"open": _lazyio_open,
            "signal": lambda d: d[SIGNAL].compute(scheduler="threads"),
            "full": lambda d: d.compute(scheduler="threads")}


def _h5py_open(url: str) -> Any:
    import fsspec
    import h5py

    fs, path = fsspec.core.url_to_fs(url)
    return h5py.File(fs.open(path, "rb"), "r")[DATASET]


def _h5py_client() -> dict[str, Callable[..., Any]]:
    return {"open": _h5py_open, "signal": lambda d: d[SIGNAL], "full": lambda d: d[()]}


def _kerchunk_refs(url: str) -> dict[str, Any]:
    from kerchunk.hdf import SingleHdf5ToZarr

    return dict(SingleHdf5ToZarr(url, inline_threshold=0).translate())


def _kerchunk_array(url: str, refs: dict[str, Any], protocol: str) -> Any:
    import fsspec
    import zarr
    from zarr.storage import FsspecStore

    fs = fsspec.filesystem("reference", fo=refs, remote_protocol=protocol,
                           remote_options={"asynchronous": True}, asynchronous=True)
    return zarr.open_array(FsspecStore(fs, read_only=True, path=DATASET), mode="r",
                           zarr_format=2)


def _kerchunk_client(url: str, protocol: str) -> dict[str, Callable[..., Any]]:
    refs = _kerchunk_refs(url)  # made beforehand for the full read, as one would
    return {"open": lambda u: _kerchunk_array(u, _kerchunk_refs(u), protocol),
            "full_open": lambda u: _kerchunk_array(u, refs, protocol),
            "signal": lambda a: a[SIGNAL], "full": lambda a: a[...]}


def _zarr_open(url: str) -> Any:
    import zarr
    from zarr.storage import FsspecStore

    return zarr.open_array(FsspecStore.from_url(f"{url}/{DATASET}", read_only=True),
                           mode="r")


def _zarr_client() -> dict[str, Callable[..., Any]]:
    return {"open": _zarr_open, "signal": lambda a: a[SIGNAL], "full": lambda a: a[...]}


def _numpy_open(url: str) -> Any:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    f = fs.open(path, "rb")
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, _fortran, dtype = read(f)
    return f, shape, dtype, f.tell()


def _numpy_signal(h: Any) -> np.ndarray:
    f, shape, dtype, offset = h
    item = int(np.prod(shape[2:])) * dtype.itemsize
    f.seek(offset + (SIGNAL[0] * shape[1] + SIGNAL[1]) * item)
    return np.frombuffer(f.read(item), dtype)


def _numpy_full(h: Any) -> np.ndarray:
    f, shape, dtype, offset = h
    f.seek(offset)
    return np.frombuffer(f.read(), dtype).reshape(shape)


def _numpy_client() -> dict[str, Callable[..., Any]]:
    return {"open": _numpy_open, "signal": _numpy_signal, "full": _numpy_full}


# --------------------------------------------------------------------------- measuring


def _counted(server: netshape.ShapedServer, fn: Callable[[], Any]) -> tuple[Any, dict]:
    server.reset()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, {**server.stats(), "seconds": seconds}


def _measure_formats(server: netshape.ShapedServer, url_of: Callable[[str], str],
                     sums: dict[str, int], repeat: int, protocol: str) -> dict[str, Any]:
    """Open, one signal and full reads of every format with every client."""
    results: dict[str, Any] = {}
    cases = {
        "hspy": ("bench.hspy", "signal", {
            "lazyio": _lazyio_client(), "h5py on fsspec file": _h5py_client(),
            "kerchunk + zarr": _kerchunk_client(url_of("bench.hspy"), protocol)}),
        "zspy": ("bench.zspy", "signal", {
            "lazyio": _lazyio_client(), "zarr-python 3 on fsspec": _zarr_client()}),
        "npy": ("bench.npy", "npy_signal", {
            "lazyio": _lazyio_client(), "numpy on fsspec file": _numpy_client()}),
    }
    for fmt, (name, signal_key, clients) in cases.items():
        url = url_of(name)
        out: dict[str, Any] = {}
        for cname, c in clients.items():
            c["signal"](c["open"](url))  # imports and connections warm: counted cold
            handle, opened = _counted(server, lambda c=c, u=url: c["open"](u))
            got, one = _counted(server, lambda c=c, h=handle: c["signal"](h))
            if int(np.asarray(got).sum(dtype=np.int64)) != sums[signal_key]:
                raise AssertionError(f"{cname} read a wrong signal of {name}")
            out[cname] = {"open": opened, "signal": one, "full": []}
        for rep in range(repeat):
            order = list(clients) if rep % 2 == 0 else list(reversed(clients))
            for cname in order:
                c = clients[cname]
                opener = c.get("full_open", c["open"])
                data, st = _counted(server, lambda c=c, o=opener, u=url: c["full"](o(u)))
                if int(np.asarray(data).sum(dtype=np.int64)) != sums[name]:
                    raise AssertionError(f"{cname} read wrong data from {name}")
                out[cname]["full"].append(st)
                del data
        for v in out.values():
            full = v.pop("full")
            v["full_seconds"] = statistics.median(s["seconds"] for s in full)
            v["wire_rate"] = statistics.median(s["bytes_down"] / s["seconds"] for s in full)
            v["full_requests"] = statistics.median(s["requests"] for s in full)
            v["full_bytes"] = statistics.median(s["bytes_down"] for s in full)
        results[fmt] = out
    return results


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Inside a fresh network namespace: shape ``lo``, serve, measure (see the module)."""
    import dask
    import fsspec

    dask.config.set(scheduler="threads")
    link = netshape.Link(*spec["link"])
    netshape.shape_loopback(link)
    root, sums, repeat = spec["root"], spec["sums"], spec["repeat"]
    results: dict[str, Any] = {}
    with netshape.ShapedServer("http", root, link.rtt, root=root) as server:
        base = server.base_url
        fs = fsspec.filesystem("http")
        plain = []
        for _ in range(max(1, repeat)):  # the plain stream: one GET of the whole .hspy
            _, st = _counted(server, lambda: fs.cat_file(f"{base}/bench.hspy"))
            plain.append(st["bytes_down"] / st["seconds"])
        results["plain_get"] = statistics.median(plain)
        results["http"] = _measure_formats(server, lambda n: f"{base}/{n}", sums, repeat,
                                           "http")
    if spec.get("s3"):
        # s3fs (botocore) reads the endpoint and keys from the environment: every client
        # takes plain s3:// URLs
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1")
        with netshape.ShapedServer("s3", root, link.rtt) as s3:
            os.environ["AWS_ENDPOINT_URL"] = s3.base_url
            s3fs = fsspec.filesystem("s3")
            s3fs.mkdir("bench")
            for name in ("bench.hspy", "bench.zspy", "bench.npy"):
                s3fs.put(os.path.join(root, name), f"bench/{name}",
                         recursive=name.endswith(".zspy"))
            results["s3"] = _measure_formats(s3, lambda n: f"s3://bench/{n}", sums,
                                             max(1, repeat - 1), "s3")
    return results


def run(quick: bool = False, repeat: int | None = None) -> list[dict[str, Any]]:
    """Measure every format on every link; return the benchmark rows."""
    ok, why = netshape.namespace_available()
    if not ok:
        return [{"measure": "remote reads on shaped links", "lazyio": None,
                 "unit": "MB/s", "note": f"not measured: no network namespace here ({why})"}]
    repeat = repeat or (1 if quick else 3)
    links = netshape.LINKS[:1] if quick else netshape.LINKS
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lazyio-bench-remote-") as root:
        sums = make_files(root, quick)
        for link in links:
            res = netshape.run_in_namespace(
                "benchmarks.bench_remote:measure",
                {"link": [link.rtt, link.rate_bits], "root": root, "sums": sums,
                 "repeat": repeat, "s3": not quick})
            rows += _rows(link, res)
    return rows


def _rows(link: netshape.Link, res: dict[str, Any]) -> list[dict[str, Any]]:
    rate = link.rate_bytes / 1e6
    plain = res["plain_get"] / 1e6
    rows = []
    for server, where in (("http", "HTTP"), ("s3", "S3 (moto)")):
        if server not in res:
            continue
        for fmt in ("hspy", "zspy", "npy"):
            rows += _format_rows(res[server][fmt], f"{fmt} over {where}, {link.label}",
                                 rate, plain if server == "http" else None)
    return rows


def _format_rows(out: dict[str, Any], label: str, rate: float, plain: float | None
                 ) -> list[dict[str, Any]]:
    lz = out["lazyio"]
    others = [k for k in out if k != "lazyio"]
    rows = []
    for i, other in enumerate(others):
        b = out[other]
        note = ""
        if i == 0:
            note = (f"{lz['full_bytes'] / 1e6:.1f} MB on the wire in "
                    f"{lz['full_requests']:.0f} requests (baseline {b['full_bytes'] / 1e6:.1f}"
                    f" MB in {b['full_requests']:.0f})")
            if plain is not None:
                note += f"; one plain GET of the .hspy on this link: {plain:.1f} MB/s"
        rows.append({
            "measure": f"{label}: full read on the wire", "lazyio": lz["wire_rate"] / 1e6,
            "baseline": b["wire_rate"] / 1e6, "baseline_name": other, "unit": "MB/s",
            "limit": rate, "targets": [("share", TARGET_SHARE)] if i == 0 else [],
            "note": note})
    for what, target in (("open", OPEN_ROUND_TRIPS), ("signal", SIGNAL_ROUND_TRIPS)):
        for i, other in enumerate(others):
            b = out[other][what]
            rows.append({
                "measure": f"{label}: {'open' if what == 'open' else 'one signal after open'}",
                "lazyio": lz[what]["round_trips"], "baseline": b["round_trips"],
                "baseline_name": other, "unit": "round trips",
                "targets": [("max", target)] if i == 0 else [],
                "note": (f"lazyio {lz[what]['requests']} requests, "
                         f"{lz[what]['seconds'] * 1e3:.0f} ms; {other} "
                         f"{b['requests']} requests, {b['seconds'] * 1e3:.0f} ms")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny files, one link")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    with contextlib.suppress(KeyError):
        del os.environ["PYTHONSTARTUP"]
    rows = run(args.quick, args.repeat)
    print("| measurement | lazyio | baseline | lazyio/link | notes |")
    print("|---|---|---|---|---|")
    for r in rows:
        share = (f"{r['lazyio'] / r['limit']:.0%}" if r.get("limit") and r.get("lazyio")
                 else "")
        base = (f"{r['baseline']:.4g} ({r['baseline_name']})"
                if r.get("baseline") is not None else "")
        lz = f"{r['lazyio']:.4g}" if r.get("lazyio") is not None else "-"
        print(f"| {r['measure']} ({r['unit']}) | {lz} | {base} | {share} | "
              f"{r.get('note', '')} |")


if __name__ == "__main__":
    main()
