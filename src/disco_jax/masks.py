"""Communication masks: where a channel gets chosen.

A mask of a layer split over N nodes is ``f32[N, N, G]`` with G = C_in/N:
``mask[i, j, c]`` says whether receiver node i reads channel c of sender node j.
Diagonal blocks (i == j) are local and always read. A mask is *exact* when it
is binary and every off-diagonal pair (i, j) reads the same number k of
channels, which is what a static plan needs.

The plan (:mod:`disco_jax.plan`) stores the same choice as send indices
``int32[N, N-1, k]``: ``indices[j, s-1]`` are the channels node j sends to
node ``(j + s) mod N`` (shift s), in increasing order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from disco_jax.errors import ConfigError
from disco_jax.layers import disco_layers


def check_k(k: int, group: int, name: str = "layer") -> int:
    """Returns ``k`` if ``0 <= k <= group`` (= C_in/N), else raises ConfigError."""
    if not isinstance(k, int | np.integer) or not 0 <= k <= group:
        raise ConfigError(
            f"{name}: k={k!r} channels per node pair is out of range; a node owns "
            f"C_in/N={group} input channels, so k must be an integer in [0, {group}]")
    return int(k)


def k_for_ratio(comm_ratio: float, group: int, name: str = "layer") -> int:
    """The k of a comm ratio rho = k / (C_in/N), rounded to the nearest channel."""
    if not isinstance(comm_ratio, int | float) or not 0.0 <= comm_ratio <= 1.0:
        raise ConfigError(
            f"{name}: comm ratio must be a number in [0, 1] (1 = dense split, "
            f"0 = no communication), got {comm_ratio!r}")
    return int(round(comm_ratio * group))


def dense_mask(nodes: int, group: int) -> jax.Array:
    """Every node reads every channel: the dense split (rho = 1)."""
    return jnp.ones((nodes, nodes, group), jnp.float32)


def block_diagonal_mask(nodes: int, group: int) -> jax.Array:
    """Nodes read only their own channels: no communication (rho = 0)."""
    return jnp.broadcast_to(jnp.eye(nodes, dtype=jnp.float32)[:, :, None],
                            (nodes, nodes, group))


def topk_mask(scores: jax.Array, k: int) -> jax.Array:
    """The exact mask that reads, for each pair, the k channels of highest score.

    Arguments:
      scores: ``f32[N, N, G]``; the diagonal is ignored. Ties go to the lower
        channel index, so the result is deterministic.
      k: channels per off-diagonal pair, ``0 <= k <= G``.

    Returns:
      ``f32[N, N, G]`` of zeros and ones, ones on the diagonal blocks.
    """
    n, _, group = scores.shape
    k = check_k(k, group)
    # Stable descending order: sort by -score; argsort is stable for equal keys.
    order = jnp.argsort(-scores, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1, stable=True)  # rank of each channel
    chosen = (rank < k).astype(jnp.float32)
    diagonal = jnp.eye(n, dtype=bool)[:, :, None]
    return jnp.where(diagonal, 1.0, chosen)


def random_mask(key: jax.Array, nodes: int, group: int, k: int) -> jax.Array:
    """An exact mask with k channels per pair drawn uniformly at random."""
    return topk_mask(jax.random.uniform(key, (nodes, nodes, group)), k)


def pair_counts(mask: jax.Array) -> np.ndarray:
    """Channels each receiver reads from each sender: ``int[N, N]`` (diagonal = G)."""
    mask = np.asarray(mask)
    n = mask.shape[0]
    counts = (mask != 0).sum(axis=-1)
    counts[np.arange(n), np.arange(n)] = mask.shape[-1]
    return counts


def mask_to_indices(mask: jax.Array, name: str = "layer") -> tuple[int, np.ndarray]:
    """Freezes an exact mask into send indices.

    Arguments:
      mask: ``[N, N, G]``, binary off the diagonal with the same count k per pair.
      name: the layer, for error messages.

    Returns:
      ``(k, indices)`` with ``indices: int32[N, N-1, k]``; ``indices[j, s-1]`` are
      the channels sender j sends to receiver ``(j + s) % N``, increasing.

    Raises:
      ConfigError: the mask is not binary or its pairs read different counts.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.shape[0] != mask.shape[1]:
        raise ConfigError(f"{name}: a mask is [N, N, C_in/N], got shape {mask.shape}")
    n, _, group = mask.shape
    off = ~np.eye(n, dtype=bool)
    values = mask[off]
    if not np.all((values == 0) | (values == 1)):
        soft = values[(values != 0) & (values != 1)][:3]
        raise ConfigError(
            f"{name}: the mask is not binary (values like {soft}); finish mask "
            "training (reach the exact budget) before compiling a plan")
    counts = pair_counts(mask)[off]
    if n > 1 and not np.all(counts == counts[0]):
        raise ConfigError(
            f"{name}: node pairs read different numbers of channels "
            f"({sorted(set(counts.tolist()))}); a static plan needs the same k for every "
            "ordered pair")
    k = int(counts[0]) if n > 1 else 0
    indices = np.zeros((n, max(n - 1, 0), k), np.int32)
    for j in range(n):
        for s in range(1, n):
            receiver = (j + s) % n
            indices[j, s - 1] = np.flatnonzero(mask[receiver, j])
    return k, indices


def indices_to_mask(indices: np.ndarray, group: int) -> np.ndarray:
    """Inverse of :func:`mask_to_indices`: ``int[N, N-1, k]`` -> ``f32[N, N, G]``."""
    indices = np.asarray(indices)
    n = indices.shape[0]
    mask = np.zeros((n, n, group), np.float32)
    mask[np.arange(n), np.arange(n)] = 1.0
    for j in range(n):
        for s in range(1, n):
            mask[(j + s) % n, j, indices[j, s - 1]] = 1.0
    return mask


def set_random_masks(model, key: jax.Array, comm_ratio: float) -> dict[str, int]:
    """Gives every DISCO layer of ``model`` a random exact mask at ``comm_ratio``.

    Returns the budget k chosen for each layer (layers with a replicated input
    have no mask and are skipped).
    """
    budgets = {}
    for index, (name, layer) in enumerate(sorted(disco_layers(model).items())):
        spec = layer.spec
        if not spec.split_input:
            continue
        budgets[name] = k_for_ratio(comm_ratio, spec.group_in, name)
        layer.mask[...] = random_mask(jax.random.fold_in(key, index), spec.nodes,
                                      spec.group_in, budgets[name])
    return budgets
