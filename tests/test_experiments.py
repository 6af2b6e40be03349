"""The experiment entry points, run end to end on small settings."""

import json

import pytest

from experiments import plan_check


@pytest.mark.slow
def test_plan_check_reports_matching_bytes_and_outputs(tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code = plan_check.main(["--model", "resnet18", "--mesh", "2", "--batch", "2",
                            "--image-size", "16", "--report", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    comm = report["comm_bytes_per_sample"]
    assert comm["disco_hlo"] == comm["disco"] > 0
    assert report["comm_reduction"] == pytest.approx(comm["dense_split"] / comm["disco"])
    assert report["quality"]["disco"] is None  # random masks: accuracy not measured
    assert "reduction" in capsys.readouterr().out


def test_plan_check_names_a_bad_mesh_size(capsys):
    assert plan_check.main(["--model", "resnet18", "--mesh", "3", "--image-size", "8"]) == 2
    assert "does not divide over 3 nodes" in capsys.readouterr().err


@pytest.mark.slow
def test_mask_training_quick_run_writes_a_report_with_exact_budgets(tmp_path):
    import jax

    from disco_jax.data import FASHION_MNIST_DIR
    from experiments import mask_training

    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist (CI installs it)")
    report_path = tmp_path / "masks.json"
    with jax.numpy_dtype_promotion("standard"):
        assert mask_training.main(["--quick", "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert set(report["bytes_plan_vs_budget"]) == {"learned", "random", "no_comm",
                                                   "dense_split"}
    for variant, entry in report["bytes_plan_vs_budget"].items():
        assert entry["exact"] and entry["plan"] == entry["budget"], variant
    assert report["bytes_plan_vs_budget"]["no_comm"]["plan"] == 0
    for when in ("quality", "quality_at_budget"):
        assert set(report[when]) == {"metric", "single", "dense_split", "disco", "random_mask",
                                     "no_comm"}
        assert 0.0 <= report[when]["disco"]["mean"] <= 1.0
    assert report["steps_per_variant"]["total"] == 30
    assert report["comm_reduction"] > 1


@pytest.mark.slow
def test_mask_training_with_directions_compares_random_channels_and_directions(tmp_path):
    import jax

    from disco_jax.data import FASHION_MNIST_DIR
    from experiments import mask_training

    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist (CI installs it)")
    report_path = tmp_path / "masks.json"
    with jax.numpy_dtype_promotion("standard"):
        assert mask_training.main(["--quick", "--directions", "--calibration-images", "64",
                                   "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["recipe"]["basis"] == "directions"
    assert set(report["bytes_plan_vs_budget"]) == {"learned", "random", "no_comm",
                                                   "dense_split", "random_directions"}
    for variant, entry in report["bytes_plan_vs_budget"].items():
        assert entry["exact"] and entry["plan"] == entry["budget"], variant
    assert "random_directions_finetuned" in report["disco_minus"]
    assert report["steps_per_variant"]["prune"] == 0  # masks set at once
    assert report["steps_per_variant"]["total"] == 20
