"""Learned masks against random masks, no communication and the dense split.

For each seed: train a dense ResNet (all channels read) on Fashion-MNIST, then
from that same checkpoint give every variant the same step budget:

- ``learned``: GradualPruning (group lasso + cubic schedule) down to the budget
  during the pruning phase;
- ``random``: random exact masks at the same k, set at the start of the phase;
- ``no_comm``: block-diagonal masks (rho = 0);
- ``dense_split``: all channels (rho = 1);

then fine-tune each with its masks fixed. Test accuracy is measured at the end
of the pruning phase (the learned masks have just reached their budget) and
after fine-tuning, as mean and std over seeds. The report follows DESIGN.md
section 8, with the spread and the steps/images each variant saw.

    python -m experiments.mask_training --mesh 2 --seeds 0,1,2 --report reports/masks_n2.json
    python -m experiments.mask_training --quick      # a few steps, for smoke tests
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

VARIANTS = ("learned", "random", "no_comm", "dense_split")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.mask_training",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--mesh", type=int, default=2, help="nodes N (default 2)")
    parser.add_argument("--comm-ratio", type=float, default=0.2)
    parser.add_argument("--model", choices=("resnet18", "resnet50"), default="resnet18")
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--prune-steps", type=int, default=150)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lasso", type=float, default=1e-4)
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings (width 8, 10 steps per phase, 1 seed, 500 test images)")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.seeds, args.test_images = 8, "0", 500
        args.pretrain_steps = args.prune_steps = args.finetune_steps = 10
        args.batch_size = 32
    if not 0.0 <= args.comm_ratio <= 1.0:
        parser.error(f"--comm-ratio must be in [0, 1], got {args.comm_ratio}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def run(args) -> dict:
    import numpy as np
    from flax import nnx

    import disco_jax as dj
    from disco_jax import data, sparsify
    from disco_jax.models import NETWORKS
    from disco_jax.train import TrainConfig, evaluate, train

    dataset = data.load(args.dataset)
    test = data.Split(dataset.test.images[:args.test_images],
                      dataset.test.labels[:args.test_images])
    network = NETWORKS[args.model]
    classes = dataset.classes

    def config(steps, seed, lr):
        return TrainConfig(steps=steps, batch_size=args.batch_size, learning_rate=lr, seed=seed)

    methods = {
        "learned": lambda seed: sparsify.GradualPruning(
            args.comm_ratio, start=0, end=args.prune_steps,
            interval=max(args.prune_steps // 15, 1), lasso=args.lasso),
        "random": lambda seed: sparsify.FixedMask("random", args.comm_ratio, seed=seed),
        "no_comm": lambda seed: sparsify.FixedMask("no_comm"),
        "dense_split": lambda seed: sparsify.FixedMask("dense_split"),
    }
    results = {v: {"at_budget": [], "finetuned": []} for v in VARIANTS}
    single, plans, started = [], {}, time.time()
    for seed in args.seeds:
        dense = network(classes=classes, nodes=args.mesh, in_channels=dataset.image_shape[-1],
                        stem="small", width=args.width, rngs=nnx.Rngs(seed))
        sparsify.FixedMask("dense_split").update(dense, 0)
        train(dense, dataset.train, classes, config(args.pretrain_steps, seed, 0.05),
              description=f"seed {seed} dense")
        single.append(evaluate(dense, test, classes))
        for variant in VARIANTS:
            model = nnx.clone(dense)
            train(model, dataset.train, classes, config(args.prune_steps, seed + 1000, 0.02),
                  method=methods[variant](seed), description=f"seed {seed} {variant} prune")
            results[variant]["at_budget"].append(evaluate(model, test, classes))
            train(model, dataset.train, classes, config(args.finetune_steps, seed + 2000, 0.02),
                  description=f"seed {seed} {variant} fine-tune")
            results[variant]["finetuned"].append(evaluate(model, test, classes))
            plans[variant] = (model, dj.compile_plan(model))  # exact budgets or it raises

    model, plan = plans["learned"]
    image = (1, *dataset.image_shape)
    costs = dj.model_costs(model, image, plan)
    budget_ok = all(layer.k == dj.k_for_ratio(args.comm_ratio, layer.spec.group_in)
                    for layer in plan.values() if layer.spec.split_input)

    def stats(values):
        return {"mean": float(np.mean(values)), "std": float(np.std(values)),
                "values": [float(v) for v in values]}

    steps = args.pretrain_steps + args.prune_steps + args.finetune_steps
    return {
        "model": args.model, "width": args.width, "task": "classification",
        "dataset": args.dataset, "nodes": args.mesh, "comm_ratio": args.comm_ratio,
        "payload_dtype": "float32", "seeds": args.seeds, "test_images": len(test),
        "steps_per_variant": {"pretrain_dense": args.pretrain_steps,
                              "prune": args.prune_steps, "finetune": args.finetune_steps,
                              "total": steps, "images": steps * args.batch_size},
        "quality": {"metric": "top1", "single_dense_pretrained": stats(single),
                    **{f"{v}_{when}": stats(results[v][when])
                       for v in VARIANTS for when in ("at_budget", "finetuned")}},
        "comm_bytes_per_sample": {"dense_split": costs.totals["dense_split"].comm_bytes,
                                  "disco": costs.totals["disco"].comm_bytes},
        "comm_reduction": costs.comm_reduction,
        "flops_per_node": {v: costs.totals[v].flops for v in ("single", "dense_split", "disco")},
        "params_per_node": {v: costs.totals[v].params for v in ("single", "dense_split", "disco")},
        "budgets_exact": budget_ok,
        "wall_seconds": round(time.time() - started, 1),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    import disco_jax as dj

    dj.ensure_host_devices(args.mesh)
    try:
        with jax.numpy_dtype_promotion("standard"):
            report = run(args)
    except dj.DiscoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    quality = report["quality"]
    print(f"\n{report['model']} width {report['width']} on {report['nodes']} nodes, comm ratio "
          f"{report['comm_ratio']}, seeds {report['seeds']}, {report['test_images']} test images")
    print(f"dense model after pretraining: {quality['single_dense_pretrained']['mean']:.4f}")
    print(f"{'variant':12} {'at budget':>18} {'fine-tuned':>18}")
    for variant in VARIANTS:
        cells = [quality[f"{variant}_{when}"] for when in ("at_budget", "finetuned")]
        print(f"{variant:12} " + " ".join(f"{c['mean']:>10.4f} ± {c['std']:.4f}" for c in cells))
    comm = report["comm_bytes_per_sample"]
    print(f"communication per image: dense split {comm['dense_split']:,} B, "
          f"DISCO {comm['disco']:,} B "
          f"({report['comm_reduction']:.2f}x less); budgets exact: {report['budgets_exact']}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1))
        print(f"report written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
