"""Running a model over a dataset on a mesh, checked against one device, per task."""

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import TinyNet

import disco_jax as dj
from disco_jax.data import Split
from disco_jax.evaluation import mesh_check, padded_batches
from disco_jax.models import Segmenter
from disco_jax.tasks import Classification, Segmentation
from disco_jax.train import evaluate_metrics


@pytest.fixture(autouse=True)
def standard_dtype_promotion():
    with jax.numpy_dtype_promotion("standard"):
        yield


def test_padded_batches_have_one_shape_and_say_how_many_are_real():
    images = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    batches = list(padded_batches(images, 3))
    assert [count for _, count in batches] == [3, 3, 1]
    assert all(chunk.shape == (3, 2) for chunk, _ in batches)
    np.testing.assert_array_equal(batches[-1][0], [[12, 13], [0, 0], [0, 0]])


@pytest.mark.parametrize("nodes", [2, 4])
def test_classification_on_the_mesh_agrees_with_one_device(nodes):
    rng = np.random.default_rng(0)
    split = Split(rng.normal(size=(45, 12, 12, 1)).astype(np.float32),
                  rng.integers(0, 8, 45).astype(np.int32))
    model = TinyNet(nodes, 1)
    task = Classification(8)
    check = mesh_check(model, dj.compile_plan(model), dj.make_mesh(nodes), split, task,
                       batch=20)
    assert check["positions"] == 45 and check["batch"] == 20
    assert check["prediction_mismatches"] == check["mismatches_that_are_ties"] == 0
    assert check["metrics"] == check["reference_metrics"] == evaluate_metrics(model, split, task)
    assert check["max_abs_diff"] <= 1e-4 * check["max_abs_reference"]
    assert check["hlo_bytes_per_sample"] == dj.model_costs(
        model, (1, 12, 12, 1)).totals["disco"].comm_bytes


def test_segmentation_on_the_mesh_agrees_with_one_device_pixel_by_pixel():
    rng = np.random.default_rng(1)
    split = Split(rng.normal(size=(5, 32, 32, 1)).astype(np.float32),
                  rng.integers(0, 11, (5, 32, 32)).astype(np.int32))
    model = Segmenter(classes=11, nodes=2, width=8, decoder_width=8, rngs=nnx.Rngs(0))
    dj.set_random_masks(model, jax.random.key(0), 0.25)
    task = Segmentation(11)
    check = mesh_check(model, dj.compile_plan(model), dj.make_mesh(2), split, task, batch=2)
    assert check["positions"] == 5 * 32 * 32
    assert check["prediction_mismatches"] == check["mismatches_that_are_ties"]
    assert set(check["metrics"]) == {"miou", "pixel_accuracy"}
    for name, value in check["metrics"].items():
        assert value == pytest.approx(check["reference_metrics"][name], abs=1e-3), name
    assert check["max_abs_diff"] <= 1e-4 * check["max_abs_reference"]
    assert check["other_collectives"] == []


def test_ties_are_judged_at_the_plans_loosest_payload():
    from disco_jax.evaluation import tie_tolerance
    from disco_jax.payload import reference_tolerance

    model = TinyNet(2, 1)
    assert tie_tolerance(dj.compile_plan(model)) == reference_tolerance("float32") == 1e-4
    dj.set_payload_dtype(model, "int8")  # a value on a rounding boundary may round apart
    plan = dj.compile_plan(model)
    assert tie_tolerance(plan) == reference_tolerance("int8") == 1 / 127
    rng = np.random.default_rng(2)
    split = Split(rng.normal(size=(4, 12, 12, 1)).astype(np.float32),
                  rng.integers(0, 8, 4).astype(np.int32))
    check = mesh_check(model, plan, dj.make_mesh(2), split, Classification(8), batch=4)
    assert check["tie_tolerance"] == 1 / 127
    assert check["prediction_mismatches"] == check["mismatches_that_are_ties"]
