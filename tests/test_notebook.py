"""The Colab notebook runs top to bottom (small settings), so it cannot rot."""

import json
import os
from pathlib import Path

import pytest

from disco_jax.data import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="apt-get install dataset-fashion-mnist (CI installs it)")
def test_quickstart_notebook_runs_and_shows_the_table_and_plots(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    out = tmp_path / "run"
    # the kernel inherits the environment: small settings, a scratch folder
    monkeypatch.setenv("DISCO_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("DISCO_NOTEBOOK_ARGS", "--quick --model resnet18 --mesh 2 --sweep 0,1")
    monkeypatch.setenv("DISCO_JAX_ROOT", str(ROOT))
    notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", [])]
    text = "".join(output.get("text", "") for output in outputs)
    assert "communication per image" in text and "paper's targets" in text
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 2
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "resnet18" and report["nodes"] == 2
    assert os.path.isfile(report["plots"][0])
