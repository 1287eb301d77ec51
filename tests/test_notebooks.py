"""Every notebook runs top to bottom in quick mode (``EPROPTAX_QUICK=1``), as CI runs them."""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the test extra (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need the test extra (nbclient, ipykernel)")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_the_six_notebooks_are_there():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, monkeypatch):
    monkeypatch.setenv("EPROPTAX_QUICK", "1")  # the kernel inherits this environment
    notebook = nbformat.read(path, as_version=4)
    assert any("EPROPTAX_QUICK" in cell.source for cell in notebook.cells), f"{path.name} has no quick mode"
    # kernel "python3" is the interpreter running the tests (jupyter_client maps it to sys.executable);
    # a failing cell raises CellExecutionError with its traceback
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    errors = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
