"""Notebooks execute top to bottom on CPU (their own asserts run too)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# No per-cell time limit (nbclient: None): tests carry no wall-clock limits, and on a loaded
# 2-core machine the quickstart's training cell ran past the old 900 s (session 10). A hung
# kernel is still caught by CI's own time limit.
CELL_TIMEOUT = None


def test_synthtalk_tour_runs():
    nb = nbformat.read(NOTEBOOKS / "synthtalk_tour.ipynb", as_version=4)
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2


def test_quickstart_runs(monkeypatch, tmp_path):
    """The quickstart (= `vasa-jax demo`) end to end with seconds of training."""
    import shutil

    monkeypatch.setenv("VASA_QUICKSTART_QUICK", "1")
    work = tmp_path / "nb"
    work.mkdir()
    shutil.copy(NOTEBOOKS / "quickstart.ipynb", work)
    nb = nbformat.read(work / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(work)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    assert (work / "quickstart_run" / "demo.mp4").is_file()
    assert (work / "quickstart_run" / "demo.json").is_file()
    assert (work / "quickstart_run" / "demo_mouth.png").is_file()
