"""examples/backprop_walkthrough_notebook.ipynb executes, has no stored outputs, and is in sync
with its jupytext twin examples/backprop_walkthrough_notebook.py.

Needs the dev extras jupytext, nbclient, nbformat and ipykernel; skips without them. The kernel
runs in a subprocess, in the examples folder (as Jupyter opens a notebook) with this checkout
first on its PYTHONPATH, so it imports the minicnn under test.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
NOTEBOOK = EXAMPLES / "backprop_walkthrough_notebook.ipynb"
SOURCE = EXAMPLES / "backprop_walkthrough_notebook.py"


def cells(nb):
    return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def test_notebook_and_its_py_are_in_sync():
    ipynb = nbformat.read(NOTEBOOK, as_version=4)
    py = jupytext.read(SOURCE)
    assert cells(ipynb) == cells(py), "run: jupytext --sync " + str(NOTEBOOK.relative_to(REPO))
    assert ipynb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert len([c for c in ipynb.cells if c.cell_type == "code"]) >= 8


def test_notebook_is_committed_without_outputs():
    ipynb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in ipynb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def run_notebook(nb, monkeypatch):
    """Execute ``nb`` in a fresh kernel started in examples/; returns the executed notebook."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(EXAMPLES)}})
    return client.execute()


def output_text(nb):
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.outputs if out.get("output_type") == "stream")


def test_notebook_executes_and_its_checks_pass(monkeypatch):
    nb = run_notebook(nbformat.read(NOTEBOOK, as_version=4), monkeypatch)
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    assert errors == []
    text = output_text(nb)
    assert "minicnn" in text and str(REPO) in text           # the checkout under test
    for heading in ("1. Forward pass", "2. Loss", "3. Backward pass", "4. Gradient checks",
                    "5. Adam by hand", "6. BatchNormalization"):
        assert heading in text, heading
    assert "FAILED" not in text and "DISAGREE" not in text
    assert "all checks pass" in text


def test_a_broken_backward_fails_the_notebook(monkeypatch):
    """The notebook's asserts are real: a 1% error in the Dense kernel gradient stops it."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    sabotage = nbformat.v4.new_code_cell(
        "from minicnn.ops import reference\n"
        "_dense_backward = reference.dense_backward\n"
        "def _wrong(x, kernel, dy, need_dx=True):\n"
        "    dx, dk, db = _dense_backward(x, kernel, dy, need_dx)\n"
        "    return dx, dk * 1.01, db\n"
        "reference.dense_backward = _wrong\n")
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first_code + 1, sabotage)
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="AssertionError"):
        run_notebook(nb, monkeypatch)
