"""`python -m experiments.vit` end to end on its --quick settings."""

import json

import pytest

from disco_jax.data import FASHION_MNIST_DIR
from experiments import vit

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist (CI installs it)")


@pytest.mark.slow
def test_quick_run_passes_its_checks_and_counts_the_layer_norms(tmp_path):
    report_path = tmp_path / "report.json"
    code = vit.main(["--quick", "--mesh", "2", "--out", str(tmp_path / "run"),
                     "--report", str(report_path)])
    report = json.loads(report_path.read_text())
    assert code == 0 and vit.verified(report)
    assert report["model"] == "vit" and report["heads"] == 4 and report["pool"] == "mean"
    comm = report["comm_bytes_per_sample"]
    assert comm["disco_hlo"] == comm["disco"] > 0
    norms = [part for part in report["other_parts"] if "norm" in part["name"]]
    assert len(norms) == 3  # two per block (depth 1) and the final one
    tokens = 7 * 7
    assert norms[0]["disco"]["comm_bytes"] == 2 * 1 * 2 * tokens * 4  # N(N-1) x 2 per token
    assert report["distributed"]["other_collectives"] == []
    assert report["distributed"]["prediction_mismatches"] == 0
    assert (tmp_path / "run" / "plan" / "plan.json").is_file()


def test_heads_that_do_not_divide_over_the_nodes_are_refused(tmp_path, capsys):
    code = vit.main(["--quick", "--mesh", "4", "--heads", "2", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "2 heads do not divide over 4 nodes" in err
    assert not (tmp_path / "run").exists()
