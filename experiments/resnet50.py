"""The main job: DISCO on ResNet-50 end to end, with the paper's table.

    python -m experiments.resnet50 --mesh 2                  # default run, ~45 min on one CPU core
    python -m experiments.resnet50 --mesh 2 --report reports/resnet50_n2.json \\
        --sweep 0,0.05,0.1,0.2,0.5,1                          # + accuracy against comm ratio
    python -m experiments.resnet50 --quick --mesh 4          # a few steps: smoke test
    python -m experiments.resnet50 --preset full             # a real schedule (accelerators)
    python -m experiments.resnet50 --preset retraining       # the earlier default: channels

The pipeline (train the dense model, the variants from it, the plan, the
mesh, the report) is :mod:`experiments.pipeline`; this module is its network:
ResNet-50 (v1.5) or ResNet-18 with DISCO convs, zero-initialised residual
BatchNorms, its presets (by default DISCO sends reduced-rank directions,
:data:`DIRECTIONS`), and the paper's targets (>= 5x less communication, FLOPs per node
<= 0.6 and weights per node <= 0.5 of a single device, DISCO within 1.0 point
of the dense split and above random masks).
"""

from __future__ import annotations

import sys

from experiments import compare, pipeline
from experiments.compare import BASES, DISTILL, RECIPE, REFIT_INPUTS, REFITS

DIRECTIONS = dict(importance="weight_norm", **compare.DIRECTIONS, **DISTILL)
"""DISCO after training, then fine-tuned (the default): from the dense model
trained for most of the run, each node sends per pair and layer the k
reduced-rank directions of its channels (chosen and refitted by least squares
on 2,048 training images, layer by layer, on the dense model's inputs), then
every variant fine-tunes for the rest of the run."""

RETRAINING = dict(importance="weight_norm", refit="none", basis="channels",
                  calibration_images=512, refit_inputs="masked", **DISTILL)
"""Masks reached by gradual pruning (weight norm + group lasso) and retraining
(the default until 2026-12-03; ``--preset retraining``)."""

PRESETS = {
    # every variant: 1,200 steps (about 1.3 epochs); timed in the README
    "default": dict(image_size=28, stem="imagenet", width=64, pretrain_steps=960,
                    prune_steps=0, finetune_steps=240, batch_size=64, test_images=10000,
                    eval_images=2000, **DIRECTIONS, **RECIPE),
    # the earlier default: channels chosen by gradual pruning, then retraining
    "retraining": dict(image_size=28, stem="imagenet", width=64, pretrain_steps=120,
                       prune_steps=60, finetune_steps=90, batch_size=64, test_images=10000,
                       eval_images=2000, **RETRAINING, **RECIPE),
    # a real schedule, for accelerators or patience
    "full": dict(image_size=32, stem="imagenet", width=64, pretrain_steps=5000,
                 prune_steps=0, finetune_steps=1000, batch_size=128, test_images=10000,
                 eval_images=10000, **DIRECTIONS, **RECIPE | {"warmup_steps": 300}),
    # the same pipeline in a few steps of a narrow net: smoke tests and CI
    "quick": dict(image_size=28, stem="imagenet", width=8, pretrain_steps=5, prune_steps=0,
                  finetune_steps=3, batch_size=16, test_images=128, eval_images=128,
                  **DIRECTIONS | {"calibration_images": 64}, **RECIPE),
}


def build_model(settings: dict, dataset):
    """The (untrained) network a run with ``settings`` (its ``settings.json``)
    trains, for ``dataset``'s images and classes."""
    from flax import nnx

    from disco_jax.models import NETWORKS

    return NETWORKS[settings["model"]](classes=dataset.classes, nodes=settings["nodes"],
                                       in_channels=dataset.image_shape[-1],
                                       stem=settings["stem"], width=settings["width"],
                                       zero_init_residual=True, rngs=nnx.Rngs(settings["seed"]))


NETWORK = pipeline.Network(
    program="experiments.resnet50", models=("resnet50", "resnet18"), presets=PRESETS,
    build=build_model, architecture=("stem", "width"),
    describe=lambda report: f"{report['stem']} stem, width {report['width']}",
    targets=pipeline.Targets(comm_reduction=5.0, gap=1.0, flops=0.6, params=0.5,
                             title="paper's targets for this run", payload_gap=0.3),
    doc=__doc__,
    choices={"stem": ("imagenet", "small"), "refit": REFITS, "basis": BASES,
             "refit_inputs": REFIT_INPUTS},
    helps={"stem": "imagenet: 7x7/2 conv + max-pool (standard, default); small: 3x3/1 conv "
                   "(16x more work in the first stage at 28-32 px)",
           "basis": "directions (default): each node sends per pair and layer the k "
                    "reduced-rank directions of its channels (needs --prune-steps 0 "
                    "--refit lstsq); channels: the learned masks choose among the "
                    "network's own channels (--preset retraining)",
           "refit_inputs": "with --refit lstsq: masked (each layer fitted on the input the "
                           "refitted layers before it make; one forward pass per layer) or "
                           "dense (on the dense model's; one pass; the default)",
           "distill": "weight in [0, 1] of distillation from the dense model in every "
                      "variant's pruning and fine-tuning (0, the default: labels only)"},
    recipe={"zero_init_residual": True})

parse_args, main, verified = NETWORK.parse_args, NETWORK.main, pipeline.verified

if __name__ == "__main__":
    sys.exit(main())
