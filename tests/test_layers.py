"""The training form: masked dense weights on one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import conv, relative_error

import disco_jax as dj
from disco_jax.layers import linear, read_input


def blockwise_reference(layer, x):
    """Y_i = sum_j W_ij[:, mask_ij] * X_j[mask_ij], block by block (no weight_mask)."""
    spec = layer.spec
    n, g_in, g_out = spec.nodes, spec.group_in, spec.group_out
    kernel = np.asarray(layer.kernel[...])
    mask = np.asarray(layer.mask[...])
    outputs = []
    for i in range(n):
        y = 0.0
        for j in range(n):
            read = np.arange(g_in) if i == j else np.flatnonzero(mask[i, j])
            if read.size == 0:
                continue
            w = kernel[..., j * g_in + read, i * g_out:(i + 1) * g_out]
            xj = x[..., j * g_in + read]
            y = y + linear(spec, read_input(spec, xj), w, None)
        if spec.use_bias:
            bias = layer.bias[...][i * g_out:(i + 1) * g_out]
            y = y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)
        outputs.append(y)
    return jnp.concatenate(outputs, axis=-1)


@pytest.mark.parametrize("nodes,k", [(1, 0), (2, 0), (2, 3), (3, 1), (4, 2), (4, 4)])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (1, 2)])
def test_conv_training_form_is_blockwise_masked_sum(nodes, k, kernel, stride):
    layer = conv(4 * nodes, 2 * nodes, kernel, strides=stride, nodes=nodes, k=k)
    x = jax.random.normal(jax.random.key(3), (2, 7, 6, 4 * nodes))
    ref = blockwise_reference(layer, x)
    assert relative_error(layer(x), ref) < 1e-5


def test_dense_training_form_is_blockwise_masked_sum():
    layer = dj.DiscoDense(12, 6, nodes=3, rngs=nnx.Rngs(0))
    layer.mask[...] = dj.random_mask(jax.random.key(1), 3, 4, 2)
    layer.bias[...] = jnp.arange(6.0)
    x = jax.random.normal(jax.random.key(3), (2, 5, 12))
    assert relative_error(layer(x), blockwise_reference(layer, x)) < 1e-5


def test_full_mask_is_the_plain_convolution():
    layer = conv(8, 4, 3, nodes=2, k=4, strides=2)
    x = jax.random.normal(jax.random.key(0), (1, 9, 9, 8))
    plain = jax.lax.conv_general_dilated(x, layer.kernel[...], (2, 2), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    plain = plain + layer.bias[...].reshape(1, 1, 1, -1)
    assert relative_error(layer(x), plain) < 1e-5


def test_strided_1x1_conv_reads_only_the_pixels_it_uses():
    layer = conv(4, 4, 1, nodes=2, k=2, strides=2)
    x = jax.random.normal(jax.random.key(0), (1, 7, 7, 4))
    strided = jax.lax.conv_general_dilated(x, layer.masked_kernel(), (2, 2), "SAME",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
    strided = strided + layer.bias[...].reshape(1, 1, 1, -1)
    assert read_input(layer.spec, x).shape == (1, 4, 4, 4)
    assert relative_error(layer(x), strided) < 1e-6


def test_gradients_reach_weights_and_mask_but_not_masked_off_weights():
    layer = conv(4, 4, 3, nodes=2, k=1)
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))

    def loss(model):
        return jnp.sum(model(x) ** 2)

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Any(nnx.Param, dj.CommMask)))(layer)
    kernel_grad = np.asarray(grads["kernel"][...])
    mask = np.asarray(layer.mask[...])
    # receiver 0 (outputs 0:2) ignores the channel of sender 1 (inputs 2:4) it does not read
    unread = 2 + np.flatnonzero(mask[0, 1] == 0)[0]
    read = 2 + np.flatnonzero(mask[0, 1] == 1)[0]
    assert np.all(kernel_grad[:, :, unread, 0:2] == 0)
    assert np.any(kernel_grad[:, :, read, 0:2] != 0)
    mask_grad = np.asarray(grads["mask"][...])
    assert np.any(mask_grad[0, 1] != 0)  # a learned gate can train through the mask


def test_channels_not_divisible_by_nodes_is_a_clear_error():
    with pytest.raises(dj.ConfigError, match=r"stem.*c_in=10 does not divide over 4 nodes"):
        dj.DiscoConv(10, 8, 3, nodes=4, name="stem", rngs=nnx.Rngs(0))
    with pytest.raises(dj.ConfigError, match=r"c_out=6 does not divide over 4 nodes"):
        dj.DiscoDense(8, 6, nodes=4, rngs=nnx.Rngs(0))


def test_input_with_wrong_channels_is_a_clear_error():
    layer = dj.DiscoConv(8, 8, 3, nodes=2, name="block1/conv", rngs=nnx.Rngs(0))
    expected = r"block1/conv: expected input \[B, H, W, C\] with C=8"
    with pytest.raises(dj.ConfigError, match=expected):
        layer(jnp.zeros((1, 4, 4, 6)))


@pytest.mark.parametrize("bad", [dict(kernel_size=0), dict(strides=0), dict(padding="FULL"),
                                 dict(nodes=0)])
def test_impossible_layer_arguments_are_clear_errors(bad):
    args = dict(kernel_size=3, strides=1, padding="SAME", nodes=2) | bad
    with pytest.raises(dj.ConfigError, match="conv"):
        dj.DiscoConv(8, 8, args.pop("kernel_size"), name="conv", rngs=nnx.Rngs(0), **args)
