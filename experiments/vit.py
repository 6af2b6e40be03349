"""DISCO on a Vision Transformer end to end, with the same table as ResNet-50.

    python -m experiments.vit --mesh 2                       # default run, ~10 min on 2 CPU cores
    python -m experiments.vit --mesh 2 --report reports/vit_n2.json \\
        --sweep 0,0.05,0.1,0.2,0.5,1                          # + accuracy against comm ratio
    python -m experiments.vit --quick --mesh 4               # a few steps: smoke test

The pipeline (train the dense model, the variants from it, the plan, the
mesh, the report) is :mod:`experiments.pipeline`; this module is its network:
a ViT (:class:`disco_jax.models.ViT`: patch embedding on the replicated
input, attention split by heads, DISCO Q/K/V, output and MLP layers,
LayerNorm statistics by ``psum``) and its targets (>= 4x less communication,
LayerNorm statistics included; DISCO within 1.5 points of the dense split and
above random masks).

By default DISCO is applied after training (:data:`AFTER_TRAINING`): the
learned variant rewrites the dense ViT into its principal basis
(:mod:`disco_jax.basis`), where channels differ in how much of them the other
node cannot predict; masks are set at once and the kept weights refitted by
least squares (:mod:`disco_jax.refit`). In the network's own channels no
ranking beats random masks (see the README).
"""

from __future__ import annotations

import sys

from experiments import pipeline
from experiments.compare import BASES, DISTILL, REFITS

RECIPE = dict(optimizer="adamw", learning_rate=1e-3, warmup_steps=50, weight_decay=0.05)
"""AdamW with the weight decay transformers are usually trained with."""

ARCHITECTURE = dict(patch=4, dim=64, depth=6, heads=4, mlp_ratio=4, pool="mean")
"""28 px -> 7 x 7 = 49 tokens of width 64; 4 heads (2 per node at N = 2)."""

AFTER_TRAINING = dict(prune_steps=0, finetune_steps=0, importance="fisher", refit="lstsq",
                      basis="principal", **DISTILL)
"""DISCO after training: the dense model trained to the end of its schedule, then
the learned variant rewrites it into its principal basis, every variant sets
its masks at once (Fisher ranking for the learned one) on 512 training images
and refits the weights it keeps by least squares; no retraining."""

PRESETS = {
    # ~10 min on the 2-core CPU machine
    "default": dict(image_size=28, **ARCHITECTURE, pretrain_steps=1600, batch_size=64,
                    test_images=10000, eval_images=2000, **AFTER_TRAINING, **RECIPE),
    "full": dict(image_size=28, **ARCHITECTURE | {"dim": 128, "heads": 8}, pretrain_steps=6000,
                 batch_size=128, test_images=10000, eval_images=10000, **AFTER_TRAINING,
                 **RECIPE | {"warmup_steps": 500}),
    "quick": dict(image_size=28, **ARCHITECTURE | {"dim": 16, "depth": 1}, pretrain_steps=3,
                  batch_size=16, test_images=128, eval_images=128, **AFTER_TRAINING, **RECIPE),
}
"""The earlier default, DISCO trained like the ResNets (masks reached over 200
pruning steps, then 800 fine-tuning steps, all variants from step 600 of one
run): ``--pretrain-steps 600 --prune-steps 200 --finetune-steps 800
--importance saliency --refit none --basis channels``."""


def build_model(settings: dict, dataset):
    """The (untrained) ViT a run with ``settings`` (its ``settings.json``)
    trains, for ``dataset``'s images and classes."""
    from flax import nnx

    from disco_jax.models import ViT

    return ViT(image_size=settings["image_size"], patch=settings["patch"], dim=settings["dim"],
               depth=settings["depth"], heads=settings["heads"],
               mlp_ratio=settings["mlp_ratio"], pool=settings["pool"],
               classes=dataset.classes, nodes=settings["nodes"],
               in_channels=dataset.image_shape[-1], rngs=nnx.Rngs(settings["seed"]))


NETWORK = pipeline.Network(
    program="experiments.vit", models=("vit",), presets=PRESETS, build=build_model,
    architecture=tuple(ARCHITECTURE),
    describe=lambda r: (f"patch {r['patch']}, width {r['dim']}, depth {r['depth']}, "
                        f"{r['heads']} heads, MLP x{r['mlp_ratio']}, {r['pool']} pooling"),
    targets=pipeline.Targets(comm_reduction=4.0, gap=1.5),
    doc=__doc__,
    choices={"pool": ("mean", "cls"), "refit": REFITS, "basis": BASES},
    helps={"importance": "how learned masks rank channels: fisher (the Fisher information "
                         "of the channel's mask entry, default), saliency (weight norm x the "
                         "RMS of the channel's values) or weight_norm",
           "refit": "lstsq (default): once the masks reach the budget, refit the kept "
                    "weights by least squares to the dense model's layer outputs; none",
           "basis": "principal (default): the learned masks choose among the principal "
                    "directions of what a node holds that the others cannot predict (the "
                    "same network, rewritten); channels: among its own channels; "
                    "directions: each node sends per pair and layer k reduced-rank "
                    "directions of its channels (a projection before sending)"})

parse_args, main, verified = NETWORK.parse_args, NETWORK.main, pipeline.verified

if __name__ == "__main__":
    sys.exit(main())
