"""Progress bars: tqdm locally (bytes and throughput), the cluster's own under distributed,
and silence with ``show_progressbar=False``."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from formats_table import EXT, HYPERSPY

import lazyio
from lazyio.backends.progress import TqdmCallback


@pytest.fixture
def no_delay(monkeypatch):
    monkeypatch.setattr("lazyio.backends.progress.DELAY", 0)  # small writes finish within the delay


def array() -> da.Array:
    return da.from_array(np.arange(4 * 32 * 32, dtype=np.float64).reshape(4, 32, 32),
                         chunks=(1, 32, 32))


@pytest.mark.parametrize("ext", list(EXT.values()))
def test_local_bar_counts_bytes(tmp_path, capfd, no_delay, ext):
    lazyio.save(tmp_path / f"a{ext}", array())
    out, err = capfd.readouterr()
    assert out == ""  # bars go to stderr; the library prints nothing
    assert "writing" in err
    assert "32.8k/32.8k" in err  # 32,768 bytes, counted in bytes
    assert "B/s" in err


@pytest.mark.parametrize("ext", list(EXT.values()))
def test_silent_when_asked(tmp_path, capfd, no_delay, ext):
    lazyio.save(tmp_path / f"a{ext}", array(), show_progressbar=False)
    assert capfd.readouterr() == ("", "")


def test_callback_counts_tasks_without_nbytes(capfd, no_delay):
    with TqdmCallback("summing"):
        array().sum().compute()
    err = capfd.readouterr().err
    assert "summing" in err
    assert "task" in err


@pytest.mark.parametrize("ext", [EXT[name] for name in HYPERSPY])
def test_cluster_progress(tmp_path, capfd, client, no_delay, ext):
    lazyio.save(tmp_path / f"quiet{ext}", array(), show_progressbar=False)
    assert capfd.readouterr() == ("", "")
    lazyio.save(tmp_path / f"shown{ext}", array())
    out, err = capfd.readouterr()
    assert "100%" in out + err
    np.testing.assert_array_equal(lazyio.load(tmp_path / f"shown{ext}")[0]["data"],
                                  array().compute())
