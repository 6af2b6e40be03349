"""Whole-model inference: the same model definition, run on a mesh."""

import chex
import jax
import numpy as np
import pytest
from flax import nnx
from helpers import TinyNet, relative_error

import disco_jax as dj
from disco_jax.inference import PlanArray, to_inference


@pytest.mark.parametrize("nodes,k", [(1, 0), (2, 0), (2, 1), (2, 4), (4, 1), (8, 1)])
def test_distributed_model_matches_the_single_device_model(nodes, k):
    model = TinyNet(nodes, k)
    model.eval()
    x = jax.random.normal(jax.random.key(0), (3, 12, 12, 1))
    distributed = dj.DistributedModel(model, dj.make_mesh(nodes))
    compiled = distributed.compile(x)
    out = compiled(*distributed.inputs(x))
    assert relative_error(out, model(x)) <= 1e-4

    costs = dj.model_costs(model, x.shape)
    hlo = compiled.as_text()
    assert dj.hlo_permute_bytes(hlo) == costs.totals["disco"].comm_bytes * x.shape[0]
    assert dj.hlo_other_collectives(hlo) == []


@pytest.mark.parametrize("nodes,k", [(2, 2), (4, 1)])
def test_an_overlapped_model_is_the_same_sum_with_work_beside_every_exchange(nodes, k):
    model = TinyNet(nodes, k)
    model.eval()
    x = jax.random.normal(jax.random.key(0), (3, 12, 12, 1))
    mesh = dj.make_mesh(nodes)
    serial_model = dj.DistributedModel(model, mesh)
    overlapped_model = dj.DistributedModel(model, mesh, overlap=True)
    serial, overlapped = serial_model.compile(x), overlapped_model.compile(x)
    out = overlapped(*overlapped_model.inputs(x))
    assert relative_error(out, model(x)) <= 1e-4
    assert relative_error(out, serial(*serial_model.inputs(x))) <= 1e-5  # the sums' order

    hlo = overlapped.as_text()
    assert dj.hlo_permute_bytes(hlo) == dj.hlo_permute_bytes(serial.as_text())
    work = dj.hlo_overlap(hlo)
    assert len(work) == 4 * (nodes - 1) and min(work) >= 1  # 4 layers read other nodes
    # one product over own and received channels: only the block's two branches
    # (the strided conv and its projection) have work beside each other's exchanges
    assert sum(1 for n in dj.hlo_overlap(serial.as_text()) if n) == 2 * (nodes - 1)
    held = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(
        nnx.state(to_inference(model, overlap=True)))}
    assert {"conv1/kernel", "conv1/received_kernel", "stem/kernel"} <= held
    assert "stem/received_kernel" not in held  # the replicated input: nothing received


def test_model_costs_by_layer_and_in_total():
    model = TinyNet(2, 1)
    costs = dj.model_costs(model, (1, 12, 12, 1))
    assert costs.layers["stem"]["input_shape"] == (12, 12, 1)
    assert costs.layers["head"]["input_shape"] == (16,)
    assert costs.layers["stem"]["disco"].comm_values == 0  # replicated input: reported apart
    # conv1: 2 nodes x 1 other x k=1 x 12*12 pixels
    assert costs.layers["conv1"]["disco"].comm_values == 2 * 1 * 1 * 144
    assert costs.layers["proj"]["disco"].comm_values == 2 * 1 * 1 * 36  # reads 6x6 pixels
    total = sum(layer["disco"].comm_bytes for layer in costs.layers.values())
    assert costs.totals["disco"].comm_bytes == total
    # values per pair, dense split vs DISCO: conv1, down (4 vs 1 channels of 12x12),
    # proj (4 vs 1 of 6x6), head (8 vs 1)
    assert costs.comm_reduction == pytest.approx((4 * 144 * 2 + 4 * 36 + 8) / (144 * 2 + 36 + 1))


def test_inference_form_holds_only_per_node_arrays():
    inference = to_inference(TinyNet(4, 1))
    leaves = nnx.to_flat_state(nnx.state(inference))
    assert leaves and all(isinstance(v, PlanArray) and v.shape[0] == 4 for _, v in leaves)


def test_training_model_is_left_unchanged():
    model = TinyNet(2, 1)
    before = jax.tree.map(np.asarray, nnx.state(model))
    to_inference(model)
    after = jax.tree.map(np.asarray, nnx.state(model))
    chex.assert_trees_all_equal(before, after)
    assert isinstance(model.conv1, dj.DiscoConv)


class WithPlainLinear(nnx.Module):
    def __init__(self):
        self.conv = dj.DiscoConv(4, 4, 3, nodes=2, rngs=nnx.Rngs(0))
        self.head = nnx.Linear(4, 2, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.head(self.conv(x).mean(axis=(1, 2)))


def test_a_layer_that_cannot_be_split_is_named():
    expected = r"head \(Linear\) holds a Param '.*' that DISCO cannot split"
    with pytest.raises(dj.ConfigError, match=expected):
        to_inference(WithPlainLinear())


def test_a_plan_from_another_model_is_refused():
    plan = dj.compile_plan(TinyNet(2, 1, width=8))
    with pytest.raises(dj.PlanError, match=r"layer conv1: the model has a conv 3x3 16->16"):
        dj.DistributedModel(TinyNet(2, 1, width=16), dj.make_mesh(2), plan)


class TwoHeads(nnx.Module):
    """A dict of outputs: per-pixel scores (3 channels, padded to 4) and
    per-image logits (6 channels)."""

    def __init__(self, nodes):
        rngs = nnx.Rngs(0)
        self.stem = dj.DiscoConv(1, 8, 3, nodes=nodes, split_input=False, rngs=rngs)
        self.pixels = dj.DiscoConv(8, 4, 1, nodes=nodes, rngs=rngs)
        self.image = dj.DiscoDense(8, 6, nodes=nodes, rngs=rngs)
        dj.set_random_masks(self, jax.random.key(3), 0.5)

    def __call__(self, x):
        y = nnx.relu(self.stem(x))
        return {"pixels": self.pixels(y), "image": self.image(y.mean(axis=(1, 2)))}


@pytest.mark.parametrize("nodes", [1, 2])
def test_a_model_with_several_outputs_runs_on_a_mesh_each_output_split_by_channel(nodes):
    model = TwoHeads(nodes)
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 1))
    distributed = dj.DistributedModel(model, dj.make_mesh(nodes),
                                      output_rank={"pixels": 4, "image": 2},
                                      output_channels={"pixels": 3, "image": None})
    out, reference = distributed(x), model(x)
    assert out["pixels"].shape == (2, 8, 8, 3) and out["image"].shape == (2, 6)
    assert relative_error(out["pixels"], reference["pixels"][..., :3]) <= 1e-4
    assert relative_error(out["image"], reference["image"]) <= 1e-4
    with pytest.raises(dj.ConfigError, match="output_rank must be a positive int"):
        dj.DistributedModel(model, dj.make_mesh(nodes), output_rank={"pixels": 0})


def test_a_network_computing_in_bfloat16_runs_alike_on_the_mesh():
    """Every lowering of a ResNet in bfloat16 (stem conv, 1x1 products, 3x3 taps, the
    classifier) in both forms: the mesh follows the reference to bfloat16's precision
    (activations that differ in float32's last bits can round to neighbouring
    bfloat16 values), and the bytes are the plan's."""
    from disco_jax.layers import lowering
    from disco_jax.models import NETWORKS

    model = NETWORKS["resnet18"](classes=10, nodes=2, in_channels=1, stem="small", width=32,
                                 rngs=nnx.Rngs(0))
    dj.set_random_masks(model, jax.random.key(1), 0.25)
    model.eval()
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    float32 = model(x)
    dj.set_compute_dtype(model, "bfloat16")
    reference = model(x)
    chosen = {lowering(layer.spec, 8, 8, "bfloat16") for layer in dj.disco_layers(model).values()}
    assert chosen == {"conv", "matmul", "taps"}
    distributed = dj.DistributedModel(model, dj.make_mesh(2))
    compiled = distributed.compile(x)
    out = compiled(*distributed.inputs(x))
    assert relative_error(out, reference) <= 1e-2
    assert 0 < relative_error(reference, float32) <= 3e-2  # it did compute in bfloat16
    assert dj.hlo_permute_bytes(compiled.as_text()) == (
        dj.model_costs(model, x.shape).totals["disco"].comm_bytes * x.shape[0])
