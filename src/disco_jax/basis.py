"""The basis in which a transformer's channels are chosen.

A ResNet's channels are a privileged basis (each passes through its own ReLU),
so choosing which of them travel is a real choice. A transformer's residual
stream is not: every layer reads it through a LayerNorm and a linear map, and
a node's own channels already predict most of another node's, so k
channels chosen by any ranking carry about what k random ones do. :func:`principal_basis` rewrites a
:class:`~disco_jax.models.ViT` into the same function in a basis where they do
not: channel c of node j is (close to) the c-th principal direction of what
node j holds that the other nodes cannot predict from their own channels.
Masks chosen afterwards keep the directions that carry the most of it.

Three exact rewrites, folded into the weights (inference runs the same plan,
no extra work):

1. each LayerNorm's scale and bias move into the one layer that reads it
   (``W <- diag(scale) W``, ``b <- b + bias W``); the LayerNorm keeps scale 1
   and bias 0;
2. node j's channels of the residual stream are rotated by an orthogonal
   ``R_j`` that maps the all-ones vector to itself, so each node's partial
   sums of x and x^2 (the LayerNorm statistics) are unchanged: every layer
   that writes the stream (patch embedding, position embedding, class token,
   attention output, MLP output) is multiplied by ``R`` on its outputs, every
   layer that reads it by ``R^T`` on its inputs;
3. within each head, the value channels are rotated (attention weights
   tokens, not channels, so ``A (V U) = (A V) U``), and the output
   projection's rows with them.

``R_j`` and the heads' rotations come from the conditional covariance of
node j's channels given each other node's (least squares on calibration
images), averaged over the layers that read them and over the receivers.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.layers import disco_layers
from disco_jax.refit import layer_inputs


def _unpredicted(x: np.ndarray, sender: int, columns: np.ndarray, nodes: int,
                 group: int) -> np.ndarray:
    """The covariance of ``x[:, columns]`` (channels of node ``sender``) left
    after least squares on each other node's group of ``x`` (``[rows, nodes *
    group]``), averaged over those nodes (all of it on one node)."""
    x = x - x.mean(axis=0)
    own = x[:, columns]
    if nodes == 1:  # nothing predicts it
        return own.T @ own / len(x)
    total = 0.0
    for i in range(nodes):
        if i != sender:
            other = x[:, i * group:(i + 1) * group]
            left = own - other @ np.linalg.lstsq(other, own, rcond=None)[0]
            total = total + left.T @ left / len(x)
    return total / (nodes - 1)


def _ordered_rotation(covariance: np.ndarray) -> np.ndarray:
    """Orthogonal ``R`` with ``R @ 1 = 1`` whose column c is the all-ones
    direction's share plus (close to) the c-th principal direction of
    ``covariance`` among those orthogonal to the all-ones vector."""
    g = len(covariance)
    centre = np.eye(g) - np.full((g, g), 1.0 / g)
    values, vectors = np.linalg.eigh(centre @ covariance @ centre)
    # the g - 1 eigenvectors orthogonal to the all-ones vector, largest first
    ones_share = np.abs(vectors.T @ np.full(g, 1.0 / np.sqrt(g)))
    keep = np.sort(np.argsort(ones_share)[:g - 1])
    directions = vectors[:, keep][:, np.argsort(values[keep])[::-1]]
    # a basis of the complement of the all-ones vector whose c-th vector is
    # mostly channel c, mapped onto the principal directions
    complement, _ = np.linalg.qr(centre[:, :g - 1])
    return np.full((g, g), 1.0 / g) + directions @ complement.T


def principal_basis(model: nnx.Module, images) -> dict[str, np.ndarray]:
    """Rewrites ``model`` in place into the same function in its principal
    basis (see the module docstring).

    Arguments:
      model: a dense :class:`disco_jax.models.ViT` (every channel read).
      images: calibration images, ``f32[B, H, W, C]``.

    Returns:
      the rotations: ``"stream"``: ``f64[C, C]`` (block-diagonal over nodes),
      and per block ``"blocks/i/values"``: ``f64[C, C]`` (block-diagonal over heads).

    Raises:
      ConfigError: ``model`` is not a ViT, or some mask does not read every
        channel yet (choose the basis before the masks).
    """
    from disco_jax.models import ViT

    if not isinstance(model, ViT):
        raise ConfigError(f"principal_basis rewrites a disco_jax.models.ViT, got "
                          f"{type(model).__name__}; use the network's own channels for it")
    for name, layer in disco_layers(model).items():
        if layer.mask is not None and not bool(jnp.all(layer.mask[...] == 1)):
            raise ConfigError(f"principal_basis: {name} already reads only some channels; "
                              "rewrite the dense model first, then choose the masks")
    model.eval()
    attention = model.blocks[0].attn
    nodes, dim, head_dim = attention.nodes, attention.dim, attention.head_dim
    group = dim // nodes
    readers = ([(block.norm1, block.attn.qkv) for block in model.blocks]
               + [(block.norm2, block.mlp.fc1) for block in model.blocks]
               + [(model.norm, model.head)])

    # 1. LayerNorm scale and bias into their reader
    for norm, layer in readers:
        scale, shift = np.asarray(norm.scale[...]), np.asarray(norm.bias[...])
        kernel = np.asarray(layer.kernel[...], np.float64)
        layer.bias[...] = jnp.asarray(np.asarray(layer.bias[...]) + shift @ kernel, jnp.float32)
        layer.kernel[...] = jnp.asarray(scale[:, None] * kernel, jnp.float32)
        norm.scale[...] = jnp.ones_like(norm.scale[...])
        norm.bias[...] = jnp.zeros_like(norm.bias[...])

    # 2. the residual stream, one rotation per node
    names = {id(layer): name for name, layer in disco_layers(model).items()}
    inputs = layer_inputs(model, images)
    covariances = [np.zeros((group, group)) for _ in range(nodes)]
    for _, layer in readers:
        for j in range(nodes):
            own = np.arange(j * group, (j + 1) * group)
            covariances[j] += _unpredicted(inputs[names[id(layer)]], j, own, nodes, group)
    stream = np.zeros((dim, dim))
    for j in range(nodes):
        stream[j * group:(j + 1) * group, j * group:(j + 1) * group] = \
            _ordered_rotation(covariances[j])

    def outputs_times(param, rotation):
        value = np.asarray(param[...], np.float64)
        param[...] = jnp.asarray(value @ rotation, jnp.float32)

    writers = [model.patch_embed.kernel, model.patch_embed.bias, model.position.value]
    if model.cls_token is not None:
        writers.append(model.cls_token.value)
    for block in model.blocks:
        writers += [block.attn.proj.kernel, block.attn.proj.bias,
                    block.mlp.fc2.kernel, block.mlp.fc2.bias]
    for param in writers:
        outputs_times(param, stream)
    for _, layer in readers:
        kernel = np.asarray(layer.kernel[...], np.float64)
        layer.kernel[...] = jnp.asarray(stream.T @ kernel, jnp.float32)

    # 3. the value channels of each head, read by the output projection
    rotations = {"stream": stream}
    inputs = layer_inputs(model, images)
    heads = group // head_dim
    for index, block in enumerate(model.blocks):
        qkv, proj = block.attn.qkv, block.attn.proj
        outputs = inputs[names[id(proj)]]  # the heads' outputs, [rows, C]
        values = np.zeros((dim, dim))
        for j in range(nodes):
            for h in range(heads):
                rows = np.arange(j * group + h * head_dim, j * group + (h + 1) * head_dim)
                eigenvalues, vectors = np.linalg.eigh(
                    _unpredicted(outputs, j, rows, nodes, group))
                values[np.ix_(rows, rows)] = vectors[:, np.argsort(eigenvalues)[::-1]]
        # node j's qkv outputs are [Q_j, K_j, V_j], each C/N wide
        value_columns = np.concatenate([np.arange(j * 3 * group + 2 * group,
                                                  (j + 1) * 3 * group) for j in range(nodes)])
        kernel = np.asarray(qkv.kernel[...], np.float64)
        bias = np.asarray(qkv.bias[...], np.float64)
        kernel[:, value_columns] = kernel[:, value_columns] @ values
        bias[value_columns] = bias[value_columns] @ values
        qkv.kernel[...] = jnp.asarray(kernel, jnp.float32)
        qkv.bias[...] = jnp.asarray(bias, jnp.float32)
        proj.kernel[...] = jnp.asarray(values.T @ np.asarray(proj.kernel[...], np.float64),
                                       jnp.float32)
        rotations[f"blocks/{index}/values"] = values
    return rotations
