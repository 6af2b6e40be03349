"""Detection: the CenterNet task (targets, loss, decoding, COCO AP from
pycocotools, bad targets), the detector on meshes of 1, 2 and 4 nodes, and
`python -m experiments.detection` end to end on its --quick settings."""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import relative_error

import disco_jax as dj
from disco_jax.data import FASHION_MNIST_DIR, DataError, Split
from disco_jax.models import Detector
from disco_jax.tasks import Detection

TASK = Detection(10)


def targets(*scenes, objects=3):
    """``f32[len(scenes), objects, 5]`` from lists of (x0, y0, x1, y1, class)."""
    rows = np.full((len(scenes), objects, 5), -1.0, np.float32)
    for index, boxes in enumerate(scenes):
        rows[index, :len(boxes)] = np.reshape(boxes, (-1, 5))
    return rows


SCENES = targets([(10, 20, 40, 50, 3), (50, 50, 90, 70, 7)], [(0, 0, 96, 96, 0)])


def perfect_outputs(task, rows, height=24, width=24):
    """The outputs a perfect detector gives: logit 10 at every centre cell of
    its class, -10 elsewhere; each centre's exact size and offset."""
    heat = task.heatmap_targets(jnp.asarray(rows), height, width)
    box = np.zeros((len(rows), height, width, 4), np.float32)
    for b, scene in enumerate(rows):
        for x0, y0, x1, y1, _ in scene[scene[:, 4] >= 0] / [4, 4, 4, 4, 1]:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            box[b, int(cy), int(cx)] = [x1 - x0, y1 - y0, cx - int(cx), cy - int(cy)]
    return {"heatmap": jnp.where(heat >= 1, 10.0, -10.0), "box": jnp.asarray(box)}


def test_heatmap_targets_peak_at_each_centre_cell_of_its_class():
    heat = np.asarray(TASK.heatmap_targets(jnp.asarray(SCENES), 24, 24))
    assert heat.shape == (2, 24, 24, 10)
    peaks = np.argwhere(heat == 1.0)
    # centres (25, 35) / 4 -> cell (6, 8) class 3; (70, 60) / 4 -> (17, 15) class 7
    assert sorted(map(tuple, peaks)) == [(0, 8, 6, 3), (0, 15, 17, 7), (1, 12, 12, 0)]
    assert 0 < heat[0, 8, 7, 3] < 1 and heat[0, 8, 6, 4] == 0  # a Gaussian, of its class only
    assert heat[0, 0, 0].max() == 0  # truncated at the radius


def test_a_perfect_detector_has_no_loss_and_coco_ap_1():
    perfect = perfect_outputs(TASK, SCENES)
    assert float(TASK.loss(perfect, jnp.asarray(SCENES))) < 1e-6
    boxes, scores, classes = (np.asarray(x) for x in TASK.predict(perfect))
    np.testing.assert_allclose(boxes[0, :2], SCENES[0, :2, :4], atol=1e-5)
    assert list(classes[0, :2]) == [3, 7] and scores[0, 2] < 1e-3
    metrics = TASK.metrics(TASK.combine(None, TASK.tally(perfect, jnp.asarray(SCENES))))
    assert metrics == pytest.approx({"ap50": 1.0, "ap": 1.0})
    assert float(TASK.accuracy(perfect, jnp.asarray(SCENES))) == 1.0


def test_coco_ap_counts_a_wrong_class_and_a_shifted_box_as_pycocotools_does():
    """One scene, two objects: a detection of the wrong class is a false
    positive and a miss; a box shifted to IoU ~0.6 counts at IoU 0.5 only."""
    rows = targets([(8, 8, 48, 48, 1), (50, 50, 90, 90, 2)], objects=2)
    perfect = perfect_outputs(TASK, rows)
    boxes, scores, classes = (np.array(x) for x in TASK.predict(perfect))
    ranked = {int(c): i for i, c in enumerate(classes[0, :2])}
    right = TASK.metrics((boxes, scores, classes, rows))
    assert right == pytest.approx({"ap50": 1.0, "ap": 1.0})
    shifted = boxes.copy()
    shifted[0, ranked[1]] += [10, 0, 10, 0]  # IoU 30 x 40 / (50 x 40) = 0.6
    worse = TASK.metrics((shifted, scores, classes, rows))
    assert worse["ap50"] == pytest.approx(1.0) and 0.5 < worse["ap"] < 1.0
    wrong = classes.copy()
    wrong[0, ranked[2]] = 5
    assert TASK.metrics((boxes, scores, wrong, rows))["ap50"] == pytest.approx(0.5)


def test_training_lowers_the_loss_of_a_small_detector():
    """The library's training step (loss, progress-bar accuracy) on the detector."""
    from disco_jax.train import TrainConfig, make_optimizer, make_train_step

    model = Detector(classes=10, width=8, decoder_width=8, rngs=nnx.Rngs(0))
    rows = jnp.asarray(targets([(10, 20, 40, 50, 3)], [(30, 30, 60, 70, 1)]))
    x = jax.random.normal(jax.random.key(0), (2, 96, 96, 1))
    config = TrainConfig(steps=30, learning_rate=1e-2, optimizer="adamw", weight_decay=0.0)
    optimizer = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)
    step = make_train_step(TASK)
    with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix int and float
        losses = [float(step(model, optimizer, x, rows, jnp.asarray(i))[0]) for i in range(30)]
    assert losses[-1] < 0.5 * losses[0]


def test_the_mesh_and_the_reference_agree_unless_a_detection_moves():
    perfect = perfect_outputs(TASK, SCENES)
    assert TASK.agreement(perfect, perfect, 1e-4) == (200, 0, 0)
    moved = dict(perfect, box=perfect["box"].at[0, 8, 6, 2].add(0.5))
    assert TASK.agreement(moved, perfect, 1e-4) == (200, 1, 0)  # a box moved 2 px
    # the two detections of scene 0 score the same; a rounding that swaps them is a tie
    level = jnp.where(perfect["heatmap"] > 0, 1.0, -10.0)  # scores of 0.73: not saturated
    swapped = dict(perfect, heatmap=level.at[0, 8, 6, 3].add(2e-5))
    lifted = dict(perfect, heatmap=level.at[0, 15, 17, 7].add(2e-5))
    positions, differ, ties = TASK.agreement(swapped, lifted, 1e-4)
    assert positions == 200 and differ == ties == 2


def test_a_peak_that_only_one_side_finds_shifts_later_ranks_and_they_are_ties():
    """Two neighbouring cells that score the same are both peaks in the
    reference and one in the mesh: every later detection moves up a rank
    there, and is a tie (found at the next rank with its score); one whose
    score changed is not."""
    heat = jnp.full((1, 12, 12, 10), -10.0)
    for (y, x, cls), logit in {(2, 2, 0): 1.0, (5, 5, 1): 0.0, (5, 6, 1): 0.0,
                               (8, 8, 2): -1.0, (10, 3, 4): -2.0}.items():
        heat = heat.at[0, y, x, cls].set(logit)
    reference = {"heatmap": heat, "box": jnp.zeros((1, 12, 12, 4))}
    mesh = dict(reference, heatmap=heat.at[0, 5, 6, 1].add(-2e-5))  # one peak fewer
    positions, differ, ties = TASK.agreement(mesh, reference, 1e-4)
    assert positions == TASK.top_k and differ >= 2 and ties == differ
    changed = dict(mesh, heatmap=mesh["heatmap"].at[0, 8, 8, 2].set(-1.5))
    positions, differ, ties = TASK.agreement(changed, reference, 1e-4)
    assert differ - ties == 1  # the detection whose score moved


@pytest.mark.parametrize("rows, message", [
    (targets([(10, 20, 40, 50, 12)]), r"image 0, object 0: a class outside \[0, 10\)"),
    (targets([(1, 1, 5, 5, 1)], [(80, 80, 100, 90, 2)]), r"image 1, object 0: a box outside "
                                                         r"the 96 x 96 image"),
    (targets([(10, 20, 10, 50, 3)]), r"an empty box"),
    (np.zeros((2, 3), np.float32), r"must be \[N, M, 5\]"),
])
def test_targets_that_do_not_fit_are_named(rows, message):
    split = Split(np.zeros((len(rows), 96, 96, 1), np.float32), rows)
    with pytest.raises(DataError, match=message):
        TASK.check(split)


def test_an_image_without_objects_is_scored_as_coco_does_and_a_set_without_any_is_refused():
    rows = targets([(8, 8, 48, 48, 1)], [])  # the second scene is empty
    perfect = perfect_outputs(TASK, rows)
    boxes, scores, classes = (np.array(x) for x in TASK.predict(perfect))
    assert TASK.metrics((boxes, scores, classes, rows)) == pytest.approx({"ap50": 1.0, "ap": 1.0})
    scores[1, 0] = 0.99  # a confident detection on the empty scene: a false positive
    assert TASK.metrics((boxes, scores, classes, rows))["ap50"] < 1.0
    with pytest.raises(DataError, match="hold no object: COCO AP is undefined"):
        TASK.metrics((boxes[1:], scores[1:], classes[1:], rows[1:]))


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_detector_runs_on_a_mesh_like_on_one_device(nodes):
    classes = 10
    model = Detector(classes=classes, nodes=nodes, width=8, decoder_width=8, rngs=nnx.Rngs(0))
    dj.set_random_masks(model, jax.random.key(0), 0.25)
    model.eval()
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 1))
    reference = TASK.outputs(model(x))
    assert reference["heatmap"].shape == (2, 16, 16, classes)
    assert reference["box"].shape == (2, 16, 16, 4)
    distributed = dj.DistributedModel(model, dj.make_mesh(nodes), output_rank=TASK.output_rank,
                                      output_channels=TASK.output_channels)
    compiled = distributed.compile(x)
    out = distributed.outputs(compiled(*distributed.inputs(x)))
    for name in ("heatmap", "box"):
        assert relative_error(out[name], reference[name]) <= 1e-4, name
    hlo = compiled.as_text()
    assert dj.hlo_other_collectives(hlo) == []
    per_image = dj.model_costs(model, x.shape).totals["disco"].comm_bytes
    assert dj.hlo_permute_bytes(hlo) == 2 * per_image
    assert (per_image > 0) == (nodes > 1)
    assert model.heatmap.spec.c_out == -(-classes // nodes) * nodes
    assert model.box.spec.c_out == -(-4 // nodes) * nodes
    # the decoded detections agree too
    positions, differ, ties = TASK.agreement(out, reference, 1e-4 * 10)
    assert positions == 2 * TASK.top_k and differ == ties


def test_detector_starts_at_the_centre_prior():
    model = Detector(classes=10, width=8, decoder_width=8, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(model.heatmap.bias[...], np.log(0.1 / 0.9), rtol=1e-6)


pytestmark_data = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist (CI installs it)")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from experiments import detection

    return helpers.quick_run(detection.main, tmp_path_factory.mktemp("detection"))


@pytestmark_data
@pytest.mark.slow
def test_quick_detection_run_checks_the_detections_on_the_whole_test_set(quick_run):
    from experiments import detection

    code, report, folder = quick_run
    assert code == 0 and detection.verified(report)
    assert report["task"] == "detection" and report["quality"]["metric"] == "ap50"
    dist = report["distributed"]
    assert dist["positions"] == report["test_images"] * 100  # top 100 per image, compared
    assert dist["prediction_mismatches"] == dist["mismatches_that_are_ties"]
    assert set(dist["metrics"]) == {"ap", "ap50"}
    assert set(report["metrics"]["random_mask"]) == {"ap", "ap50"}  # every variant: AP too
    comm = report["comm_bytes_per_sample"]
    assert comm["disco_hlo"] == comm["disco"] > 0
    assert (folder / "run" / "examples.png").is_file()


@pytestmark_data
def test_a_classification_dataset_is_refused_and_nothing_is_written(tmp_path, capsys):
    from experiments import detection

    out = tmp_path / "run"
    assert detection.main(["--quick", "--dataset", "fashion_mnist", "--out", str(out)]) == 2
    assert "detection runs on --dataset fashion_scenes" in capsys.readouterr().err
    assert not out.exists()
