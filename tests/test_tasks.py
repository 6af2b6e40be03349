"""Tasks: losses and metrics against numpy, and training a segmentation net."""

import jax
import numpy as np
import pytest
from flax import nnx

import disco_jax as dj
from disco_jax import sparsify
from disco_jax.data import Split
from disco_jax.errors import ConfigError
from disco_jax.tasks import Classification, Segmentation, as_task
from disco_jax.train import TrainConfig, evaluate, evaluate_metrics, train


@pytest.fixture(autouse=True)
def standard_dtype_promotion():
    with jax.numpy_dtype_promotion("standard"):
        yield


def test_classification_counts_top1_and_an_int_means_classification():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(50, 6)).astype(np.float32), rng.integers(0, 4, 50)
    task = as_task(4)
    assert task == Classification(4) and task.metric == "top1" and task.higher_is_better
    total = np.asarray(task.tally(task.outputs(logits), labels))
    assert task.metrics(total) == {"top1": np.mean(logits[:, :4].argmax(-1) == labels)}


def _miou(targets, predictions, classes):
    ious = []
    for c in range(classes):
        union = np.sum((targets == c) | (predictions == c))
        if union:
            ious.append(np.sum((targets == c) & (predictions == c)) / union)
    return np.mean(ious)


def test_segmentation_metrics_come_from_one_confusion_matrix_over_the_dataset():
    rng = np.random.default_rng(1)
    task = Segmentation(5)
    targets = rng.integers(0, 4, (6, 8, 8))  # class 4 never occurs in the targets...
    logits = rng.normal(size=(6, 8, 8, 6)).astype(np.float32)  # ...padded to 6 outputs
    predictions = logits[..., :5].argmax(-1)
    halves = [np.asarray(task.tally(task.outputs(logits[s]), targets[s]))
              for s in (slice(0, 2), slice(2, 6))]
    confusion = halves[0] + halves[1]
    expected = np.zeros((5, 5), int)
    np.add.at(expected, (targets.ravel(), predictions.ravel()), 1)
    np.testing.assert_array_equal(confusion, expected)
    metrics = task.metrics(confusion)
    assert metrics["miou"] == pytest.approx(_miou(targets, predictions, 5))
    assert metrics["pixel_accuracy"] == pytest.approx(np.mean(targets == predictions))
    # a class absent from targets and predictions does not count in the mean
    perfect = np.zeros((5, 5), int)
    perfect[0, 0], perfect[2, 2] = 30, 10
    assert task.metrics(perfect) == {"miou": 1.0, "pixel_accuracy": 1.0}


def test_segmentation_distillation_is_the_tempered_kl_per_pixel():
    rng = np.random.default_rng(2)
    student, teacher = rng.normal(size=(2, 2, 4, 4, 3))
    t = 2.0

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    ls, lt = log_softmax(student / t), log_softmax(teacher / t)
    expected = t * t * np.mean(np.sum(np.exp(lt) * (lt - ls), -1))
    got = Segmentation(3).distill(student.astype(np.float32), teacher.astype(np.float32), t)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_bad_tasks_are_refused_by_value():
    with pytest.raises(ConfigError, match="classes >= 1, got 0"):
        Segmentation(0)
    with pytest.raises(ConfigError, match="tasks.Task or a number of classes, got 'cats'"):
        as_task("cats")


class TinySegmenter(nnx.Module):
    """Three DISCO convs: per-pixel logits ``[B, H, W, 4]`` (3 classes, padded to 4)."""

    def __init__(self, nodes: int, width: int = 8, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.stem = dj.DiscoConv(1, width, 3, nodes=nodes, split_input=False, rngs=rngs)
        self.conv = dj.DiscoConv(width, width, 3, nodes=nodes, rngs=rngs)
        self.head = dj.DiscoConv(width, 4, 1, nodes=nodes, rngs=rngs)
        self.num_classes = 3
        for layer in dj.disco_layers(self).values():
            if layer.spec.split_input:
                layer.mask[...] = dj.dense_mask(nodes, layer.spec.group_in)

    def __call__(self, x):
        return self.head(nnx.relu(self.conv(nnx.relu(self.stem(x)))))


def toy_scenes(n: int = 128, seed: int = 0) -> Split:
    """Bright squares (class 1) and dark squares (class 2) on a background
    (class 0), under noise: each pixel's class is its square's."""
    rng = np.random.default_rng(seed)
    clean = np.zeros((n, 12, 12), np.float32)
    for image in clean:
        for value in (1.0, -1.0):
            y, x = rng.integers(0, 8, size=2)
            image[y:y + 4, x:x + 4] = value
    labels = np.select([clean > 0, clean < 0], [1, 2], 0).astype(np.int32)
    images = clean + rng.normal(0, 0.3, clean.shape).astype(np.float32)
    return Split(images[..., None], labels)


def test_training_a_segmenter_lowers_the_loss_and_learns_the_classes():
    data, task = toy_scenes(), Segmentation(3)
    model = TinySegmenter(nodes=2)
    before = evaluate_metrics(model, data, task)
    config = TrainConfig(steps=60, batch_size=32, learning_rate=0.05)
    first = train(model, data, task, TrainConfig(steps=1, batch_size=32), progress=False)
    last = train(model, data, task, config, progress=False)
    after = evaluate_metrics(model, data, task)
    assert last.loss < first.loss
    assert after["miou"] > max(0.8, before["miou"] + 0.3), (before, after)
    assert evaluate(model, data, task) == after["miou"]


def test_fisher_importance_prunes_a_segmenter_on_its_own_loss():
    data, task = toy_scenes(64), Segmentation(3)
    model = TinySegmenter(nodes=2)
    method = sparsify.GradualPruning(0.25, start=0, end=4, interval=2, importance="fisher",
                                     task=task)
    train(model, data, task, TrainConfig(steps=6, batch_size=16), method=method,
          progress=False)
    for name, layer in dj.disco_layers(model).items():
        if layer.spec.split_input:
            off = np.asarray(layer.mask[...])[~np.eye(2, dtype=bool)]
            assert np.all(off.sum(-1) == dj.k_for_ratio(0.25, layer.spec.group_in)), name
    fisher = sparsify.mask_fisher(model, data.images[:8], data.labels[:8], task)
    assert set(fisher) == {"conv", "head"}
    assert all(np.isfinite(np.asarray(value)).all() for value in fisher.values())
