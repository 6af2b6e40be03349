"""One budget of bytes per image for the whole network, shared out across layers.

A uniform comm ratio gives every layer the same share of its channels. But a
layer whose received directions matter little to the loss can give bytes to
one whose directions matter much, and a byte buys a layer on a 2 x 2 map 49
times more directions than one on a 14 x 14 map. :func:`allocate` spends a
total budget greedily by what each byte buys:

- within a layer, the r-th direction's *share* is what reduced-rank
  regression (:mod:`disco_jax.projections`) says it carries: summed over the
  ordered node pairs, the squared r-th singular value, i.e. the energy of the
  receiver's output (every kernel tap and output channel) that the sender's
  r-th direction carries and the receiver cannot predict from its own
  channels, as a fraction of the layer's whole output energy
  (:func:`direction_values`);
- across layers, shares of different layers' outputs are not worth the same
  to the task: with ``value="fisher"`` (the default) each layer's shares are
  put in units of the loss by the layer's *weight* (:func:`loss_weights`):
  the Fisher information of its received channels (the mean over calibration
  images of the squared per-image gradient of the task's loss with respect to
  each received channel's mask entry, summed over the channels and ordered
  pairs: what dropping them would change the loss by, to second order) per
  share of the layer's output energy those channels carry. A direction's
  value is its share times its layer's weight; ``value="energy"`` leaves
  the shares as they are (every layer's whole output worth the same);
- a direction's *cost* is the bytes one more direction per ordered pair adds
  (:func:`disco_jax.payload.message_bytes`: pixels x payload bytes, plus an
  int8 scale), so a layer on a small map buys its directions cheaply;
- starting from k = 0 everywhere, the next direction bought is the one with
  the highest value per byte that still fits (ties, e.g. layers the loss does
  not reach, by share per byte), until none fits. Each layer's values fall
  with r, so this is the exact optimum of the concave relaxation; the budget
  is met up to less than one direction's bytes per layer.

The values come from the dense model on calibration images: its layer inputs
in one forward pass (the same inputs as ``refit(..., inputs="dense")``) and,
for the weights, the per-image gradients of the loss on the images' labels.
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

#: How :func:`allocate` compares directions of different layers (module docstring).
VALUES = ("fisher", "energy")
#: Images per batch of per-image gradients in :func:`loss_weights` (a batch holds
#: one backward pass per image; the main job's allocation with 128 was killed for
#: memory at 9.8 GB, next to two other runs, on a 24 GB machine).
FISHER_BATCH = 32


def _rows_and_blocks(layer, x):
    """The layer's input as rows ``f64[rows, C_in]``, its kernel as blocks
    ``f64[taps, j, c, i, o]`` (every channel read) and its output energy per row."""
    spec = layer.spec
    rows = np.asarray(x, np.float64).reshape(-1, spec.c_in)
    full = np.ones(spec.mask_shape, np.float32)
    basis = None if layer.basis is None else layer.basis[...]
    kernel = np.asarray(basis_kernel(spec, layer.kernel[...], full, basis), np.float64)
    flat = kernel.reshape(-1, spec.c_in, spec.c_out).transpose(1, 0, 2).reshape(spec.c_in, -1)
    energy = float(np.sum((rows @ flat) ** 2)) / len(rows)
    return rows, kernel.reshape(-1, spec.nodes, spec.group_in, spec.nodes, spec.group_out), energy


def _pair_weights(blocks, i: int, j: int) -> np.ndarray:
    """``[C_in/N, taps * C_out/N]``: the kernel rows of sender j's channels into i's outputs."""
    g = blocks.shape[2]
    return blocks[:, j, :, i, :].transpose(1, 0, 2).reshape(g, -1)


def _pairs(n: int):
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def _carried(rows, blocks, spec) -> float:
    """Output energy per row that the other nodes' channels carry, over the ordered pairs."""
    g = spec.group_in
    return sum(float(np.sum((rows[:, j * g:(j + 1) * g] @ _pair_weights(blocks, i, j)) ** 2))
               for i, j in _pairs(spec.nodes)) / len(rows)


def _shares(layer, x, ridge: float) -> tuple[np.ndarray, float]:
    """:func:`direction_values` and :func:`received_share` from one reading of the layer."""
    spec = layer.spec
    rows, blocks, energy = _rows_and_blocks(layer, x)
    values = np.zeros(spec.group_in)
    for i, j in _pairs(spec.nodes):
        _, singular = unpredictable_directions(rows, i, j, spec.group_in,
                                               _pair_weights(blocks, i, j), ridge)
        values[:len(singular)] += singular ** 2
    scale = max(energy, 1e-30)
    return values / scale, _carried(rows, blocks, spec) / scale


def direction_values(layer, x, *, ridge: float = RIDGE) -> np.ndarray:
    """``f64[C_in/N]``: the share of each rank r of ``layer``'s directions on
    input ``x`` (``[B, ..., C_in]``, as the layer reads it): summed over the
    ordered node pairs, the output energy its r-th reduced-rank direction
    carries, as a fraction of the layer's output energy."""
    return _shares(layer, x, ridge)[0]


def received_share(layer, x) -> float:
    """The share of ``layer``'s output energy on input ``x`` (measured as
    :func:`direction_values` measures it) that the other nodes' channels
    carry, summed over the ordered node pairs."""
    rows, blocks, energy = _rows_and_blocks(layer, x)
    return _carried(rows, blocks, layer.spec) / max(energy, 1e-30)


def _received_fisher(model, layers: dict, images, labels, task) -> dict[str, float]:
    """Per layer of ``layers`` (of ``model``, in eval mode): the Fisher
    information of its received mask entries, summed over the channels and
    the ordered pairs (:func:`loss_weights`)."""
    from disco_jax.sparsify import mask_fisher

    images, labels = jnp.asarray(images), jnp.asarray(labels)
    fisher = dict.fromkeys(layers, 0.0)
    for begin in range(0, len(images), FISHER_BATCH):
        part = mask_fisher(model, images[begin:begin + FISHER_BATCH],
                           labels[begin:begin + FISHER_BATCH], task)
        count = len(images[begin:begin + FISHER_BATCH])
        for name, layer in layers.items():
            mask = np.asarray(part[name], np.float64)
            fisher[name] += count * sum(float(mask[i, j].sum())
                                        for i, j in _pairs(layer.spec.nodes))
    return {name: total / len(images) for name, total in fisher.items()}


def loss_weights(dense: nnx.Module, images, labels, task=None) -> dict[str, float]:
    """Each DISCO layer's weight in units of the loss per share of its output
    energy (module docstring): the Fisher information of its received
    channels (:func:`disco_jax.sparsify.mask_fisher` on ``images`` and
    ``labels`` for ``task``, default classification into the model's classes;
    summed over the channels and the ordered pairs) over the share of its
    output energy they carry (:func:`received_share`)."""
    model = nnx.clone(dense)
    model.eval()
    layers = _shared_layers(model)
    inputs = _read_inputs(model, images, set(layers))
    fisher = _received_fisher(model, layers, images, labels, task)
    return {name: fisher[name] / max(received_share(layers[name], x), 1e-30)
            for name, x in inputs.items()}


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
             labels=None, task=None, value: str = "fisher",
             ridge: float = RIDGE) -> dict[str, int]:
    """Each DISCO layer's k (directions per ordered node pair) under one budget
    of ``budget_bytes`` per image for the whole network (module docstring).

    Arguments:
      dense: the trained dense model (every channel read).
      images: calibration images ``f32[B, H, W, C]``.
      budget_bytes: bytes per image all layers together may send.
      payload: what the directions travel as (:data:`disco_jax.payload.PAYLOADS`).
      labels, task: the images' labels and the :class:`~disco_jax.tasks.Task`
        whose loss weighs the layers (``value="fisher"``; task default:
        classification into the model's classes).
      value: how directions of different layers compare (:data:`VALUES`):
        ``"fisher"``, their share of the layer's output in units of the loss;
        ``"energy"``, the share alone.

    Returns:
      ``{layer name: k}`` for every layer with a split input; the bytes these
      send are at most ``budget_bytes``, and short of it by less than one
      direction's bytes in every layer not at its full width.

    Raises:
      ConfigError: the budget is negative or larger than the dense split's
        bytes (every layer at full width), the model has no layer to share
        it among, ``value`` is unknown, or ``"fisher"`` has no labels (or
        not one per image).
    """
    payload = payload_of(payload)
    if value not in VALUES:
        raise ConfigError(f"allocate: unknown value {value!r}; expected one of {VALUES}")
    if value == "fisher" and labels is None:
        raise ConfigError("allocate: value='fisher' weighs each layer by the loss on the "
                          "calibration images, so it needs their labels (labels=..., and "
                          "task=... unless it is classification); give them, or "
                          "value='energy'")
    if value == "fisher" and len(labels) != len(images):
        raise ConfigError(f"allocate: {len(labels)} labels for {len(images)} calibration "
                          "images; give one label (target) per image")
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
    measured = {name: _shares(layers[name], x, ridge) for name, x in inputs.items()}
    shares = {name: values for name, (values, _) in measured.items()}
    weights = dict.fromkeys(inputs, 1.0)
    if value == "fisher":
        fisher = _received_fisher(model, layers, images, labels, task)
        weights = {name: fisher[name] / max(received, 1e-30)
                   for name, (_, received) in measured.items()}
    ks = dict.fromkeys(inputs, 0)
    spent = 0
    heap = []

    def offer(name):
        k, spec = ks[name], layers[name].spec
        if k < spec.group_in:
            cost = layer_step_bytes(spec, spatial[name], k, payload)
            share = shares[name][k]
            heapq.heappush(heap, (-share * weights[name] / cost, -share / cost, name, cost))

    for name in inputs:
        offer(name)
    while heap:
        *_, name, cost = heapq.heappop(heap)
        if spent + cost > budget_bytes:
            continue  # this layer's next direction does not fit; others may
        spent += cost
        ks[name] += 1
        offer(name)
    return ks
