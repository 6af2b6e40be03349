"""A ViT rewritten in its principal basis (disco_jax.basis)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import disco_jax as dj
from disco_jax.basis import principal_basis
from disco_jax.errors import ConfigError
from disco_jax.layers import record_inputs
from disco_jax.models import ViT
from disco_jax.transformer import LayerNorm


def vit(nodes, pool="mean", seed=0):
    """A small ViT with every parameter random (LayerNorm scales and biases,
    the zero-initialised head), so that no rewrite is trivially exact."""
    model = ViT(image_size=8, patch=2, dim=8 * nodes, depth=2, heads=2 * nodes, mlp_ratio=2,
                classes=5, nodes=nodes, in_channels=1, pool=pool, rngs=nnx.Rngs(seed))
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    for _, module in nnx.iter_modules(model):
        if isinstance(module, LayerNorm):
            module.scale[...] = jax.random.uniform(next(keys), module.scale.shape, minval=0.5,
                                                   maxval=1.5)
            module.bias[...] = 0.1 * jax.random.normal(next(keys), module.bias.shape)
    model.head.kernel[...] = jax.random.normal(next(keys), model.head.kernel.shape) * 0.3
    if model.cls_token is not None:
        model.cls_token.value[...] = jax.random.normal(next(keys), model.cls_token.value.shape)
    return model


def images(count=48, seed=1):
    return jax.random.normal(jax.random.key(seed), (count, 8, 8, 1))


@pytest.mark.parametrize("nodes,pool", [(1, "mean"), (2, "mean"), (2, "cls"), (4, "mean")])
def test_the_rewritten_vit_computes_the_same_function(nodes, pool):
    model = vit(nodes, pool)
    rewritten = nnx.clone(model)
    principal_basis(rewritten, images())
    x = images(8, seed=2)  # other images than the calibration ones
    reference = model(x)
    assert float(jnp.max(jnp.abs(rewritten(x) - reference))) <= 1e-4 * float(
        jnp.max(jnp.abs(reference)))
    for _, module in nnx.iter_modules(rewritten):
        if isinstance(module, LayerNorm):  # scale and bias now live in the reader
            assert bool(jnp.all(module.scale[...] == 1)) and bool(jnp.all(module.bias[...] == 0))


@pytest.mark.parametrize("nodes", [2, 4])
def test_the_rotations_are_orthogonal_and_stay_within_a_node_and_a_head(nodes):
    rotations = principal_basis(vit(nodes), images())
    group, head_dim = 8, 4
    stream = rotations["stream"]
    np.testing.assert_allclose(stream @ stream.T, np.eye(8 * nodes), atol=1e-10)
    for j in range(nodes):  # each node's block maps the all-ones vector to itself
        block = stream[j * group:(j + 1) * group, j * group:(j + 1) * group]
        np.testing.assert_allclose(block @ np.ones(group), np.ones(group), atol=1e-10)
        np.testing.assert_allclose(np.abs(stream[j * group:(j + 1) * group]).sum(),
                                   np.abs(block).sum())
    values = rotations["blocks/0/values"]
    np.testing.assert_allclose(values @ values.T, np.eye(8 * nodes), atol=1e-10)
    heads = np.kron(np.eye(8 * nodes // head_dim), np.ones((head_dim, head_dim)))
    assert np.all(values[heads == 0] == 0)


def test_the_first_channels_carry_what_the_other_node_cannot_predict():
    model = vit(2)
    calibration = images(96)
    principal_basis(model, calibration)
    with record_inputs() as recorded:
        model(calibration)
    x = np.asarray(recorded[id(model.blocks[1].mlp.fc1)], np.float64).reshape(-1, 16)
    x = x - x.mean(axis=0)
    own, other = x[:, 8:], x[:, :8]  # node 1's channels, and node 0's own
    left = own - other @ np.linalg.lstsq(other, own, rcond=None)[0]
    unpredicted = (left ** 2).mean(axis=0)  # per channel of node 1
    assert unpredicted[:3].sum() > 2 * unpredicted[-3:].sum()


def test_a_network_that_is_not_a_vit_is_refused():
    layer = dj.DiscoDense(8, 8, nodes=2, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="rewrites a disco_jax.models.ViT, got DiscoDense"):
        principal_basis(layer, jnp.ones((2, 8)))


def test_a_model_with_masks_already_chosen_is_refused_and_left_alone():
    model = vit(2)
    dj.set_random_masks(model, jax.random.key(0), 0.25)
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    with pytest.raises(ConfigError, match="already reads only some channels; rewrite the dense"):
        principal_basis(model, images())
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))
