"""Training: optax optimiser, jitted train step, evaluation, orbax checkpoints.

:func:`train` runs ``config.steps`` steps of SGD (Nesterov momentum) or
AdamW, with a warmup + cosine schedule and weight decay, on a model in
training form, on a task's loss (:mod:`disco_jax.tasks`; a number of
classes means classification), with an optional
:class:`~disco_jax.sparsify.MaskMethod` that adds its penalty to the loss and
sets the masks between steps. BatchNorm uses
batch statistics in training and its running averages in :func:`evaluate`
(the task's primary metric) and :func:`evaluate_metrics` (all of them).

With ``distill=Distillation(weight, temperature)`` and a ``teacher`` (the
dense model a variant starts from, say) the loss mixes the labels' cross
entropy with the teacher's softened predictions (Hinton et al., 2015):
``(1 - weight) * CE(labels) + weight * T^2 * KL(teacher_T || student_T)``, the
teacher run in inference form inside the same jitted step.

A run can be cut into phases: ``until`` ends a call at a step, and the next
call goes on from the returned optimiser (``optimizer=``) on the same
schedule, so that several continuations (one per mask variant) can branch
from one dense run.

With ``checkpoint_dir`` the run saves every ``config.checkpoint_every`` steps
(model, optimiser, masks; orbax, written atomically) and, when started again,
resumes from the latest checkpoint. The data order depends only on (seed,
step) and the mask schedule only on the step, so a resumed run ends exactly
where an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from disco_jax.data import Split, batch_indices
from disco_jax.errors import ConfigError, DiscoError
from disco_jax.tasks import Task, as_task


class CheckpointError(DiscoError):
    """A checkpoint that cannot be used for this model."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Arguments of :func:`train`.

    Attributes:
      steps: total training steps (a resumed run stops at the same step).
      batch_size: examples per step.
      learning_rate: peak learning rate (after ``warmup_steps``), cosine decay to 0.
      optimizer: ``"sgd"`` (Nesterov, ``momentum``; weight decay added to the
        gradient) or ``"adamw"`` (decoupled weight decay; converges in fewer
        steps when the step budget is small).
      momentum, weight_decay: optimiser settings (``momentum`` is SGD's only).
      seed: seeds the data order.
      checkpoint_every: steps between checkpoints (with ``checkpoint_dir``).
    """

    steps: int
    batch_size: int = 128
    learning_rate: float = 0.05
    warmup_steps: int = 0
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    checkpoint_every: int = 100


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """SGD (Nesterov momentum, weight decay) with a warmup + cosine schedule.

    Configs with the same optimiser settings get the same object back (the
    seed, batch size and checkpoint interval do not matter), so that a jitted
    step compiled for one run is reused by the next.
    """
    return _optimizer(config.optimizer, config.learning_rate, config.warmup_steps, config.steps,
                      config.momentum, config.weight_decay)


OPTIMIZERS = ("sgd", "adamw")


@functools.lru_cache(maxsize=32)
def _optimizer(name: str, learning_rate: float, warmup_steps: int, steps: int, momentum: float,
               weight_decay: float) -> optax.GradientTransformation:
    if name not in OPTIMIZERS:
        raise ConfigError(f"TrainConfig optimizer must be one of {OPTIMIZERS}, got {name!r}")
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup_steps, max(steps, warmup_steps + 1))
    if name == "adamw":
        return optax.adamw(schedule, weight_decay=weight_decay)
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=momentum, nesterov=True))


@dataclasses.dataclass(frozen=True)
class Distillation:
    """Distillation from a teacher's predictions (:func:`train`'s ``distill``).

    Attributes:
      weight: the share of the loss that is the distillation term, in [0, 1]
        (0: labels only; 1: the teacher only).
      temperature: both models' logits are divided by it before the softmax;
        the term is multiplied by its square, so that its gradients keep their
        size as it changes.
    """

    weight: float = 0.5
    temperature: float = 4.0

    def __post_init__(self):
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"Distillation weight must be in [0, 1], got {self.weight}")
        if not self.temperature > 0.0:
            raise ConfigError(f"Distillation temperature must be positive, got "
                              f"{self.temperature}")


def _loss(model, images, labels, task, penalty, step, distill=None, teacher_outputs=None):
    outputs = task.outputs(model(images))
    loss = task.loss(outputs, labels)
    if distill is not None:
        loss = ((1.0 - distill.weight) * loss
                + distill.weight * task.distill(outputs, teacher_outputs, distill.temperature))
    penalty = penalty(model, step) if penalty is not None else 0.0
    return loss + penalty, (loss, task.accuracy(outputs, labels))


@functools.lru_cache(maxsize=32)
def make_train_step(task: Task | int, penalty=None, distill: Distillation | None = None):
    """A jitted ``step(model, optimizer, images, labels, step, teacher=None)
    -> (loss, accuracy)`` for ``task`` (a :class:`~disco_jax.tasks.Task`, or
    a number of classes: classification).

    ``penalty`` is a mask method's loss term (``MaskMethod.penalty``) or None;
    with ``distill`` the step also takes the ``teacher`` model (run in
    inference form; its state is not changed). One function per (task,
    penalty, distill): every :func:`train` call with equal arguments shares
    it, so a model of the same structure with an optimiser of the same
    settings compiles once per process, not once per run.
    """
    task = as_task(task)

    @nnx.jit
    def train_step(model, optimizer, images, labels, step, teacher=None):
        teacher_outputs = None
        if distill is not None:
            teacher_outputs = jax.lax.stop_gradient(task.outputs(teacher(images)))
        grads, (loss, accuracy) = nnx.grad(_loss, has_aux=True)(
            model, images, labels, task, penalty, step, distill, teacher_outputs)
        optimizer.update(model, grads)
        return loss, accuracy

    return train_step


@functools.partial(nnx.jit, static_argnums=3)
def _tally(model, images, targets, task):
    return task.tally(task.outputs(model(images)), targets)


def evaluate_metrics(model: nnx.Module, split: Split, task: Task | int, *,
                     batch_size: int = 500) -> dict[str, float]:
    """Every metric of ``task`` for ``model`` (running BatchNorm statistics)
    on ``split``, from the batches' tallies (:meth:`~disco_jax.tasks.Task.combine`)."""
    task = as_task(task)
    model.eval()
    total = None
    for begin in range(0, len(split), batch_size):
        part = _tally(model, split.images[begin:begin + batch_size],
                      split.labels[begin:begin + batch_size], task)
        total = task.combine(total, jax.tree.map(np.asarray, part))
    model.train()
    return task.metrics(total)


def evaluate(model: nnx.Module, split: Split, task: Task | int, *,
             batch_size: int = 500) -> float:
    """The primary metric of ``task`` (top-1 accuracy for classification or a
    number of classes) of ``model`` on ``split`` (:func:`evaluate_metrics`)."""
    task = as_task(task)
    return evaluate_metrics(model, split, task, batch_size=batch_size)[task.metric]


def _signature(model: nnx.Module) -> dict[str, list[int]]:
    return {"/".join(map(str, path)): list(value.shape)
            for path, value in nnx.to_flat_state(nnx.state(model))}


def _manager(directory: Path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def _meta(manager, step: int) -> dict:
    import orbax.checkpoint as ocp

    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _restore(manager, step: int, model: nnx.Module, optimizer: nnx.Optimizer, kind: str,
             directory, meta: dict | None = None):
    """Loads checkpoint ``step`` into ``model`` and ``optimizer`` after checking
    its ``meta`` (read from the checkpoint unless given)."""
    import orbax.checkpoint as ocp

    meta = _meta(manager, step) if meta is None else meta
    if meta.get("optimizer", "sgd") != kind:
        raise CheckpointError(
            f"the checkpoint in {directory} (step {step}) was trained with the "
            f"{meta.get('optimizer', 'sgd')!r} optimiser and this run uses {kind!r}; resume "
            "with the same optimiser, or use another checkpoint folder")
    ours = _signature(model)
    theirs = meta.get("signature", {})
    for name in sorted(set(ours) | set(theirs)):
        if ours.get(name) != theirs.get(name):
            raise CheckpointError(
                f"the checkpoint in {directory} (step {step}) was written by another model "
                f"(another network, width or number of nodes): {name} has shape "
                f"{theirs.get(name)} there and {ours.get(name)} here. Use another checkpoint "
                "folder, or build the model the checkpoint came from.")
    target = {"model": nnx.to_pure_dict(nnx.state(model)),
              "optimizer": nnx.to_pure_dict(nnx.state(optimizer))}
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))["state"]
    for module, tree in ((model, restored["model"]), (optimizer, restored["optimizer"])):
        state = nnx.state(module)
        nnx.replace_by_pure_dict(state, tree)
        nnx.update(module, state)


def restore_model(model: nnx.Module, checkpoint_dir: str | os.PathLike) -> int:
    """Loads the latest checkpoint :func:`train` wrote in ``checkpoint_dir``
    into ``model`` (weights, BatchNorm statistics, masks and the bases of
    layers that send directions; the optimiser state is read and dropped:
    :func:`restore_run` keeps it).

    Returns:
      the step the checkpoint was written at.

    Raises:
      CheckpointError: no checkpoint there, or one of another model (another
        network, width or number of nodes); ``model`` is left unchanged.
    """
    return restore_run(model, checkpoint_dir)[0]


def restore_run(model: nnx.Module, checkpoint_dir: str | os.PathLike, *,
                optimizer: str | None = None) -> tuple[int, nnx.Optimizer]:
    """:func:`restore_model`, also returning the run's optimiser (its state
    and step count), which :func:`train` can go on from (``optimizer=``).

    Arguments:
      optimizer: the kind (``TrainConfig.optimizer``) the caller will go on
        with; a checkpoint of another kind is refused.
    """
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint folder at {directory}; give the folder a "
                              "training run saved to (it holds numbered step folders)")
    manager = _manager(directory)
    try:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"{directory} holds no finished checkpoint; give the folder "
                                  "a training run saved to")
        # the optimiser's state has the same structure whatever its settings but its kind
        meta = _meta(manager, step)
        _adopt_bases(model, meta.get("signature", {}))
        saved = meta.get("optimizer", "sgd")
        state = nnx.Optimizer(model, make_optimizer(TrainConfig(steps=1, optimizer=saved)),
                              wrt=nnx.Param)
        _restore(manager, step, model, state, optimizer or saved, directory, meta)
    finally:
        manager.close()
    return step, state


def _adopt_bases(model: nnx.Module, signature: dict[str, list[int]]) -> None:
    """Gives each DISCO layer that reads in a basis of directions in the
    checkpoint (its ``basis`` in ``signature``) a basis to restore into (the
    identity until restored: the same function)."""
    from disco_jax.layers import disco_layers

    for name, layer in disco_layers(model).items():
        if layer.basis is None and f"{name}/basis" in signature and layer.spec.split_input:
            layer.use_basis()


def _save(manager, step: int, model: nnx.Module, optimizer: nnx.Optimizer, kind: str) -> None:
    import orbax.checkpoint as ocp

    tree = {"model": nnx.to_pure_dict(nnx.state(model)),
            "optimizer": nnx.to_pure_dict(nnx.state(optimizer))}
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree),
        meta=ocp.args.JsonSave({"step": step, "optimizer": kind,
                                "signature": _signature(model)})))


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did: the steps run now (after a resume, fewer than
    ``config.steps``), the loss/accuracy of the last step, and the optimiser
    (state and step count) a next phase can go on from."""

    first_step: int
    steps: int
    loss: float | None
    accuracy: float | None
    optimizer: nnx.Optimizer | None = dataclasses.field(default=None, repr=False)


def _continue_from(optimizer: nnx.Optimizer, given: nnx.Optimizer, kind: str) -> int:
    """Copies ``given``'s state into ``optimizer``; returns its step count."""
    import jax

    ours, theirs = nnx.state(optimizer), nnx.state(given)
    if jax.tree.structure(ours) != jax.tree.structure(theirs):
        raise CheckpointError(
            f"train(optimizer=...) got the state of another optimiser or model than this "
            f"run's ({kind!r} on this model); pass the optimiser of an earlier phase of the "
            "same model with the same TrainConfig.optimizer")
    nnx.update(optimizer, theirs)
    return int(optimizer.step[...])


def train(model: nnx.Module, train_split: Split, task: Task | int, config: TrainConfig, *,
          method=None, checkpoint_dir: str | os.PathLike | None = None,
          optimizer: nnx.Optimizer | None = None, until: int | None = None,
          progress: bool = True, description: str = "train",
          stop_after: int | None = None, teacher: nnx.Module | None = None,
          distill: Distillation | None = None) -> TrainResult:
    """Trains ``model`` in place for ``config.steps`` steps (see the module docstring).

    Arguments:
      model: a model in training form.
      train_split: the training data (images and the task's targets).
      task: a :class:`~disco_jax.tasks.Task` (its loss and the accuracy the
        progress bar shows), or a number of classes: classification, the
        model's output's first ``classes`` columns its logits.
      method: a :class:`~disco_jax.sparsify.MaskMethod`, or None to leave masks alone.
      checkpoint_dir: save here, and resume from here if it holds a checkpoint.
      optimizer: go on from this optimiser's state and step count (such as the
        ``TrainResult.optimizer`` of an earlier phase of the same run, or
        :func:`restore_run`'s): training starts at its step, on the schedule
        of ``config``. A checkpoint in ``checkpoint_dir`` takes precedence.
      until: end this call once this many steps are done, saving a checkpoint
        there; the schedule is still that of ``config.steps``, and a later call
        (same config and folder, or ``optimizer=`` this call's) goes on.
      progress: show a progress bar with loss and accuracy.
      stop_after: stop dead once this many steps are done, as a killed run would
        (for tests of resuming); the schedule is still that of ``config.steps``.
      teacher, distill: with both, the loss mixes in the teacher's softened
        predictions (:class:`Distillation`); the teacher (same task, any
        structure) is run in inference form and left unchanged.

    Raises:
      CheckpointError: ``checkpoint_dir`` holds a checkpoint of another model,
        or ``optimizer`` is of another kind or model.
    """
    from tqdm.auto import tqdm

    if config.steps < 0 or config.batch_size < 1:
        raise DiscoError(f"TrainConfig needs steps >= 0 and batch_size >= 1, got {config}")
    if distill is not None and distill.weight == 0.0:
        distill, teacher = None, None  # labels only: the step without a teacher
    if (teacher is None) != (distill is None):
        raise ConfigError("train() distils with both a teacher model and a Distillation; "
                          f"got teacher={'None' if teacher is None else 'a model'} and "
                          f"distill={distill}: give both, or neither")
    model.train()
    if teacher is not None:
        teacher.eval()
    state = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)
    manager, first = None, 0
    if optimizer is not None:
        first = min(_continue_from(state, optimizer, config.optimizer), config.steps)
    if checkpoint_dir is not None:
        directory = Path(checkpoint_dir)
        manager = _manager(directory)
        latest = manager.latest_step()
        if latest is not None:
            _restore(manager, latest, model, state, config.optimizer, directory)
            first = min(latest, config.steps)
    end = config.steps if until is None else min(until, config.steps)
    step_fn = make_train_step(as_task(task), None if method is None else method.penalty,
                              distill)
    loss = accuracy = None
    bar = tqdm(range(first, end), desc=description, disable=not progress,
               initial=first, total=end, dynamic_ncols=True)
    for step in bar:
        if stop_after is not None and step >= stop_after:
            break
        index = batch_indices(len(train_split), config.batch_size, step, config.seed)
        images, labels = train_split.images[index], train_split.labels[index]
        if method is not None:
            method.update(model, step, images=images, labels=labels)
        loss, accuracy = step_fn(model, state, images, labels, jnp.asarray(step), teacher)
        if progress and (step % 10 == 0 or step == end - 1):
            bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{float(accuracy):.3f}")
        done = step + 1
        if manager is not None and (done % config.checkpoint_every == 0 or done == end):
            _save(manager, done, model, state, config.optimizer)
    last = end if stop_after is None else min(stop_after, end)
    if manager is not None and last == end and manager.latest_step() != end:
        _save(manager, end, model, state, config.optimizer)  # a run of no steps: its start
    if method is not None and last == end:
        # the masks a next step would use (exact if steps >= end), on that step's images
        index = batch_indices(len(train_split), config.batch_size, last, config.seed)
        method.update(model, last, images=train_split.images[index],
                      labels=train_split.labels[index])
    if manager is not None:
        manager.wait_until_finished()
        manager.close()
    if teacher is not None:
        teacher.train()
    return TrainResult(first, max(last - first, 0),
                       None if loss is None else float(loss),
                       None if accuracy is None else float(np.asarray(accuracy)), state)
