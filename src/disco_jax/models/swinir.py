"""A SwinIR-light-style super-resolution transformer made of DISCO parts
(Liang et al., 2021, "SwinIR: Image Restoration Using Swin Transformer").

- head: a 3x3 conv on the low-resolution image (every node is given the
  input: ``split_input=False``, nothing travels);
- body: residual Swin transformer groups (RSTB), each ``depth``
  :func:`~disco_jax.transformer.WindowBlock` s on ``[B, H, W, C]`` (window
  attention in w x w windows, every other block shifted by w/2; heads split
  over the nodes; LayerNorm statistics from a ``psum``) and a 3x3 DISCO conv,
  with the group's input added back; then a LayerNorm, a 3x3 DISCO conv and
  the head's output added back;
- upsampler: SwinIR-light's "pixelshuffledirect": one 3x3 DISCO conv to the
  image's channels (padded to a multiple of N) times r^2 and a
  :class:`~disco_jax.layers.PixelShuffle` that stays on each node;
- plus the input's bicubic upscaling through a 1x1 conv that starts as the
  identity (:class:`~disco_jax.models.upsampling.BicubicSkip`). The
  upsampler's conv starts at zero, so the untrained network is bicubic
  upscaling exactly and training adds detail from there (on this project's
  short CPU schedules it learns faster than from a random residual).

Inputs are in [0, 1] (the head sees them minus 0.5); H and W must divide by
the window. Output ``f32[B, r H, r W, ceil(channels/N)*N]``.
"""

from __future__ import annotations

import jax
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.layers import DiscoConv, PixelShuffle
from disco_jax.models.upsampling import BicubicSkip, check_scale, padded
from disco_jax.transformer import LayerNorm, WindowBlock


class SwinGroup(nnx.Module):
    """A residual Swin transformer group: ``x + conv(blocks(x))``."""

    def __init__(self, dim: int, heads: int, window: int, depth: int, *, mlp_ratio: int,
                 nodes: int, name: str, rngs: nnx.Rngs):
        self.blocks = nnx.List([
            WindowBlock(dim, heads, window, shift=0 if i % 2 == 0 else window // 2,
                        mlp_ratio=mlp_ratio, nodes=nodes, name=f"{name}/blocks/{i}", rngs=rngs)
            for i in range(depth)])
        self.conv = DiscoConv(dim, dim, 3, nodes=nodes, name=f"{name}/conv", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for block in self.blocks:
            y = block(y)
        return x + self.conv(y)


class SwinIR(nnx.Module):
    """Super-resolution by ``scale`` (2, 3 or 4) with window attention.

    Arguments:
      scale: the upscaling factor.
      channels: the image's channels (3: RGB).
      dim: the width C (divisible by ``nodes``).
      groups: residual Swin transformer groups; depth: window blocks per group.
      heads: attention heads (divisible by ``nodes``; C by heads).
      window: the attention window w (the input's sides must divide by it).
      mlp_ratio: the MLP's width / C.
      nodes: N.
    """

    def __init__(self, *, scale: int = 2, channels: int = 3, dim: int = 60, groups: int = 4,
                 depth: int = 6, heads: int = 6, window: int = 8, mlp_ratio: int = 2,
                 nodes: int = 1, rngs: nnx.Rngs):
        check_scale("SwinIR", scale)
        if dim % nodes or heads % nodes or dim % heads:
            raise ConfigError(f"SwinIR dim {dim} and heads {heads} must divide over {nodes} "
                              f"nodes and dim by heads (each node holds whole heads); use "
                              f"multiples of {nodes}")
        if groups < 1 or depth < 1:
            raise ConfigError(f"SwinIR needs groups >= 1 and depth >= 1, got {groups}, {depth}")
        self.scale, self.window = scale, window
        self.head = DiscoConv(channels, dim, 3, nodes=nodes, split_input=False, name="head",
                              rngs=rngs)
        self.groups = nnx.List([
            SwinGroup(dim, heads, window, depth, mlp_ratio=mlp_ratio, nodes=nodes,
                      name=f"groups/{i}", rngs=rngs) for i in range(groups)])
        self.norm = LayerNorm(dim, nodes=nodes, name="norm")
        self.body_end = DiscoConv(dim, dim, 3, nodes=nodes, name="body_end", rngs=rngs)
        out = padded(channels, nodes)
        self.upsample = DiscoConv(dim, out * scale * scale, 3, nodes=nodes, name="upsample",
                                  kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.shuffle = PixelShuffle(scale, nodes, name="shuffle")
        self.skip = BicubicSkip(channels, scale, nodes=nodes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``f32[B, H, W, channels]`` in [0, 1], H and W multiples of the
        window; returns the image ``f32[B, scale H, scale W, channels padded to N]``."""
        if x.ndim == 4 and (x.shape[1] % self.window or x.shape[2] % self.window):
            raise ConfigError(f"SwinIR input {x.shape[1]} x {x.shape[2]} does not cut into "
                              f"{self.window} x {self.window} windows; pad or crop the image "
                              f"to multiples of {self.window}")
        features = self.head(x - 0.5)
        y = features
        for group in self.groups:
            y = group(y)
        y = self.body_end(self.norm(y)) + features
        return self.shuffle(self.upsample(y)) + self.skip(x)
