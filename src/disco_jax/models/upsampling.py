"""What the super-resolution networks share: the bicubic skip and the
sub-pixel upsamplers (:class:`~disco_jax.layers.PixelShuffle` after a DISCO
conv, so each node shuffles its own whole groups of r^2 channels)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.layers import DiscoConv, PixelShuffle

SCALES = {2: (2,), 3: (3,), 4: (2, 2)}
"""The upscaling factors the networks build, as the x2 / x3 stages of each
(EDSR's upsampler: one conv + shuffle per stage)."""


def check_scale(network: str, scale) -> None:
    """Raises :class:`ConfigError` naming ``network`` for a factor it does not build."""
    if scale not in SCALES:
        raise ConfigError(f"{network} upscales by one of {sorted(SCALES)}, not {scale!r}")


def padded(channels: int, nodes: int) -> int:
    """The image's channels padded to a multiple of N (the padding is dropped
    from the outputs, as the classifier's)."""
    return -(-channels // nodes) * nodes


def bicubic(x: jax.Array, scale: int) -> jax.Array:
    """Bicubic upscaling of ``[B, H, W, C]`` by ``scale`` (Keys cubic, a = -0.5)."""
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, h * scale, w * scale, c), "bicubic")


def _identity(key, shape, dtype=jnp.float32):
    """A 1 x 1 conv kernel ``[1, 1, C, C_padded]`` that copies channel c to output c."""
    del key
    return jnp.eye(shape[-2], shape[-1], dtype=dtype).reshape(shape)


class BicubicSkip(nnx.Module):
    """The input's bicubic upscaling read through a 1x1 conv that starts as
    the identity, to add to a network's output (global residual learning, as
    VDSR: the network learns the detail bicubic upscaling misses from the
    first step). It reads the input every node is given (``split_input=False``),
    so nothing travels for it; its output channels are split like the image's."""

    def __init__(self, channels: int, scale: int, *, nodes: int, rngs: nnx.Rngs):
        self.scale = scale
        self.conv = DiscoConv(channels, padded(channels, nodes), 1, nodes=nodes,
                              split_input=False, use_bias=False, kernel_init=_identity,
                              name="skip", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(bicubic(x, self.scale))


class SubPixel(nnx.Module):
    """Upsampling by ``factors`` in turn (each a 3x3 DISCO conv to ``out * r^2``
    channels and a :class:`PixelShuffle` by r), ``width`` channels in."""

    def __init__(self, width: int, out: int, factors: tuple[int, ...], *, nodes: int,
                 name: str, rngs: nnx.Rngs):
        self.convs = nnx.List([
            DiscoConv(width if i == 0 else out, out * r * r, 3, nodes=nodes,
                      name=f"{name}/{i}", rngs=rngs) for i, r in enumerate(factors)])
        self.shuffles = nnx.List([PixelShuffle(r, nodes, name=f"{name}/shuffle{i}")
                                  for i, r in enumerate(factors)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv, shuffle in zip(self.convs, self.shuffles, strict=True):
            x = shuffle(conv(x))
        return x
