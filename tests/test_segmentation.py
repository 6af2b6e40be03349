"""`python -m experiments.segmentation`, end to end on its --quick settings."""

import helpers
import pytest

from disco_jax.data import FASHION_MNIST_DIR
from experiments import segmentation

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist (CI installs it)")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return helpers.quick_run(segmentation.main, tmp_path_factory.mktemp("segmentation"),
                             "--sweep", "0.2,1")


@pytest.mark.slow
def test_quick_segmentation_run_passes_its_checks_pixel_by_pixel(quick_run):
    code, report, _ = quick_run
    assert code == 0 and segmentation.verified(report)
    assert report["task"] == "segmentation" and report["quality"]["metric"] == "miou"
    dist = report["distributed"]
    assert dist["positions"] == report["test_images"] * 64 * 64  # every pixel compared
    assert dist["prediction_mismatches"] == dist["mismatches_that_are_ties"]
    assert set(dist["metrics"]) == {"miou", "pixel_accuracy"}
    assert report["quality"]["disco"] == dist["reference_miou"]
    comm = report["comm_bytes_per_sample"]
    assert comm["disco_hlo"] == comm["disco"] > 0
    assert all(entry["exact"] for entry in report["bytes_plan_vs_budget"].values())


@pytest.mark.slow
def test_quick_segmentation_run_draws_its_figures(quick_run):
    _, report, _ = quick_run
    names = [path.rsplit("/", 1)[-1] for path in report["plots"]]
    assert names == ["bytes_per_layer.png", "accuracy_vs_bytes.png", "examples.png"]
    assert [point["comm_ratio"] for point in report["sweep"]] == [0.2, 1.0]
    assert report["sweep"][1]["miou"] == report["quality"]["dense_split"]


def test_a_classifier_on_scenes_is_refused_and_nothing_is_written(tmp_path, capsys):
    from experiments import resnet50

    out = tmp_path / "run"
    assert resnet50.main(["--quick", "--dataset", "fashion_scenes", "--out", str(out)]) == 2
    assert "fashion_scenes has a class per pixel" in capsys.readouterr().err
    assert not out.exists()


def test_a_classification_dataset_is_refused_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code = segmentation.main(["--quick", "--dataset", "fashion_mnist", "--out", str(out)])
    assert code == 2
    assert "segmentation runs on --dataset fashion_scenes" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_infer_runs_a_saved_segmentation_run_and_measures_its_task(quick_run, tmp_path, capsys):
    """``experiments.infer`` on a segmentation run: per-pixel outputs on the
    mesh, the task's metrics (not top-1), the same as the run measured."""
    import numpy as np

    from experiments import infer

    _, report, folder = quick_run
    capsys.readouterr()
    out = tmp_path / "mesh.npz"
    assert infer.main(["--run", str(folder / "run"), "--predictions", str(out)]) == 0
    printed = capsys.readouterr().out
    mesh = report["distributed"]["metrics"]
    assert (f"mIoU {100 * mesh['miou']:.2f}, pixel accuracy "
            f"{100 * mesh['pixel_accuracy']:.2f} over {report['test_images']} test images"
            in printed)
    saved = np.load(out)
    assert saved["logits"].shape == (report["test_images"], 64, 64, 11)
    assert saved["labels"].shape == (report["test_images"], 64, 64)
