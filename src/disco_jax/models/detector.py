"""An anchor-free detector made of DISCO layers, CenterNet style (Zhou, Wang
and Krähenbühl, "Objects as Points", 2019).

A ResNet backbone and the U-Net-style decoder
(:class:`~disco_jax.models.decoder.EncoderDecoder`: lateral 1x1 DISCO convs,
bilinear upsampling, skip connections joined node by node, 3x3 DISCO convs)
up to the first stage's resolution (output stride 4 with the ImageNet stem),
then two heads, each a 3x3 DISCO conv (+ ReLU) and a 1x1 DISCO conv:

- ``heatmap``: a centre logit per class (``classes`` padded to a multiple of
  N, as the classifier is), its bias starting at -2.19 (a prior of 0.1, as
  CenterNet and RetinaNet start it);
- ``box``: width and height in output cells and the centre's x, y offset
  within its cell (4 channels, padded to a multiple of N).

Every layer that mixes channels is a DISCO layer, so
:class:`disco_jax.DistributedModel` runs it on a mesh with
``output_rank={"heatmap": 4, "box": 4}``;
:class:`disco_jax.tasks.Detection` trains it and decodes its outputs.
"""

from __future__ import annotations

import math
from functools import partial

import jax
from flax import nnx

from disco_jax.layers import DiscoConv
from disco_jax.models.decoder import EncoderDecoder
from disco_jax.tasks.detection import BOX


class Detector(EncoderDecoder):
    """CenterNet heads on a ResNet backbone and a DISCO decoder (the arguments
    of :class:`~disco_jax.models.decoder.EncoderDecoder`, and ``classes``:
    the object classes; ``head_width``: the heads' hidden channels, default
    ``decoder_width``)."""

    def __init__(self, backbone: str = "resnet18", *, classes: int, nodes: int = 1,
                 decoder_width: int = 64, head_width: int | None = None,
                 prior: float = 0.1, rngs: nnx.Rngs, **body):
        super().__init__(backbone, nodes=nodes, decoder_width=decoder_width, rngs=rngs, **body)
        self.num_classes = classes
        hidden = decoder_width if head_width is None else head_width
        conv = partial(DiscoConv, nodes=nodes, rngs=rngs)

        def padded(channels):
            return -(-channels // nodes) * nodes

        self.heatmap_hidden = conv(decoder_width, hidden, 3, name="heatmap_hidden")
        self.heatmap = conv(hidden, padded(classes), 1, name="heatmap")
        self.heatmap.bias[...] = self.heatmap.bias[...] - math.log((1 - prior) / prior)
        self.box_hidden = conv(decoder_width, hidden, 3, name="box_hidden")
        self.box = conv(hidden, padded(BOX), 1, name="box")

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        y = self.decode(x)
        return {"heatmap": self.heatmap(nnx.relu(self.heatmap_hidden(y))),
                "box": self.box(nnx.relu(self.box_hidden(y)))}
