"""A segmentation network made of DISCO layers: a ResNet backbone and a
U-Net-style decoder.

The decoder starts from the deepest stage and climbs back stage by stage,
as in FPN (Lin et al., 2017) and U-Net (Ronneberger et al., 2015):

- every stage's output passes a lateral 1x1 DISCO conv (+ BatchNorm, ReLU)
  down to ``decoder_width`` channels;
- the running feature map is upsampled 2x (bilinear; per channel, so it needs
  no communication), concatenated node by node with the next stage's lateral
  output (:class:`~disco_jax.layers.NodeConcat`: each node joins the channels
  it holds) and fused by a 3x3 DISCO conv (+ BatchNorm, ReLU);
- a 1x1 DISCO conv gives the logits (``classes`` padded to a multiple of N, as
  the classifier is), upsampled to the input's size (bilinear).

Every layer that mixes channels is a DISCO layer; everything else acts per
channel, so :class:`disco_jax.DistributedModel` runs the same definition on a
mesh (``output_rank=4``).

Input ``f32[B, H, W, in_channels]`` with H and W divisible by the deepest
stage's stride; output ``f32[B, H, W, ceil(classes/N)*N]``.
"""

from __future__ import annotations

from functools import partial

import jax
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.layers import DiscoConv, NodeConcat
from disco_jax.models.resnet import NETWORKS


def _upsample(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of ``[B, h, w, C]`` to ``[B, height, width, C]`` (per channel)."""
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), "bilinear")


class Segmenter(nnx.Module):
    """Per-pixel classification: a ResNet backbone and a DISCO decoder.

    Arguments:
      backbone: a name of :data:`disco_jax.models.NETWORKS` (``"resnet18"``,
        ``"resnet50"``, ...).
      classes: classes per pixel (background one of them).
      nodes: N, the nodes every layer is split over.
      in_channels: channels of the input image.
      stem: the backbone's stem (``"imagenet"``: 7x7/2 + max-pool, the first
        stage at 1/4 of the input; ``"small"``: full resolution).
      width: the backbone's first-stage channels.
      decoder_width: channels of the decoder (divisible by N).
      stages: how many of the backbone's deepest-first stages the decoder
        climbs through (default all).
    """

    def __init__(self, backbone: str = "resnet18", *, classes: int, nodes: int = 1,
                 in_channels: int = 1, stem: str = "imagenet", width: int = 64,
                 decoder_width: int = 64, stages: int | None = None,
                 zero_init_residual: bool = False, rngs: nnx.Rngs):
        if backbone not in NETWORKS:
            raise ConfigError(f"Segmenter backbone must be one of {sorted(NETWORKS)}, got "
                              f"{backbone!r}")
        if decoder_width % nodes:
            raise ConfigError(f"Segmenter decoder_width {decoder_width} does not divide over "
                              f"{nodes} nodes; use a multiple of {nodes}")
        self.backbone = NETWORKS[backbone](classes=None, nodes=nodes, in_channels=in_channels,
                                           stem=stem, width=width,
                                           zero_init_residual=zero_init_residual, rngs=rngs)
        available = len(self.backbone.stage_channels)
        stages = available if stages is None else stages
        if not 1 <= stages <= available:
            raise ConfigError(f"Segmenter stages must be in [1, {available}], got {stages}")
        self.num_classes, self.stages = classes, stages
        conv = partial(DiscoConv, nodes=nodes, use_bias=False, rngs=rngs)
        norm = partial(nnx.BatchNorm, momentum=0.9, epsilon=1e-5, rngs=rngs)
        used = self.backbone.stage_channels[:stages]
        self.lateral = nnx.List([conv(c, decoder_width, 1, name=f"lateral{i}")
                                 for i, c in enumerate(used)])
        self.lateral_bn = nnx.List([norm(decoder_width) for _ in used])
        self.join = NodeConcat(nodes)
        self.fuse = nnx.List([conv(2 * decoder_width, decoder_width, 3, name=f"fuse{i}")
                              for i in range(stages - 1)])
        self.fuse_bn = nnx.List([norm(decoder_width) for _ in range(stages - 1)])
        padded = -(-classes // nodes) * nodes
        self.head = DiscoConv(decoder_width, padded, 1, nodes=nodes, name="head", rngs=rngs)

    @property
    def stride(self) -> int:
        """What the input's height and width must divide by."""
        return self.backbone.stem_stride * 2 ** (self.stages - 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        height, width = x.shape[1:3]
        if height % self.stride or width % self.stride:
            raise ConfigError(f"Segmenter input {height} x {width} does not divide by its "
                              f"stride {self.stride}; pad or resize the images")
        features = self.backbone.features(x)[:self.stages]
        lateral = [nnx.relu(bn(conv(f))) for conv, bn, f
                   in zip(self.lateral, self.lateral_bn, features, strict=True)]
        y = lateral[-1]
        for index in reversed(range(self.stages - 1)):
            skip = lateral[index]
            y = self.join(_upsample(y, *skip.shape[1:3]), skip)
            y = nnx.relu(self.fuse_bn[index](self.fuse[index](y)))
        return _upsample(self.head(y), height, width)
