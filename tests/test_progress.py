"""Progress bars: one bar on every scheduler, labelled with the target's name, counting
bytes; a tqdm bar on a terminal, one plain line otherwise; the verify phase shown; the
recorded phases agree with the bars; silence with ``show_progressbar=False``."""

from __future__ import annotations

import re

import dask.array as da
import numpy as np
import pytest
from formats_table import EXT, HYPERSPY

import lazyio
from lazyio.backends import progress
from lazyio.backends.progress import Bar, TqdmCallback, record_phases


@pytest.fixture
def no_delay(monkeypatch):
    monkeypatch.setattr("lazyio.backends.progress.DELAY", 0)  # small writes finish within the delay


@pytest.fixture
def terminal(monkeypatch):
    # what a terminal gets: tqdm's text bar (capfd's stderr is not a TTY)
    monkeypatch.setattr("lazyio.backends.progress._interactive", lambda stream: True)


def array() -> da.Array:
    return da.from_array(np.arange(4 * 32 * 32, dtype=np.float64).reshape(4, 32, 32),
                         chunks=(1, 32, 32))


PLAIN = re.compile(r"^writing (\S+): 32\.8 kB in (\d+\.\d\d) s \((\d+\.\d) MB/s\)$", re.MULTILINE)


@pytest.mark.parametrize("ext", list(EXT.values()))
def test_terminal_bar_counts_bytes_and_names_the_target(tmp_path, capfd, no_delay, terminal,
                                                        ext):
    lazyio.save(tmp_path / f"a{ext}", array())
    out, err = capfd.readouterr()
    assert out == ""  # bars go to stderr; the library prints nothing
    assert f"writing a{ext}" in err  # the file asked for, not the temporary written
    assert "tmp" not in err.split(":")[0]
    assert "32.8k/32.8k" in err  # 32,768 bytes, counted in bytes
    assert "B/s" in err


@pytest.mark.parametrize("ext", list(EXT.values()))
def test_plain_line_when_not_interactive(tmp_path, capfd, no_delay, ext):
    lazyio.save(tmp_path / f"a{ext}", array())
    out, err = capfd.readouterr()
    assert out == ""
    [match] = PLAIN.finditer(err)  # one line, no carriage-return redraws
    assert match.group(1) == f"a{ext}"
    assert "\r" not in err


@pytest.mark.parametrize("ext", list(EXT.values()))
def test_silent_when_asked(tmp_path, capfd, no_delay, ext):
    lazyio.save(tmp_path / f"a{ext}", array(), show_progressbar=False)
    assert capfd.readouterr() == ("", "")


def test_short_phase_stays_silent(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr("lazyio.backends.progress.DELAY", 60)
    lazyio.save(tmp_path / "a.npy", array())
    assert capfd.readouterr() == ("", "")


def test_verify_phase_is_shown_and_recorded(tmp_path, capfd, no_delay):
    with record_phases() as phases:
        lazyio.save(tmp_path / "v.zspy", array(), verify=True)
    err = capfd.readouterr().err
    assert "writing v.zspy: 32.8 kB" in err
    assert "verifying v.zspy: 32.8 kB" in err
    assert [p.label for p in phases] == ["writing v.zspy", "verifying v.zspy"]
    assert all(p.nbytes == array().nbytes for p in phases)


def test_recorded_phase_is_what_the_bar_showed(tmp_path, capfd, no_delay):
    with record_phases() as phases:
        lazyio.save(tmp_path / "r.hspy", array(), show_progressbar=True)
    [match] = PLAIN.finditer(capfd.readouterr().err)
    [phase] = phases
    # same byte count and clock: the line is the phase, rounded
    assert phase.nbytes == 32768
    assert float(match.group(2)) == pytest.approx(phase.seconds, abs=0.006)
    assert float(match.group(3)) == pytest.approx(phase.rate / 1e6, abs=0.06)


def test_phases_recorded_without_a_bar(tmp_path, capfd):
    with record_phases() as phases:
        lazyio.save(tmp_path / "q.npy", array(), show_progressbar=False)
    assert [p.label for p in phases] == ["writing q.npy"]
    assert capfd.readouterr() == ("", "")


def test_failed_phase_is_not_recorded_nor_completed(capfd, no_delay):
    def boom(block):
        raise RuntimeError("no")

    with record_phases() as phases, pytest.raises(RuntimeError), \
            progress.progress_bar(True, "failing", 32768):
        array().map_blocks(boom, dtype=np.float64).compute(scheduler="sync")
    assert phases == []
    assert "failing" not in capfd.readouterr().err  # no "done" line for a failure


def test_callback_counts_tasks_without_nbytes(capfd, no_delay, terminal):
    with TqdmCallback("summing"):
        array().sum().compute()
    err = capfd.readouterr().err
    assert "summing" in err
    assert "task" in err


def test_bar_never_goes_back_or_past_the_end(capfd, no_delay):
    bar = Bar("x", 100, show=False)
    bar.update_to(60)
    bar.update_to(30)
    assert bar.n == 60
    bar.update_to(1e9)
    assert bar.n == 100
    assert bar.close().nbytes == 100


@pytest.mark.parametrize("ext", [EXT[name] for name in HYPERSPY])
def test_cluster_shows_the_same_bar(tmp_path, capfd, client, no_delay, ext):
    lazyio.save(tmp_path / f"quiet{ext}", array(), show_progressbar=False)
    assert capfd.readouterr() == ("", "")
    with record_phases() as phases:
        lazyio.save(tmp_path / f"shown{ext}", array(), verify=True)
    out, err = capfd.readouterr()
    assert out == ""
    [match] = PLAIN.finditer(err)  # the line local schedulers print, with the name
    assert match.group(1) == f"shown{ext}"
    assert f"verifying shown{ext}: 32.8 kB" in err
    assert [p.label for p in phases] == [f"writing shown{ext}", f"verifying shown{ext}"]
    np.testing.assert_array_equal(lazyio.load(tmp_path / f"shown{ext}")[0]["data"],
                                  array().compute())


def test_cluster_terminal_bar(tmp_path, capfd, client, no_delay, terminal):
    lazyio.save(tmp_path / "t.zspy", array())
    err = capfd.readouterr().err
    assert "writing t.zspy" in err
    assert "32.8k/32.8k" in err


def test_jupyter_widget_renders_in_a_static_notebook(tmp_path):
    # run in a real kernel: the bar is the tqdm widget, its state is saved with the
    # notebook, and the text shown where widgets are not rendered is the finished bar
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipywidgets")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import dask.array as da, numpy as np, lazyio\n"
        "from lazyio.backends import progress\n"
        "progress.DELAY = 0\n"
        "a = da.from_array(np.zeros((16, 64, 64)), chunks=(1, 64, 64))\n"
        f"lazyio.save({str(tmp_path / 'nb.zspy')!r}, a, verify=True)")]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert [o["output_type"] for o in outputs] == ["display_data"] * 2
    texts = [o["data"]["text/plain"] for o in outputs]
    assert texts[0].startswith("writing nb.zspy: 100%")
    assert texts[1].startswith("verifying nb.zspy: 100%")
    assert all("application/vnd.jupyter.widget-view+json" in o["data"] for o in outputs)
    assert nb.metadata["widgets"]  # the widget state, for renderers that draw widgets
