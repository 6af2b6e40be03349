"""The experiments' one pipeline: a network, its variants, the mesh, the report.

:mod:`experiments.resnet50` and :mod:`experiments.vit` are this pipeline with
their network (a :class:`Network`: presets, the model builder, the targets).
Per run, on the offline default data (Fashion-MNIST from the Debian package):

1. train the dense model (every channel read) for the first P steps of one
   run (AdamW, warmup, cosine over all P + V steps), or load it, with its
   optimiser state, with ``--init DIR`` (a checkpoint folder an earlier run
   wrote, e.g. ``runs/resnet50-n2/dense``);
2. from that one checkpoint, each variant of :mod:`experiments.compare`
   (learned masks = DISCO, random masks at the same k, no communication, the
   dense split) goes on with the same run for the same V steps: masks pruned
   to the budget, then fine-tuned. The dense split is thus the uninterrupted
   dense run of P + V steps;
3. compile the DISCO model's plan and save it with the checkpoints under
   ``--out``;
4. run the DISCO model on an N-device mesh (``jax.shard_map``; emulated CPU
   devices when the machine has fewer) over the test set, and check it
   against the single-device masked reference; the other variants' metric
   (the task's: top-1, mIoU, ...) is measured on the mesh as well;
5. print the DESIGN.md section 7 table, write it as JSON (``--report``) and
   draw the PNG plots (bytes per layer; with ``--sweep``, the metric against
   bytes per image: the Pareto curve of :mod:`experiments.sweep`).

Every phase saves an orbax checkpoint under ``--out``: a run started again
with the same settings resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from experiments.compare import ALLOCATION_VALUE, ALLOCATIONS, RECIPE, STRAIGHT_THROUGH
from experiments.sweep import (
    DEFAULT_SERIES,
    SERIES,
    checked,
    format_sweep,
    parse_list,
    payload_twins,
)

IMPORTANCES = ("weight_norm", "saliency", "fisher")
"""How the learned masks rank channels (:class:`disco_jax.sparsify.GradualPruning`)."""

MASK_CHOICES = IMPORTANCES + (STRAIGHT_THROUGH,)
"""``--importance``: a ranking, or ``straight_through``: learned scores, the top
k read at every step (:class:`disco_jax.sparsify.StraightThroughTopK`)."""

SHARED_CHOICES = {"optimizer": ("sgd", "adamw"), "importance": MASK_CHOICES}
"""Allowed values of the settings every experiment has (``--help`` needs no jax,
so the optimisers are spelled here, not read from :mod:`disco_jax.train`)."""


@dataclasses.dataclass(frozen=True)
class Targets:
    """What a run must show: communication >= ``comm_reduction`` x below the
    dense split, FLOPs and weights per node at most these fractions of a
    single device (None: not a target), DISCO within ``gap`` points of the
    dense split (in the task's unit: points, dB) and above random masks;
    with ``over_baseline = (name, margin)`` the dense split at least
    ``margin`` above the task's baseline ``name`` (bicubic upscaling, say)."""

    comm_reduction: float
    gap: float
    flops: float | None = None
    params: float | None = None
    title: str = "targets for this run"
    over_baseline: tuple[str, float] | None = None
    payload_gap: float | None = None
    """A lossy payload (bfloat16, int8) within this of float32 at the same
    channels, judged where a sweep has both (:func:`experiments.sweep.payload_twins`)."""


@dataclasses.dataclass(frozen=True)
class Network:
    """What an experiment's network brings to the pipeline.

    Attributes:
      program: the module run with ``python -m`` (``experiments.resnet50``).
      models: the ``--model`` choices, the default first.
      presets: ``default``, ``full`` and ``quick`` settings (and any others,
        which ``--preset`` offers), each with the same names; each name is
        also a command-line option (``--width``), and decides the trained
        weights.
      choices: allowed values of the network's own settings that take a few
        (beside :data:`SHARED_CHOICES`).
      helps: help texts of settings that need more than their default.
      build: ``(settings, dataset) -> model``: the untrained network of a run.
      architecture: the settings the report repeats next to ``model``.
      describe: ``report -> str``, the architecture in the table's first line.
      recipe: training details the report adds to its recipe.
      targets: what the run must show (``model_targets``: other targets for
        some of the ``models``, by name; :meth:`targets_of`).
      model_presets: for some of the ``models``, by name, settings of some
        presets that differ from ``presets`` (``{"swinir": {"default":
        {...}}}``; :meth:`preset_of`).
      doc: the program's help text.
      dataset_name: the default ``--dataset``.
      load: ``settings -> Dataset``: the run's data (default: a
        classification dataset, :func:`load_classification`).
      task: ``dataset -> Task``: what the network is trained and measured on
        (default: classification into the dataset's classes).
      picture: ``(models, test, task, path) -> path`` or None: a figure of
        test examples and the variants' outputs (segmentation maps, say).
    """

    program: str
    models: tuple[str, ...]
    presets: dict[str, dict]
    build: Callable
    architecture: tuple[str, ...]
    describe: Callable[[dict], str]
    targets: Targets
    doc: str
    choices: dict[str, tuple] = dataclasses.field(default_factory=dict)
    helps: dict[str, str] = dataclasses.field(default_factory=dict)
    recipe: dict = dataclasses.field(default_factory=dict)
    dataset_name: str = "fashion_mnist"
    load: Callable[[dict], object] | None = None
    task: Callable[[object], object] | None = None
    picture: Callable | None = None
    model_targets: dict[str, Targets] = dataclasses.field(default_factory=dict)
    model_presets: dict[str, dict[str, dict]] = dataclasses.field(default_factory=dict)

    def preset_of(self, model: str, preset: str) -> dict:
        """The settings of ``preset`` for ``model``."""
        return self.presets[preset] | self.model_presets.get(model, {}).get(preset, {})

    def targets_of(self, model: str) -> Targets:
        """What a run of ``model`` must show."""
        return self.model_targets.get(model, self.targets)

    def dataset(self, settings: dict):
        """The data of a run with ``settings``."""
        return (self.load or load_classification)(settings)

    def task_of(self, dataset):
        """The :class:`~disco_jax.tasks.Task` of a run on ``dataset``."""
        from disco_jax.tasks import Classification

        return self.task(dataset) if self.task else Classification(dataset.classes)

    @property
    def settings(self) -> tuple[str, ...]:
        return tuple(self.presets["default"])

    def parse_args(self, argv=None) -> argparse.Namespace:
        """The experiment's command line (:func:`parse_args`)."""
        return parse_args(self, argv)

    def main(self, argv=None) -> int:
        """The experiment's entry point (:func:`main`)."""
        return main(self, argv)


def network_of(model: str) -> Network:
    """The :class:`Network` that trains ``model`` (a run's ``settings["model"]``)."""
    from disco_jax.errors import ConfigError

    for program in PROGRAMS:
        network = importlib.import_module(program).NETWORK
        if model in network.models:
            return network
    raise ConfigError(f"no experiment trains a model named {model!r}")


PROGRAMS = ("experiments.resnet50", "experiments.vit", "experiments.segmentation",
            "experiments.detection", "experiments.super_resolution")
"""The experiments built on this pipeline (their ``NETWORK``s; model names are unique)."""


def load_classification(settings: dict):
    """A classification dataset (:func:`disco_jax.data.load`) at the run's
    ``dataset`` and ``image_size``."""
    from disco_jax import data

    return data.load(settings["dataset"], image_size=settings["image_size"])


def build_model(settings: dict, dataset):
    """The (untrained) network a run with ``settings`` (its ``settings.json``)
    trains, for ``dataset``'s images and classes."""
    return network_of(settings["model"]).build(settings, dataset)


def open_run(run: Path, checkpoint: str, holds: str, program: str):
    """The saved run in folder ``run``: its settings (``settings.json``), its
    dataset and its (untrained) network, after checking that the run has the
    checkpoint folder ``checkpoint``.

    Raises:
      ConfigError: ``{run} holds no {holds} (... is missing)``, naming
        ``program`` as the way to make one.
    """
    from disco_jax.errors import ConfigError

    record, folder = run / "settings.json", run / checkpoint
    if not record.is_file() or not folder.is_dir():
        missing = record if not record.is_file() else folder
        raise ConfigError(f"{run} holds no {holds} ({missing} is missing); make one with "
                          f"python -m {program} --out {run}")
    settings = json.loads(record.read_text())
    dataset = network_of(settings["model"]).dataset(settings)
    return settings, dataset, build_model(settings, dataset)


def parse_args(network: Network, argv=None) -> argparse.Namespace:
    from disco_jax.payload import PAYLOADS

    parser = argparse.ArgumentParser(prog=f"python -m {network.program}",
                                     description=network.doc.split("\n\n")[0])
    parser.add_argument("--mesh", type=int, default=2, help="nodes N (1, 2, 4, 8; default 2)")
    parser.add_argument("--comm-ratio", type=float, default=0.2,
                        help="rho = channels sent / channels a node holds, in [0, 1]")
    parser.add_argument("--payload-dtype", choices=PAYLOADS, default="float32",
                        help="what the channels that travel are sent as (every variant but "
                             "the dense split, which stays float32): bfloat16, or int8 with a "
                             "scale per channel and image (the scales travel too); the "
                             "variants train reading them (default float32)")
    parser.add_argument("--allocation", choices=ALLOCATIONS, default="uniform",
                        help="uniform: every layer sends the comm ratio's share of its "
                             "channels (default); learned: DISCO sends the same bytes per "
                             "image in all, shared out across layers by what each byte "
                             "buys, and a 'DISCO, uniform ratio' row sends the same "
                             "directions at the uniform ratio (needs the directions method)")
    parser.add_argument("--model", choices=network.models, default=network.models[0])
    parser.add_argument("--dataset", default=network.dataset_name,
                        help=network.helps.get("dataset", "fashion_mnist (offline) or a "
                                                          "tensorflow-datasets name"))
    parser.add_argument("--init", type=Path,
                        help="load the dense model from this checkpoint folder instead of "
                             "training it")
    parser.add_argument("--preset", choices=tuple(p for p in network.presets if p != "quick"),
                        default="default")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps of a narrow net (the 'quick' preset), under 3 minutes")
    for name, value in network.presets["default"].items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value),
                            choices=(SHARED_CHOICES | network.choices).get(name),
                            help=network.helps.get(
                                name, f"overrides the preset's {name} ({value!r} by default)"))
    parser.add_argument("--lasso", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", help="comma-separated comm ratios, e.g. 0.05,0.1,0.2: the "
                                        "byte budgets of the Pareto curve (metric against "
                                        "bytes per image), one point per ratio, series and "
                                        "payload (one more variant each)")
    parser.add_argument("--sweep-series", default=",".join(DEFAULT_SERIES),
                        help="the sweep's curves, comma-separated among "
                             f"{', '.join(SERIES)}: learned masks (or directions) at the "
                             "uniform ratio, the same bytes shared out across layers "
                             "(learned allocation), random masks (default learned)")
    parser.add_argument("--sweep-payloads",
                        help="comma-separated payloads of the sweep's points, among "
                             f"{', '.join(PAYLOADS)} (default: --payload-dtype)")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2,3,4: run each (its "
                                        "own dense model, in OUT/seed-S) and report mean ± std "
                                        "and the paired differences between variants")
    parser.add_argument("--out", type=Path,
                        help="checkpoints, plan and plots (default runs/MODEL-nN[-quick])")
    parser.add_argument("--report", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    preset = "quick" if args.quick else args.preset
    args.preset = preset
    for name, value in network.preset_of(args.model, preset).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 0.0 <= args.comm_ratio <= 1.0:
        parser.error(f"--comm-ratio must be in [0, 1] (1 = dense split, 0 = no communication), "
                     f"got {args.comm_ratio}")
    if args.mesh < 1:
        parser.error(f"--mesh must be a positive number of nodes, got {args.mesh}")
    try:
        args.sweep = [] if not args.sweep else [float(r) for r in args.sweep.split(",")]
    except ValueError:
        parser.error(f"--sweep takes comma-separated numbers in [0, 1], got {args.sweep!r}")
    if any(not 0.0 <= r <= 1.0 for r in args.sweep):
        parser.error(f"--sweep ratios must be in [0, 1], got {args.sweep}")
    if args.sweep and args.mesh < 2:
        parser.error("--sweep trades bytes between nodes: it needs --mesh 2 or more")
    try:
        args.sweep_series = parse_list(args.sweep_series, tuple(SERIES), "--sweep-series")
        args.sweep_payloads = parse_list(args.sweep_payloads or args.payload_dtype, PAYLOADS,
                                         "--sweep-payloads")
    except ValueError as err:
        parser.error(str(err))
    try:
        args.seeds = [] if not args.seeds else [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds names a seed twice: {args.seeds}")
    if args.out is None:
        args.out = Path("runs") / f"{args.model}-n{args.mesh}{'-quick' if args.quick else ''}"
    return args


def _settings(network: Network, args) -> dict:
    """What decides the trained weights: a checkpoint folder is reused only
    by a run with the same settings."""
    payload = {} if args.payload_dtype == "float32" else {"payload_dtype": args.payload_dtype}
    allocation = {} if args.allocation == "uniform" else {"allocation": args.allocation}
    return {"model": args.model, "dataset": args.dataset, **payload, **allocation,
            "nodes": args.mesh, "comm_ratio": args.comm_ratio, "lasso": args.lasso,
            "seed": args.seed, "init": None if args.init is None else str(args.init.resolve()),
            **{name: getattr(args, name) for name in network.settings}}


def _claim_out_dir(network: Network, args) -> None:
    from disco_jax.errors import ConfigError

    record = args.out / "settings.json"
    ours = _settings(network, args)
    if record.is_file():
        theirs = json.loads(record.read_text())
        changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if changed:
            raise ConfigError(
                f"{args.out} holds the checkpoints of a run with other settings ("
                + ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now"
                            for k in changed)
                + "); give another --out, or delete the folder to start over")
    args.out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(ours, indent=1))


def run(network: Network, args) -> dict:
    import jax

    import disco_jax as dj
    from disco_jax import data, sparsify
    from disco_jax.train import evaluate, restore_run
    from experiments.compare import (
        QUALITY_KEYS,
        Schedule,
        comm_ratio_of,
        plan_and_budget_bytes,
        train_dense,
        train_variant,
        variants_of,
    )
    from experiments.sweep import RunPoints, run_sweep

    started, timings = time.time(), {}
    settings = _settings(network, args)
    dataset = network.dataset(settings)
    task = network.task_of(dataset)
    task.check(dataset.train)
    task.check(dataset.test)
    test = data.Split(dataset.test.images[:args.test_images],
                      dataset.test.labels[:args.test_images])
    held_out = data.Split(test.images[:args.eval_images], test.labels[:args.eval_images])
    image = (1, *dataset.image_shape)
    dense = network.build(settings, dataset)
    mesh = dj.make_mesh(args.mesh)  # too few devices: say so before any training

    # 1. the dense model: the first steps of one run that each variant goes on with
    schedule = Schedule.of(vars(args))
    series_schedules = {  # a series the run's method cannot draw: say so before training
        name: dataclasses.replace(schedule, allocation=SERIES[name].allocation)
        for name in (args.sweep_series if args.sweep else ())}
    if args.init is not None:
        sparsify.FixedMask("dense_split").update(dense, 0)
        init_step, optimizer = restore_run(dense, args.init, optimizer=args.optimizer)
    _claim_out_dir(network, args)  # only now: a refused run leaves no folder behind
    if args.init is not None:
        pretrain_steps = None
    else:
        optimizer = train_dense(dense, dataset.train, task, schedule, args.pretrain_steps,
                                args.seed, checkpoint_dir=args.out / "dense")
        init_step, pretrain_steps = None, args.pretrain_steps
    timings["dense"] = time.time() - started

    # 2. the variants, from that one checkpoint, with the same steps
    def held_out_score(model):
        return evaluate(model, held_out, task)

    variants = variants_of(schedule) if args.mesh > 1 else ("dense_split",)  # N = 1: no comm
    models, plans, at_budget, bytes_sent = {}, {}, {}, {}
    for variant in variants:
        begin = time.time()
        models[variant], at_budget[variant], _ = train_variant(
            dense, variant, args.comm_ratio, schedule, args.seed, dataset.train,
            held_out_score, task, checkpoint_dir=args.out / variant, optimizer=optimizer,
            evaluate_final=False, payload=args.payload_dtype)
        plans[variant], _, bytes_sent[variant] = plan_and_budget_bytes(
            models[variant], image, comm_ratio_of(variant, args.comm_ratio),
            allocated=variant == "learned" and schedule.allocation == "learned")
        timings[variant] = time.time() - begin
    if args.mesh == 1:
        models["learned"], plans["learned"] = models["dense_split"], plans["dense_split"]

    # the test set, on the mesh: DISCO against its single-device reference, the
    # other variants' metric (at N = 1 DISCO is the dense split)
    begin = time.time()
    metric = task.metric
    disco, plan = models["learned"], plans["learned"]
    plan_dir = dj.save_plan(plan, args.out / "plan", overwrite=True)
    check = distributed_check(disco, plan, mesh, test, task, keep=args.out / "learned")
    points = RunPoints(args.comm_ratio, args.payload_dtype, schedule.allocation)
    on_curve = {point[-1] for point in points.points(args.sweep, args.sweep_series,
                                                     args.sweep_payloads)}
    checks = {v: check if model is disco else
              distributed_check(model, plans[v], mesh, test, task, reference=v in on_curve,
                                keep=args.out / v)
              for v, model in models.items()}
    every_metric = {v: check["reference_metrics"] if model is disco else checks[v]["metrics"]
                    for v, model in models.items()}
    scores = {v: values[metric] for v, values in every_metric.items()}
    timings["test_and_mesh"] = time.time() - begin
    figures = []
    if network.picture is not None:
        figures.append(network.picture(models, test, task, args.out / "examples.png"))

    costs = dj.model_costs(disco, image, plan)
    totals = costs.totals

    # the Pareto curve: each point trained with the same steps (the run's own
    # variants where they are points), checked as DISCO is
    def train_point(series, payload, ratio, folder):
        model, _, _ = train_variant(dense, SERIES[series].variant, ratio,
                                    series_schedules[series], args.seed, dataset.train,
                                    held_out_score, task, checkpoint_dir=folder,
                                    optimizer=optimizer, evaluate_final=False,
                                    payload=payload, label=f"{folder.name}: ")
        point_plan, _, budget = plan_and_budget_bytes(
            model, image, ratio, allocated=SERIES[series].allocation == "learned")
        result = distributed_check(model, point_plan, mesh, test, task, keep=folder)
        return point_plan, budget, result, result[metric]

    begin = time.time()
    sweep = run_sweep(points, args.sweep, args.sweep_series, args.sweep_payloads,
                      out=args.out, metric=metric,
                      dense_split_bytes=totals["dense_split"].comm_bytes,
                      known=lambda v: (plans[v], bytes_sent[v], checks[v], scores[v]),
                      train=train_point)
    if sweep:
        timings["sweep"] = time.time() - begin

    def quality(values):
        result = {"metric": metric, "single": values.get("dense_split")}
        result.update({QUALITY_KEYS[v]: values.get(v) for v in variants_of(schedule)})
        return result

    steps = (args.pretrain_steps if pretrain_steps is not None else 0) + schedule.steps
    return {
        "model": args.model, "task": task.name, "metric_label": task.label,
        "metric_scale": task.display_scale, "metric_unit": task.unit,
        "dataset": args.dataset,
        "input_shape": list(dataset.image_shape),
        **{name: getattr(args, name) for name in network.architecture},
        "nodes": args.mesh, "comm_ratio": args.comm_ratio, "payload_dtype": args.payload_dtype,
        "preset": args.preset, "seed": args.seed,
        "quality": quality(scores),
        "metrics": {QUALITY_KEYS[v]: values for v, values in every_metric.items()
                    if v in QUALITY_KEYS},
        "quality_at_budget": quality(at_budget) | {"images": len(held_out)},
        "baselines": task.baselines(test),
        "test_images": len(test),
        "steps_per_variant": {
            "dense": pretrain_steps, "init": None if args.init is None else str(args.init),
            "init_step": init_step, "prune": schedule.prune_steps,
            "finetune": schedule.finetune_steps, "batch_size": args.batch_size,
            "total": steps, "images": steps * args.batch_size},
        "recipe": {name: getattr(args, name) for name in RECIPE}
                  | {"lasso": args.lasso, "importance": args.importance,
                     "refit": schedule.refit, "basis": schedule.basis,
                     "calibration_images": schedule.calibration_images,
                     "refit_inputs": schedule.refit_inputs, "distill": schedule.distill,
                     "allocation": schedule.allocation,
                     **({"allocation_value": ALLOCATION_VALUE}  # the run's or a series'
                        if "learned" in {s.allocation for s in (schedule,
                                                                *series_schedules.values())}
                        else {}),
                     "distill_temperature": schedule.distill_temperature}
                  | network.recipe,
        "comm_bytes_per_sample": {"dense_split": totals["dense_split"].comm_bytes,
                                  "disco": totals["disco"].comm_bytes,
                                  "disco_hlo": check["hlo_bytes_per_sample"]},
        "comm_reduction": costs.comm_reduction,
        "bytes_plan_vs_budget": bytes_sent,
        "flops_per_node": {**{v: totals[v].flops for v in dj.accounting.VARIANTS},
                           "disco_hlo": check["hlo_flops_per_sample"]},
        "params_per_node": {v: totals[v].params for v in dj.accounting.VARIANTS},
        "max_abs_diff_vs_reference": check["max_abs_diff"],
        "distributed": {k: v for k, v in check.items()
                        if k not in ("hlo_bytes_per_sample", "hlo_flops_per_sample",
                                     "max_abs_diff")},
        "latency_ms": None,  # emulated devices share the host's cores: see benchmarks
        "sweep": sweep, "plots": [str(path) for path in figures],
        "paths": {"out": str(args.out), "plan": str(plan_dir),
                  "disco_checkpoint": str(args.out / "learned" / "finetune")},
        "layers": [{"name": name, "k": entry["k"], "input_shape": list(entry["input_shape"]),
                    **{v: vars(entry[v]) for v in dj.accounting.VARIANTS}}
                   for name, entry in costs.layers.items()],
        "other_parts": [{"name": name, "input_shape": list(entry["input_shape"]),
                         **{v: vars(entry[v]) for v in dj.accounting.VARIANTS}}
                        for name, entry in costs.others.items()],
        "seconds": {k: round(v, 1) for k, v in timings.items()}
                   | {"total": round(time.time() - started, 1)},
        "jax": jax.__version__, "devices": [str(d) for d in mesh.devices.flat],
    }


def distributed_check(model, plan, mesh, test, task, batch: int = 500, *,
                       reference: bool = True, keep: Path | None = None) -> dict:
    """Runs ``model``'s inference form on ``mesh`` over ``test`` and, with
    ``reference``, compares it with the single-device masked reference (the
    training form, one device): :func:`disco_jax.evaluation.mesh_check`, in
    the report's terms (the primary metric as ``task.metric`` and
    ``reference_`` + it). Without it, only the mesh's metrics. With ``keep``
    (the variant's folder), the check is kept there and read back when the
    run is started again with the same model, plan, test set and code
    (:mod:`experiments.checks`)."""
    from disco_jax.evaluation import mesh_check
    from experiments.checks import check_key, kept

    batch = min(batch, len(test))
    key = None if keep is None else check_key(model, plan, test, batch=batch, nodes=mesh.size)
    check = kept(keep, key, lambda: mesh_check(model, plan, mesh, test, task, batch=batch,
                                               reference=reference), reference=reference)
    metric = task.metric
    result = {metric: check["metrics"][metric], "images": check["images"],
              "batch": check["batch"], "mesh_seconds": check["mesh_seconds"],
              "metrics": check["metrics"], "checked_at": check.get("checked_at")}
    if not reference:
        return result
    return result | {f"reference_{metric}": check["reference_metrics"][metric]} | {
        key: check[key] for key in ("reference_metrics", "versus_reference", "positions",
                                    "prediction_mismatches",
                                    "mismatches_that_are_ties", "tie_tolerance", "max_abs_diff",
                                    "max_abs_reference", "hlo_bytes_per_sample",
                                    "hlo_flops_per_sample", "other_collectives")}


def payload_claim(point: dict, gap: float, unit: str) -> str:
    """The words of the target "a lossy sweep point within ``gap`` of its float32 twin"."""
    return (f"{point['payload_dtype']} within {amount(gap, unit)} of float32 at the same "
            f"channels ({point['series']}, rho {point['comm_ratio']:g})")


def targets(report: dict, goals: Targets) -> list[tuple[str, str, bool | None]]:
    """The paper's claims for this run: (what, measured, met); None when not measured."""
    comm, flops, params = (report["comm_bytes_per_sample"], report["flops_per_node"],
                           report["params_per_node"])
    quality = report["quality"]
    hlo_reduction = comm["dense_split"] / comm["disco_hlo"] if comm["disco_hlo"] else None
    rows = [(f"communication >= {goals.comm_reduction:g}x below the dense split (compiled HLO)",
             "n/a" if hlo_reduction is None else f"{hlo_reduction:.2f}x",
             None if hlo_reduction is None else hlo_reduction >= goals.comm_reduction)]
    if goals.flops is not None:
        rows.append((f"FLOPs per node <= {goals.flops:g} of single device",
                     f"{flops['disco'] / flops['single']:.2f}",
                     flops["disco"] / flops["single"] <= goals.flops))
    if goals.params is not None:
        rows.append((f"weights per node <= {goals.params:g} of single device",
                     f"{params['disco'] / params['single']:.2f}",
                     params["disco"] / params["single"] <= goals.params))
    scale, unit = display_scale(report), report.get("metric_unit", "points")
    if quality["random_mask"] is not None:
        gap = scale * (quality["dense_split"] - quality["disco"])
        rows.append((f"DISCO {_label(report)} within {amount(goals.gap, unit)} of the dense "
                     f"split", f"{abs(gap):.2f} {unit} {'below' if gap > 0 else 'above'}",
                     gap <= goals.gap))
        lead = scale * (quality["disco"] - quality["random_mask"])
        rows.append(("learned masks above random masks at the same k",
                     f"{lead:+.2f} {unit}", lead > 0))
    if quality.get("disco_uniform_allocation") is not None:
        lead = scale * (quality["disco"] - quality["disco_uniform_allocation"])
        rows.append(("learned allocation above the uniform ratio at the same bytes",
                     f"{lead:+.2f} {unit}", lead > 0))
    if goals.payload_gap is not None:
        for point, twin in payload_twins(report.get("sweep", [])):
            lead = scale * (point[quality["metric"]] - twin[quality["metric"]])
            rows.append((payload_claim(point, goals.payload_gap, unit), f"{lead:+.2f} {unit}",
                         lead >= -goals.payload_gap))
    if goals.over_baseline is not None and quality["dense_split"] is not None:
        name, margin = goals.over_baseline
        lead = quality["dense_split"] - report["baselines"][name][quality["metric"]]
        rows.append((f"dense split at least {amount(margin, unit)} above {name}",
                     f"{scale * lead:+.2f} {unit}", scale * lead >= margin))
    return rows


def display_scale(report: dict) -> float:
    """What a report's metric is multiplied by in tables (100: a share in %;
    reports before tasks: 100)."""
    return report.get("metric_scale", 100.0)


def amount(value: float, unit: str) -> str:
    """A threshold in a target's words: ``1.0 point`` (as the reports before
    tasks wrote it), ``0.15 dB``."""
    return f"{value:.1f} point" if unit == "points" else f"{value:g} {unit}"


_VALUED = {"fisher": "a direction's share of its layer's output, weighted by the layer's "
                     "Fisher information",
           "energy": "a direction's share of its layer's output energy"}
"""The report's words for each value of :func:`disco_jax.budget.allocate`
(a report from before ``allocation_value`` was recorded: ``"energy"``)."""


def _masks_line(recipe: dict, steps: dict) -> list[str]:
    """How the masks were chosen, when it is not the pruning schedule alone."""
    basis, refit = recipe.get("basis", "channels"), recipe.get("refit", "none")
    if recipe.get("importance") == STRAIGHT_THROUGH and basis != "directions":
        return [f"masks: learned scores, the top k read at every step of the {steps['prune']} "
                "pruning steps (straight-through gradients); the baselines exact from the "
                "same step" + (", then every variant refits its kept weights by least squares"
                               if refit != "none" else "")]
    if basis == "channels" and refit == "none":
        return []
    if basis == "directions":
        line = ("masks: DISCO sends, per node pair and layer, the k reduced-rank directions "
                "of the sender's channels, set at once"
                + (f"; its k per layer shares the uniform ratio's bytes out by what each "
                   f"byte buys ({_VALUED[recipe.get('allocation_value', 'energy')]})"
                   if recipe.get("allocation") == "learned" else ""))
    else:
        line = (f"masks: learned ones by {recipe['importance']}"
                + (" in the network's principal basis" if basis == "principal" else "")
                + (", set at once" if steps["prune"] == 0 else ""))
    if refit != "none":
        line += ", then every variant refits its kept weights by least squares"
    return [line]


def _distill_line(recipe: dict) -> list[str]:
    if not recipe.get("distill"):
        return []
    return [f"every variant distils from the dense model while it trains: weight "
            f"{recipe['distill']:g}, temperature {recipe['distill_temperature']:g}"]


def _label(report: dict) -> str:
    """The primary metric as the tables head it (reports before tasks: top-1)."""
    return report.get("metric_label", "top-1")


def format_report(report: dict, network: Network) -> str:
    """The terminal table (DESIGN.md section 7 fields)."""

    scale = display_scale(report)
    symbol = "%" if scale == 100 else report.get("metric_unit", "")

    def pct(value):
        return "     -" if value is None else f"{scale * value:6.2f}"

    steps, quality, recipe = report["steps_per_variant"], report["quality"], report["recipe"]
    metric = quality["metric"]
    at_budget, dist = report["quality_at_budget"], report["distributed"]
    comm, flops, params = (report["comm_bytes_per_sample"], report["flops_per_node"],
                           report["params_per_node"])
    dense = (f"dense {steps['dense']} steps" if steps["dense"] is not None
             else f"dense loaded from {steps['init']} (step {steps['init_step']})")
    rows = [
        f"{report['model']} ({network.describe(report)}) on "
        f"{report['nodes']} nodes, {report['dataset']} {report['input_shape']}, comm ratio "
        f"{report['comm_ratio']}, {report.get('payload_dtype', 'float32')} payload, preset "
        f"{report['preset']}",
        f"training: {dense}, then per variant {steps['prune']} prune + {steps['finetune']} "
        f"fine-tune steps of {steps['batch_size']} images (every variant: {steps['total']} "
        f"steps, {steps['images']:,} images); {recipe['optimizer']}, peak lr "
        f"{recipe['learning_rate']:g}, warmup {recipe['warmup_steps']} steps, cosine over "
        "the whole run",
        *_masks_line(recipe, steps),
        *_distill_line(recipe),
    ]
    every = report.get("metrics", {})
    others = [name for name in every.get("disco", {}) if name != metric]  # the task's others
    percent = " %" if scale == 100 else ""  # the others: shares in %, or as they are
    rows.append(f"  {_label(report) + ' ' + symbol:22} "
                f"{'test (' + str(report['test_images']) + ')':>12} "
                f"{'at budget (' + str(at_budget['images']) + ')':>18}"
                + "".join(f" {name.replace('_', ' ') + percent + ', test':>22}"
                          for name in others))
    for name, values in report.get("baselines", {}).items():
        rows.append(f"  {name:22} {pct(values[metric]):>12} {'':>18}"
                    + "".join(f" {pct(values.get(other)):>22}" for other in others))
    for key, name in (("single", "single device"), ("dense_split", "dense split"),
                      ("disco", "DISCO (learned)"), ("random_mask", "random masks"),
                      ("random_directions", "random directions"),
                      ("disco_uniform_allocation", "DISCO, uniform ratio"),
                      ("no_comm", "no communication")):
        if key not in quality:
            continue
        budget = "" if key == "single" else pct(at_budget[key])
        values = every.get("dense_split" if key == "single" else key, {})
        rows.append(f"  {name:22} {pct(quality[key]):>12} {budget:>18}"
                    + "".join(f" {pct(values.get(other)):>22}" for other in others))
    reduction = report["comm_reduction"]
    rows += [
        f"  communication per image   dense split {comm['dense_split']:>13,} B   DISCO "
        f"{comm['disco']:>12,} B   DISCO from HLO {comm['disco_hlo']:>12,.0f} B   reduction "
        + ("-" if reduction is None else f"{reduction:.2f}x"),
        f"  FLOPs per node per image  single {flops['single']:>14,}   dense split "
        f"{flops['dense_split']:>14,}   DISCO {flops['disco']:>14,} "
        f"({flops['disco'] / flops['single']:.2f} of single; XLA {flops['disco_hlo']:,.0f})",
        f"  weights per node          single {params['single']:>14,}   dense split "
        f"{params['dense_split']:>14,}   DISCO {params['disco']:>14,} "
        f"({params['disco'] / params['single']:.2f} of single)",
        f"  DISCO on a {report['nodes']}-device mesh over {dist['images']} test images: "
        f"{_label(report)} {scale * dist[metric]:.2f} (single-device reference "
        f"{scale * dist['reference_' + metric]:.2f}), {dist['prediction_mismatches']} "
        f"predictions differ "
        f"({dist['mismatches_that_are_ties']} float ties), max |output diff| "
        f"{report['max_abs_diff_vs_reference']:.2e} (max |output| "
        f"{dist['max_abs_reference']:.2f})"
        + "".join(f", {name.replace('_', ' ')} {value:.2f}"
                  for name, value in dist.get("versus_reference", {}).items()),
    ]
    if report["sweep"]:
        rows += format_sweep(report["sweep"], metric, scale, _label(report),
                             quality["dense_split"])
    goals = network.targets_of(report["model"])
    rows.append(f"{goals.title}:")
    claims = targets(report, goals)
    width = max([58] + [len(what) for what, _, _ in claims])
    for what, measured, met in claims:
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        rows.append(f"  {what:{width}} {measured:>20}   {verdict}")
    return "\n".join(rows)


def verified(report: dict) -> bool:
    """Distributed == reference (same predictions up to float ties, outputs
    within :func:`disco_jax.payload.reference_tolerance` of the payload, no
    other collective: :func:`experiments.sweep.checked`), HLO bytes == plan
    bytes, every variant's plan on its budget, every point of the sweep
    verified alike."""
    dist, comm = report["distributed"], report["comm_bytes_per_sample"]
    return (checked(dist | {"max_abs_diff": report["max_abs_diff_vs_reference"]},
                    report.get("payload_dtype", "float32"))
            and comm["disco_hlo"] == comm["disco"]
            and all(entry["exact"] for entry in report["bytes_plan_vs_budget"].values())
            and all(point["verified"] for point in report.get("sweep", [])))


def run_and_print(network: Network, args) -> dict:
    """One run (:func:`run`), its plots and its table; the report says
    ``verified`` (:func:`verified`) and is also written to ``OUT/report.json``
    (:mod:`experiments.seeds` summarises such reports)."""
    from experiments import plots
    from experiments.compare import write_report

    report = run(network, args)
    figures = [plots.bytes_per_layer(report, args.out / "bytes_per_layer.png")]
    if report["sweep"]:
        figures.append(plots.accuracy_vs_bytes(report, args.out / "accuracy_vs_bytes.png"))
    report["plots"] = [str(path) for path in figures] + report["plots"]
    report["verified"] = verified(report)
    print(format_report(report, network))
    print(f"distributed == reference, HLO bytes == plan bytes, budgets exact: "
          f"{'yes' if report['verified'] else 'NO'}")
    print("plots: " + ", ".join(report["plots"]), flush=True)
    write_report(args.out / "report.json", report)
    return report


def main(network: Network, argv=None) -> int:
    args = parse_args(network, argv)
    import jax

    import disco_jax as dj  # after argument parsing: --help needs no jax
    from experiments import seeds
    from experiments.compare import write_report

    dj.ensure_host_devices(args.mesh)
    try:
        with jax.numpy_dtype_promotion("standard"):  # optax schedules mix int and float
            if not args.seeds:
                report = run_and_print(network, args)
            else:
                runs = []
                for seed in args.seeds:
                    print(f"== seed {seed} ==", flush=True)
                    runs.append(run_and_print(network, argparse.Namespace(
                        **vars(args) | {"seed": seed, "out": args.out / f"seed-{seed}"})))
                report = seeds.over_seeds(runs, network.targets_of(args.model))
                print(seeds.format_seeds(report))
    except dj.DiscoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.report:
        write_report(args.report, report)
        print(f"report written to {args.report}")
    return 0 if report["verified"] else 1
