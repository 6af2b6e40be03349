"""ResNets (v1.5: stride on the 3x3 conv of a bottleneck) built from DISCO layers.

Every conv and the classifier is a DISCO layer; everything else acts per
channel (BatchNorm, ReLU, residual adds, pooling), so the same definition runs
in training form on one device and in inference form on a mesh
(:class:`disco_jax.DistributedModel`). The stem reads the network input, which
every node is given (``split_input=False``).

With ``nodes=1`` and 1000 classes, :func:`ResNet50` has exactly the standard
25,557,032 parameters and :func:`ResNet18` 11,689,512.

``stem="small"`` swaps the 7x7/2 conv and max-pool for one 3x3/1 conv, for
28-32 px inputs; the rest of the network is unchanged. When ``classes`` does
not divide by ``nodes`` the classifier gets ``ceil(classes/N)*N`` outputs and
the model's output is that wide: the first ``classes`` columns are the logits
(:attr:`ResNet.num_classes`; ``DistributedModel(..., output_channels=...)``).

With ``classes=None`` the network is a backbone with no classifier:
:meth:`ResNet.features` gives each stage's output, for the decoders of dense
tasks (:mod:`disco_jax.models.segmenter`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.layers import DiscoConv, DiscoDense


def _norm(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


class _Residual(nnx.Module):
    """What both block kinds share: the shortcut (identity, or a strided 1x1
    projection + BatchNorm when the shape changes) and the final add + ReLU."""

    def _projection(self, c_in: int, c_out: int, stride: int, conv, rngs: nnx.Rngs) -> None:
        projects = stride != 1 or c_in != c_out
        self.proj = conv(c_in, c_out, 1, strides=stride) if projects else None
        self.proj_bn = _norm(c_out, rngs) if projects else None

    def _join(self, x: jax.Array, y: jax.Array) -> jax.Array:
        shortcut = x if self.proj is None else self.proj_bn(self.proj(x))
        return nnx.relu(y + shortcut)


class BasicBlock(_Residual):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, *, nodes: int, rngs: nnx.Rngs):
        conv = partial(DiscoConv, nodes=nodes, use_bias=False, rngs=rngs)
        self.conv1 = conv(c_in, width, 3, strides=stride, padding=1)
        self.bn1 = _norm(width, rngs)
        self.conv2 = conv(width, width, 3, padding=1)
        self.bn2 = _norm(width, rngs)
        self._projection(c_in, width, stride, conv, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        return self._join(x, self.bn2(self.conv2(y)))

    def last_norm(self) -> nnx.BatchNorm:
        """The BatchNorm on the residual branch's output."""
        return self.bn2


class Bottleneck(_Residual):
    """1x1 -> 3x3 (carries the stride, v1.5) -> 1x1 x4 (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int, *, nodes: int, rngs: nnx.Rngs):
        conv = partial(DiscoConv, nodes=nodes, use_bias=False, rngs=rngs)
        out = width * self.expansion
        self.conv1 = conv(c_in, width, 1)
        self.bn1 = _norm(width, rngs)
        self.conv2 = conv(width, width, 3, strides=stride, padding=1)
        self.bn2 = _norm(width, rngs)
        self.conv3 = conv(width, out, 1)
        self.bn3 = _norm(out, rngs)
        self._projection(c_in, out, stride, conv, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        return self._join(x, self.bn3(self.conv3(y)))

    def last_norm(self) -> nnx.BatchNorm:
        """The BatchNorm on the residual branch's output."""
        return self.bn3


class ResNet(nnx.Module):
    """A ResNet whose convs and classifier are DISCO layers.

    Arguments:
      block: :class:`BasicBlock` or :class:`Bottleneck`.
      stage_sizes: blocks per stage, e.g. ``(3, 4, 6, 3)``.
      classes: number of classes, or None: a backbone without a classifier
        (:meth:`features` only).
      nodes: N, the nodes every layer is split over.
      in_channels: channels of the input image (3 for RGB, 1 for Fashion-MNIST).
      stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"small"`` (3x3/1 conv).
      width: channels of the stem and the first stage (64 in the standard nets).
      zero_init_residual: start every block's last BatchNorm scale at 0, so
        that each residual block begins as the identity (Goyal et al. 2017);
        trains faster in short schedules. The parameters are the same.

    Input ``f32[B, H, W, in_channels]``; output ``f32[B, ceil(classes/N)*N]``.
    """

    def __init__(self, block: type, stage_sizes: Sequence[int], *, classes: int | None = 1000,
                 nodes: int = 1, in_channels: int = 3,
                 stem: Literal["imagenet", "small"] = "imagenet", width: int = 64,
                 zero_init_residual: bool = False, rngs: nnx.Rngs):
        if stem not in ("imagenet", "small"):
            raise ConfigError(f"ResNet stem must be 'imagenet' or 'small', got {stem!r}")
        if width % nodes:
            raise ConfigError(f"ResNet width {width} does not divide over {nodes} nodes; "
                              "use a mesh size that divides it")
        self.num_classes, self.stem_kind = classes, stem
        if stem == "imagenet":
            self.stem = DiscoConv(in_channels, width, 7, strides=2, padding=3, nodes=nodes,
                                  use_bias=False, split_input=False, name="stem", rngs=rngs)
        else:
            self.stem = DiscoConv(in_channels, width, 3, padding=1, nodes=nodes,
                                  use_bias=False, split_input=False, name="stem", rngs=rngs)
        self.stem_bn = _norm(width, rngs)
        blocks, c_in, stage_ends, stage_channels = [], width, [], []
        for stage, size in enumerate(stage_sizes):
            for index in range(size):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(block(c_in, width * 2**stage, stride, nodes=nodes, rngs=rngs))
                c_in = width * 2**stage * block.expansion
            stage_ends.append(len(blocks))
            stage_channels.append(c_in)
        self.blocks = nnx.List(blocks)
        self.stage_ends, self.stage_channels = tuple(stage_ends), tuple(stage_channels)
        if zero_init_residual:
            for made in blocks:
                last = made.last_norm()
                last.scale[...] = jnp.zeros_like(last.scale[...])
        padded = None if classes is None else -(-classes // nodes) * nodes
        self.head = (nnx.data(None) if classes is None else
                     DiscoDense(c_in, padded, nodes=nodes, name="head", rngs=rngs))

    @property
    def stem_stride(self) -> int:
        """The first stage's stride against the input (4 with the ImageNet stem)."""
        return 4 if self.stem_kind == "imagenet" else 1

    def features(self, x: jax.Array) -> list[jax.Array]:
        """Each stage's output: ``f32[B, H/s, W/s, stage_channels[i]]`` with
        ``s = stem_stride * 2**i``."""
        x = nnx.relu(self.stem_bn(self.stem(x)))
        if self.stem_kind == "imagenet":
            # padded with -inf, then a VALID pool: the same compiled program as the
            # padded pool, and the form ONNX exporters (jax2onnx) can write
            x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
            x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="VALID")
        stages = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index + 1 in self.stage_ends:
                stages.append(x)
        return stages

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.head is None:
            raise ConfigError("this ResNet is a backbone (classes=None): it has no "
                              "classifier; call features(x)")
        return self.head(jnp.mean(self.features(x)[-1], axis=(1, 2)))


ResNet18 = partial(ResNet, BasicBlock, (2, 2, 2, 2))
ResNet34 = partial(ResNet, BasicBlock, (3, 4, 6, 3))
ResNet50 = partial(ResNet, Bottleneck, (3, 4, 6, 3))
ResNet101 = partial(ResNet, Bottleneck, (3, 4, 23, 3))

NETWORKS = {"resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50,
            "resnet101": ResNet101}
"""The networks by the names the experiments take."""
