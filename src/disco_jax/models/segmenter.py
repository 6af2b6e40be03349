"""A segmentation network made of DISCO layers: a ResNet backbone and a
U-Net-style decoder.

The decoder (:class:`~disco_jax.models.decoder.UNetDecoder`) starts from
the deepest stage and climbs back stage by stage (lateral 1x1 DISCO convs,
bilinear upsampling, skip connections joined node by node, 3x3 DISCO convs);
a 1x1 DISCO conv gives the logits (``classes`` padded to a multiple of N, as
the classifier is), upsampled to the input's size (bilinear).

Every layer that mixes channels is a DISCO layer; everything else acts per
channel, so :class:`disco_jax.DistributedModel` runs the same definition on a
mesh (``output_rank=4``).

Input ``f32[B, H, W, in_channels]`` with H and W divisible by the deepest
stage's stride; output ``f32[B, H, W, ceil(classes/N)*N]``.
"""

from __future__ import annotations

import jax
from flax import nnx

from disco_jax.layers import DiscoConv
from disco_jax.models.decoder import EncoderDecoder, upsample


class Segmenter(EncoderDecoder):
    """Per-pixel classification: a ResNet backbone, a DISCO decoder and a 1x1
    DISCO head (the arguments of :class:`~disco_jax.models.decoder.EncoderDecoder`,
    and ``classes``: classes per pixel, background one of them)."""

    def __init__(self, backbone: str = "resnet18", *, classes: int, nodes: int = 1,
                 decoder_width: int = 64, rngs: nnx.Rngs, **body):
        super().__init__(backbone, nodes=nodes, decoder_width=decoder_width, rngs=rngs, **body)
        self.num_classes = classes
        padded = -(-classes // nodes) * nodes
        self.head = DiscoConv(decoder_width, padded, 1, nodes=nodes, name="head", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return upsample(self.head(self.decode(x)), *x.shape[1:3])
