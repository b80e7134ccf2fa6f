"""The ``lazyio`` command line: info, convert, demo, and its errors (no tracebacks)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from formats_table import EXT as FORMATS
from formats_table import HYPERSPY

import lazyio
from lazyio.cli import main


def make_signal(rng: np.random.Generator) -> dict:
    data = rng.integers(0, 1000, size=(4, 6, 8, 10), dtype=np.uint16)
    axes = [{"name": n, "units": "nm", "size": s, "scale": 0.5, "offset": float(i),
             "navigate": i < 2}
            for i, (n, s) in enumerate(zip("yxab", data.shape, strict=True))]
    return {"data": data, "axes": axes, "metadata": {"General": {"title": "scan"}},
            "original_metadata": {"detector": {"gain": 2}}}


@pytest.fixture
def source(tmp_path, rng):
    signal = make_signal(rng)
    path = str(tmp_path / "scan.hspy")
    lazyio.save(path, signal, show_progressbar=False)
    return path, signal


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("lazyio: error: ")
    assert "Traceback" not in stderr
    return lines[0]


def test_info_text_and_json(source, capsys):
    path, _ = source
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    assert "hspy" in out
    assert "storage chunks" in out
    assert main(["info", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "hspy"
    assert doc["signals"][0]["shape"] == [4, 6, 8, 10]
    assert doc["signals"][0]["axes"][0]["name"] == "y"


def test_info_remote_with_storage_options(rng, capsys):
    url = "memory://lazyio-cli-test/scan.zspy"
    lazyio.save(url, make_signal(rng), overwrite=True, show_progressbar=False)
    # memory:// takes no options; a JSON value and a dotted key must still parse and pass
    assert main(["info", url, "--json", "--storage-option", "skip_instance_cache=true"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "zspy"


@pytest.mark.parametrize("dst_fmt", list(FORMATS))
@pytest.mark.parametrize("src_fmt", list(FORMATS))
def test_convert_every_pair(tmp_path, rng, capsys, src_fmt, dst_fmt):
    signal = make_signal(rng)
    src = str(tmp_path / f"src{FORMATS[src_fmt]}")
    dst = str(tmp_path / f"dst{FORMATS[dst_fmt]}")
    lazyio.save(src, signal, show_progressbar=False)
    assert main(["convert", src, dst, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert dst in captured.out
    assert "MB/s" in captured.out
    [out] = lazyio.load(dst)
    np.testing.assert_array_equal(out["data"].compute(), signal["data"])
    if dst_fmt == "npy" and src_fmt != "npy":
        assert "lazyio: warning:" in captured.err
        assert "cannot hold" in captured.err
        assert "metadata" in captured.err
    if "npy" not in (src_fmt, dst_fmt):
        assert [a["name"] for a in out["axes"]] == ["y", "x", "a", "b"]
        assert [a["units"] for a in out["axes"]] == ["nm"] * 4
        assert [a["offset"] for a in out["axes"]] == [0.0, 1.0, 2.0, 3.0]
        assert [a["navigate"] for a in out["axes"]] == [True, True, False, False]
        assert out["metadata"]["General"]["title"] == "scan"
    if {src_fmt, dst_fmt} <= set(HYPERSPY):
        assert out["original_metadata"] == {"detector": {"gain": 2}}
        assert "warning" not in captured.err


def test_convert_library_warns_what_is_lost(source, tmp_path):
    path, _ = source
    with pytest.warns(lazyio.LazyioWarning, match=r"npy format cannot hold the axes"):
        written = lazyio.convert(path, tmp_path / "out.npy", show_progressbar=False)
    assert written == [str(tmp_path / "out.npy")]


def test_convert_options(source, tmp_path, capsys):
    path, _ = source
    zspy = str(tmp_path / "out.zspy")
    assert main(["convert", path, zspy, "--compressor", "zstd:3", "--chunks", "2,3,-1,-1",
                 "--no-progress"]) == 0
    [sig] = lazyio.info(zspy).signals
    assert sig.compression == "zstd(level=3)"
    assert sig.storage_chunks == (2, 3, 8, 10)
    hspy = str(tmp_path / "out.hspy")
    assert main(["convert", zspy, hspy, "--compression", "lzf", "--no-progress",
                 "--scheduler", "synchronous"]) == 0
    assert lazyio.info(hspy).signals[0].compression.endswith("lzf")
    # an existing target is refused, then replaced with --overwrite
    capsys.readouterr()
    assert main(["convert", zspy, hspy, "--no-progress"]) == 1
    assert "exists" in one_error_line(capsys.readouterr().err)
    assert main(["convert", zspy, hspy, "--no-progress", "--overwrite",
                 "--compression", "gzip:1", "--scheduler", "threads"]) == 0
    assert "gzip(1)" in lazyio.info(hspy).signals[0].compression


def test_convert_verify(source, tmp_path, capsys):
    path, signal = source
    dst = str(tmp_path / "checked.zspy")
    assert main(["convert", path, dst, "--verify", "--no-progress"]) == 0
    assert "verified" in capsys.readouterr().out
    np.testing.assert_array_equal(lazyio.load(dst)[0]["data"].compute(), signal["data"])


def test_convert_progress_agrees_with_the_summary(source, tmp_path, capsys, monkeypatch):
    path, _ = source
    monkeypatch.setattr("lazyio.backends.progress.DELAY", 0)  # a tiny file is written at once
    assert main(["convert", path, str(tmp_path / "p.npy"), "--verify"]) == 0
    out, err = capsys.readouterr()
    # not a terminal: one plain line per phase, named after the target
    bars = dict(re.findall(r"^(writing|verifying) p\.npy: (.+)$", err, re.MULTILINE))
    assert set(bars) == {"writing", "verifying"}
    # the summary repeats the bars' figures (same bytes, same clock), then the total time
    for verb, figures in bars.items():
        assert f"{verb} {figures}" in out
    assert "3.8 kB in" in bars["writing"]
    assert re.search(r"; \d+\.\d\d s in all, verified$", out.strip())


@pytest.mark.parametrize("target", ["cl.zspy", "cl.hspy"])
def test_convert_on_a_cluster(source, tmp_path, cluster, capsys, target):
    path, signal = source
    dst = str(tmp_path / target)
    assert main(["convert", path, dst, "--scheduler", cluster.scheduler_address,
                 "--no-progress"]) == 0
    np.testing.assert_array_equal(lazyio.load(dst)[0]["data"].compute(), signal["data"])


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["info", "{tmp}/nothere.hspy"], 1, "No such file"),
        (["convert", "{tmp}/nothere.hspy", "{tmp}/x.npy"], 1, "No such file"),
        (["info", "{tmp}/junk.bin"], 1, "junk.bin"),
        (["convert", "{src}", "{tmp}/out.xyz"], 1, "cannot tell the format"),
        (["info", "{src}", "--format", "tiff"], 2, "invalid choice"),
        (["convert", "{src}", "{tmp}/o.zspy", "--chunks", "a,b"], 2, "chunks must be"),
        (["convert", "{src}", "{tmp}/o.zspy", "--compressor", "nope"], 2, "compressor"),
        (["convert", "{src}", "{tmp}/o.hspy", "--compression", "rar"], 2, "compression"),
        (["convert", "{src}", "{tmp}/o.hspy", "--scheduler", "fast"], 2, "--scheduler"),
        (["info", "{src}", "--storage-option", "novalue"], 2, "KEY=VALUE"),
        (["frobnicate"], 2, "invalid choice"),
        (["convert", "{src}"], 2, "required"),
    ],
)
def test_errors_are_one_line(source, tmp_path, capsys, argv, code, words):
    path, _ = source
    (tmp_path / "junk.bin").write_bytes(b"not an array")
    argv = [a.format(tmp=tmp_path, src=path) for a in argv]
    assert main(argv) == code
    assert words in one_error_line(capsys.readouterr().err)


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "convert" in capsys.readouterr().out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lazyio {lazyio.__version__}"


def test_bare_command_prints_usage_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: lazyio")
    for command in ("info", "convert", "demo"):
        assert command in err
    assert list(tmp_path.iterdir()) == []  # the demo did not run


def test_messages_name_the_flags(source, tmp_path, capsys):
    path, _ = source
    target = str(tmp_path / "exists.zspy")
    assert main(["convert", path, target, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["convert", path, target, "--no-progress"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert target in line  # the target, not a temporary
    assert "--overwrite" in line
    assert "overwrite=True" not in line
    assert main(["convert", path, str(tmp_path / "out.xyz")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "--format" in line
    assert "format=" not in line


@pytest.mark.parametrize("error", [ZeroDivisionError("boom"), RuntimeError("deep\ninside"),
                                   KeyError("key"), lazyio.CorruptChunkError("x: bad")])
def test_every_failure_is_one_line(source, capsys, monkeypatch, error):
    path, _ = source

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(sys.modules["lazyio.info"], "info", broken)
    assert main(["info", path]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert str(error).strip("'").split()[0] in line
    monkeypatch.setenv("LAZYIO_DEBUG", "1")  # asks for the traceback
    with pytest.raises(type(error)):
        main(["info", path])


def test_info_several_files(source, tmp_path, rng, capsys):
    path, _ = source
    other = str(tmp_path / "other.npy")
    lazyio.save(other, make_signal(rng), show_progressbar=False)
    assert main(["info", path, other]) == 0
    out = capsys.readouterr().out
    assert out.index(path) < out.index(other)
    assert "format: hspy" in out
    assert "format: npy" in out
    assert main(["info", path, other, "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["format"] for d in docs] == ["hspy", "npy"]
    # a missing file is its own error line; the others are still described, exit 1
    missing = str(tmp_path / "missing.hspy")
    assert main(["info", missing, path]) == 1
    out, err = capsys.readouterr()
    assert "missing.hspy" in one_error_line(err)
    assert "format: hspy" in out


def test_info_metadata(source, capsys):
    path, _ = source
    assert main(["info", path]) == 0
    assert "original_metadata" not in capsys.readouterr().out
    assert main(["info", path, "--metadata"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+metadata$", out, re.MULTILINE)
    assert re.search(r"[├└]── General$", out, re.MULTILINE)
    assert re.search(r"└── title = scan$", out, re.MULTILINE)
    assert re.search(r"└── gain = 2$", out, re.MULTILINE)
    assert main(["info", path, "--json"]) == 0
    assert "metadata" not in json.loads(capsys.readouterr().out)["signals"][0]
    assert main(["info", path, "--json", "--metadata"]) == 0
    [sig] = json.loads(capsys.readouterr().out)["signals"]
    assert sig["metadata"]["General"]["title"] == "scan"
    assert sig["original_metadata"] == {"detector": {"gain": 2}}


# What `lazyio info` of a small local file must not import, per format: dask at all (info
# plans the lazy arrays load() builds, lazyio.backends.plan: no graph, no dask.array, whose
# import alone cost 0.54 s of CPU), another format's libraries (zarr, numcodecs,
# hdf5plugin), fsspec (a local file needs none), and what dask.array would have pulled in
# (xarray -> pandas, sparse -> numba, scipy).
_NEVER = {"dask", "dask.array", "pandas", "xarray", "hyperspy", "scipy", "sparse", "numba"}
NOT_IMPORTED_BY_INFO = {
    "hspy": _NEVER | {"zarr", "numcodecs", "hdf5plugin", "fsspec"},
    "usid": _NEVER | {"zarr", "numcodecs", "hdf5plugin", "fsspec"},
    "npy": _NEVER | {"zarr", "numcodecs", "hdf5plugin", "fsspec", "h5py"},
    "zspy": _NEVER | {"hdf5plugin", "h5py"},
}


@pytest.mark.parametrize(("fmt", "how"), [*((f, "cli") for f in sorted(NOT_IMPORTED_BY_INFO)),
                                          ("hspy", "library")])
def test_info_imports_only_what_the_format_needs(fmt, how, tmp_path, rng):
    path = str(tmp_path / f"scan{FORMATS[fmt]}")
    lazyio.save(path, make_signal(rng), format=fmt, show_progressbar=False)
    unwanted = sorted(NOT_IMPORTED_BY_INFO[fmt])
    call = (f"main(['info', {path!r}])" if how == "cli" else
            f"print(lazyio.info({path!r})) or 0")
    script = textwrap.dedent(f"""
        import sys
        import lazyio  # light: no array or storage library yet
        early = {{"dask", "h5py", "zarr", "pandas", "fsspec"}} & set(sys.modules)
        assert not early, early
        from lazyio.cli import main
        code = {call}
        print("IMPORTED", *[m for m in {unwanted!r} if m in sys.modules])
        sys.exit(code)
    """)
    # dask is left alone only where no setting could change its chunk size: no DASK_*
    # variable, no configuration file (HOME points at an empty directory)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=120, cwd=str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr
    assert f"format: {fmt}" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "IMPORTED"


def test_info_follows_dask_settings_it_cannot_see_without_dask(tmp_path, rng):
    # a chunk size set in the environment changes the blocks load() makes; info then asks
    # dask.config (importing dask, not dask.array) and reports the same blocks
    path = str(tmp_path / "scan.npy")
    lazyio.save(path, make_signal(rng), show_progressbar=False)
    script = textwrap.dedent(f"""
        import sys
        from lazyio.cli import main
        code = main(["info", {path!r}, "--json"])
        print("DASK_ARRAY", "dask.array" in sys.modules)
        sys.exit(code)
    """)
    env = {**os.environ, "DASK_ARRAY__CHUNK_SIZE": "2KiB", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=120, cwd=str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr
    *doc, last = done.stdout.strip().splitlines()
    assert last == "DASK_ARRAY False"
    [sig] = json.loads("\n".join(doc))["signals"]
    import dask

    with dask.config.set({"array.chunk-size": "2KiB"}):
        expected = lazyio.load(path)[0]["data"]
    assert sig["npartitions"] == expected.npartitions > 1
    assert tuple(sig["dask_chunks"]) == expected.chunksize


def test_demo_small(tmp_path, capsys):
    outdir = tmp_path / "demo"
    assert main(["demo", "--shape", "8,8,32,32", "--outdir", str(outdir)]) == 0
    out = capsys.readouterr().out
    for fmt in ("hspy", "zspy", "npy"):
        assert fmt in out
    # matplotlib is in the test extra: one figure, from what the first format read back
    assert (outdir / "virtual_images.png").read_bytes().startswith(b"\x89PNG")
    assert "write MB/s" in out
    assert "False" not in out  # every format read back the right images


def test_demo_figures_without_matplotlib(tmp_path, monkeypatch):
    from lazyio.demo import make_dataset, save_figures

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" fails
    data = make_dataset((4, 4, 16, 16))
    images = (data.sum(axis=(2, 3)).compute(),) * 2 + (data.mean(axis=(0, 1)).compute(),)
    written = save_figures(str(tmp_path), "demo.npy", images, [{}] * 4)
    assert sorted(os.path.basename(p) for p in written) == [
        "mean_pattern.png", "virtual_bf.png", "virtual_df.png"]
    for path in written:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_sample_has_grains_and_a_thickness_ramp():
    from lazyio.demo import _sample, make_dataset, virtual_masks

    shape = (24, 24, 32, 32)
    data = make_dataset(shape)
    bf_mask, df_mask = virtual_masks(*shape[2:])
    bf = (data * bf_mask).sum(axis=(2, 3)).compute().astype(float)
    df = (data * df_mask).sum(axis=(2, 3)).compute().astype(float)
    grain, thickness = _sample(*shape[:2], seed=0)
    # thicker (right) is darker in bright field
    assert bf[:, :4].mean() > 1.5 * bf[:, -4:].mean()
    # each grain scatters its own share into the dark-field ring: per unit thickness, the
    # grains differ far beyond the Poisson noise (a sample without grains gives ~1.0)
    per_grain = [(df / thickness)[grain == g].mean() for g in np.unique(grain)]
    assert len(per_grain) >= 3
    assert max(per_grain) / min(per_grain) > 1.5
    # and the dataset is the same every time it is computed (the checks rely on it)
    np.testing.assert_array_equal(data[3:5, 7:9].compute(), make_dataset(shape)[3:5, 7:9])


def run(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lazyio", *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=120)


def test_subprocess_info_and_error(source, tmp_path):
    path, _ = source
    done = run("info", path, "--json", cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["signals"][0]["title"] == "scan"
    failed = run("convert", str(tmp_path / "missing.zspy"), str(tmp_path / "x.npy"),
                 cwd=str(tmp_path))
    assert failed.returncode == 1
    assert "missing.zspy" in one_error_line(failed.stderr)
    assert not os.path.exists(tmp_path / "x.npy")


def test_subprocess_convert_streams_in_bounded_memory(tmp_path):
    # 512 MiB of .npy (sparse, so cheap to make) converted to .zspy: what the conversion
    # adds to the process's peak memory must stay far below the array's size
    src = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(src, mode="w+", dtype=np.uint16,
                                    shape=(128, 64, 128, 128))
    big[:, :, 60:68, 60:68] = 7
    big.flush()
    del big
    script = textwrap.dedent(f"""
        import resource, sys
        import dask.array, h5py, zarr
        from lazyio.cli import main
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        code = main(["convert", {str(src)!r}, {str(tmp_path / "big.zspy")!r},
                     "--no-progress", "--scheduler", "threads"])
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(after - before)
        sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          timeout=240, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    added_mib = float(done.stdout.strip().splitlines()[-1])
    assert added_mib < 300, added_mib  # the array is 512 MiB; about 180 MiB measured
    [sig] = lazyio.info(str(tmp_path / "big.zspy")).signals
    assert sig.shape == (128, 64, 128, 128)
    assert sig.storage_chunks[1:] == (64, 128, 128)  # whole trailing axes, not one chunk
