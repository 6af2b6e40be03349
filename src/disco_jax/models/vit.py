"""Vision Transformer (ViT) built from DISCO parts.

The patch embedding is a strided conv on the network input, which every node
is given (``split_input=False``: nothing travels); position embeddings and the
class token are split over nodes by channel like the activations they join;
the blocks are :class:`disco_jax.transformer.Block`; the classifier is a DISCO
dense layer after pooling and a final LayerNorm. The same definition runs in
training form on one device and in inference form on a mesh
(:class:`disco_jax.DistributedModel`).

With ``nodes=1``, ``image_size=224, patch=16, dim=768, depth=12, heads=12``,
``pool="cls"`` and 1000 classes it is ViT-B/16 (86,567,656 parameters).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.layers import DiscoConv, DiscoDense
from disco_jax.transformer import Block, ChannelParam, LayerNorm


class ViT(nnx.Module):
    """A ViT whose linear layers are DISCO layers.

    Arguments:
      image_size: side of the (square) input image; must divide by ``patch``.
      patch: side of a patch (the embedding conv's kernel and stride).
      dim: the width C; heads: H; depth: blocks; mlp_ratio: MLP width / C.
      classes: number of classes.
      nodes: N; C and H must divide by it.
      in_channels: channels of the input image.
      pool: ``"mean"`` (average of the patch tokens) or ``"cls"`` (a class token).

    Input ``f32[B, image_size, image_size, in_channels]``; output
    ``f32[B, ceil(classes/N)*N]`` (the first ``classes`` columns are the
    logits, :attr:`num_classes`).
    """

    def __init__(self, *, image_size: int, patch: int, dim: int, depth: int, heads: int,
                 mlp_ratio: int = 4, classes: int = 1000, nodes: int = 1, in_channels: int = 3,
                 pool: Literal["mean", "cls"] = "mean", rngs: nnx.Rngs):
        if pool not in ("mean", "cls"):
            raise ConfigError(f"ViT pool must be 'mean' or 'cls', got {pool!r}")
        if patch < 1 or image_size % patch:
            raise ConfigError(f"ViT: a {image_size} px image does not cut into {patch} px "
                              "patches; use a patch size that divides the image size")
        if dim % nodes:
            raise ConfigError(f"ViT width {dim} does not divide over {nodes} nodes; use a "
                              f"width that is a multiple of {nodes}")
        self.num_classes, self.pool, self.image_size = classes, pool, image_size
        self.patch_embed = DiscoConv(in_channels, dim, patch, strides=patch, padding="VALID",
                                     nodes=nodes, split_input=False, name="patch_embed",
                                     rngs=rngs)
        tokens = (image_size // patch) ** 2 + (pool == "cls")
        init = nnx.initializers.truncated_normal(0.02)
        self.position = ChannelParam(init(rngs.params(), (tokens, dim)), name="position")
        self.cls_token = (ChannelParam(jnp.zeros((1, dim)), name="cls_token")
                          if pool == "cls" else None)
        self.blocks = nnx.List([Block(dim, heads, mlp_ratio=mlp_ratio, nodes=nodes,
                                      name=f"blocks/{i}", rngs=rngs) for i in range(depth)])
        self.norm = LayerNorm(dim, nodes=nodes, name="norm")
        padded = -(-classes // nodes) * nodes
        self.head = DiscoDense(dim, padded, nodes=nodes, name="head",
                               kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1:3] != (self.image_size, self.image_size):
            raise ConfigError(f"ViT: expected images [B, {self.image_size}, "
                              f"{self.image_size}, C], got shape {tuple(x.shape)}")
        x = self.patch_embed(x)  # [B, h, w, C]: C/N channels per node in inference form
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token()[None], (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
        x = x + self.position()[None]
        for block in self.blocks:
            x = block(x)
        x = x[:, 0] if self.cls_token is not None else jnp.mean(x, axis=1)
        return self.head(self.norm(x))
