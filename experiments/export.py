"""Per-node bundles of a saved run: one folder per node, with only that node's weights.

    python -m experiments.export --run runs/resnet50-n2 --out bundles/resnet50-n2
    python -m disco_jax.launch --nodes 2 -- experiments.infer --bundles bundles/resnet50-n2

``--run`` is the ``--out`` folder of a run of any pipeline experiment. The
trained variant (default DISCO) and its plan become ``--out/node-0`` ..
``node-{N-1}`` (:mod:`disco_jax.bundle`): copy folder ``node-i`` to the
machine of node i; ``experiments.infer --bundles`` there reads that folder
alone (the test data comes from the machine's own data set). Each manifest
keeps the run's settings, so the network is rebuilt without the run folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.compare import VARIANTS
from experiments.infer import POINT_HELP, RUN_HELP


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True,
                        help=RUN_HELP)
    parser.add_argument("--out", type=Path, required=True,
                        help="the folder that receives node-0 .. node-{N-1}")
    parser.add_argument("--variant", choices=VARIANTS, default="learned",
                        help="which trained variant (default learned = DISCO)")
    parser.add_argument("--point", help=POINT_HELP.removeprefix("with --run: "))
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import disco_jax as dj
    from disco_jax.bundle import export_bundles
    from experiments.infer import load_run

    try:
        model, plan, _, settings, _ = load_run(args.run, args.variant, args.point)
        folders = export_bundles(model, plan, args.out, settings=settings,
                                 overwrite=args.overwrite)
    except dj.DiscoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for folder in folders:
        size = sum(path.stat().st_size for path in folder.iterdir())
        print(f"{folder}: {size / 1e6:.2f} MB", flush=True)
    what = f"sweep point {args.point}" if args.point else f"{args.variant} variant"
    print(f"{len(folders)} node bundles of the {what} of {args.run}; run them "
          f"with python -m disco_jax.launch --nodes {len(folders)} -- experiments.infer "
          f"--bundles {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
