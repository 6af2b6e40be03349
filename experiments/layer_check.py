"""DISCO's core on ResNet-50's layer shapes: distributed vs reference, plan vs XLA.

For each layer kind a ResNet-50 uses (1x1, 3x3, strided 3x3, strided 1x1
projection, classifier), at the spatial sizes of a 32 px input, this builds a
DISCO layer with random weights and a random exact mask at the comm ratio,
compiles its plan, runs it on an N-device mesh and on one device, and prints
the output difference, the plan's bytes next to the bytes of the compiled
collective-permutes, the FLOPs next to XLA's, and the weights per node.

    python -m experiments.layer_check --mesh 2
    python -m experiments.layer_check --mesh 4 --comm-ratio 0.1 --report reports/layers.json

The masks are random here: learning them is the training code's job.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# name, kind, c_in, c_out, kernel, stride, input spatial (32 px input, CIFAR-style stem)
LAYERS = [
    ("stage1/conv1 (1x1)", "conv", 256, 64, 1, 1, (32, 32)),
    ("stage1/conv2 (3x3)", "conv", 64, 64, 3, 1, (32, 32)),
    ("stage1/conv3 (1x1)", "conv", 64, 256, 1, 1, (32, 32)),
    ("stage2/conv2 (3x3 /2)", "conv", 128, 128, 3, 2, (32, 32)),
    ("stage2/proj (1x1 /2)", "conv", 256, 512, 1, 2, (32, 32)),
    ("stage3/conv2 (3x3)", "conv", 256, 256, 3, 1, (8, 8)),
    ("stage4/conv1 (1x1)", "conv", 2048, 512, 1, 1, (4, 4)),
    ("head (dense)", "dense", 2048, 1000, 1, 1, ()),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.layer_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--mesh", type=int, default=2, help="number of nodes N (default 2)")
    parser.add_argument("--comm-ratio", type=float, default=0.2,
                        help="rho = k / (C_in/N), in [0, 1] (default 0.2)")
    parser.add_argument("--batch", type=int, default=4, help="images per check (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import disco_jax as dj  # after argument parsing: --help needs no jax

    dj.ensure_host_devices(args.mesh)
    import jax
    from flax import nnx

    from disco_jax.verify import verify_layer

    rows = []
    try:
        dj.make_mesh(args.mesh)
        for index, (name, kind, c_in, c_out, kernel, stride, spatial) in enumerate(LAYERS):
            rngs = nnx.Rngs(args.seed + index)
            if kind == "conv":
                layer = dj.DiscoConv(c_in, c_out, kernel, strides=stride, nodes=args.mesh,
                                     use_bias=False, name=name, rngs=rngs)
            else:
                layer = dj.DiscoDense(c_in, c_out, nodes=args.mesh, name=name, rngs=rngs)
            group = layer.spec.group_in
            k = dj.k_for_ratio(args.comm_ratio, group, name)
            layer.mask[...] = dj.random_mask(jax.random.key(args.seed + index), args.mesh,
                                             group, k)
            x = jax.random.normal(jax.random.key(1000 + index), (args.batch, *spatial, c_in))
            rows.append(verify_layer(layer, x))
    except dj.DiscoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    header = (f"{'layer':24} {'k':>4} {'rel diff':>9} {'dense B/img':>12} {'DISCO B/img':>12} "
              f"{'HLO B/img':>12} {'MFLOP/node':>11} {'XLA MFLOP':>10} {'weights/node':>13}")
    print(f"DISCO layers on {args.mesh} nodes, comm ratio {args.comm_ratio}, random masks, "
          f"batch {args.batch}\n{header}\n{'-' * len(header)}")
    for r in rows:
        disco, dense = r.costs["disco"], r.costs["dense_split"]
        print(f"{r.name:24} {r.k:>4} {r.relative_diff:>9.1e} {dense.comm_bytes:>12,} "
              f"{disco.comm_bytes:>12,} {r.hlo_comm_bytes:>12,.0f} {disco.flops / 1e6:>11.2f} "
              f"{r.hlo_flops / 1e6:>10.2f} {disco.params:>13,}")
    all_ok = all(r.relative_diff <= 1e-4 and r.hlo_comm_bytes == r.costs["disco"].comm_bytes
                 and not r.other_collectives for r in rows)
    print(f"\nevery layer: distributed == reference within 1e-4 and HLO bytes == plan bytes: "
          f"{'yes' if all_ok else 'NO'}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "nodes": args.mesh, "comm_ratio": args.comm_ratio, "payload_dtype": "float32",
            "masks": "random", "batch": args.batch,
            "layers": [{
                "name": r.name, "k": r.k, "max_abs_diff": r.max_abs_diff,
                "relative_diff": r.relative_diff, "hlo_comm_bytes": r.hlo_comm_bytes,
                "hlo_flops": r.hlo_flops,
                **{variant: vars(cost) for variant, cost in r.costs.items()},
            } for r in rows],
        }
        args.report.write_text(json.dumps(report, indent=1))
        print(f"report written to {args.report}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
