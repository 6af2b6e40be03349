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


class TinyNet(nnx.Module):
    """A small CNN with everything a ResNet has: a stem on the replicated input,
    BatchNorm, a residual block, a strided conv with a strided 1x1 projection,
    pooling and a DISCO classifier."""

    def __init__(self, nodes: int, k: int, *, in_channels: int = 1, width: int = 8,
                 classes: int = 8, seed: int = 0):
        rngs = nnx.Rngs(seed)
        w = width
        self.stem = dj.DiscoConv(in_channels, w, 3, nodes=nodes, split_input=False,
                                 use_bias=False, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(w, rngs=rngs)
        self.conv1 = dj.DiscoConv(w, w, 3, nodes=nodes, use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(w, rngs=rngs)
        self.down = dj.DiscoConv(w, 2 * w, 3, strides=2, nodes=nodes, use_bias=False, rngs=rngs)
        self.proj = dj.DiscoConv(w, 2 * w, 1, strides=2, nodes=nodes, use_bias=False, rngs=rngs)
        self.head = dj.DiscoDense(2 * w, classes, nodes=nodes, rngs=rngs)
        self.num_classes = classes
        for index, (_, layer) in enumerate(sorted(dj.layers.disco_layers(self).items())):
            if layer.spec.split_input:
                randomize(layer, jax.random.key(seed + index), k)
        for index, (_, bn) in enumerate(nnx.iter_modules(self)):
            if isinstance(bn, nnx.BatchNorm):  # non-trivial statistics
                keys = jax.random.split(jax.random.key(100 + index), 4)
                bn.mean[...] = 0.1 * jax.random.normal(keys[0], bn.mean.shape)
                bn.var[...] = jax.random.uniform(keys[1], bn.var.shape, minval=0.5, maxval=2.0)
                bn.scale[...] = jax.random.uniform(keys[2], bn.scale.shape, minval=0.5)
                bn.bias[...] = 0.1 * jax.random.normal(keys[3], bn.bias.shape)

    def __call__(self, x):
        x = nnx.relu(self.stem_bn(self.stem(x)))
        x = nnx.relu(x + self.bn1(self.conv1(x)))
        x = nnx.relu(self.down(x) + self.proj(x))
        x = jnp.mean(x, axis=(1, 2))
        return self.head(x)


def quick_run(main, folder, *extra: str):
    """``main`` (an experiment's entry point) on its --quick settings at N = 2
    with ``extra`` arguments, writing under ``folder``: ``(exit code, report,
    folder)``; the run is in ``folder / "run"``."""
    import json

    code = main(["--quick", "--mesh", "2", *extra, "--out", str(folder / "run"),
                 "--report", str(folder / "report.json")])
    return code, json.loads((folder / "report.json").read_text()), folder
