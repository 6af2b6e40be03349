"""Refitting the weights that remain once channels stop travelling.

When receiver i stops reading channel c of sender j, the output rows of i lose
``W_ij[:, c] * X_j[c]``. Much of it can be recovered from what i still reads:
its own channels and the k channels it receives are correlated with the ones
it lost (a transformer's residual stream is far from full rank). :func:`refit`
solves, layer after layer in the order the forward pass meets them, one
least-squares problem per receiver on calibration images:

    W'_i = argmin || X[:, kept_i] W'_i - X_dense W[:, outputs of i] ||^2
                   + ridge * mean(diag(X_kept^T X_kept)) * || W'_i ||^2

where ``X`` is the layer's input in the masked model (its earlier layers
already refitted, so errors do not pile up) and ``X_dense W`` what the dense
model's layer computes. Only the weights the plan keeps change (the own block
and the received channels' rows); the masks do not. It is the post-training
half of DISCO: masks chosen at once (a :class:`~disco_jax.sparsify.GradualPruning`
whose ``start`` is its ``end``) and refitted need no retraining (see the ViT
experiment).

Layers it handles: dense layers and 1 x 1 convolutions (strided ones too).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.layers import disco_layers, read_input, record_inputs

RIDGE = 1e-3
"""Default ridge, relative to the mean variance of the kept inputs."""


def layer_inputs(model: nnx.Module, images) -> dict[str, np.ndarray]:
    """Each DISCO layer's input on ``images`` (``f64[rows, C_in]``: the pixels
    or tokens it reads), by layer name, in the order the forward pass calls
    the layers."""
    layers = disco_layers(model)
    names = {id(layer): name for name, layer in layers.items()}
    with record_inputs() as recorded:
        model(images)
    return {names[key]: np.asarray(read_input(layers[names[key]].spec, x), np.float64)
            .reshape(-1, layers[names[key]].spec.c_in)
            for key, x in recorded.items() if key in names}


def refit(model: nnx.Module, dense: nnx.Module, images, *,
          ridge: float = RIDGE) -> dict[str, float]:
    """Refits ``model``'s kept weights, in place, to reproduce ``dense``'s
    layer outputs on ``images`` (see the module docstring).

    Arguments:
      model: the masked model (its masks final: k channels per pair).
      dense: the model it was masked from (same network, every channel read).
      images: calibration images, ``f32[B, H, W, C]``.
      ridge: the least-squares ridge, relative to the kept inputs' mean variance.

    Returns:
      per refitted layer, the relative error ``||X_kept W' - X_dense W|| /
      ||X_dense W||`` on ``images`` after the refit.

    Raises:
      ConfigError: a masked layer is a K x K convolution (K > 1), or the two
        models are not the same network; ``model`` is then left unchanged.
    """
    layers, dense_layers = disco_layers(model), disco_layers(dense)
    masked = {name: layer for name, layer in layers.items() if layer.spec.split_input}
    if set(layers) != set(dense_layers) or any(
            dense_layers[n].kernel[...].shape != layer.kernel[...].shape
            for n, layer in layers.items()):
        raise ConfigError("refit: model and dense are not the same network (their DISCO "
                          "layers or kernel shapes differ); pass the dense model the masked "
                          "one was made from")
    for name, layer in masked.items():
        if layer.spec.kind == "conv" and layer.spec.kernel != 1:
            raise ConfigError(
                f"refit: {name} is a {layer.spec.kernel}x{layer.spec.kernel} conv; "
                f"refit handles dense layers and 1x1 convs only (train the masked model "
                f"instead: a fine-tuning phase)")
    model_mode, dense_mode = nnx.clone(model), nnx.clone(dense)
    model_mode.eval()
    dense_mode.eval()
    targets_in = layer_inputs(dense_mode, images)
    order = [name for name in layer_inputs(model_mode, images) if name in masked]
    copies = disco_layers(model_mode)
    errors = {}
    for name in order:
        # the input as the layers before it (already refitted) now make it
        x = layer_inputs(model_mode, images)[name]
        layer, spec = copies[name], masked[name].spec
        weight = np.asarray(dense_layers[name].kernel[...], np.float64).reshape(
            spec.c_in, spec.c_out)
        mask = np.asarray(layer.mask[...])
        kernel = np.asarray(layer.kernel[...], np.float64).reshape(spec.c_in, spec.c_out)
        gram = x.T @ x
        targets = targets_in[name] @ weight  # [rows, C_out]: what the dense layer computes
        wanted = x.T @ targets
        residual = total = 0.0
        for i in range(spec.nodes):
            rows = np.concatenate([
                np.arange(j * spec.group_in, (j + 1) * spec.group_in)[
                    (mask[i, j] > 0) | (i == j)] for j in range(spec.nodes)])
            cols = np.arange(i * spec.group_out, (i + 1) * spec.group_out)
            kept = gram[np.ix_(rows, rows)]
            kept = kept + ridge * np.trace(kept) / len(rows) * np.eye(len(rows))
            solved = np.linalg.solve(kept, wanted[np.ix_(rows, cols)])
            kernel[np.ix_(rows, cols)] = solved
            residual += float(np.sum((x[:, rows] @ solved - targets[:, cols]) ** 2))
            total += float(np.sum(targets[:, cols] ** 2))
        layer.kernel[...] = jnp.asarray(kernel.reshape(layer.kernel[...].shape), jnp.float32)
        errors[name] = float(np.sqrt(residual / max(total, 1e-30)))
    for name in order:
        masked[name].kernel[...] = copies[name].kernel[...]
    return errors
