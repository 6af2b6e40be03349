"""Transformer parts under DISCO: LayerNorm, attention, MLP and blocks.

Written once, like every model here: in training form an activation is
``f32[B, ..., C]`` (all channels, one device); in inference form, inside
``jax.shard_map`` over :data:`~disco_jax.mesh.AXIS`, a node holds its
``C/N`` channels of it. The code below reads channel counts from the arrays
it is given, so the same ``__call__`` runs both ways.

- :class:`LayerNorm`: per-token mean and variance over all channels. Its
  inference form (:class:`SplitLayerNorm`) sums its own channels and takes
  the other nodes' partial sums with one ``psum``: two numbers per token per
  node, counted in the communication figures.
- :class:`Attention`: one DISCO dense layer computes Q, K and V (node i's
  outputs are the Q, K and V of its H/N heads, so its one mask says what it
  reads for all three), attention runs locally per head, and the output
  projection is a DISCO dense layer.
- :class:`WindowAttention`: the same on ``[B, H, W, C]`` within local
  windows (Swin-style, optionally shifted by half a window, with a learned
  relative position bias per head).
- :class:`MLP`: two DISCO dense layers with a GELU between them.
- :class:`Block`, :class:`WindowBlock`: pre-norm residual blocks.
- :class:`ChannelParam`: a learned array whose last axis is split over
  nodes (position embeddings, a class token, per-head biases).

Modules that are not DISCO layers but hold arrays implement
``inference_form(nodes, name)`` (used by :func:`disco_jax.to_inference`) and
``costs(input_shape, nodes)`` (used by
:func:`disco_jax.model_costs`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from disco_jax.accounting import Cost, node_variants
from disco_jax.errors import ConfigError
from disco_jax.inference import PlanArray
from disco_jax.layers import DiscoDense, note_input
from disco_jax.mesh import AXIS

_INIT = nnx.initializers.xavier_uniform()


def _split(value: jax.Array, nodes: int, name: str) -> jax.Array:
    """``[..., C] -> [N, ..., C/N]``: row n holds node n's channels."""
    channels = value.shape[-1]
    if channels % nodes:
        raise ConfigError(f"{name}: {channels} channels do not divide over {nodes} nodes")
    parts = value.reshape(*value.shape[:-1], nodes, channels // nodes)
    return jnp.moveaxis(parts, -2, 0)


def _normalize(x, sums, channels: int, scale, bias, epsilon: float):
    """LayerNorm from the per-token sums ``[..., 2]`` (of x and of x^2)."""
    mean = sums[..., :1] / channels
    var = jnp.maximum(sums[..., 1:] / channels - mean**2, 0.0)
    return (x - mean) * jax.lax.rsqrt(var + epsilon) * _lead(scale, x.ndim) + _lead(bias, x.ndim)


def _lead(t: jax.Array, ndim: int) -> jax.Array:
    """``t`` with leading axes of length 1 up to rank ``ndim`` (explicit broadcasting)."""
    return t.reshape((1,) * (ndim - t.ndim) + t.shape)


def _partial_sums(x):
    return jnp.stack([jnp.sum(x, -1), jnp.sum(x * x, -1)], -1)


class LayerNorm(nnx.Module):
    """LayerNorm over the channel axis of ``[B, ..., C]``, channels split over nodes.

    Arguments:
      channels: C (must divide by ``nodes``).
      nodes: N.
      epsilon: added to the variance.
      name: used in error messages.
    """

    def __init__(self, channels: int, *, nodes: int = 1, epsilon: float = 1e-6,
                 name: str = "layer norm"):
        if channels % nodes:
            raise ConfigError(f"{name}: {channels} channels do not divide over {nodes} nodes; "
                              f"use a width that is a multiple of {nodes}")
        self.channels, self.nodes, self.epsilon, self.name = channels, nodes, epsilon, name
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.channels:
            raise ConfigError(f"{self.name}: expected [..., {self.channels}] channels, "
                              f"got shape {tuple(x.shape)}")
        note_input(self, x)
        return _normalize(x, _partial_sums(x), self.channels, self.scale[...],
                          self.bias[...], self.epsilon)

    def inference_form(self, nodes: int, name: str) -> SplitLayerNorm:
        return SplitLayerNorm(self, nodes, name)

    def costs(self, input_shape, nodes: int) -> dict[str, Cost]:
        """Per sample: every node sends its two partial sums per token to every
        other node (the ``psum``); scale and bias are split over nodes."""
        tokens = math.prod(input_shape[:-1])
        values = nodes * (nodes - 1) * 2 * tokens
        return node_variants(nodes, comm_values=values,
                             params=2 * self.channels)


class SplitLayerNorm(nnx.Module):
    """A :class:`LayerNorm` in inference form; call it inside ``shard_map``.

    Each node sums its own channels per token and a ``psum`` over the nodes
    adds the others' sums: one all-reduce of ``[..., 2]`` per call.
    """

    def __init__(self, norm: LayerNorm, nodes: int, name: str):
        self.channels, self.epsilon = norm.channels, norm.epsilon
        self.scale = PlanArray(_split(norm.scale[...], nodes, name))
        self.bias = PlanArray(_split(norm.bias[...], nodes, name))

    def __call__(self, x: jax.Array) -> jax.Array:
        sums = jax.lax.psum(_partial_sums(x), AXIS)
        return _normalize(x, sums, self.channels, self.scale[0], self.bias[0], self.epsilon)


class ChannelParam(nnx.Module):
    """A learned array ``[..., C]`` whose last axis is split over nodes with the
    activations it joins; calling the module returns it (a node's slice in
    inference form).

    Arguments:
      value: the initial array.
      name: used in error messages.
    """

    def __init__(self, value: jax.Array, *, name: str = "parameter"):
        self.name = name
        self.value = nnx.Param(jnp.asarray(value, jnp.float32))

    def __call__(self) -> jax.Array:
        return self.value[...]

    def inference_form(self, nodes: int, name: str) -> NodeParam:
        return NodeParam(_split(self.value[...], nodes, name))

    def costs(self, input_shape, nodes: int) -> dict[str, Cost]:
        return node_variants(nodes, params=self.value.size)


class NodeParam(nnx.Module):
    """A :class:`ChannelParam` in inference form: ``[N, ..., C/N]``, one row per node."""

    def __init__(self, value: jax.Array):
        self.value = PlanArray(value)

    def __call__(self) -> jax.Array:
        return self.value[0]


def _check_heads(dim: int, heads: int, nodes: int, name: str) -> None:
    if heads < 1 or dim % heads:
        raise ConfigError(f"{name}: width {dim} does not split into {heads} heads; "
                          "use a width that is a multiple of the number of heads")
    if heads % nodes:
        raise ConfigError(f"{name}: {heads} heads do not divide over {nodes} nodes (each "
                          f"node computes H/N whole heads); use a multiple of {nodes} heads "
                          "or another number of nodes")


def attend(q: jax.Array, k: jax.Array, v: jax.Array, head_dim: int,
           bias: jax.Array | None = None) -> jax.Array:
    """Softmax attention of each head on its own.

    Arguments:
      q, k, v: ``[..., L, h * head_dim]``: L tokens, h heads (all heads in
        training form, a node's own in inference form).
      bias: added to the logits, broadcastable to ``[..., h, L, L]``.

    Returns:
      ``[..., L, h * head_dim]``.
    """
    def heads(t):
        return t.reshape(*t.shape[:-1], -1, head_dim)

    logits = jnp.einsum("...qhd,...khd->...hqk", heads(q), heads(k)) / math.sqrt(head_dim)
    if bias is not None:
        logits = logits + _lead(bias, logits.ndim)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("...hqk,...khd->...qhd", weights, heads(v))
    return out.reshape(*out.shape[:-2], -1)


class _QKV(nnx.Module):
    """What both attention kinds share: Q, K, V from one DISCO layer, the
    output projection, and their accounting."""

    def _init(self, dim: int, heads: int, nodes: int, name: str, rngs: nnx.Rngs) -> None:
        _check_heads(dim, heads, nodes, name)
        self.dim, self.heads, self.nodes, self.name = dim, heads, nodes, name
        self.head_dim, self.group = dim // heads, dim // nodes
        self.qkv = DiscoDense(dim, 3 * dim, nodes=nodes, name=f"{name}/qkv", kernel_init=_INIT,
                              rngs=rngs)
        self.proj = DiscoDense(dim, dim, nodes=nodes, name=f"{name}/proj", kernel_init=_INIT,
                               rngs=rngs)

    def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        note_input(self, x)
        y = self.qkv(x)  # node i's 3C/N outputs: the Q, K, V of its heads (checks x's C)
        y = y.reshape(*y.shape[:-1], -1, 3, self.group)  # [..., nodes here, 3, C/N]
        return tuple(y[..., part, :].reshape(*y.shape[:-3], -1) for part in range(3))

    def keys_per_query(self, input_shape) -> int:
        raise NotImplementedError

    def costs(self, input_shape, nodes: int) -> dict[str, Cost]:
        """FLOPs of the attention itself (Q K^T and weights x V; the
        projections are DISCO layers, counted apart); nothing travels."""
        tokens = math.prod(input_shape[:-1])
        return node_variants(nodes, flops=4 * tokens * self.keys_per_query(input_shape)
                             * self.dim)


class Attention(_QKV):
    """Multi-head self-attention on ``[B, T, C]``, heads split over nodes.

    Arguments:
      dim: C; heads: H (C and H must divide by ``nodes``, C by H).
      nodes: N.
      name: the layer's name in errors and plans.
    """

    def __init__(self, dim: int, heads: int, *, nodes: int = 1, name: str = "attention",
                 rngs: nnx.Rngs):
        self._init(dim, heads, nodes, name, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = self._qkv(x)
        return self.proj(attend(q, k, v, self.head_dim))

    def keys_per_query(self, input_shape) -> int:
        return math.prod(input_shape[:-1])


def _relative_index(window: int) -> np.ndarray:
    """``int[w*w, w*w]``: the relative-position table row of each query-key pair."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)
    delta = coords[:, :, None] - coords[:, None, :] + window - 1
    return delta[0] * (2 * window - 1) + delta[1]


def _shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """``f32[windows, w*w, w*w]``: -inf-like where a shifted window joins pixels
    that are not neighbours in the image (Swin's cyclic shift)."""
    region = np.zeros((height, width), np.int32)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in cuts:
        for cols in cuts:
            region[rows, cols] = label
            label += 1
    region = region.reshape(height // window, window, width // window, window)
    region = region.transpose(0, 2, 1, 3).reshape(-1, window * window)
    return np.where(region[:, :, None] != region[:, None, :], -1e9, 0.0).astype(np.float32)


class WindowAttention(_QKV):
    """Self-attention within w x w windows of ``[B, H, W, C]`` (Swin-style).

    Q, K, V and the output projection are computed per pixel before and after
    the windows are cut, so the DISCO layers see the image's ``[B, H, W, C]``.
    Each head has a learned bias per relative position (a
    :class:`ChannelParam` split over heads like the heads themselves).

    Arguments:
      dim, heads, nodes, name: as :class:`Attention`.
      window: w; H and W must divide by it.
      shift: roll the image by this many pixels before cutting windows (0 or
        w/2 in alternate blocks), with the mask that keeps windows apart.
    """

    def __init__(self, dim: int, heads: int, window: int, *, shift: int = 0, nodes: int = 1,
                 name: str = "window attention", rngs: nnx.Rngs):
        self._init(dim, heads, nodes, name, rngs)
        if window < 1 or not 0 <= shift < window:
            raise ConfigError(f"{name}: window must be positive and 0 <= shift < window, got "
                              f"window {window}, shift {shift}")
        self.window, self.shift = window, shift
        table = 0.02 * jax.random.truncated_normal(rngs.params(), -2, 2,
                                                   ((2 * window - 1) ** 2, heads))
        self.relative_bias = ChannelParam(table, name=f"{name}/relative_bias")

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ConfigError(f"{self.name}: expected [B, H, W, C], got shape {tuple(x.shape)}")
        batch, height, width, _ = x.shape
        w = self.window
        if height % w or width % w:
            raise ConfigError(f"{self.name}: a {height}x{width} image does not cut into "
                              f"{w}x{w} windows; use a window that divides both sides")
        q, k, v = self._qkv(x)
        shift = self.shift if min(height, width) > w else 0

        def windows(t):  # [B, H, W, c] -> [B, windows, w*w, c]
            t = jnp.roll(t, (-shift, -shift), (1, 2)) if shift else t
            t = t.reshape(batch, height // w, w, width // w, w, t.shape[-1])
            return t.transpose(0, 1, 3, 2, 4, 5).reshape(batch, -1, w * w, t.shape[-1])

        table = self.relative_bias()  # [(2w-1)^2, heads here]
        bias = jnp.moveaxis(table[_relative_index(w)], -1, 0)  # [heads, w*w, w*w]
        if shift:
            bias = bias[None] + _shift_mask(height, width, w, shift)[:, None]
        out = attend(windows(q), windows(k), windows(v), self.head_dim, bias)
        out = out.reshape(batch, height // w, width // w, w, w, -1)
        out = out.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height, width, -1)
        out = jnp.roll(out, (shift, shift), (1, 2)) if shift else out
        return self.proj(out)

    def keys_per_query(self, input_shape) -> int:
        return self.window**2


class MLP(nnx.Module):
    """DISCO dense C -> hidden, GELU, DISCO dense hidden -> C."""

    def __init__(self, dim: int, hidden: int, *, nodes: int = 1, name: str = "mlp",
                 rngs: nnx.Rngs):
        self.fc1 = DiscoDense(dim, hidden, nodes=nodes, name=f"{name}/fc1", kernel_init=_INIT,
                              rngs=rngs)
        self.fc2 = DiscoDense(hidden, dim, nodes=nodes, name=f"{name}/fc2", kernel_init=_INIT,
                              rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(nnx.gelu(self.fc1(x)))


class Block(nnx.Module):
    """A pre-norm transformer block: ``x + attn(norm(x))``, ``x + mlp(norm(x))``.

    Arguments:
      dim, heads, nodes: as :class:`Attention`; mlp_ratio: hidden width / C.
      window: None for global attention on ``[B, T, C]``; w for
        :class:`WindowAttention` on ``[B, H, W, C]`` (with ``shift``).
    """

    def __init__(self, dim: int, heads: int, *, mlp_ratio: int = 4, nodes: int = 1,
                 window: int | None = None, shift: int = 0, name: str = "block",
                 rngs: nnx.Rngs):
        self.norm1 = LayerNorm(dim, nodes=nodes, name=f"{name}/norm1")
        if window is None:
            self.attn = Attention(dim, heads, nodes=nodes, name=f"{name}/attn", rngs=rngs)
        else:
            self.attn = WindowAttention(dim, heads, window, shift=shift, nodes=nodes,
                                        name=f"{name}/attn", rngs=rngs)
        self.norm2 = LayerNorm(dim, nodes=nodes, name=f"{name}/norm2")
        self.mlp = MLP(dim, mlp_ratio * dim, nodes=nodes, name=f"{name}/mlp", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def WindowBlock(dim: int, heads: int, window: int, *, shift: int = 0, mlp_ratio: int = 4,
                nodes: int = 1, name: str = "window block", rngs: nnx.Rngs) -> Block:
    """A :class:`Block` with window attention on ``[B, H, W, C]`` (Swin-style)."""
    return Block(dim, heads, mlp_ratio=mlp_ratio, nodes=nodes, window=window, shift=shift,
                 name=name, rngs=rngs)
