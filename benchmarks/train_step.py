"""How long one training step of an experiment's default network takes.

    taskset -c 0 python -m benchmarks.train_step experiments.resnet50 resnet50
    taskset -c 0 python -m benchmarks.train_step experiments.segmentation unet_resnet18

Builds the network of the experiment's default preset (``--quick``: its
quick one; ``--mesh 2``: the training form of the 2-node network, every
channel read), the optimiser of
its schedule and :func:`disco_jax.train.make_train_step` for its task, and
times the jitted step on one batch of the preset's size (median of
``--repeats`` after compiling), in ``--compute-dtype``.
"""

from __future__ import annotations

import argparse
import importlib
import time


def main(argv=None) -> float:
    """Prints and returns the median step time in seconds."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("program", help="an experiment module, e.g. experiments.resnet50")
    parser.add_argument("model", help="one of its models, e.g. resnet50")
    parser.add_argument("--quick", action="store_true", help="the experiment's --quick network")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args(argv)

    import jax
    import numpy as np
    from flax import nnx

    import disco_jax as dj
    from disco_jax import sparsify
    from disco_jax.train import make_optimizer, make_train_step
    from experiments import pipeline
    from experiments.compare import Schedule, run_config

    network = importlib.import_module(args.program).NETWORK
    settings = pipeline._settings(network, network.parse_args(
        ["--mesh", "2", "--model", args.model, *(["--quick"] if args.quick else [])]))
    if "train_scenes" in settings:  # a batch is all it needs
        settings = dict(settings, train_scenes=512)
    dataset = network.dataset(settings)
    schedule = Schedule.of(settings)
    model = network.build(settings, dataset)
    sparsify.FixedMask("dense_split").update(model, 0)
    dj.set_compute_dtype(model, args.compute_dtype)
    optimizer = nnx.Optimizer(model, make_optimizer(run_config(schedule, 1000, 0)),
                              wrt=nnx.Param)
    step = make_train_step(network.task_of(dataset))
    images = dataset.train.images[:schedule.batch_size]
    labels = dataset.train.labels[:schedule.batch_size]
    jax.block_until_ready(step(model, optimizer, images, labels, jax.numpy.asarray(0)))
    times = []
    for i in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(model, optimizer, images, labels, jax.numpy.asarray(i + 1)))
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    print(f"{args.program} {args.model}, {args.compute_dtype}: batch {schedule.batch_size}, "
          f"step {1000 * median:.0f} ms (median of {args.repeats}), "
          f"{schedule.batch_size / median:.1f} images/s", flush=True)
    return median


if __name__ == "__main__":
    main()
