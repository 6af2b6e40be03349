"""Distributed inference of a saved run: on an emulated mesh, or one process per node.

    python -m experiments.infer --run runs/resnet50-n2 --predictions mesh.npz
    python -m disco_jax.launch --nodes 2 -- experiments.infer --run runs/resnet50-n2 \\
        --predictions processes.npz
    python -m disco_jax.launch --nodes 2 -- experiments.infer --bundles bundles/resnet50-n2

``--run`` is the ``--out`` folder of a run of any pipeline experiment
(``python -m experiments.resnet50``, ``experiments.vit``,
``experiments.segmentation``, ``experiments.detection``,
``experiments.super_resolution``): its ``settings.json``
rebuilds the network and its task,
``learned/finetune`` holds the DISCO checkpoint and ``plan/`` the frozen plan. The model runs as
:class:`disco_jax.DistributedModel` (``jit(shard_map(...))``) over the first
``--images`` test images. In one process the mesh is N emulated devices; under
:mod:`disco_jax.launch` it is one device per process and jax's runtime
carries the planned channels between the processes. Node 0 prints the task's
metrics (top-1; mIoU and pixel accuracy; AP50 and AP) and writes the outputs
(``--predictions``, .npz: ``labels`` and ``logits``, or ``logits_NAME`` for each
output of a network with several), so that two runs can be
compared.

``--bundles`` instead runs the per-node bundles that ``python -m
experiments.export`` wrote from a run (:mod:`disco_jax.bundle`): node i reads
``node-i`` alone (its weights, its send indices, the run's settings), never
the run folder or another node's bundle; in one process the emulated mesh
reads them all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from experiments.compare import VARIANTS

RUN_HELP = ("the --out folder of a python -m experiments.resnet50 (or experiments.vit, "
            ".segmentation, .detection, .super_resolution) run")
POINT_HELP = ("with --run: a point of the run's --sweep instead of --variant, by its name "
              "(the folder under RUN/sweep, e.g. allocated-int8-r0.1; the report's table "
              "and sweep list them)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.infer",
                                     description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path,
                        help=RUN_HELP)
    source.add_argument("--bundles", type=Path,
                        help="the --out folder of python -m experiments.export: each node "
                             "reads its own node-i folder only")
    parser.add_argument("--variant", choices=VARIANTS, default="learned",
                        help="with --run: which trained variant (default learned = DISCO)")
    parser.add_argument("--point", help=POINT_HELP)
    parser.add_argument("--images", type=int, default=10000, help="test images (default all)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="what the layers' products compute in (bfloat16: on the CPU's "
                             "matrix units where it has them; the payloads stay the plan's)")
    parser.add_argument("--program-cache", type=Path,
                        help="keep the compiled program in this folder (the node's own); a "
                             "later run loads it instead of compiling")
    parser.add_argument("--predictions", type=Path,
                        help="write logits and labels here (.npz), from node 0")
    args = parser.parse_args(argv)
    if args.images < 1 or args.batch < 1:
        parser.error("--images and --batch must be positive")
    if args.point is not None and args.run is None:
        parser.error("--point names a sweep point of a run folder: it goes with --run, not "
                     "--bundles (export the point's bundles with experiments.export --point)")
    return args


def load_run(run: Path, variant: str = "learned", point: str | None = None):
    """The trained ``variant`` of the run in folder ``run``, or its sweep
    point named ``point`` (:func:`experiments.sweep.load_point`): ``(model,
    plan, dataset, settings, task)``.

    Raises:
      ConfigError: ``run`` is not a finished run folder, or has no such point.
    """
    import disco_jax as dj
    from disco_jax.train import restore_model
    from experiments.compare import payload_of_variant
    from experiments.pipeline import network_of, open_run
    from experiments.sweep import load_point

    if point is None:
        checkpoint, payload, plan_dir = f"{variant}/finetune", None, run / "plan"
    else:
        record = load_point(run, point)
        checkpoint, payload = record["checkpoint"], record["payload_dtype"]
        plan_dir = run / "sweep" / point / "plan"
    settings, dataset, model = open_run(run, checkpoint, "finished run", "experiments.resnet50")
    restore_model(model, run / checkpoint)
    dj.set_payload_dtype(model, payload or payload_of_variant(
        variant, settings.get("payload_dtype", "float32")))
    plan = (dj.load_plan(plan_dir, model) if (point or variant == "learned")
            and plan_dir.is_dir() else dj.compile_plan(model))
    return model, plan, dataset, settings, network_of(settings["model"]).task_of(dataset)


def _from_run(args):
    """``(nodes, build)``: ``build(mesh) -> (distributed, dataset, task)`` from ``--run``."""
    import disco_jax as dj

    record = args.run / "settings.json"
    nodes = json.loads(record.read_text())["nodes"] if record.is_file() else 1

    def build(mesh):
        model, plan, dataset, _, task = load_run(args.run, args.variant, args.point)
        dj.set_compute_dtype(model, args.compute_dtype)
        return dj.DistributedModel(model, mesh, plan, output_rank=task.output_rank,
                                   output_channels=task.output_channels,
                                   program_cache=args.program_cache), dataset, task

    return nodes, build


def _from_bundles(args):
    """``(nodes, build)`` from ``--bundles``: this process's own bundles only."""
    import jax

    import disco_jax as dj
    from disco_jax import bundle
    from experiments.pipeline import build_model, network_of

    node = jax.process_index() if jax.distributed.is_initialized() else 0
    manifest = bundle.read_manifest(bundle.node_folder(args.bundles, node))
    settings = manifest["settings"]
    if not settings or "model" not in settings:
        raise dj.ConfigError(f"{args.bundles} holds bundles without a run's settings; export "
                             "them with python -m experiments.export --run RUN")

    def build(mesh):
        network = network_of(settings["model"])
        dataset = network.dataset(settings)
        task = network.task_of(dataset)
        distributed = bundle.load_distributed(
            args.bundles, mesh, lambda: build_model(settings, dataset),
            compute_dtype=args.compute_dtype, output_rank=task.output_rank,
            output_channels=task.output_channels, program_cache=args.program_cache)
        return distributed, dataset, task

    return manifest["nodes"], build


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import numpy as np

    import disco_jax as dj
    from disco_jax.evaluation import mesh_outputs

    source = args.run if args.run is not None else args.bundles
    try:
        nodes, build = _from_run(args) if args.run is not None else _from_bundles(args)
        dj.ensure_host_devices(nodes)
        if jax.process_count() > 1 and jax.process_count() != nodes:
            raise dj.ConfigError(f"{source} is for {nodes} nodes, but this run has "
                                 f"{jax.process_count()} processes; launch it with --nodes "
                                 f"{nodes}")
        distributed, dataset, task = build(dj.make_mesh(nodes))
        test = dataset.test
        images, labels = test.images[:args.images], test.labels[:args.images]
        began = time.time()
        logits = mesh_outputs(distributed, images, args.batch)
        seconds = time.time() - began
    except dj.DiscoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    first = jax.process_index() == 0
    if first:
        total = None
        for begin in range(0, len(labels), args.batch):
            part = task.tally(jax.tree.map(lambda x, b=begin: x[b:b + args.batch], logits),
                              labels[begin:begin + args.batch])
            total = task.combine(total, jax.tree.map(np.asarray, part))
        metrics = task.metrics(total)
        where = (f"{nodes} processes" if jax.process_count() > 1
                 else f"a mesh of {nodes} emulated devices")
        scale = task.display_scale  # 100: shares in %; 1: PSNR in dB, SSIM
        others = "".join(f", {name.replace('_', ' ')} {scale * value:.2f}"
                         for name, value in metrics.items() if name != task.metric)
        what = (f"{args.point or args.variant} of {args.run}" if args.run is not None
                else str(args.bundles))
        products = "" if args.compute_dtype == "float32" else f", {args.compute_dtype} products"
        print(f"{what} on {where}{products}: {task.label} "
              f"{scale * metrics[task.metric]:.2f}{others} over {len(labels)} test images "
              f"({seconds:.1f} s with compilation)", flush=True)
        if args.predictions:
            args.predictions.parent.mkdir(parents=True, exist_ok=True)
            partial = args.predictions.with_name(args.predictions.name + ".partial.npz")
            outputs = ({"logits": logits} if not isinstance(logits, dict)
                       else {f"logits_{name}": value for name, value in logits.items()})
            np.savez(partial, labels=labels, **outputs)
            partial.replace(args.predictions)
            print(f"logits written to {args.predictions}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
