"""An EDSR-baseline-style super-resolution CNN made of DISCO layers
(Lim et al., 2017, "Enhanced Deep Residual Networks for Single Image
Super-Resolution").

- head: a 3x3 conv on the low-resolution image (every node is given the
  input: ``split_input=False``, nothing travels);
- body: residual blocks of two 3x3 DISCO convs with a ReLU between, no
  BatchNorm, the branch scaled by ``res_scale``; a 3x3 DISCO conv closes the
  body, and the head's output is added back (the global skip);
- upsampler: per factor of 2 (x2, x4) or 3 (x3), a 3x3 DISCO conv to
  ``width * r^2`` channels and a :class:`~disco_jax.layers.PixelShuffle`, which
  stays on each node (each node's channels are whole groups of r^2);
- tail: a 3x3 DISCO conv to the image's ``channels`` (padded to a multiple of
  N, gathered as the classifier's logits are), added to the input's bicubic
  upscaling read through a 1x1 conv that starts as the identity (``skip``:
  global residual learning, as VDSR; it reads the input every node is
  given, so nothing travels for it). The network learns the detail bicubic
  upscaling misses from the first step, instead of the whole image.

Inputs are in [0, 1]; the head sees them minus 0.5 (EDSR's mean shift, with
one mean for every channel). Fully convolutional: any input size, output
``f32[B, r H, r W, ceil(channels/N)*N]``.
"""

from __future__ import annotations

from functools import partial

import jax
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.layers import DiscoConv
from disco_jax.models.upsampling import SCALES, BicubicSkip, SubPixel, check_scale, padded


class ResidualBlock(nnx.Module):
    """``x + res_scale * conv(relu(conv(x)))``, both convs 3x3 DISCO layers."""

    def __init__(self, width: int, *, nodes: int, res_scale: float, name: str,
                 rngs: nnx.Rngs):
        conv = partial(DiscoConv, width, width, 3, nodes=nodes, rngs=rngs)
        self.conv1, self.conv2 = conv(name=f"{name}/conv1"), conv(name=f"{name}/conv2")
        self.res_scale = res_scale

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.res_scale * self.conv2(nnx.relu(self.conv1(x)))


class EDSR(nnx.Module):
    """Super-resolution by ``scale`` (2, 3 or 4).

    Arguments:
      scale: the upscaling factor.
      channels: the image's channels (3: RGB).
      width: the body's channels (divisible by ``nodes``).
      blocks: residual blocks.
      nodes: N.
      res_scale: the residual branches' scale (EDSR: 1 for the baseline, 0.1
        for the wide model).
    """

    def __init__(self, *, scale: int = 2, channels: int = 3, width: int = 64,
                 blocks: int = 16, nodes: int = 1, res_scale: float = 1.0,
                 rngs: nnx.Rngs):
        check_scale("EDSR", scale)
        if width % nodes:
            raise ConfigError(f"EDSR width {width} does not divide over {nodes} nodes: the "
                              f"sub-pixel groups of r^2 channels would straddle two nodes; "
                              f"use a multiple of {nodes}")
        if blocks < 0 or channels < 1:
            raise ConfigError(f"EDSR needs blocks >= 0 and channels >= 1, got {blocks}, "
                              f"{channels}")
        conv = partial(DiscoConv, kernel_size=3, nodes=nodes, rngs=rngs)
        self.scale, self.channels, self.nodes = scale, channels, nodes
        self.head = conv(channels, width, split_input=False, name="head")
        self.blocks = nnx.List([
            ResidualBlock(width, nodes=nodes, res_scale=res_scale, name=f"blocks/{i}",
                          rngs=rngs) for i in range(blocks)])
        self.body_end = conv(width, width, name="body_end")
        self.upsample = SubPixel(width, width, SCALES[scale], nodes=nodes, name="upsample",
                                 rngs=rngs)
        self.tail = conv(width, padded(channels, nodes), name="tail")
        self.skip = BicubicSkip(channels, scale, nodes=nodes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``f32[B, H, W, channels]`` in [0, 1]; returns the image
        ``f32[B, scale H, scale W, channels padded to N]``."""
        features = self.head(x - 0.5)
        y = features
        for block in self.blocks:
            y = block(y)
        y = self.body_end(y) + features
        return self.tail(self.upsample(y)) + self.skip(x)
