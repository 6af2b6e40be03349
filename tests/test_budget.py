"""One budget of bytes for the whole network, shared out across layers (disco_jax.budget)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import TinyNet

import disco_jax as dj
from disco_jax import budget
from disco_jax.projections import reduced_rank
from disco_jax.refit import refit


def _dense(nodes=2, seed=0):
    model = TinyNet(nodes, 0, seed=seed)
    for layer in dj.disco_layers(model).values():
        if layer.mask is not None:
            layer.mask[...] = dj.dense_mask(layer.spec.nodes, layer.spec.group_in)
    model.eval()
    return model


IMAGES = jax.random.normal(jax.random.key(1), (32, 12, 12, 1))
LABELS = jax.random.randint(jax.random.key(2), (32,), 0, 8)


def _sent(model, ks, payload):
    layers = dj.disco_layers(model)
    shapes = dj.accounting.layer_input_shapes(model, (1, 12, 12, 1))
    return {name: budget.layer_bytes(layers[name].spec, dj.accounting.read_spatial(
        layers[name].spec, shapes[name][1:-1]), k, payload) for name, k in ks.items()}


@pytest.mark.parametrize("payload", ["float32", "int8"])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_the_allocation_spends_the_budget_up_to_one_direction_per_layer(payload, ratio):
    dense = _dense()
    total = budget.ratio_bytes(dense, IMAGES, ratio, payload)
    ks = budget.allocate(dense, IMAGES, total, payload=payload, labels=LABELS)
    layers = dj.disco_layers(dense)
    assert set(ks) == {"conv1", "down", "proj", "head"}  # not the stem: nothing travels
    assert all(0 <= k <= layers[name].spec.group_in for name, k in ks.items())
    sent = _sent(dense, ks, payload)
    shapes = dj.accounting.layer_input_shapes(dense, (1, 12, 12, 1))
    slack = sum(budget.layer_step_bytes(layers[n].spec, dj.accounting.read_spatial(
        layers[n].spec, shapes[n][1:-1]), k, payload)
        for n, k in ks.items() if k < layers[n].spec.group_in)
    spent = sum(sent.values())
    assert spent <= total and (spent == total or total - spent < slack)
    if ratio == 1.0:  # the whole dense split's traffic: every layer at full width
        assert all(k == layers[name].spec.group_in for name, k in ks.items())


def test_a_layer_whose_directions_carry_nothing_gets_no_bytes():
    dense = _dense()
    g_in, g_out = 4, 4  # conv1: 8 -> 8 channels on 2 nodes
    kernel = np.array(dense.conv1.kernel[...])
    kernel[:, :, :g_in, g_out:] = 0.0  # node 0's channels never reach node 1's outputs
    kernel[:, :, g_in:, :g_out] = 0.0  # nor node 1's node 0's
    dense.conv1.kernel[...] = jnp.asarray(kernel)
    values = budget.direction_values(dense.conv1, dense_inputs(dense)["conv1"])
    assert np.allclose(values, 0.0, atol=1e-12)
    others = budget.direction_values(dense.down, dense_inputs(dense)["down"])
    assert np.all(others >= 0) and np.all(np.diff(others) <= 1e-12) and others[0] > 0
    assert others.sum() <= 1.0 + 1e-9  # a share of the layer's output energy
    ks = budget.allocate(dense, IMAGES, budget.ratio_bytes(dense, IMAGES, 0.5), labels=LABELS)
    assert ks["conv1"] == 0 and ks["down"] > 2  # its bytes went where they buy something


def test_the_loss_weighs_the_layers_a_layer_it_cannot_see_gets_no_bytes():
    """conv1's output reaches the loss only through bn1: with bn1's scale 0 the
    loss does not see it. Its directions still carry its own output's energy
    (the energy value buys some), but their Fisher weight is 0."""
    dense = _dense()
    dense.bn1.scale[...] = jnp.zeros_like(dense.bn1.scale[...])
    total = budget.ratio_bytes(dense, IMAGES, 0.5)
    by_energy = budget.allocate(dense, IMAGES, total, value="energy")
    by_loss = budget.allocate(dense, IMAGES, total, labels=LABELS)
    weights = budget.loss_weights(dense, IMAGES, LABELS)
    assert weights["conv1"] == 0.0 and all(weights[n] > 0 for n in ("down", "proj", "head"))
    assert by_energy["conv1"] > 0 and by_loss["conv1"] == 0
    assert sum(_sent(dense, by_loss, "float32").values()) <= total


def dense_inputs(model):
    from disco_jax.refit import _read_inputs

    return _read_inputs(model, IMAGES)


def test_an_allocated_network_runs_on_the_mesh_as_on_one_device():
    dense = _dense()
    ks = budget.allocate(dense, IMAGES, budget.ratio_bytes(dense, IMAGES, 0.25), labels=LABELS)
    model = nnx.clone(dense)
    refit(model, dense, IMAGES, choose=reduced_rank(ks), inputs="dense")
    plan = dj.compile_plan(model)
    assert {name: plan[name].k for name in ks} == ks
    model.eval()
    out = dj.DistributedModel(model, dj.make_mesh(2), plan)(IMAGES[:4])
    np.testing.assert_allclose(out, model(IMAGES[:4]), atol=1e-4 * float(
        jnp.max(jnp.abs(out))))


def test_a_budget_outside_what_the_network_can_send_is_refused():
    dense = _dense()
    full = budget.ratio_bytes(dense, IMAGES, 1.0)
    for bad in (-1, full + 1):
        with pytest.raises(dj.ConfigError, match=r"allocate: a budget of .* bytes per image is "
                                                  r"outside \[0, "):
            budget.allocate(dense, IMAGES, bad, labels=LABELS)
    with pytest.raises(dj.ConfigError, match="allocate: the model has no DISCO layer"):
        budget.allocate(_dense(nodes=1), IMAGES, 0, labels=LABELS)
    with pytest.raises(dj.ConfigError, match="value='fisher' weighs each layer by the loss .* "
                                             "needs their labels"):
        budget.allocate(dense, IMAGES, 0)
    with pytest.raises(dj.ConfigError, match="allocate: 31 labels for 32 calibration images"):
        budget.allocate(dense, IMAGES, 0, labels=LABELS[:31])
    with pytest.raises(dj.ConfigError, match="allocate: unknown value 'norm'; expected one of"):
        budget.allocate(dense, IMAGES, 0, value="norm")
    with pytest.raises(dj.ConfigError, match="the allocation gives no k for this layer"):
        refit(nnx.clone(dense), dense, IMAGES, choose=reduced_rank({"conv1": 1}), inputs="dense")


def test_a_learned_allocation_needs_the_directions_method():
    from experiments.compare import Schedule, variants_of

    with pytest.raises(dj.ConfigError, match="allocation 'learned' shares the bytes among "
                                             "layers .* it needs the directions method"):
        Schedule(prune_steps=10, finetune_steps=10, allocation="learned")
    schedule = Schedule(prune_steps=0, finetune_steps=10, refit="lstsq", basis="directions",
                        allocation="learned")
    assert variants_of(schedule)[-1] == "uniform_allocation"
