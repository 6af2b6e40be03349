"""The U-Net-style decoder shared by the dense-prediction networks.

It starts from a backbone's deepest stage and climbs back stage by stage, as
in FPN (Lin et al., 2017) and U-Net (Ronneberger et al., 2015):

- every stage's output passes a lateral 1x1 DISCO conv (+ BatchNorm, ReLU)
  down to ``width`` channels;
- the running feature map is upsampled 2x (bilinear; per channel, so it needs
  no communication), concatenated node by node with the next stage's lateral
  output (:class:`~disco_jax.layers.NodeConcat`: each node joins the channels
  it holds) and fused by a 3x3 DISCO conv (+ BatchNorm, ReLU).

Its output is ``width`` channels at the resolution of the shallowest stage it
climbs to; the networks put their heads on it
(:class:`~disco_jax.models.Segmenter`, :class:`~disco_jax.models.Detector`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.layers import DiscoConv, NodeConcat


def upsample(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of ``[B, h, w, C]`` to ``[B, height, width, C]`` (per channel)."""
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), "bilinear")


class UNetDecoder(nnx.Module):
    """Lateral 1x1 DISCO convs, 2x upsampling, per-node skip concatenation and
    3x3 DISCO fusing convs over the stages whose channels are ``stage_channels``
    (shallowest first).

    Arguments:
      stage_channels: channels of each stage's output, shallowest first.
      width: the decoder's channels (divisible by ``nodes``).
      nodes: N.
    """

    def __init__(self, stage_channels: Sequence[int], width: int, *, nodes: int = 1,
                 rngs: nnx.Rngs):
        if width % nodes:
            raise ConfigError(f"decoder width {width} does not divide over {nodes} nodes; "
                              f"use a multiple of {nodes}")
        conv = partial(DiscoConv, nodes=nodes, use_bias=False, rngs=rngs)
        norm = partial(nnx.BatchNorm, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.lateral = nnx.List([conv(c, width, 1, name=f"lateral{i}")
                                 for i, c in enumerate(stage_channels)])
        self.lateral_bn = nnx.List([norm(width) for _ in stage_channels])
        self.join = NodeConcat(nodes)
        self.fuse = nnx.List([conv(2 * width, width, 3, name=f"fuse{i}")
                              for i in range(len(stage_channels) - 1)])
        self.fuse_bn = nnx.List([norm(width) for _ in range(len(stage_channels) - 1)])

    def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
        """``features``: each stage's output, shallowest first (as many as
        ``stage_channels``); returns ``[B, h0, w0, width]`` at the first's size."""
        lateral = [nnx.relu(bn(conv(f))) for conv, bn, f
                   in zip(self.lateral, self.lateral_bn, features, strict=True)]
        y = lateral[-1]
        for index in reversed(range(len(lateral) - 1)):
            skip = lateral[index]
            y = self.join(upsample(y, *skip.shape[1:3]), skip)
            y = nnx.relu(self.fuse_bn[index](self.fuse[index](y)))
        return y


class EncoderDecoder(nnx.Module):
    """A ResNet backbone and a :class:`UNetDecoder` on its stages: the body of
    the dense-prediction networks, which add their heads.

    Arguments:
      backbone: a name of :data:`disco_jax.models.NETWORKS` (``"resnet18"``,
        ``"resnet50"``, ...).
      nodes: N, the nodes every layer is split over.
      in_channels: channels of the input image.
      stem: the backbone's stem (``"imagenet"``: 7x7/2 + max-pool, the first
        stage at 1/4 of the input; ``"small"``: full resolution).
      width: the backbone's first-stage channels.
      decoder_width: channels of the decoder (divisible by N).
      stages: how many of the backbone's deepest-first stages the decoder
        climbs through (default all).
    """

    def __init__(self, backbone: str = "resnet18", *, nodes: int = 1, in_channels: int = 1,
                 stem: str = "imagenet", width: int = 64, decoder_width: int = 64,
                 stages: int | None = None, zero_init_residual: bool = False,
                 rngs: nnx.Rngs):
        from disco_jax.models.resnet import NETWORKS

        network = type(self).__name__
        if backbone not in NETWORKS:
            raise ConfigError(f"{network} backbone must be one of {sorted(NETWORKS)}, got "
                              f"{backbone!r}")
        if decoder_width % nodes:
            raise ConfigError(f"{network} decoder_width {decoder_width} does not divide over "
                              f"{nodes} nodes; use a multiple of {nodes}")
        self.backbone = NETWORKS[backbone](classes=None, nodes=nodes, in_channels=in_channels,
                                           stem=stem, width=width,
                                           zero_init_residual=zero_init_residual, rngs=rngs)
        available = len(self.backbone.stage_channels)
        stages = available if stages is None else stages
        if not 1 <= stages <= available:
            raise ConfigError(f"{network} stages must be in [1, {available}], got {stages}")
        self.stages = stages
        self.decoder = UNetDecoder(self.backbone.stage_channels[:stages], decoder_width,
                                   nodes=nodes, rngs=rngs)

    @property
    def stride(self) -> int:
        """What the input's height and width must divide by."""
        return self.backbone.stem_stride * 2 ** (self.stages - 1)

    @property
    def output_stride(self) -> int:
        """The decoder's output is the input's size divided by this."""
        return self.backbone.stem_stride

    def decode(self, x: jax.Array) -> jax.Array:
        """The decoder's output ``[B, H/s, W/s, decoder_width]``, ``s`` =
        :attr:`output_stride`.

        Raises:
          ConfigError: H or W does not divide by :attr:`stride`.
        """
        height, width = x.shape[1:3]
        if height % self.stride or width % self.stride:
            raise ConfigError(f"{type(self).__name__} input {height} x {width} does not "
                              f"divide by its stride {self.stride}; pad or resize the images")
        return self.decoder(self.backbone.features(x)[:self.stages])
