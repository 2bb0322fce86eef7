"""The notebooks run top to bottom (so they cannot rot), and still show what they say they show."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch):
    # one intra-op thread in the kernel: tiny models on a busy 2-core machine run several times faster (as the
    # one_thread fixture of conftest.py); the committed outputs were made the same way
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "teacher released: True" in text
    # the quickstart's claim, on its own run: SALT ends below the plain run, KD for the whole run above it
    if path.name == "quickstart.ipynb":
        assert "SALT below the baseline: True" in text and "KD for the whole run above the baseline: True" in text
