"""Refitting the weights that remain once channels stop travelling.

When receiver i stops reading channel c of sender j, the output rows of i lose
``W_ij[:, c] * X_j[c]``. Much of it can be recovered from what i still reads:
its own channels and the k values it receives are correlated with the ones
it lost. :func:`refit` solves, layer after layer in the order the forward pass
meets them, one least-squares problem per receiver on calibration images:

    W'_i = argmin || F_i W'_i - X_dense W[:, outputs of i] ||^2
                   + ridge * mean(diag(F_i^T F_i)) * || W'_i ||^2

where ``F_i`` is what receiver i's part of the layer multiplies: the
receptive fields (:func:`disco_jax.layers.patches`; one pixel or token for a
1 x 1 conv or a dense layer, K x K pixels for a K x K conv) of its own
channels and of the k values it receives from each other node (channels, or
directions of the layer's :class:`~disco_jax.layers.CommBasis`), taken from
the layer's input in the masked model (its earlier layers already refitted,
so errors do not pile up); ``X_dense W`` is what the dense model's layer
computes. Only the weights the plan keeps change (the own block and the rows
of what is received); the masks do not. It is the post-training half of
DISCO: masks chosen at once and refitted need no retraining.

A ``choose`` hook may set a layer's mask (and basis) from its input right
before the layer is refitted (:mod:`disco_jax.projections`): the choice then
sees the inputs the already-refitted layers before it make.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.layers import _DiscoLinear, disco_layers, linear, patches, read_input, record_inputs

RIDGE = 1e-3
"""Default ridge, relative to the mean variance of the kept inputs."""

Choose = Callable[[str, _DiscoLinear, jax.Array, _DiscoLinear], None]
"""``choose(name, layer, x, dense_layer)``: sets ``layer``'s mask (and basis)
from its input ``x`` (the masked model's, :func:`~disco_jax.layers.read_input`
applied) before :func:`refit` fits its weights."""


def layer_inputs(model: nnx.Module, images, only: set[str] | None = None,
                 ) -> dict[str, np.ndarray]:
    """Each DISCO layer's input on ``images`` (``f64[rows, C_in]``: the pixels
    or tokens it reads), by layer name, in the order the forward pass calls
    the layers (``only``: just these layers)."""
    return {name: np.asarray(x, np.float64).reshape(-1, x.shape[-1])
            for name, x in _read_inputs(model, images, only).items()}


@functools.lru_cache(maxsize=8)
def _recorder(graphdef):
    """A jitted forward pass of ``graphdef`` that returns every DISCO layer's
    input (as the layer reads it), and the layers' names in call order."""
    order: list[str] = []

    def run(state, images):
        model = nnx.merge(graphdef, state)
        layers = disco_layers(model)
        names = {id(layer): name for name, layer in layers.items()}
        with record_inputs() as recorded:
            model(images)
        seen = [(names[key], x) for key, x in recorded.items() if key in names]
        order[:] = [name for name, _ in seen]
        return {name: read_input(layers[name].spec, x) for name, x in seen}

    return jax.jit(run), order


def _read_inputs(model: nnx.Module, images, only: set[str] | None = None,
                 ) -> dict[str, jax.Array]:
    """Like :func:`layer_inputs`, in the layers' own shape (``[B, H, W, C_in]``)."""
    graphdef, state = nnx.split(model)
    run, order = _recorder(graphdef)
    inputs = run(state, jnp.asarray(images))
    return {name: inputs[name] for name in order if only is None or name in only}


def received_rows(layer: _DiscoLinear, receiver: int) -> tuple[np.ndarray, list]:
    """What receiver ``receiver`` multiplies in ``layer``: the kernel rows
    (``int[G + (N-1)*k]``: its own channels, then sender by sender the kept
    channels or directions) and, per sender j in order, the ``[G, kept]`` map
    from j's channels to what it sends (None for the receiver's own block)."""
    spec = layer.spec
    mask = np.asarray(layer.mask[...])
    basis = None if layer.basis is None else np.asarray(layer.basis[...])
    rows, maps = [], []
    for j in range(spec.nodes):
        channels = np.arange(j * spec.group_in, (j + 1) * spec.group_in)
        if j == receiver:
            rows.append(channels)
            maps.append(None)
            continue
        kept = np.flatnonzero(mask[receiver, j] > 0)
        rows.append(channels[kept])
        maps.append(np.eye(spec.group_in)[:, kept] if basis is None
                    else basis[receiver, j][:, kept])
    return np.concatenate(rows), maps


def _features(layer: _DiscoLinear, x: jax.Array, maps: list) -> jax.Array:
    """The receiver's input as its packed kernel reads it: own channels, then
    what each other node sends (``x_j @ map``)."""
    group = layer.spec.group_in
    parts = [x[..., j * group:(j + 1) * group] if m is None
             else x[..., j * group:(j + 1) * group] @ jnp.asarray(m, x.dtype)
             for j, m in enumerate(maps)]
    return jnp.concatenate(parts, axis=-1)


def refit(model: nnx.Module, dense: nnx.Module, images, *, ridge: float = RIDGE,
          choose: Choose | None = None, inputs: str = "masked") -> dict[str, float]:
    """Refits ``model``'s kept weights, in place, to reproduce ``dense``'s
    layer outputs on ``images`` (see the module docstring).

    Arguments:
      model: the masked model (its masks final, or set by ``choose``).
      dense: the model it was masked from (same network, every channel read).
      images: calibration images, ``f32[B, H, W, C]``.
      ridge: the least-squares ridge, relative to the kept inputs' mean variance.
      choose: sets each layer's mask (and basis) right before it is refitted.
      inputs: ``"masked"``: each layer is fitted on the input the masked model
        (its earlier layers already refitted) makes: one forward pass per
        layer; ``"dense"``: on the dense model's input to the layer, all
        layers from one forward pass (far cheaper on deep CNNs; errors of
        earlier layers are not compensated).

    Returns:
      per refitted layer, the relative error ``||F W' - X_dense W|| /
      ||X_dense W||`` on ``images`` after the refit.

    Raises:
      ConfigError: the two models are not the same network; ``model`` is then
        left unchanged.
    """
    if inputs not in ("masked", "dense"):
        raise ConfigError(f"refit: inputs must be 'masked' or 'dense', got {inputs!r}")
    layers, dense_layers = disco_layers(model), disco_layers(dense)
    masked = {name: layer for name, layer in layers.items() if layer.spec.split_input}
    if set(layers) != set(dense_layers) or any(
            dense_layers[n].kernel[...].shape != layer.kernel[...].shape
            for n, layer in layers.items()):
        raise ConfigError("refit: model and dense are not the same network (their DISCO "
                          "layers or kernel shapes differ); pass the dense model the masked "
                          "one was made from")
    model_mode, dense_mode = nnx.clone(model), nnx.clone(dense)
    model_mode.eval()
    dense_mode.eval()
    dense_inputs = _read_inputs(dense_mode, images, set(masked))
    order = [name for name in dense_inputs if name in masked]
    copies = disco_layers(model_mode)
    if choose is not None:  # one structure, so one compiled forward pass, for every layer
        for name in order:
            if copies[name].basis is None and copies[name].spec.nodes > 1:
                copies[name].use_basis()  # the identity: the same function
    errors = {}
    for name in order:
        # the input as the layers before it (already refitted) now make it, or the dense one
        x = (dense_inputs[name] if inputs == "dense"
             else _read_inputs(model_mode, images, {name})[name])
        layer, spec = copies[name], masked[name].spec
        if choose is not None:
            choose(name, layer, x, dense_layers[name])
        targets = np.asarray(linear(spec, dense_inputs[name], dense_layers[name].masked_kernel(),
                                    None), np.float64).reshape(-1, spec.c_out)
        kernel = np.array(layer.kernel[...], np.float64)
        taps = kernel.shape[:-2]
        residual = total = 0.0
        for i in range(spec.nodes):
            rows, maps = received_rows(layer, i)
            fields = np.asarray(patches(spec, _features(layer, x, maps)), np.float64)
            cols = np.arange(i * spec.group_out, (i + 1) * spec.group_out)
            gram = fields.T @ fields
            gram = gram + ridge * np.trace(gram) / len(gram) * np.eye(len(gram))
            solved = np.linalg.solve(gram, fields.T @ targets[:, cols])
            kernel[..., rows[:, None], cols] = solved.reshape(*taps, len(rows), len(cols))
            residual += float(np.sum((fields @ solved - targets[:, cols]) ** 2))
            total += float(np.sum(targets[:, cols] ** 2))
        layer.kernel[...] = jnp.asarray(kernel, jnp.float32)
        errors[name] = float(np.sqrt(residual / max(total, 1e-30)))
    for name in order:
        masked[name].kernel[...] = copies[name].kernel[...]
        masked[name].mask[...] = copies[name].mask[...]
        if copies[name].basis is not None:
            masked[name].use_basis(copies[name].basis[...])
    return errors
