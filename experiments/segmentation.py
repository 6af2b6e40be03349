"""Semantic segmentation under DISCO: scenes of Fashion-MNIST garments.

    python -m experiments.segmentation --mesh 2                 # default run
    python -m experiments.segmentation --mesh 2 --seeds 0,1,2   # learned vs random over seeds
    python -m experiments.segmentation --quick --mesh 2         # a few steps: smoke test

The pipeline (dense model, the variants from it, the plan, the mesh, the
report) is :mod:`experiments.pipeline`, the same as the main job's; this
module is its network and task: :class:`disco_jax.models.Segmenter` (a
ResNet backbone and a U-Net-style decoder, every layer that mixes channels a
DISCO layer) on 64 x 64 scenes of 1 to 4 garments (:mod:`disco_jax.scenes`;
training scenes from training garments, a fixed set of test scenes from test
garments), per-pixel classes (background + the 10 garment classes), and the
metric mIoU over the 11 classes from one confusion matrix over the test set
(pixel accuracy too). By default DISCO sends reduced-rank directions, as in
the main job. The figure ``OUT/examples.png`` shows test scenes: the input,
the ground truth, and the dense split's, DISCO's and random masks'
predictions.
"""

from __future__ import annotations

import sys

from experiments import pipeline
from experiments.compare import BASES, RECIPE, REFIT_INPUTS, REFITS
from experiments.resnet50 import DIRECTIONS  # the main job's method

SCENES = dict(canvas=64, train_scenes=20000)
"""64 px scenes; the training scenes (the test scenes are the first ``test_images``)."""

PRESETS = {
    # every variant: 1,500 steps; timed in the README
    "default": dict(**SCENES, stem="imagenet", width=32, decoder_width=32, pretrain_steps=1200,
                    prune_steps=0, finetune_steps=300, batch_size=32, test_images=2000,
                    eval_images=500, **DIRECTIONS, **RECIPE),
    "full": dict(**SCENES | {"train_scenes": 60000}, stem="imagenet", width=64,
                 decoder_width=64, pretrain_steps=5000, prune_steps=0, finetune_steps=1000,
                 batch_size=64, test_images=5000, eval_images=2000, **DIRECTIONS,
                 **RECIPE | {"warmup_steps": 300}),
    "quick": dict(**SCENES | {"train_scenes": 256}, stem="imagenet", width=8, decoder_width=8,
                  pretrain_steps=5, prune_steps=0, finetune_steps=3, batch_size=8,
                  test_images=64, eval_images=32, **DIRECTIONS | {"calibration_images": 32},
                  **RECIPE),
}

DATASET = "fashion_scenes"  # disco_jax.data.SCENES (--help imports no jax)


def load_scenes(settings: dict):
    """The run's scenes (:func:`disco_jax.scenes.load_dataset`): always the
    same ones (scene seed 0), whatever the run's seed."""
    from disco_jax import scenes
    from disco_jax.errors import ConfigError

    if settings["dataset"] != DATASET:
        raise ConfigError(f"segmentation runs on --dataset {DATASET} (scenes of Fashion-MNIST "
                          f"garments with a class per pixel), not {settings['dataset']!r}")
    config = scenes.SceneConfig(canvas=settings["canvas"])
    return scenes.load_dataset(settings["train_scenes"], settings["test_images"], config)


def scene_builder(network: str, prefix: str):
    """``(settings, dataset) -> model``: the untrained ``disco_jax.models``
    network named ``network`` (a backbone + decoder: ``Segmenter``,
    ``Detector``) of a run on the scenes, its backbone the model name after
    ``prefix`` (named, not imported: ``--help`` imports no jax)."""
    def build(settings: dict, dataset):
        from flax import nnx

        from disco_jax import models

        return getattr(models, network)(
            settings["model"].removeprefix(prefix), classes=dataset.classes,
            nodes=settings["nodes"], in_channels=dataset.image_shape[-1],
            stem=settings["stem"], width=settings["width"],
            decoder_width=settings["decoder_width"], zero_init_residual=True,
            rngs=nnx.Rngs(settings["seed"]))

    return build


build_model = scene_builder("Segmenter", "unet_")
"""The (untrained) segmentation network of a run with ``settings``."""


def segmentation_task(dataset):
    from disco_jax.tasks import Segmentation

    return Segmentation(dataset.classes)


def draw_examples(models, test, task, path):
    from disco_jax.data import FASHION_MNIST_CLASSES
    from experiments import plots

    return plots.segmentation_examples(models, test, task, path,
                                       ("background", *FASHION_MNIST_CLASSES))


ON_SCENES = dict(
    architecture=("stem", "width", "decoder_width"),
    describe=lambda r: (f"{r['stem']} stem, width {r['width']}, decoder width "
                        f"{r['decoder_width']}"),
    dataset_name=DATASET,
    choices={"stem": ("imagenet", "small"), "refit": REFITS, "basis": BASES,
             "refit_inputs": REFIT_INPUTS},
    helps={"dataset": f"{DATASET}: scenes of Fashion-MNIST garments (offline, generated)",
           "train_scenes": "training scenes generated (from training garments only)",
           "test_images": "test scenes (from test garments only; the same set every run)"},
    recipe={"zero_init_residual": True})
"""What the networks on the scenes share (``pipeline.Network`` fields): a
backbone + decoder described by its stem and widths, the scenes' options."""

NETWORK = pipeline.Network(
    program="experiments.segmentation", models=("unet_resnet18", "unet_resnet50"),
    presets=PRESETS, build=build_model, doc=__doc__, load=load_scenes,
    task=segmentation_task, picture=draw_examples,
    targets=pipeline.Targets(comm_reduction=5.0, gap=1.5, flops=0.6, params=0.5,
                             title="targets for this run"),
    **ON_SCENES)

parse_args, main, verified = NETWORK.parse_args, NETWORK.main, pipeline.verified

if __name__ == "__main__":
    sys.exit(main())
