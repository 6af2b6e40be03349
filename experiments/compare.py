"""The variants every experiment compares, trained the same way.

From one dense checkpoint, each variant gets the same step budget: a pruning
phase (its masks reach their budget on the same step) and a fine-tuning phase
with the masks fixed.

- ``learned`` (DISCO): :class:`~disco_jax.sparsify.GradualPruning`, group
  lasso on the channels that travel and a cubic schedule that drops the
  channels with the smallest weights until every node pair sends exactly
  k = rho * C_in/N;
- ``random``: the same schedule dropping channels in a random order, no
  lasso: random exact masks at the same k, reached the same way;
- ``no_comm``: the learned schedule down to k = 0 (block-diagonal);
- ``dense_split``: all channels (rho = 1), trained just as long.

With ``Schedule(prune_steps=0)`` the masks are set at once instead (the same
rankings, on :data:`CALIBRATION_IMAGES` training images), and with
``Schedule(refit="lstsq")`` every variant but the dense split then refits the
weights it keeps by least squares (:mod:`disco_jax.refit`): DISCO after
training, with no (or a short) fine-tuning. With ``Schedule(basis="principal")``
the learned variant first rewrites the network into its principal basis
(:mod:`disco_jax.basis`, transformers), where which channels travel matters.
With ``Schedule(basis="directions")`` (CNNs) the learned variant sends, per
node pair and layer, the k reduced-rank directions of the sender's channels
(:func:`disco_jax.projections.reduced_rank`, chosen layer by layer inside
the refit), and one more variant, ``random_directions``, sends k random
directions: the two baselines at the same bytes are then random channels and
random directions.

This module also holds what the experiments' reports share: mean/std over
seeds, the plan's bytes against the budget's, and writing a report without
leaving half a file behind.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

VARIANTS = ("learned", "random", "no_comm", "dense_split")
"""The variants every run has, in report order (:func:`variants_of` adds
``random_directions`` when the learned one sends directions)."""

RECIPE = dict(optimizer="adamw", learning_rate=2e-3, warmup_steps=30, weight_decay=1e-4)
"""The optimiser settings of the ResNet-50 job's one continuing run (AdamW,
peak learning rate, linear warmup, then cosine decay to 0 over the run)."""

REFITS = ("none", "lstsq")
"""What happens to the kept weights once the masks reach the budget
(:attr:`Schedule.refit`)."""

REFIT_INPUTS = ("masked", "dense")
"""What the refit fits each layer on (:attr:`Schedule.refit_inputs`)."""

BASES = ("channels", "principal", "directions")
"""What the learned variant chooses among (:attr:`Schedule.basis`)."""

ALLOCATIONS = ("uniform", "learned")
"""How the learned variant shares its bytes among layers (:attr:`Schedule.allocation`)."""

STRAIGHT_THROUGH = "straight_through"
"""The :attr:`Schedule.importance` that trains the learned masks with
:class:`~disco_jax.sparsify.StraightThroughTopK` over the pruning phase
instead of pruning gradually (every variant then holds exact masks from the
phase's first step: random ones, block-diagonal or all channels)."""

CALIBRATION_IMAGES = 512
"""Training images that masks set at once and the refit are computed on, by
default (:attr:`Schedule.calibration_images`)."""

DIRECTIONS = dict(refit="lstsq", basis="directions", refit_inputs="dense",
                  calibration_images=2048)
"""The learned variant sends reduced-rank directions (with ``prune_steps=0``):
chosen and refitted by least squares on 2,048 training images, layer by
layer, on the dense model's inputs; the main job's default and
``mask_training --directions``."""

DISTILL = dict(distill=0.0, distill_temperature=4.0)
"""No distillation by default (:attr:`Schedule.distill`); every network's
presets carry these, so ``--distill W`` and ``--distill-temperature T`` exist
on every pipeline experiment."""

QUALITY_KEYS = {"learned": "disco", "random": "random_mask", "no_comm": "no_comm",
                "dense_split": "dense_split", "random_directions": "random_directions",
                "uniform_allocation": "disco_uniform_allocation"}
"""The variants' keys in the report schema (DESIGN.md section 7)."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The step budget every variant gets after the shared dense training.

    Attributes:
      prune_steps: steps in which the masks reach their budget (exact at the end).
      finetune_steps: steps with the masks fixed.
      batch_size: images per step.
      learning_rate: peak learning rate (cosine decay to 0) of each phase, or of
        the whole run when variants go on with the dense run (see
        :func:`train_variant`).
      lasso: group-lasso strength of the learned and no-comm variants.
      optimizer: ``"sgd"`` or ``"adamw"`` (:class:`~disco_jax.train.TrainConfig`).
      warmup_steps: linear warmup at the start of each phase (or of the run).
      weight_decay: the optimiser's weight decay.
      importance: how the learned and no-comm variants rank channels
        (:data:`STRAIGHT_THROUGH`: learned scores trained with the weights,
        top k read, straight-through gradients; or one of
        :data:`disco_jax.sparsify.IMPORTANCES`: ``"weight_norm"``,
        ``"saliency"`` or ``"fisher"``).
      refit: ``"lstsq"``: once the masks reach the budget, every variant but
        the dense split refits its kept weights to the dense model's layer
        outputs (:func:`disco_jax.refit.refit`, on :data:`CALIBRATION_IMAGES`
        training images); ``"none"``: no refit. With ``prune_steps=0`` the
        masks are set at once, on the same images.
      basis: ``"principal"``: the learned variant chooses its channels in the
        network's principal basis (:func:`disco_jax.basis.principal_basis`,
        the same function rewritten, on the same images; ViTs only);
        ``"channels"``: in the network's own channels; ``"directions"``: it
        sends the k reduced-rank directions of each sender's channels per
        node pair (:mod:`disco_jax.projections`; needs ``prune_steps=0`` and
        ``refit="lstsq"``), and a ``random_directions`` variant sends k random
        ones. The random, no-comm and dense-split variants always keep the
        network's own channels.
      calibration_images: how many training images masks set at once, the
        bases and the refit are computed on.
      refit_inputs: what each layer is refitted on (:func:`disco_jax.refit.refit`):
        ``"masked"``, the input the refitted layers before it make (one forward
        pass per layer), or ``"dense"``, the dense model's (one pass in all).
      distill: the weight of distillation from the dense model in every
        variant's pruning and fine-tuning (:class:`disco_jax.train.Distillation`;
        0: labels only). Every variant alike, the dense split included.
      distill_temperature: the distillation's temperature.
      allocation: ``"uniform"``: every layer sends k = rho * C_in/N per pair;
        ``"learned"`` (with ``basis="directions"``): the learned variant
        sends as many bytes per image in all, shared out across layers by
        what each byte buys (:func:`disco_jax.budget.allocate`), and one
        more variant, ``uniform_allocation``, sends the learned directions at
        the uniform ratio: the comparison at equal bytes.
    """

    prune_steps: int
    finetune_steps: int
    batch_size: int = 128
    learning_rate: float = 0.02
    lasso: float = 1e-2
    optimizer: str = "sgd"
    warmup_steps: int = 0
    weight_decay: float = 5e-4
    importance: str = "weight_norm"
    refit: str = "none"
    basis: str = "channels"
    calibration_images: int = CALIBRATION_IMAGES
    refit_inputs: str = "masked"
    distill: float = DISTILL["distill"]
    distill_temperature: float = DISTILL["distill_temperature"]
    allocation: str = "uniform"

    def __post_init__(self):
        from disco_jax.errors import ConfigError

        if self.refit_inputs not in REFIT_INPUTS:
            raise ConfigError(f"refit_inputs must be one of {REFIT_INPUTS}, got "
                              f"{self.refit_inputs!r}")
        if self.basis == "directions" and (self.prune_steps or self.refit != "lstsq"):
            raise ConfigError(
                "basis 'directions' chooses what travels layer by layer inside the "
                f"least-squares refit: it needs --prune-steps 0 and --refit lstsq (got "
                f"prune_steps={self.prune_steps}, refit={self.refit!r})")
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.allocation == "learned" and self.basis != "directions":
            raise ConfigError(
                "allocation 'learned' shares the bytes among layers by what their "
                "reduced-rank directions carry: it needs the directions method (basis "
                f"'directions', the main job's default), got basis {self.basis!r}")
        if self.calibration_images < 1:
            raise ConfigError(f"calibration_images must be positive, got "
                              f"{self.calibration_images}")
        _ = self.distillation  # raises on a weight or temperature that cannot work

    @property
    def distillation(self):
        """The :class:`~disco_jax.train.Distillation` every variant trains
        with, or None (``distill == 0``)."""
        from disco_jax.train import Distillation

        if self.distill == 0.0:
            return None
        return Distillation(self.distill, self.distill_temperature)

    @property
    def steps(self) -> int:
        return self.prune_steps + self.finetune_steps

    @classmethod
    def of(cls, settings) -> Schedule:
        """The schedule of a run's ``settings`` (its ``settings.json``, or its
        command line's ``vars(args)``: the same names; a name it lacks keeps
        its default, as in runs made before the name existed)."""
        return cls(**{field.name: settings[field.name] for field in dataclasses.fields(cls)
                      if field.name in settings or field.default is dataclasses.MISSING})


def variants_of(schedule: Schedule) -> tuple[str, ...]:
    """The variants a run with ``schedule`` compares, in report order."""
    return (VARIANTS + (("random_directions",) if schedule.basis == "directions" else ())
            + (("uniform_allocation",) if schedule.allocation == "learned" else ()))


def comm_ratio_of(variant: str, comm_ratio: float) -> float:
    """The rho a variant's plan ends with."""
    return {"no_comm": 0.0, "dense_split": 1.0}.get(variant, comm_ratio)


def mask_method(variant: str, comm_ratio: float, schedule: Schedule, seed: int,
                start: int = 0, task=None):
    """The :class:`~disco_jax.sparsify.MaskMethod` of ``variant``'s pruning
    phase, which begins at step ``start``; importances that measure a loss
    measure ``task``'s (default: classification into the model's classes)."""
    from disco_jax import sparsify

    def pruning(ratio, **options):
        return sparsify.GradualPruning(ratio, start=start, end=start + schedule.prune_steps,
                                       interval=max(schedule.prune_steps // 15, 1), seed=seed,
                                       task=task, **options)

    if schedule.importance == STRAIGHT_THROUGH:
        # the learned masks are exact from the start: so are the baselines'
        if variant in ("learned", "uniform_allocation"):
            return sparsify.StraightThroughTopK(comm_ratio, start=start,
                                                end=start + schedule.prune_steps, task=task)
        if variant in ("random", "random_directions", "no_comm"):
            return sparsify.FixedMask("no_comm" if variant == "no_comm" else "random",
                                      comm_ratio, start=start, seed=seed)
    if variant in ("learned", "uniform_allocation"):
        return pruning(comm_ratio, lasso=schedule.lasso, importance=schedule.importance)
    if variant in ("random", "random_directions"):  # random_directions: set by the refit
        return pruning(comm_ratio, lasso=0.0, importance="random")
    if variant == "no_comm":
        return pruning(0.0, lasso=schedule.lasso, importance=schedule.importance)
    if variant == "dense_split":
        return sparsify.FixedMask("dense_split", start=start)
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def run_config(schedule: Schedule, steps: int, seed: int):
    """The :class:`~disco_jax.train.TrainConfig` of a run of ``steps`` steps
    with ``schedule``'s optimiser settings."""
    from disco_jax.train import TrainConfig

    return TrainConfig(steps=steps, batch_size=schedule.batch_size,
                       learning_rate=schedule.learning_rate,
                       warmup_steps=min(schedule.warmup_steps, steps // 2),
                       optimizer=schedule.optimizer, weight_decay=schedule.weight_decay,
                       seed=seed, checkpoint_every=max(steps, 1))


def train_dense(dense, train_split, task, schedule: Schedule, steps: int, seed: int,
                *, checkpoint_dir: Path | None = None, description: str = "dense"):
    """Trains ``dense`` with every channel read for the first ``steps`` steps of
    the run its variants go on with (``run_config(schedule, steps +
    schedule.steps, seed)``), checkpointing into ``checkpoint_dir`` four times
    (a run started again resumes there).

    Returns:
      the run's :class:`flax.nnx.Optimizer` at step ``steps``, for
      :func:`train_variant` (``optimizer=``).
    """
    from disco_jax import sparsify
    from disco_jax.train import train

    sparsify.FixedMask("dense_split").update(dense, 0)
    config = run_config(schedule, steps + schedule.steps, seed)
    config = dataclasses.replace(config, checkpoint_every=max(steps // 4, 1))
    return train(dense, train_split, task, config, until=steps,
                 checkpoint_dir=checkpoint_dir, description=description).optimizer


def payload_of_variant(variant: str, payload: str) -> str:
    """What ``variant`` sends in a run whose ``--payload-dtype`` is
    ``payload``: the dense split, the paper's baseline, stays float32 (and
    ``no_comm`` sends nothing)."""
    return "float32" if variant in ("dense_split", "no_comm") else payload


ALLOCATION_VALUE = "fisher"
"""How ``allocation="learned"`` compares directions of different layers
(:func:`disco_jax.budget.allocate`'s ``value``; reported in the recipe)."""

AT_BUDGET = "at_budget.json"
"""In a variant's checkpoint folder: its metric at the budget, before fine-tuning."""


def _finished(checkpoint_dir: Path | None, steps: int) -> float | None:
    """The metric at the budget of a variant whose fine-tuning has its last
    checkpoint (step ``steps``) in ``checkpoint_dir``, or None (not finished,
    or saved before the metric was kept)."""
    if checkpoint_dir is None or not (checkpoint_dir / "finetune" / str(steps)).is_dir():
        return None
    try:
        return float(json.loads((checkpoint_dir / AT_BUDGET).read_text())["metric"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train_variant(dense, variant: str, comm_ratio: float, schedule: Schedule, seed: int,
                  train_split, evaluate_fn, task, *, checkpoint_dir: Path | None = None,
                  label: str = "", optimizer=None, evaluate_final: bool = True,
                  payload: str = "float32"):
    """Trains one variant from a copy of the dense model.

    Two ways to spend the variant's steps:

    - ``optimizer=None``: two fresh runs, pruning then fine-tuning, each with
      its own warmup + cosine schedule of ``schedule``'s learning rate;
    - ``optimizer=`` the dense run's optimiser (``TrainResult.optimizer`` or
      :func:`~disco_jax.train.restore_run`'s), at step P: the variant goes on
      with the dense run itself, its optimiser state and the data order of
      ``seed``, for steps P .. P + ``schedule.steps`` of one schedule (the
      dense run was trained with ``run_config(schedule, P + schedule.steps,
      seed)`` up to P); the masks reach the budget at P + ``prune_steps``.
      The dense split variant is then exactly the uninterrupted dense run.

    Arguments:
      dense: the trained dense model (left as it is).
      evaluate_fn: ``model -> metric`` (called after each phase).
      task: the :class:`~disco_jax.tasks.Task` trained on (or a number of
        classes: classification).
      checkpoint_dir: save each phase here (``prune/`` and ``finetune/``) and
        resume from it; a variant whose fine-tuning finished there is loaded
        from its last checkpoint, its masks and refit not computed again.
      evaluate_final: False to skip ``evaluate_fn`` after fine-tuning (the
        caller measures the model itself).
      payload: what the variant's channels travel as
        (:func:`payload_of_variant`): it trains reading them
        (:func:`disco_jax.set_payload_dtype`) from its first step.

    Returns:
      ``(model, metric at budget, metric after fine-tuning or None)``.
    """
    from flax import nnx

    from disco_jax.basis import principal_basis
    from disco_jax.budget import allocate, ratio_bytes
    from disco_jax.layers import set_payload_dtype
    from disco_jax.projections import choose_directions
    from disco_jax.refit import refit
    from disco_jax.train import restore_model, train

    def folder(phase):
        return None if checkpoint_dir is None else checkpoint_dir / phase

    model = nnx.clone(dense)
    set_payload_dtype(model, payload_of_variant(variant, payload))
    fresh = optimizer is None
    start = 0 if fresh else int(optimizer.step[...])
    if fresh:
        prune_config = run_config(schedule, schedule.prune_steps, seed + 1000)
        finetune_config = run_config(schedule, schedule.finetune_steps, seed + 2000)
    else:
        prune_config = finetune_config = run_config(schedule, start + schedule.steps, seed)
    done = _finished(checkpoint_dir, finetune_config.steps)
    if done is not None:  # trained before: its last checkpoint, without the masks and refit
        restore_model(model, checkpoint_dir / "finetune")
        return model, done, evaluate_fn(model) if evaluate_final else None
    distill = schedule.distillation
    teacher = None if distill is None else dense  # left as it is: train runs it, changes nothing
    images, labels = calibration(train_split, seed, schedule.calibration_images)
    if schedule.basis == "principal" and variant == "learned":
        principal_basis(model, images)
        dense = nnx.clone(model)  # the same function: what the refit reproduces
    choose = None  # directions are chosen layer by layer inside the refit
    if schedule.basis == "directions" and variant in ("learned", "uniform_allocation",
                                                      "random_directions"):
        share = comm_ratio  # the uniform ratio, or each layer's k under one budget:
        if variant == "learned" and schedule.allocation == "learned":
            sent = payload_of_variant(variant, payload)
            share = allocate(dense, images, ratio_bytes(dense, images, comm_ratio, sent),
                             payload=sent, labels=labels, task=task, value=ALLOCATION_VALUE)
        choose = choose_directions(
            "random_directions" if variant == "random_directions" else "reduced_rank",
            share, seed)
    method = mask_method(variant, comm_ratio, schedule, seed, start=start, task=task)
    if schedule.prune_steps > 0:
        optimizer = train(model, train_split, task, prune_config, method=method,
                          optimizer=optimizer, checkpoint_dir=folder("prune"),
                          until=start + schedule.prune_steps, teacher=teacher, distill=distill,
                          description=f"{label}{variant} prune").optimizer
    elif choose is None:  # the masks at once, on the calibration images
        method.update(model, start, images=images, labels=labels)
    if schedule.refit == "lstsq" and variant != "dense_split":
        refit(model, dense, images, choose=choose, inputs=schedule.refit_inputs)
    at_budget = evaluate_fn(model)
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (checkpoint_dir / AT_BUDGET).write_text(json.dumps({"metric": at_budget}))
    train(model, train_split, task, finetune_config, optimizer=None if fresh else optimizer,
          checkpoint_dir=folder("finetune"), teacher=teacher, distill=distill,
          description=f"{label}{variant} fine-tune")
    return model, at_budget, evaluate_fn(model) if evaluate_final else None


def calibration(train_split, seed: int, count: int = CALIBRATION_IMAGES):
    """The ``count`` training images (and labels) of ``seed`` that masks set at
    once and the refit are computed on."""
    count = min(count, len(train_split))
    index = np.sort(np.random.default_rng(seed).choice(len(train_split), count, replace=False))
    return train_split.images[index], train_split.labels[index]


def stats(values) -> dict:
    """Mean, sample std (ddof=1; None for one value) and the values."""
    values = np.asarray(values, np.float64)
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"mean": float(np.mean(values)), "std": spread, "values": values.tolist()}


def merge_seed_reports(reports: list[dict]) -> dict:
    """One report over the seeds of several reports of one setting (each run
    as its own process, say): every summary (``{"mean", "std", "values"}``)
    over the seeds of them all, in seed order, ``seeds`` and ``wall_seconds``
    combined; every other field must be equal.

    Raises:
      ConfigError: two reports share a seed, or differ in a field (named).
    """
    from disco_jax.errors import ConfigError

    seeds = [seed for report in reports for seed in report["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"these reports share a seed: {seeds}; give each seed once")
    order = np.argsort(seeds, kind="stable")

    def merge(parts: list, where: str):
        first = parts[0]
        if isinstance(first, dict) and set(first) == {"mean", "std", "values"}:
            values = [value for part in parts for value in part["values"]]
            return stats(np.asarray(values)[order])
        if isinstance(first, dict) and all(isinstance(p, dict) and p.keys() == first.keys()
                                           for p in parts):
            return {key: merge([p[key] for p in parts], f"{where}.{key}") for key in first}
        if any(p != first for p in parts):
            raise ConfigError(f"these reports are not seeds of one setting: {where.lstrip('.')} "
                              f"differs ({', '.join(json.dumps(p) for p in parts)}); merge "
                              "only runs made with the same settings")
        return first

    fields = {key: [report.get(key) for report in reports]
              for key in reports[0] if key not in ("seeds", "wall_seconds")}
    missing = {key for report in reports for key in report} - set(reports[0])
    if missing:
        raise ConfigError(f"these reports are not seeds of one setting: only some have "
                          f"{sorted(missing)}")
    merged = {key: merge(parts, key) for key, parts in fields.items()}
    return merged | {"seeds": sorted(seeds),
                     "wall_seconds": round(sum(r["wall_seconds"] for r in reports), 1)}


def plan_and_budget_bytes(model, image_shape, comm_ratio: float, *, allocated: bool = False):
    """The plan compiled from ``model`` (which raises unless every pair of
    every layer sends the same k), its costs, and its bytes per image against
    the budget's (k = rho * C_in/N in every DISCO layer, in its payload, plus
    what the masks do not decide: LayerNorm statistics).

    With ``allocated`` (a learned allocation of the same budget,
    :func:`disco_jax.budget.allocate`) the plan is on its budget when it
    sends at most the budget and falls short of it by less than one more
    direction per pair in each layer (``"slack"``).

    Returns:
      ``(Plan, ModelCosts, {"plan": bytes, "budget": bytes, "exact": bool})``.
    """
    import disco_jax as dj
    from disco_jax.budget import layer_step_bytes

    plan = dj.compile_plan(model)
    costs = dj.model_costs(model, image_shape, plan)
    shapes = {name: costs.layers[name]["input_shape"][:-1] for name in plan}
    budget = sum(
        dj.layer_costs(layer.spec, dj.k_for_ratio(comm_ratio, layer.spec.group_in),
                       shapes[name], payload=layer.payload)["disco"].comm_bytes
        for name, layer in plan.items() if layer.spec.split_input)
    # what the masks do not decide (LayerNorm statistics) costs the same in every variant
    budget += sum(entry["disco"].comm_bytes for entry in costs.others.values())
    sent = costs.totals["disco"].comm_bytes
    if not allocated:
        return plan, costs, {"plan": sent, "budget": budget, "exact": sent == budget}
    slack = sum(layer_step_bytes(layer.spec, dj.accounting.read_spatial(layer.spec,
                                                                        shapes[name]),
                                 layer.k, layer.payload)
                for name, layer in plan.items()
                if layer.spec.split_input and layer.k < layer.spec.group_in)
    return plan, costs, {"plan": sent, "budget": budget, "slack": slack,  # every layer full:
                         "exact": sent == budget or budget - slack < sent <= budget}


def write_report(path: Path, report: dict) -> None:
    """Writes ``report`` as JSON; a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=1))
    partial.replace(path)
