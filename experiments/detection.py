"""Object detection under DISCO: scenes of Fashion-MNIST garments, boxes.

    python -m experiments.detection --mesh 2                 # default run
    python -m experiments.detection --mesh 2 --seeds 0,1,2   # learned vs random over seeds
    python -m experiments.detection --quick --mesh 2         # a few steps: smoke test

The pipeline (dense model, the variants from it, the plan, the mesh, the
report) is :mod:`experiments.pipeline`, the same as the main job's; this
module is its network and task: :class:`disco_jax.models.Detector` (CenterNet
heads on a ResNet backbone and a U-Net-style decoder to output stride 4,
every layer that mixes channels a DISCO layer) on 96 x 96 scenes of 1 to 6
garments (:mod:`disco_jax.scenes`; training scenes from training garments, a
fixed set of test scenes from test garments; boxes tight around each
garment's visible ink), and :class:`disco_jax.tasks.Detection`: decoding
after the mesh, COCO AP (IoU 0.50:0.95) and AP50 from pycocotools over the
whole test set, AP50 the primary metric. By default DISCO sends reduced-rank
directions, as in the main job. The figure ``OUT/examples.png`` shows test
scenes with the ground-truth boxes and the dense split's, DISCO's and random
masks' detections.
"""

from __future__ import annotations

import sys

from experiments import pipeline
from experiments.compare import RECIPE
from experiments.resnet50 import DIRECTIONS  # the main job's method
from experiments.segmentation import (  # the same scenes' options and networks
    DATASET,
    ON_SCENES,
    scene_builder,
)

SCENES = dict(canvas=96, most_items=6, train_scenes=20000)
"""96 px scenes of 1 to ``most_items`` garments; the training scenes (the
test scenes are the first ``test_images``)."""

CALIBRATION = {"calibration_images": 512}
"""The refit's images: 512 scenes of 24 x 24 output cells already give ~295,000
rows per least-squares problem. With the main job's 2,048 the first default
run (2026-12-06, sharing the 2 cores with three other runs) spent ~20 minutes
in one variant's refit, held 8.5 GB and was killed for memory."""

PRESETS = {
    "default": dict(**SCENES, stem="imagenet", width=32, decoder_width=32, pretrain_steps=600,
                    prune_steps=0, finetune_steps=150, batch_size=32, test_images=2000,
                    eval_images=500, **DIRECTIONS | CALIBRATION, **RECIPE),
    "full": dict(**SCENES | {"train_scenes": 60000}, stem="imagenet", width=64,
                 decoder_width=64, pretrain_steps=5000, prune_steps=0, finetune_steps=1000,
                 batch_size=64, test_images=5000, eval_images=2000, **DIRECTIONS,
                 **RECIPE | {"warmup_steps": 300}),
    "quick": dict(**SCENES | {"train_scenes": 256}, stem="imagenet", width=8, decoder_width=8,
                  pretrain_steps=5, prune_steps=0, finetune_steps=3, batch_size=8,
                  test_images=64, eval_images=32, **DIRECTIONS | {"calibration_images": 32},
                  **RECIPE),
}

def load_scenes(settings: dict):
    """The run's scenes with their boxes (:func:`disco_jax.scenes.load_dataset`):
    always the same ones (scene seed 0), whatever the run's seed."""
    from disco_jax import scenes
    from disco_jax.errors import ConfigError

    if settings["dataset"] != DATASET:
        raise ConfigError(f"detection runs on --dataset {DATASET} (scenes of Fashion-MNIST "
                          f"garments with their boxes), not {settings['dataset']!r}")
    config = scenes.SceneConfig(canvas=settings["canvas"], items=(1, settings["most_items"]))
    return scenes.load_dataset(settings["train_scenes"], settings["test_images"], config,
                               labels="boxes")


build_model = scene_builder("Detector", "centernet_")
"""The (untrained) detector of a run with ``settings``."""


def detection_task(dataset):
    from disco_jax.tasks import Detection

    return Detection(dataset.classes)


def draw_examples(models, test, task, path):
    from disco_jax.data import FASHION_MNIST_CLASSES
    from experiments import plots

    return plots.detection_examples(models, test, task, path, FASHION_MNIST_CLASSES)


NETWORK = pipeline.Network(
    program="experiments.detection", models=("centernet_resnet18", "centernet_resnet50"),
    presets=PRESETS, build=build_model, doc=__doc__, load=load_scenes, task=detection_task,
    picture=draw_examples,
    targets=pipeline.Targets(comm_reduction=5.0, gap=2.0, flops=0.6, params=0.5,
                             title="targets for this run"),
    **ON_SCENES | {"helps": ON_SCENES["helps"] | {
        "most_items": "most garments per scene (each scene has 1 to this many)"}})

parse_args, main, verified = NETWORK.parse_args, NETWORK.main, pipeline.verified

if __name__ == "__main__":
    sys.exit(main())
