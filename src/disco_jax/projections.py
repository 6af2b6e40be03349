"""Sending directions instead of channels: where a projection gets chosen.

Choosing which k of its channels node j sends node i barely beats choosing
them at random once the receiver's weights are refitted: the receiver rebuilds
from any k channels about as much as from the best-ranked ones. What chance
cannot do is send the k *directions* (linear combinations of j's channels)
that carry most of what i's outputs need and i cannot predict from its own
channels. A layer with a :class:`~disco_jax.layers.CommBasis` sends
``x_j @ B[i, j][:, chosen]``; the functions here choose ``B`` and the mask per
layer, as :func:`disco_jax.refit.refit`'s ``choose`` hook, so each layer's
choice sees the inputs the already-refitted layers before it make:

- :func:`reduced_rank` (the learned choice): for each ordered pair, the
  sender's channels are first stripped of what the receiver's own channels
  predict (least squares on the calibration inputs: ``X_perp = X_j - X_i A``);
  then the k directions ``p`` that carry the most of the sender's share of
  the receiver's outputs, ``|| X_perp p p^+ W_ij ||``: reduced-rank regression,
  from the SVD of ``L^T W_ij`` with ``L L^T`` the covariance of ``X_perp``
  (every kernel tap and output channel of the receiver's block counts);
- :func:`random_directions` (its baseline): k directions of a random
  orthogonal basis per pair.

Each sets the layer's basis to a full invertible ``[G, G]`` map per pair,
rewrites the kernel's rows into it (the same function while every direction
is read: ``W_rot = B^{-1} W``), and keeps the first k directions.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from disco_jax.errors import ConfigError
from disco_jax.layers import _DiscoLinear, basis_kernel
from disco_jax.masks import check_k, k_for_ratio
from disco_jax.refit import RIDGE, Choose

CHOICES = ("reduced_rank", "random_directions")
"""The ways :func:`choose_directions` picks what travels."""


def _k(comm_ratio: float | Mapping[str, int], group: int, name: str) -> int:
    """A layer's k: from the comm ratio, or its entry in ``{layer name: k}``."""
    if not isinstance(comm_ratio, Mapping):
        return k_for_ratio(comm_ratio, group, name)
    if name not in comm_ratio:
        raise ConfigError(f"{name}: the allocation gives no k for this layer; it has "
                          f"{sorted(comm_ratio)[:5]}...: allocate for this model")
    return check_k(int(comm_ratio[name]), group, name)


def _set(layer: _DiscoLinear, comm_ratio: float | Mapping[str, int], name: str, direction_of,
         x: jax.Array) -> None:
    """Gives ``layer`` per pair the basis ``direction_of(i, j, channel_kernel)``
    (``f64[G, G]``, columns by importance), each direction scaled so that what
    it sends has the RMS of the sender's channels on ``x`` (a direction then
    travels, and trains, like a channel), the first k directions read, and
    its kernel rewritten into that basis."""
    spec = layer.spec
    rows = np.asarray(x, np.float64).reshape(-1, spec.c_in)
    n, g, g_out = spec.nodes, spec.group_in, spec.group_out
    k = _k(comm_ratio, g, name)
    full = jnp.ones(spec.mask_shape, jnp.float32)
    basis = None if layer.basis is None else layer.basis[...]
    kernel = np.array(basis_kernel(spec, layer.kernel[...], full, basis), np.float64)
    blocks = kernel.reshape(-1, n, g, n, g_out)  # [taps, j, c, i, o]
    bases = np.broadcast_to(np.eye(g), (n, n, g, g)).copy()
    mask = np.zeros(spec.mask_shape, np.float32)
    for i in range(n):
        mask[i, i] = 1.0
        for j in range(n):
            if i == j:
                continue
            weights = blocks[:, j, :, i, :].transpose(1, 0, 2).reshape(g, -1)  # [G, taps*o]
            directions = direction_of(i, j, weights)
            sender = rows[:, j * g:(j + 1) * g]
            sent_rms = np.sqrt(np.mean((sender @ directions) ** 2, axis=0))
            channel_rms = np.sqrt(np.mean(sender ** 2))
            if channel_rms > 0:  # a silent direction keeps its scale
                directions = directions * np.where(sent_rms > 0, channel_rms / np.where(
                    sent_rms > 0, sent_rms, 1.0), 1.0)
            bases[i, j] = directions
            rotated = np.linalg.solve(directions, weights)  # B^{-1} W: same function
            blocks[:, j, :, i, :] = rotated.reshape(g, -1, g_out).transpose(1, 0, 2)
            mask[i, j, :k] = 1.0
    layer.use_basis(jnp.asarray(bases, jnp.float32))
    layer.mask[...] = jnp.asarray(mask)
    layer.kernel[...] = jnp.asarray(blocks.reshape(layer.kernel[...].shape), jnp.float32)


def unpredictable_directions(rows: np.ndarray, i: int, j: int, group: int,
                             weights: np.ndarray, ridge: float = RIDGE):
    """Reduced-rank regression for the ordered pair sender j -> receiver i.

    Arguments:
      rows: ``f64[rows, C_in]``, the layer's input; weights: ``[G, taps * C_out/N]``,
      the kernel rows of j's channels into i's outputs.

    Returns:
      ``(directions f64[G, G], singular f64[min(G, taps * C_out/N)])``: the
      columns of ``directions`` are unit-variance directions of j's channels
      with what i's own channels predict taken out, by what they carry of i's
      output; ``singular[r] ** 2`` is the output energy per row direction r
      carries.
    """
    g = group
    own, sender = rows[:, i * g:(i + 1) * g], rows[:, j * g:(j + 1) * g]
    gram = own.T @ own
    gram += ridge * np.trace(gram) / g * np.eye(g) + 1e-12 * np.eye(g)
    left = sender - own @ np.linalg.solve(gram, own.T @ sender)
    cov = left.T @ left / len(rows)
    cov += (ridge * np.trace(cov) / g + 1e-12) * np.eye(g)
    chol = np.linalg.cholesky(cov)  # cov = L L^T
    u, singular, _ = np.linalg.svd(chol.T @ weights, full_matrices=True)
    return np.linalg.solve(chol.T, u), singular  # L^{-T} U: unit-variance directions


def reduced_rank(comm_ratio: float | Mapping[str, int], *, ridge: float = RIDGE) -> Choose:
    """The learned choice (module docstring), as a :func:`~disco_jax.refit.refit`
    hook: k directions per pair from the comm ratio, or each layer's own k
    (``{layer name: k}``, e.g. from :func:`disco_jax.budget.allocate`)."""

    def choose(name, layer, x, dense_layer):
        spec = layer.spec
        rows = np.asarray(x, np.float64).reshape(-1, spec.c_in)

        def direction_of(i, j, weights):
            return unpredictable_directions(rows, i, j, spec.group_in, weights, ridge)[0]

        _set(layer, comm_ratio, name, direction_of, x)

    return choose


def random_directions(comm_ratio: float | Mapping[str, int], seed: int) -> Choose:
    """k directions of a random orthogonal basis per pair (the baseline of
    :func:`reduced_rank`), as a :func:`~disco_jax.refit.refit` hook."""
    def choose(name, layer, x, dense_layer):
        key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))
        g = layer.spec.group_in

        def direction_of(i, j, weights):
            noise = jax.random.normal(jax.random.fold_in(key, i * layer.spec.nodes + j), (g, g))
            q, _ = np.linalg.qr(np.asarray(noise, np.float64))
            return q

        _set(layer, comm_ratio, name, direction_of, x)

    return choose


def choose_directions(kind: str, comm_ratio: float | Mapping[str, int],
                      seed: int = 0) -> Choose:
    """The hook of ``kind`` (:data:`CHOICES`), at a comm ratio or ``{layer name: k}``."""
    if kind == "reduced_rank":
        return reduced_rank(comm_ratio)
    if kind == "random_directions":
        return random_directions(comm_ratio, seed)
    raise ConfigError(f"unknown choice of directions {kind!r}; expected one of {CHOICES}")
