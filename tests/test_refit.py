"""Least-squares refit of the kept weights (disco_jax.refit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import disco_jax as dj
from disco_jax.errors import ConfigError
from disco_jax.refit import refit
from tests.helpers import TinyNet


def dense_layer(c_in, c_out, nodes, seed=0):
    layer = dj.DiscoDense(c_in, c_out, nodes=nodes, rngs=nnx.Rngs(seed))
    layer.bias[...] = jax.random.normal(jax.random.key(seed + 1), (c_out,))
    return layer


def masked_copy(layer, k, seed=0):
    masked = nnx.clone(layer)
    masked.mask[...] = dj.random_mask(jax.random.key(seed), layer.spec.nodes,
                                      layer.spec.group_in, k)
    return masked


class Chain(nnx.Module):
    """Two DISCO dense layers with a GELU between them, on tokens [B, T, C]."""

    def __init__(self, nodes, width=8, seed=0):
        rngs = nnx.Rngs(seed)
        self.first = dj.DiscoDense(width, 2 * width, nodes=nodes, name="first", rngs=rngs)
        self.second = dj.DiscoDense(2 * width, width, nodes=nodes, name="second", rngs=rngs)

    def __call__(self, x):
        return self.second(jax.nn.gelu(self.first(x)))


def test_refit_with_every_channel_read_gives_back_the_dense_weights():
    layer = dense_layer(8, 6, nodes=2)
    x = jax.random.normal(jax.random.key(3), (4, 16, 8))  # [B, T, C_in]: 64 rows >> 8 inputs
    copy = nnx.clone(layer)
    errors = refit(copy, layer, x, ridge=0.0)
    np.testing.assert_allclose(np.asarray(copy.kernel[...]), np.asarray(layer.kernel[...]),
                               rtol=1e-4, atol=1e-5)
    assert errors[layer.name] < 1e-5


@pytest.mark.parametrize("nodes,k", [(2, 1), (2, 3), (4, 1)])
def test_refit_solves_each_receivers_least_squares_problem(nodes, k):
    layer = dense_layer(4 * nodes, 3 * nodes, nodes)
    masked = masked_copy(layer, k)
    x = jax.random.normal(jax.random.key(5), (6, 10, 4 * nodes))
    before_kernel, mask = np.asarray(masked.kernel[...]), np.asarray(masked.mask[...])
    errors = refit(masked, layer, x, ridge=0.0)

    rows_x = np.asarray(x, np.float64).reshape(-1, 4 * nodes)
    weight = np.asarray(layer.kernel[...], np.float64)
    kernel = np.asarray(masked.kernel[...])
    np.testing.assert_array_equal(np.asarray(masked.mask[...]), mask)  # masks untouched
    residual = total = 0.0
    for i in range(nodes):
        kept = np.concatenate([np.arange(j * 4, j * 4 + 4)[(mask[i, j] > 0) | (i == j)]
                               for j in range(nodes)])
        dropped = np.setdiff1d(np.arange(4 * nodes), kept)
        cols = np.arange(i * 3, i * 3 + 3)
        target = rows_x @ weight[:, cols]
        solution = np.linalg.lstsq(rows_x[:, kept], target, rcond=None)[0]
        np.testing.assert_allclose(kernel[np.ix_(kept, cols)], solution, rtol=1e-4, atol=1e-5)
        # rows of channels i no longer reads stay as they were (the mask zeroes them)
        np.testing.assert_array_equal(kernel[np.ix_(dropped, cols)],
                                      before_kernel[np.ix_(dropped, cols)])
        residual += np.sum((rows_x[:, kept] @ solution - target) ** 2)
        total += np.sum(target ** 2)
    assert errors[layer.name] == pytest.approx(np.sqrt(residual / total), rel=1e-4)


def test_refit_recovers_dropped_channels_that_the_kept_ones_determine():
    # sender 1's channels 4..7 are fixed linear mixtures of receiver 0's own channels 0..3
    layer = dense_layer(8, 4, nodes=2)
    own = jax.random.normal(jax.random.key(7), (256, 4))
    mix = jax.random.normal(jax.random.key(8), (4, 4))
    x = jnp.concatenate([own, own @ mix], axis=-1)[:, None, :]  # [B, 1, 8]
    masked = masked_copy(layer, 1)
    wrong = float(jnp.max(jnp.abs(masked(x)[..., :2] - layer(x)[..., :2])))
    refit(masked, layer, x, ridge=0.0)
    right = float(jnp.max(jnp.abs(masked(x)[..., :2] - layer(x)[..., :2])))  # node 0's outputs
    assert wrong > 0.1 and right < 1e-4 * float(jnp.max(jnp.abs(layer(x))))


def test_refit_fits_each_layer_to_the_inputs_the_refitted_layers_before_it_make():
    dense = Chain(nodes=2)
    model = nnx.clone(dense)
    for seed, layer in enumerate((model.first, model.second)):
        layer.mask[...] = dj.random_mask(jax.random.key(seed), 2, layer.spec.group_in, 1)
    x = jax.random.normal(jax.random.key(9), (8, 12, 8))
    refit(model, dense, x, ridge=0.0)
    # the second layer's solution is least squares on the refitted first layer's output
    hidden = np.asarray(jax.nn.gelu(model.first(x)), np.float64).reshape(-1, 16)
    target = np.asarray(jax.nn.gelu(dense.first(x)), np.float64).reshape(-1, 16) \
        @ np.asarray(dense.second.kernel[...], np.float64)
    mask = np.asarray(model.second.mask[...])
    for i in range(2):
        kept = np.concatenate([np.arange(j * 8, j * 8 + 8)[(mask[i, j] > 0) | (i == j)]
                               for j in range(2)])
        cols = np.arange(i * 4, i * 4 + 4)
        solution = np.linalg.lstsq(hidden[:, kept], target[:, cols], rcond=None)[0]
        np.testing.assert_allclose(np.asarray(model.second.kernel[...])[np.ix_(kept, cols)],
                                   solution, rtol=1e-3, atol=1e-4)


def im2col(x, kernel, stride, pad):
    """Receptive fields by hand: [B*Ho*Wo, K*K*C] in (kh, kw, c) order."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    b, h, w, c = x.shape
    rows = []
    for n in range(b):
        for top in range(0, h - kernel + 1, stride):
            for left in range(0, w - kernel + 1, stride):
                rows.append(x[n, top:top + kernel, left:left + kernel, :].reshape(-1))
    return np.stack(rows)


@pytest.mark.parametrize("stride", [1, 2])
def test_refit_of_a_kxk_conv_is_least_squares_over_its_receptive_fields(stride):
    dense = dj.DiscoConv(8, 6, 3, strides=stride, padding=1, nodes=2, use_bias=False,
                         rngs=nnx.Rngs(0))
    model = masked_copy(dense, 1)
    x = jax.random.normal(jax.random.key(4), (6, 7, 7, 8))
    refit(model, dense, x, ridge=0.0)
    fields = im2col(x, 3, stride, 1).reshape(-1, 9, 8)  # [rows, taps, C_in]
    target = im2col(x, 3, stride, 1) @ np.asarray(dense.kernel[...], np.float64).reshape(-1, 6)
    mask, kernel = np.asarray(model.mask[...]), np.asarray(model.kernel[...])
    for i in range(2):
        kept = np.concatenate([np.arange(j * 4, j * 4 + 4)[(mask[i, j] > 0) | (i == j)]
                               for j in range(2)])
        cols = np.arange(i * 3, i * 3 + 3)
        solution = np.linalg.lstsq(fields[:, :, kept].reshape(len(fields), -1),
                                   target[:, cols], rcond=None)[0]
        np.testing.assert_allclose(kernel[:, :, kept][..., cols].reshape(-1, 3), solution,
                                   rtol=1e-3, atol=1e-4)


def test_refit_of_a_whole_cnn_reduces_every_layers_error():
    dense = TinyNet(nodes=2, k=4)
    model = nnx.clone(dense)
    for seed, layer in enumerate(sorted(dj.layers.disco_layers(model).items())):
        if layer[1].spec.split_input:
            layer[1].mask[...] = dj.random_mask(jax.random.key(seed), 2, layer[1].spec.group_in, 1)
    x = jax.random.normal(jax.random.key(9), (16, 8, 8, 1))
    dense.eval()
    model.eval()
    before = float(jnp.linalg.norm(model(x) - dense(x)))
    errors = refit(model, dense, x)
    after = float(jnp.linalg.norm(model(x) - dense(x)))
    assert set(errors) == {"conv1", "down", "proj", "head"}
    assert after < 0.5 * before


def test_refit_refuses_a_dense_model_of_another_network():
    with pytest.raises(ConfigError, match="not the same network"):
        refit(dense_layer(8, 4, nodes=2), dense_layer(8, 6, nodes=2), jnp.ones((1, 8)))
