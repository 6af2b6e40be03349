"""Does the choice of channels matter? Rankings against chance, over seeds, on a saved run.

    python -m experiments.rankings --run runs/vit-n2 --seeds 0,1,2 \\
        --report reports/vit_rankings.json

``--run`` is the ``--out`` folder of ``python -m experiments.vit`` (or
``experiments.resnet50``): its ``settings.json`` rebuilds the network and
``dense/`` holds the dense checkpoint every variant of that run started from.
From that one checkpoint this measures two things:

- one shot: the dense model with, in every layer, the k channels per node
  pair that a ranking keeps picked at once and nothing trained: how much the
  ranking itself knows (random: the mean over the seeds);
- trained: for each seed, the learned variant with each ``--importances``
  ranking and the random variant, trained exactly as the run trains its
  variants (its schedule, going on with the dense run, the seed's data order
  and random order): top-1 at the budget (the run's held-out images) and after
  fine-tuning (its test images), and the paired differences learned - random.
  ``--basis`` changes where the learned variants choose their channels
  (:attr:`experiments.compare.Schedule.basis`); the random variant always
  keeps the network's own channels.

With the run's own seed the variants are the run's own (same top-1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ONE_SHOT_IMAGES = 512
"""Training images the one-shot rankings measure channels on."""


def parse_args(argv=None) -> argparse.Namespace:
    from experiments.compare import BASES
    from experiments.pipeline import IMPORTANCES

    parser = argparse.ArgumentParser(prog="python -m experiments.rankings",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True,
                        help="the --out folder of a python -m experiments.vit (or "
                             "experiments.resnet50) run")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--importances", default="fisher",
                        help=f"comma-separated rankings to train, of {', '.join(IMPORTANCES)} "
                             f"(default fisher); the one-shot table has all of them")
    parser.add_argument("--basis", choices=BASES,
                        help="where the learned variants choose channels (default: as the run "
                             "did): principal (the network's principal basis) or channels")
    parser.add_argument("--report", type=Path, help="write the results here (.json)")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    args.importances = list(dict.fromkeys(args.importances.split(",")))
    unknown = [i for i in args.importances if i not in IMPORTANCES]
    if unknown or not args.seeds:
        parser.error(f"--importances must be among {', '.join(IMPORTANCES)} (got "
                     f"{', '.join(unknown)}) and --seeds not empty")
    return args


def load_dense(run: Path):
    """The dense model of the run in folder ``run`` at the step its variants
    start from, that run's optimiser there, its settings and its dataset.

    Raises:
      ConfigError: ``run`` holds no dense checkpoint.
    """
    from disco_jax import sparsify
    from disco_jax.train import restore_run
    from experiments.pipeline import open_run

    settings, dataset, model = open_run(run, "dense", "run with a dense checkpoint",
                                        "experiments.vit")
    sparsify.FixedMask("dense_split").update(model, 0)
    _, optimizer = restore_run(model, run / "dense", optimizer=settings["optimizer"])
    return model, optimizer, settings, dataset


def one_shot(dense, importance: str, comm_ratio: float, images, labels, seed: int = 0):
    """A copy of ``dense`` whose masks keep, in every layer, the k channels per
    pair ``importance`` ranks first on ``images``/``labels``, picked at once."""
    from flax import nnx

    from disco_jax import sparsify

    model = nnx.clone(dense)
    sparsify.GradualPruning(comm_ratio, start=0, end=0, lasso=0.0, importance=importance,
                            seed=seed).update(model, 0, images=images, labels=labels)
    return model


def run(args) -> dict:
    import jax

    from disco_jax import data
    from disco_jax.train import evaluate
    from experiments.compare import Schedule, stats, train_variant
    from experiments.pipeline import IMPORTANCES

    started = time.time()
    dense, optimizer, settings, dataset = load_dense(args.run)
    classes, ratio = dataset.classes, settings["comm_ratio"]
    test = data.Split(dataset.test.images[:settings["test_images"]],
                      dataset.test.labels[:settings["test_images"]])
    held_out = data.Split(dataset.test.images[:settings["eval_images"]],
                          dataset.test.labels[:settings["eval_images"]])
    images = dataset.train.images[:ONE_SHOT_IMAGES]
    labels = dataset.train.labels[:ONE_SHOT_IMAGES]

    with jax.numpy_dtype_promotion("standard"):
        shot = {"dense": evaluate(dense, held_out, classes)}
        for importance in IMPORTANCES:
            shot[importance] = evaluate(one_shot(dense, importance, ratio, images, labels),
                                        held_out, classes)
        shot["random"] = stats([evaluate(one_shot(dense, "random", ratio, images, labels, seed),
                                         held_out, classes) for seed in args.seeds])
        print(f"one shot (top-1 on {len(held_out)} held-out images): "
              + ", ".join(f"{k} {v if isinstance(v, float) else v['mean']:.4f}"
                          for k, v in shot.items()), flush=True)

        base = Schedule.of(settings)
        if args.basis is not None:
            base = dataclasses.replace(base, basis=args.basis)
        trained = {name: {"at_budget": [], "test": []} for name in args.importances + ["random"]}
        for seed in args.seeds:
            for importance in args.importances + ["random"]:
                # the random variant ignores the importance
                schedule = (base if importance == "random"
                            else dataclasses.replace(base, importance=importance))
                variant = "random" if importance == "random" else "learned"
                model, at_budget, _ = train_variant(
                    dense, variant, ratio, schedule, seed, dataset.train,
                    lambda m: evaluate(m, held_out, classes), classes, optimizer=optimizer,
                    evaluate_final=False, label=f"seed {seed} {importance} ")
                trained[importance]["at_budget"].append(at_budget)
                trained[importance]["test"].append(evaluate(model, test, classes))
                print(f"seed {seed} {importance}: at budget {at_budget:.4f}, "
                      f"test {trained[importance]['test'][-1]:.4f}", flush=True)

    random = trained["random"]
    return {
        "run": str(args.run), "settings": settings, "seeds": args.seeds, "basis": base.basis,
        "one_shot_images": ONE_SHOT_IMAGES, "held_out_images": len(held_out),
        "test_images": len(test), "one_shot": shot,
        "trained": {name: {phase: stats(values) for phase, values in result.items()}
                    for name, result in trained.items()},
        "learned_minus_random": {
            name: {phase: stats([a - b for a, b in zip(trained[name][phase], random[phase],
                                                        strict=True)])
                   for phase in ("at_budget", "test")}
            for name in args.importances},
        "seconds": round(time.time() - started, 1),
    }


def format_report(report: dict) -> str:
    def pm(entry):
        spread = f" ± {100 * entry['std']:.2f}" if entry["std"] is not None else ""
        return f"{100 * entry['mean']:6.2f}{spread}"

    shot = report["one_shot"]
    lines = [f"from the dense checkpoint of {report['run']} (comm ratio "
             f"{report['settings']['comm_ratio']}), seeds {report['seeds']}",
             f"one shot, top-1 % on {report['held_out_images']} held-out images (dense "
             f"{100 * shot['dense']:.2f}):"]
    lines += [f"  {name:12s} {pm(value) if isinstance(value, dict) else f'{100 * value:6.2f}'}"
              for name, value in shot.items() if name != "dense"]
    lines.append(f"trained like the run's variants (learned masks chosen in the "
                 f"{report.get('basis', 'channels')} basis), top-1 %  at budget "
                 f"({report['held_out_images']})   after fine-tuning ({report['test_images']})")
    for name, result in report["trained"].items():
        lines.append(f"  {name:12s} {pm(result['at_budget']):>24s} {pm(result['test']):>24s}")
    for name, result in report["learned_minus_random"].items():
        per_seed = ", ".join(f"{100 * v:+.2f}" for v in result["test"]["values"])
        lines.append(f"  {name} - random {pm(result['at_budget']):>19s} "
                     f"{pm(result['test']):>24s}   (per seed after fine-tuning: {per_seed})")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import disco_jax as dj

    settings = args.run / "settings.json"
    nodes = json.loads(settings.read_text())["nodes"] if settings.is_file() else 1
    dj.ensure_host_devices(nodes)
    from experiments.compare import write_report

    try:
        report = run(args)
    except dj.ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.report is not None:
        write_report(args.report, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
