"""Image super-resolution under DISCO: the photographs of scikit-image.

    python -m experiments.super_resolution --mesh 2                 # default run (x2)
    python -m experiments.super_resolution --mesh 2 --scale 4       # x4
    python -m experiments.super_resolution --mesh 2 --model swinir  # the transformer
    python -m experiments.super_resolution --mesh 2 --seeds 0,1,2   # learned vs random over seeds
    python -m experiments.super_resolution --quick --mesh 2         # a few steps: smoke test

The pipeline (dense model, the variants from it, the plan, the mesh, the
report) is :mod:`experiments.pipeline`, the same as the main job's; this
module is its networks and task: ``--model edsr`` (the default),
:class:`disco_jax.models.EDSR` (an EDSR-baseline-style CNN: residual blocks
without BatchNorm, a sub-pixel upsampler that stays on each node; every conv
that mixes channels a DISCO layer), or ``--model swinir``,
:class:`disco_jax.models.SwinIR` (SwinIR-light-style: shifted-window
attention blocks in residual groups of two, heads split over the nodes,
LayerNorm statistics by ``psum``), trained on random patches of ten
photographs and tested on four
other whole 512 x 512 photographs (:mod:`disco_jax.photos`; inputs their
bicubic downscaling), and :class:`disco_jax.tasks.SuperResolution`: PSNR of
the Y channel with ``scale`` border pixels cropped (the primary metric) and
SSIM, from scikit-image, per image and averaged; bicubic upscaling is the
baseline row. By default DISCO sends reduced-rank directions, as in the main
job. The figure ``OUT/examples.png`` shows a crop of each test image:
bicubic, the dense split, DISCO, random masks and the original.
"""

from __future__ import annotations

import sys

from experiments import pipeline
from experiments.compare import BASES, RECIPE, REFIT_INPUTS, REFITS
from experiments.resnet50 import DIRECTIONS  # the main job's method

DATASET = "skimage_photos"  # disco_jax.photos.NAME (--help imports no jax)

PHOTOS = dict(scale=2, patch=24, train_patches=8000)
"""x2; training pairs of 24 px low-resolution patches (48 px high resolution)."""

CALIBRATION = {"calibration_images": 128}
"""The refit's patches: 128 patches already give 295,000 rows per
least-squares problem at the tail (48 x 48 px each)."""

PRESETS = {
    "default": dict(**PHOTOS, width=32, blocks=4, heads=4, window=8, pretrain_steps=3000,
                    prune_steps=0, finetune_steps=600, batch_size=16, test_images=4,
                    eval_images=4, **DIRECTIONS | CALIBRATION, **RECIPE),
    "full": dict(**PHOTOS | {"patch": 48, "train_patches": 16000}, width=64, blocks=16,
                 heads=4, window=8, pretrain_steps=20000, prune_steps=0, finetune_steps=5000,
                 batch_size=16, test_images=4, eval_images=4, **DIRECTIONS | CALIBRATION,
                 **RECIPE | {"learning_rate": 1e-3, "warmup_steps": 300}),
    "quick": dict(**PHOTOS | {"patch": 16, "train_patches": 256}, width=8, blocks=2,
                  heads=2, window=4, pretrain_steps=5, prune_steps=0, finetune_steps=3,
                  batch_size=4, test_images=4, eval_images=4,
                  **DIRECTIONS | {"calibration_images": 16}, **RECIPE),
}

SWINIR_PRESETS = {"default": dict(blocks=2, pretrain_steps=2400, finetune_steps=400)}
"""Where ``--model swinir`` differs: one group of two window blocks (one
shifted) and fewer steps, since a step costs about twice an EDSR step here
(~20 minutes on one core, as EDSR's default run)."""


def load_photos(settings: dict):
    """The run's training patches and test photographs
    (:func:`disco_jax.photos.load_dataset`): always the same ones (patch seed
    0), whatever the run's seed."""
    from disco_jax import photos
    from disco_jax.errors import ConfigError

    if settings["dataset"] != DATASET:
        raise ConfigError(f"super-resolution runs on --dataset {DATASET} (the photographs "
                          f"scikit-image ships), not {settings['dataset']!r}")
    return photos.load_dataset(settings["scale"], settings["patch"], settings["train_patches"])


def build_model(settings: dict, dataset):
    """The (untrained) super-resolution network of a run with ``settings``:
    ``edsr`` with ``blocks`` residual blocks, or ``swinir`` with ``blocks``
    window-attention blocks in groups of two."""
    from flax import nnx

    from disco_jax import models

    shared = dict(scale=settings["scale"], channels=dataset.classes, nodes=settings["nodes"],
                  rngs=nnx.Rngs(settings["seed"]))
    if settings["model"] == "swinir":
        if settings["blocks"] % 2:
            from disco_jax.errors import ConfigError

            raise ConfigError(f"swinir takes its window blocks in groups of two (shifted and "
                              f"not); --blocks {settings['blocks']} is odd")
        return models.SwinIR(dim=settings["width"], groups=settings["blocks"] // 2, depth=2,
                             heads=settings["heads"], window=settings["window"], **shared)
    return models.EDSR(width=settings["width"], blocks=settings["blocks"], **shared)


def super_resolution_task(dataset):
    from disco_jax.tasks import SuperResolution

    low, high = dataset.test.images.shape[1], dataset.test.labels.shape[1]
    return SuperResolution(dataset.classes, scale=high // low)


def draw_examples(models, test, task, path):
    from experiments import plots

    return plots.super_resolution_examples(models, test, task, path)


NETWORK = pipeline.Network(
    program="experiments.super_resolution", models=("edsr", "swinir"), presets=PRESETS,
    build=build_model, doc=__doc__, load=load_photos, task=super_resolution_task,
    picture=draw_examples, architecture=("scale", "width", "blocks", "heads", "window"),
    describe=lambda r: (f"x{r['scale']}, width {r['width']}, {r['blocks']} residual blocks"
                        if r["model"] == "edsr" else
                        f"x{r['scale']}, width {r['width']}, {r['blocks']} window blocks in "
                        f"groups of 2, {r['heads']} heads, window {r['window']}"),
    dataset_name=DATASET,
    choices={"scale": (2, 3, 4), "refit": REFITS, "basis": BASES,
             "refit_inputs": REFIT_INPUTS},
    helps={"dataset": f"{DATASET}: the photographs in the scikit-image wheel (offline)",
           "scale": "the upscaling factor (2, 3 or 4)",
           "patch": "low-resolution training patch side in px",
           "width": "channels (edsr) or the transformer's width (swinir)",
           "blocks": "residual blocks (edsr) or window-attention blocks, in groups of two "
                     "(swinir)",
           "heads": "attention heads (swinir; divisible by the nodes)",
           "window": "attention window side in px (swinir; the images' sides divide by it)",
           "train_patches": "training patch pairs cut from the training photographs",
           "test_images": "test photographs (4: astronaut, camera, immunohistochemistry, "
                          "moon, whole)"},
    targets=pipeline.Targets(comm_reduction=5.0, gap=0.15, flops=0.6, params=0.5,
                             over_baseline=("bicubic", 1.0), title="targets for this run"),
    model_presets={"swinir": SWINIR_PRESETS},
    # the transformer's LayerNorm statistics travel whatever the masks: >= 4x
    model_targets={"swinir": pipeline.Targets(
        comm_reduction=4.0, gap=0.15, flops=0.6, params=0.5, over_baseline=("bicubic", 1.0),
        title="targets for this run")})

parse_args, main, verified = NETWORK.parse_args, NETWORK.main, pipeline.verified

if __name__ == "__main__":
    sys.exit(main())
