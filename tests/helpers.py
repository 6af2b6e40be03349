"""Small builders shared by the tests (not a test module)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import disco_jax as dj


def randomize(layer, key: jax.Array, k: int) -> None:
    """Random kernel, bias and an exact random mask with k channels per pair."""
    k_kernel, k_bias, k_mask = jax.random.split(key, 3)
    spec = layer.spec
    layer.kernel[...] = jax.random.normal(k_kernel, spec.kernel_shape)
    if layer.bias is not None:
        layer.bias[...] = jax.random.normal(k_bias, (spec.c_out,))
    layer.mask[...] = dj.random_mask(k_mask, spec.nodes, spec.group_in, k)


def conv(c_in: int, c_out: int, kernel: int = 3, *, nodes: int, k: int, seed: int = 0,
         **kwargs) -> dj.DiscoConv:
    layer = dj.DiscoConv(c_in, c_out, kernel, nodes=nodes, rngs=nnx.Rngs(seed), **kwargs)
    randomize(layer, jax.random.key(seed), k)
    return layer


def relative_error(out: jax.Array, ref: jax.Array) -> float:
    return float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
