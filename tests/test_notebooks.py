"""Every notebook in ``notebooks/`` runs without error on this venv's Python (nbclient)."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# stored executed, so they read with their results (plots included) without running them
EXECUTED = {"05_hyperspy", "06_xarray"}


def test_there_are_notebooks_stored_as_intended():
    assert len(NOTEBOOKS) >= 6
    assert {p.stem for p in NOTEBOOKS} >= EXECUTED
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [cell for cell in nb.cells if cell.cell_type == "code"]
        if path.stem in EXECUTED:
            # every cell run once, in order, none failed
            assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
                path.name)
            assert not [o for c in code for o in c.outputs if o.output_type == "error"]
        else:
            for cell in code:
                assert cell.outputs == [], f"{path.name} is stored with outputs"
                assert cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # first, prove the kernel is this venv's Python (jupyter_client maps the kernel spec's
    # "python" to sys.executable)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve()
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert not errors
