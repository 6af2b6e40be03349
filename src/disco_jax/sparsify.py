"""Learning which channels travel: mask methods behind one interface.

A :class:`MaskMethod` acts on a model's DISCO layers during training through
two hooks, so that the training loop and the models never change when a
method does:

- ``penalty``: a term added to the loss, ``penalty(model, step)``, traced
  inside the jitted train step (``step`` is an array), or None. It is a
  hashable value (such as :class:`GroupLasso`), so that methods with the same
  loss term share one compiled train step;
- ``update(model, step, images=None, labels=None)``: called between steps
  (outside jit) with the batch of the step about to run, to set the layers'
  :class:`~disco_jax.layers.CommMask` values.

Every method ends, at step ``end``, with an exact mask (k channels for every
ordered node pair of every layer), after which training fine-tunes with the
masks fixed.

- :class:`GradualPruning`: the learned method. From ``start`` to ``end`` a
  group-lasso penalty on each off-diagonal input channel's weights (per
  receiver) pushes the unimportant ones towards zero, while the budget shrinks
  from C_in/N to k on a cubic schedule; at each update the channels with the
  smallest weight norm among those still read are dropped for good. With
  ``importance="saliency"`` a channel's weight norm is multiplied by the RMS
  of what it carries (measured on the step's images), so that a small weight
  on a loud channel is not taken for an unimportant one. With
  ``importance="fisher"`` a channel's score is the Fisher information of its
  mask entry on the step's images and labels (the mean over samples of the
  squared gradient of the loss with respect to ``m[i, j, c]``): to second
  order, how much the loss grows when receiver i stops reading the channel,
  whatever the layers after it do with it. With
  ``importance="random"`` (and no lasso) the same schedule drops channels in
  a random order: the method with chance in place of learning, the fair
  baseline for it.
- :class:`StraightThroughTopK`: mask training as a model optimisation
  problem. Each (receiver, sender, channel) has a learned score; the forward
  pass reads the top k per pair (an exact mask at every step, so every step
  trains the structure it will keep), and the gradient of the loss with
  respect to the hard mask entries is passed straight through to the scores
  (Adam on the scores, outside the jitted weight step). Scores start from the
  weight norms; from ``end`` on the mask stays where the scores left it.
- :class:`FixedMask`: masks set once, at ``start``: ``"random"`` (k random
  channels per pair), ``"no_comm"`` (block-diagonal) and ``"dense_split"``
  (everything).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.layers import CommMask, _DiscoLinear, disco_layers, record_inputs
from disco_jax.masks import block_diagonal_mask, dense_mask, k_for_ratio, random_mask, topk_mask

IMPORTANCES = ("weight_norm", "saliency", "fisher", "random")
"""How :class:`GradualPruning` ranks the channels it may drop."""


class MaskMethod(Protocol):
    """How masks are learned or chosen; see the module docstring."""

    start: int
    end: int

    @property
    def penalty(self) -> Callable[[nnx.Module, jax.Array], jax.Array] | None: ...

    def update(self, model: nnx.Module, step: int, images: jax.Array | None = None,
               labels: jax.Array | None = None) -> None: ...


def _split_layers(model: nnx.Module) -> dict[str, _DiscoLinear]:
    """DISCO layers whose input is split over nodes (the ones with a mask)."""
    return {name: layer for name, layer in sorted(disco_layers(model).items())
            if layer.spec.split_input and layer.spec.nodes > 1}


def channel_norms(layer: _DiscoLinear) -> jax.Array:
    """``f32[N, N, C_in/N]``: the L2 norm of the weights receiver i applies to
    channel c of sender j (over kernel taps and i's output channels)."""
    spec = layer.spec
    n, g_in, g_out = spec.nodes, spec.group_in, spec.group_out
    kernel = layer.kernel[...].reshape(-1, n, g_in, n, g_out)  # [taps, j, c, i, o]
    squares = jnp.sum(kernel**2, axis=(0, 4)).transpose(2, 0, 1)  # [i, j, c]
    # a small floor keeps the penalty's gradient finite at an all-zero group
    return jnp.sqrt(squares + 1e-12)


@functools.lru_cache(maxsize=16)
def _rms_fn(graphdef):
    def run(state, images):
        model = nnx.merge(graphdef, state)  # a copy: batch statistics it updates are dropped
        layers = _split_layers(model)
        with record_inputs() as seen:
            model(images)
        return {name: jnp.sqrt(jnp.mean(jnp.square(seen[id(layer)]).reshape(
                    -1, layer.spec.c_in), axis=0))
                for name, layer in layers.items()}

    return jax.jit(run)


def input_rms(model: nnx.Module, images: jax.Array) -> dict[str, jax.Array]:
    """``f32[C_in]`` per masked DISCO layer (by name): the RMS of each input
    channel over ``images`` (all samples and positions), from one forward pass
    in training form."""
    graphdef, state = nnx.split(model)
    return _rms_fn(graphdef)(state, jnp.asarray(images))


def _task_of(model: nnx.Module, task):
    """``task``, or classification into the model's ``num_classes``."""
    from disco_jax.tasks import Classification, as_task

    if task is not None:
        return as_task(task)
    classes = getattr(model, "num_classes", None)
    if classes is None:
        raise ConfigError(f"{type(model).__name__} has no num_classes: give the task "
                          "(a disco_jax.tasks.Task) the importance is measured on")
    return Classification(int(classes))


@functools.lru_cache(maxsize=16)
def _fisher_fn(graphdef, task):
    def sample_loss(masks, rest, image, label):
        model = nnx.merge(graphdef, masks, rest)  # a copy, in inference mode (BatchNorm's averages)
        model.eval()
        return task.loss(task.outputs(model(image[None])), label[None])

    per_sample = jax.vmap(jax.grad(sample_loss), in_axes=(None, None, 0, 0))

    def run(masks, rest, images, labels):
        grads = per_sample(masks, rest, images, labels)
        return jax.tree.map(lambda g: jnp.mean(jnp.square(g), axis=0), grads)

    return jax.jit(run)


def mask_fisher(model: nnx.Module, images: jax.Array, labels: jax.Array,
                task=None) -> dict[str, jax.Array]:
    """``f32[N, N, C_in/N]`` per masked DISCO layer (by name): the empirical
    Fisher information of each mask entry, the mean over ``images`` of the
    squared per-sample gradient of the task's loss (``task``, default
    classification into ``model.num_classes``) with respect to
    ``m[i, j, c]`` (the model in inference mode)."""
    graphdef, masks, rest = nnx.split(model, CommMask, ...)
    fisher = _fisher_fn(graphdef, _task_of(model, task))(
        masks, rest, jnp.asarray(images), jnp.asarray(labels))
    # the model's structure with the Fisher values in place of the masks names them
    holder = nnx.merge(graphdef, fisher, rest)
    return {name: layer.mask[...] for name, layer in _split_layers(holder).items()}


@functools.lru_cache(maxsize=16)
def _mask_grad_fn(graphdef, task):
    def batch_loss(masks, rest, images, labels):
        model = nnx.merge(graphdef, masks, rest)  # a copy, in inference mode (BatchNorm's averages)
        model.eval()
        return task.loss(task.outputs(model(images)), labels)

    return jax.jit(jax.grad(batch_loss))


def mask_gradient(model: nnx.Module, images: jax.Array, labels: jax.Array,
                  task=None) -> dict[str, jax.Array]:
    """``f32[N, N, C_in/N]`` per masked DISCO layer (by name): the gradient of
    the task's mean loss over ``images`` (``task``, default classification
    into ``model.num_classes``) with respect to each mask entry
    ``m[i, j, c]`` at the current masks (the model in inference mode)."""
    graphdef, masks, rest = nnx.split(model, CommMask, ...)
    grads = _mask_grad_fn(graphdef, _task_of(model, task))(
        masks, rest, jnp.asarray(images), jnp.asarray(labels))
    holder = nnx.merge(graphdef, grads, rest)  # names the gradients by layer
    return {name: layer.mask[...] for name, layer in _split_layers(holder).items()}


def _layer_key(seed: int, index: int) -> jax.Array:
    """The random stream of the ``index``-th masked layer."""
    return jax.random.fold_in(jax.random.key(seed), index)


def _off_diagonal(n: int) -> jax.Array:
    return ~jnp.eye(n, dtype=bool)[:, :, None]


def check_schedule(start: int, end: int) -> None:
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
        raise ConfigError(f"mask schedule needs 0 <= start <= end, got start={start!r}, "
                          f"end={end!r}")


@dataclasses.dataclass(frozen=True)
class GroupLasso:
    """``strength`` x the sum of the norms of the off-diagonal channels still
    read (:func:`channel_norms`), from step ``start`` until ``end``.

    The loss term of :class:`GradualPruning`; a value, so that pruning runs
    with the same term (whatever their budget) compile one train step.
    """

    strength: float
    start: int
    end: int

    def __call__(self, model: nnx.Module, step: jax.Array) -> jax.Array:
        active = (step >= self.start) & (step < self.end)
        total = jnp.zeros((), jnp.float32)
        for layer in _split_layers(model).values():
            norms = channel_norms(layer) * layer.mask[...]
            total = total + jnp.sum(jnp.where(_off_diagonal(layer.spec.nodes), norms, 0.0))
        return jnp.where(active, self.strength, 0.0) * total


@dataclasses.dataclass(frozen=True)
class GradualPruning:
    """Group lasso + gradual magnitude pruning to an exact budget per layer.

    Arguments:
      comm_ratio: rho in [0, 1]; each layer keeps k = round(rho * C_in/N).
      start, end: steps over which the budget shrinks to k (exact from ``end``).
      interval: steps between mask updates during the schedule.
      lasso: strength of the group-lasso penalty while pruning (0 switches it
        off). Each group's norm shrinks by about ``lasso * learning rate /
        (1 - momentum)`` per step, so with SGD at lr 0.02 and momentum 0.9 a
        lasso near 1e-2 moves a group norm of ~0.5 to zero within ~250 steps
        unless the loss holds it up.
      importance: ``"weight_norm"`` (learned: the channels whose weights the
        lasso and the loss left smallest go first), ``"saliency"`` (learned:
        weight norm x the RMS of the channel's values on the step's images;
        needs ``images`` in :meth:`update`), ``"fisher"`` (learned: the Fisher
        information of the channel's mask entry, :func:`mask_fisher`; needs
        ``images`` and ``labels``) or ``"random"`` (a random order
        per layer, fixed by ``seed``).
      seed: seeds the random order.
      task: the :class:`~disco_jax.tasks.Task` whose loss the Fisher
        information is of (default: classification into the model's
        ``num_classes``).
    """

    comm_ratio: float
    start: int
    end: int
    interval: int = 10
    lasso: float = 1e-2
    importance: Literal["weight_norm", "saliency", "fisher", "random"] = "weight_norm"
    seed: int = 0
    task: object = None

    def __post_init__(self):
        k_for_ratio(self.comm_ratio, 1, "GradualPruning")
        check_schedule(self.start, self.end)
        if self.interval < 1 or self.lasso < 0:
            raise ConfigError("GradualPruning: interval must be >= 1 and lasso >= 0")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"GradualPruning importance must be one of {IMPORTANCES}, "
                              f"got {self.importance!r}")

    def budget(self, group: int, step: int) -> int:
        """Channels per pair a layer with C_in/N = group reads at ``step``."""
        k = k_for_ratio(self.comm_ratio, group)
        if step >= self.end:
            return k
        if step < self.start:
            return group
        progress = (step - self.start) / max(self.end - self.start, 1)
        return int(round(k + (group - k) * (1.0 - progress) ** 3))

    @property
    def penalty(self) -> GroupLasso | None:
        return GroupLasso(self.lasso, self.start, self.end) if self.lasso > 0 else None

    def update(self, model: nnx.Module, step: int, images: jax.Array | None = None,
               labels: jax.Array | None = None) -> None:
        due = step == self.end or (self.start <= step < self.end
                                   and (step - self.start) % self.interval == 0)
        if not due:
            return
        needs = {"saliency": ("images",), "fisher": ("images", "labels")}.get(self.importance, ())
        given = {"images": images, "labels": labels}
        if any(given[what] is None for what in needs):
            raise ConfigError(f"GradualPruning(importance={self.importance!r}) measures channels "
                              f"on the training batch: call update(model, step, "
                              f"{', '.join(f'{what}=...' for what in needs)})")
        rms = input_rms(model, images) if self.importance == "saliency" else None
        fisher = (mask_fisher(model, images, labels, self.task)
                  if self.importance == "fisher" else None)
        for index, (name, layer) in enumerate(_split_layers(model).items()):
            if self.importance == "random":
                scores = jax.random.uniform(_layer_key(self.seed, index), layer.mask[...].shape)
            elif fisher is not None:
                scores = fisher[name]
            else:
                scores = channel_norms(layer)
            if rms is not None:  # sender j's channel c: [1, N, C_in/N]
                scores = scores * rms[name].reshape(1, *layer.spec.mask_shape[1:])
            # dropped channels never come back: they rank below every kept one
            scores = jnp.where(layer.mask[...] > 0, scores, -1.0)
            layer.mask[...] = topk_mask(scores, self.budget(layer.spec.group_in, step))


@dataclasses.dataclass(eq=False)
class StraightThroughTopK:
    """Learned scores, the top k per pair read, straight-through gradients.

    Arguments:
      comm_ratio: rho in [0, 1]; each layer reads k = round(rho * C_in/N)
        channels per pair at every step from ``start``.
      start, end: steps in which the scores learn (the mask is exact
        throughout; from ``end`` it is fixed).
      learning_rate: Adam's step on the scores, which start at each pair's
        weight norms divided by their largest (so in [0, 1]).
      interval: steps between score updates (each costs one forward and
        backward pass of the model on the step's batch).
      task: the :class:`~disco_jax.tasks.Task` whose loss the scores learn
        from (default: classification into the model's ``num_classes``).

    The scores and their optimiser state live in the method, not in the
    model: the model, its checkpoints and its weight optimiser are those of
    any masked model. A run resumed in the middle of ``[start, end)`` starts
    the scores again from the weight norms.
    """

    comm_ratio: float
    start: int
    end: int
    learning_rate: float = 0.05
    interval: int = 1
    task: object = None
    scores: dict | None = dataclasses.field(default=None, repr=False)
    _state: object = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        k_for_ratio(self.comm_ratio, 1, "StraightThroughTopK")
        check_schedule(self.start, self.end)
        if self.interval < 1 or not self.learning_rate > 0:
            raise ConfigError("StraightThroughTopK: interval must be >= 1 and learning_rate > 0")

    penalty = None

    def _optimizer(self):
        return optax.adam(self.learning_rate)

    def _set_masks(self, model: nnx.Module) -> None:
        for name, layer in _split_layers(model).items():
            layer.mask[...] = topk_mask(self.scores[name],
                                        k_for_ratio(self.comm_ratio, layer.spec.group_in))

    def update(self, model: nnx.Module, step: int, images: jax.Array | None = None,
               labels: jax.Array | None = None) -> None:
        if step < self.start:
            return
        if self.scores is None:  # the first step (or a resumed run): scores from weight norms
            self.scores = {}
            for name, layer in _split_layers(model).items():
                norms = channel_norms(layer)
                self.scores[name] = norms / jnp.max(norms, axis=-1, keepdims=True)
            self._state = self._optimizer().init(self.scores)
            self._set_masks(model)
        if step >= self.end or (step - self.start) % self.interval:
            return
        if images is None or labels is None:
            raise ConfigError("StraightThroughTopK learns its scores on the training batch: "
                              "call update(model, step, images=..., labels=...)")
        grads = mask_gradient(model, images, labels, self.task)
        updates, self._state = self._optimizer().update(grads, self._state, self.scores)
        self.scores = optax.apply_updates(self.scores, updates)
        self._set_masks(model)


@dataclasses.dataclass(frozen=True)
class FixedMask:
    """A baseline mask set once, at ``start``, and kept (``end`` = ``start``).

    Arguments:
      kind: ``"random"`` (k random channels per pair, k from ``comm_ratio``),
        ``"no_comm"`` (block-diagonal) or ``"dense_split"`` (all channels).
      comm_ratio: rho for ``"random"``.
      start: the step the mask is set.
      seed: seeds the random mask (one stream per layer).
    """

    kind: Literal["random", "no_comm", "dense_split"]
    comm_ratio: float = 0.0
    start: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("random", "no_comm", "dense_split"):
            raise ConfigError(f"FixedMask kind must be 'random', 'no_comm' or 'dense_split', "
                              f"got {self.kind!r}")
        k_for_ratio(self.comm_ratio, 1, "FixedMask")
        check_schedule(self.start, self.start)

    @property
    def end(self) -> int:
        return self.start

    @property
    def penalty(self) -> None:
        return None

    def update(self, model: nnx.Module, step: int, images: jax.Array | None = None,
               labels: jax.Array | None = None) -> None:
        if step != self.start:
            return
        for index, layer in enumerate(_split_layers(model).values()):
            n, group = layer.spec.nodes, layer.spec.group_in
            if self.kind == "random":
                mask = random_mask(_layer_key(self.seed, index), n, group,
                                   k_for_ratio(self.comm_ratio, group))
            elif self.kind == "no_comm":
                mask = block_diagonal_mask(n, group)
            else:
                mask = dense_mask(n, group)
            layer.mask[...] = mask


def budgets(model: nnx.Module) -> dict[str, np.ndarray]:
    """Channels each receiver reads from each sender, ``int[N, N]`` per masked layer
    (the diagonal is the node's own C_in/N)."""
    from disco_jax.masks import pair_counts

    return {name: pair_counts(layer.mask[...]) for name, layer in _split_layers(model).items()}
