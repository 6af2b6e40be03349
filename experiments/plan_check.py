"""A whole network under DISCO on a mesh: distributed vs reference, plan vs XLA.

Builds the network with DISCO layers, gives every layer a random exact mask at
the comm ratio, compiles the plan, runs the whole model with ``shard_map`` on
an N-device mesh and on one device, and reports what the paper reports about
cost: communication bytes per image (from the plan, and from the compiled
program's collective-permutes), the reduction against the dense split, FLOPs
and weights per node against the single-device model, and the largest logit
difference. Masks are random: accuracy needs trained masks (the training code),
so quality figures are reported as null.

    python -m experiments.plan_check --mesh 2
    python -m experiments.plan_check --model resnet18 --mesh 4 --comm-ratio 0.1 \\
        --per-layer --report reports/plan_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODELS = ("resnet18", "resnet50")  # names in disco_jax.models.NETWORKS


def parse_args(argv=None) -> argparse.Namespace:
    from disco_jax.payload import PAYLOADS

    parser = argparse.ArgumentParser(prog="python -m experiments.plan_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default="resnet50")
    parser.add_argument("--mesh", type=int, default=2, help="number of nodes N (default 2)")
    parser.add_argument("--comm-ratio", type=float, default=0.2,
                        help="rho = k / (C_in/N) for every layer, in [0, 1] (default 0.2)")
    parser.add_argument("--payload-dtype", choices=PAYLOADS, default="float32",
                        help="what the channels travel as: float32 (default), bfloat16, or "
                             "int8 with a scale per channel and image")
    parser.add_argument("--image-size", type=int, default=32, help="input pixels (default 32)")
    parser.add_argument("--channels", type=int, default=1,
                        help="input channels (default 1, as Fashion-MNIST)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--stem", choices=("small", "imagenet"), default="small",
                        help="small: 3x3/1 stem for 28-32 px inputs (default); "
                             "imagenet: 7x7/2 conv + max-pool")
    parser.add_argument("--batch", type=int, default=8, help="images checked (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-layer", action="store_true", help="print the per-layer table")
    parser.add_argument("--report", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not 0.0 <= args.comm_ratio <= 1.0:
        parser.error(f"--comm-ratio must be in [0, 1] (1 = dense split, 0 = no communication), "
                     f"got {args.comm_ratio}")
    return args


def build_model(args):
    from flax import nnx

    from disco_jax.models import NETWORKS

    return NETWORKS[args.model](classes=args.classes, nodes=args.mesh, in_channels=args.channels,
                   stem=args.stem, rngs=nnx.Rngs(args.seed))


def measure(args) -> dict:
    import jax
    import jax.numpy as jnp

    import disco_jax as dj

    model = build_model(args)
    dj.set_random_masks(model, jax.random.key(args.seed), args.comm_ratio)
    dj.set_payload_dtype(model, args.payload_dtype)  # the reference quantises alike
    model.eval()
    plan = dj.compile_plan(model)
    x = jax.random.normal(jax.random.key(args.seed + 1),
                          (args.batch, args.image_size, args.image_size, args.channels))
    reference = model(x)[:, :model.num_classes]
    distributed = dj.DistributedModel(model, dj.make_mesh(args.mesh), plan,
                                      output_channels=model.num_classes)
    compiled = distributed.compile(x)
    logits = distributed.outputs(compiled(*distributed.inputs(x)))
    costs = dj.model_costs(model, x.shape, plan)
    hlo = compiled.as_text()
    totals = costs.totals
    return {
        "model": args.model, "task": "classification", "dataset": None,
        "input_shape": [args.image_size, args.image_size, args.channels],
        "nodes": args.mesh, "comm_ratio": args.comm_ratio, "payload_dtype": args.payload_dtype,
        "masks": "random",
        "quality": {"metric": "top1", "single": None, "dense_split": None, "disco": None,
                    "random_mask": None, "no_comm": None},
        "comm_bytes_per_sample": {
            "dense_split": totals["dense_split"].comm_bytes,
            "disco": totals["disco"].comm_bytes,
            "disco_hlo": dj.hlo_permute_bytes(hlo) / args.batch},
        "comm_reduction": costs.comm_reduction,
        "flops_per_node": {**{v: totals[v].flops for v in dj.accounting.VARIANTS},
                           "disco_hlo": dj.hlo_flops(compiled) / args.batch},
        "params_per_node": {v: totals[v].params for v in dj.accounting.VARIANTS},
        "max_abs_diff_vs_reference": float(jnp.max(jnp.abs(logits - reference))),
        "max_abs_reference": float(jnp.max(jnp.abs(reference))),
        "same_predictions": bool(jnp.all(logits.argmax(-1) == reference.argmax(-1))),
        "other_collectives": dj.hlo_other_collectives(hlo),
        "latency_ms": None,
        "layers": [{"name": name, "k": entry["k"], "input_shape": list(entry["input_shape"]),
                    **{v: vars(entry[v]) for v in dj.accounting.VARIANTS}}
                   for name, entry in costs.layers.items()],
    }


def print_report(report: dict, per_layer: bool) -> None:
    comm, flops, params = (report["comm_bytes_per_sample"], report["flops_per_node"],
                           report["params_per_node"])
    print(f"{report['model']} on {report['nodes']} nodes, input {report['input_shape']}, "
          f"comm ratio {report['comm_ratio']} (random masks), {report['payload_dtype']} payload")
    print(f"  communication per image   dense split {comm['dense_split']:>14,.0f} B"
          f"   DISCO {comm['disco']:>12,.0f} B   DISCO from HLO {comm['disco_hlo']:>12,.0f} B"
          f"   reduction {report['comm_reduction'] or float('inf'):.2f}x")
    print(f"  FLOPs per node per image  single {flops['single']:>14,}   dense split "
          f"{flops['dense_split']:>14,}   DISCO {flops['disco']:>14,} "
          f"({flops['disco'] / flops['single']:.2f} of single; XLA {flops['disco_hlo']:,.0f})")
    print(f"  weights per node          single {params['single']:>14,}   dense split "
          f"{params['dense_split']:>14,}   DISCO {params['disco']:>14,} "
          f"({params['disco'] / params['single']:.2f} of single)")
    print(f"  max |logit diff| vs single-device reference: "
          f"{report['max_abs_diff_vs_reference']:.2e} (max |logit| "
          f"{report['max_abs_reference']:.2f}); same predictions: {report['same_predictions']}")
    if per_layer:
        print(f"\n  {'layer':28} {'k':>4} {'input':>14} {'dense B/img':>12} {'DISCO B/img':>12} "
              f"{'DISCO FLOPs':>14} {'weights':>10}")
        for layer in report["layers"]:
            print(f"  {layer['name']:28} {layer['k']:>4} {str(tuple(layer['input_shape'])):>14} "
                  f"{layer['dense_split']['comm_bytes']:>12,} {layer['disco']['comm_bytes']:>12,} "
                  f"{layer['disco']['flops']:>14,} {layer['disco']['params']:>10,}")


def main(argv=None) -> int:
    args = parse_args(argv)
    import disco_jax as dj  # after argument parsing: --help needs no jax
    from disco_jax.payload import reference_tolerance

    dj.ensure_host_devices(args.mesh)
    try:
        report = measure(args)
    except dj.DiscoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(report, args.per_layer)
    comm = report["comm_bytes_per_sample"]
    # a lossy payload may round a value on a rounding boundary differently in the
    # two forms (their inputs differ in the last bits): one step of the payload
    tolerance = reference_tolerance(args.payload_dtype)
    ok = (report["max_abs_diff_vs_reference"] <= tolerance * report["max_abs_reference"]
          and comm["disco_hlo"] == comm["disco"] and not report["other_collectives"])
    print(f"  distributed == reference within {tolerance:.3g} ({args.payload_dtype} "
          f"payload) and HLO bytes == plan bytes: {'yes' if ok else 'NO'}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1))
        print(f"  report written to {args.report}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
