"""One budget of bytes per image for the whole network, shared out across layers.

A uniform comm ratio gives every layer the same share of its channels. But a
layer whose received directions carry little of its output can give bytes to
one whose directions carry much, and a byte buys a layer on a 2 x 2 map 49
times more directions than one on a 14 x 14 map. :func:`allocate` spends a
total budget greedily by what each byte buys:

- the *value* of the r-th direction of a layer is what reduced-rank
  regression (:mod:`disco_jax.projections`) says it carries: summed over the
  ordered node pairs, the squared r-th singular value, i.e. the energy of the
  receiver's output (every kernel tap and output channel) that the sender's
  r-th direction carries and the receiver cannot predict from its own
  channels, as a fraction of the layer's whole output energy (so that layers
  of different size and scale compare);
- its *cost* is the bytes one more direction per ordered pair adds
  (:func:`disco_jax.payload.message_bytes`: pixels x payload bytes, plus an
  int8 scale);
- starting from k = 0 everywhere, the next direction bought is the one with
  the highest value per byte that still fits, until none fits. Each layer's
  values fall with r, so this is the exact optimum of the concave relaxation;
  the budget is met up to less than one direction's bytes per layer.

The values come from the dense model's layer inputs on calibration images,
in one forward pass (the same inputs as ``refit(..., inputs="dense")``).
Every layer keeps one static k for all its ordered pairs: plans, ``shard_map``
and the HLO byte check are unchanged.
"""

from __future__ import annotations

import heapq

import jax.numpy as jnp
import numpy as np
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.layers import basis_kernel, disco_layers
from disco_jax.masks import k_for_ratio
from disco_jax.payload import message_bytes, payload_of
from disco_jax.projections import unpredictable_directions
from disco_jax.refit import RIDGE, _read_inputs


def direction_values(layer, x, *, ridge: float = RIDGE) -> np.ndarray:
    """``f64[C_in/N]``: the value of each rank r of ``layer``'s directions on
    input ``x`` (``[B, ..., C_in]``, as the layer reads it): summed over the
    ordered node pairs, the output energy its r-th reduced-rank direction
    carries, as a fraction of the layer's output energy."""
    spec = layer.spec
    n, g, g_out = spec.nodes, spec.group_in, spec.group_out
    rows = np.asarray(x, np.float64).reshape(-1, spec.c_in)
    full = np.ones(spec.mask_shape, np.float32)
    basis = None if layer.basis is None else layer.basis[...]
    kernel = np.asarray(basis_kernel(spec, layer.kernel[...], full, basis), np.float64)
    flat = kernel.reshape(-1, spec.c_in, spec.c_out).transpose(1, 0, 2).reshape(spec.c_in, -1)
    energy = float(np.sum((rows @ flat) ** 2)) / len(rows)
    blocks = kernel.reshape(-1, n, g, n, g_out)  # [taps, j, c, i, o]
    values = np.zeros(g)
    for i in range(n):
        for j in range(n):
            if i != j:
                weights = blocks[:, j, :, i, :].transpose(1, 0, 2).reshape(g, -1)
                _, singular = unpredictable_directions(rows, i, j, g, weights, ridge)
                values[:len(singular)] += singular ** 2
    return values / max(energy, 1e-30)


def layer_step_bytes(spec, spatial: tuple[int, ...], k: int, payload: str) -> int:
    """Bytes per image that going from k to k + 1 directions per ordered pair adds."""
    pairs = spec.nodes * (spec.nodes - 1)
    return pairs * (message_bytes(payload, k + 1, spatial) - message_bytes(payload, k, spatial))


def layer_bytes(spec, spatial: tuple[int, ...], k: int, payload: str) -> int:
    """Bytes per image a layer with k directions per ordered pair sends."""
    return spec.nodes * (spec.nodes - 1) * message_bytes(payload, k, spatial)


def _shared_layers(model: nnx.Module) -> dict:
    return {name: layer for name, layer in disco_layers(model).items()
            if layer.spec.split_input and layer.spec.nodes > 1}


def ratio_bytes(dense: nnx.Module, images, comm_ratio: float, payload: str = "float32") -> int:
    """Bytes per image the layers :func:`allocate` shares among send at one
    uniform comm ratio (k = rho * C_in/N in every layer): the budget of an
    allocation compared with that ratio at equal bytes."""
    payload = payload_of(payload)
    model = nnx.clone(dense)
    model.eval()
    layers = _shared_layers(model)
    inputs = _read_inputs(model, jnp.asarray(images)[:1], set(layers))
    return sum(layer_bytes(layers[name].spec, tuple(x.shape[1:-1]),
                           k_for_ratio(comm_ratio, layers[name].spec.group_in, name), payload)
               for name, x in inputs.items())


def allocate(dense: nnx.Module, images, budget_bytes: float, *, payload: str = "float32",
             ridge: float = RIDGE) -> dict[str, int]:
    """Each DISCO layer's k (directions per ordered node pair) under one budget
    of ``budget_bytes`` per image for the whole network (module docstring).

    Arguments:
      dense: the trained dense model (every channel read).
      images: calibration images ``f32[B, H, W, C]``.
      budget_bytes: bytes per image all layers together may send.
      payload: what the directions travel as (:data:`disco_jax.payload.PAYLOADS`).

    Returns:
      ``{layer name: k}`` for every layer with a split input; the bytes these
      send are at most ``budget_bytes``, and short of it by less than one
      direction's bytes in every layer not at its full width.

    Raises:
      ConfigError: the budget is negative or larger than the dense split's
        bytes (every layer at full width), or the model has no layer to share
        it among.
    """
    payload = payload_of(payload)
    model = nnx.clone(dense)
    model.eval()
    layers = _shared_layers(model)
    if not layers:
        raise ConfigError("allocate: the model has no DISCO layer that sends anything "
                          "(N = 1, or only layers on the replicated input)")
    inputs = _read_inputs(model, images, set(layers))
    spatial = {name: tuple(x.shape[1:-1]) for name, x in inputs.items()}
    full = sum(layer_bytes(layers[n].spec, spatial[n], layers[n].spec.group_in, payload)
               for n in inputs)
    if not 0 <= budget_bytes <= full:
        raise ConfigError(
            f"allocate: a budget of {budget_bytes:,.0f} bytes per image is outside [0, "
            f"{full:,}] (0: no layer sends anything; {full:,}: every layer sends all its "
            f"channels as {payload}, the dense split's traffic); give one in that range")
    values = {name: direction_values(layers[name], x, ridge=ridge)
              for name, x in inputs.items()}
    ks = dict.fromkeys(inputs, 0)
    spent = 0
    heap = []

    def offer(name):
        k, spec = ks[name], layers[name].spec
        if k < spec.group_in:
            cost = layer_step_bytes(spec, spatial[name], k, payload)
            heapq.heappush(heap, (-values[name][k] / cost, name, cost))

    for name in inputs:
        offer(name)
    while heap:
        _, name, cost = heapq.heappop(heap)
        if spent + cost > budget_bytes:
            continue  # this layer's next direction does not fit; others may
        spent += cost
        ks[name] += 1
        offer(name)
    return ks
