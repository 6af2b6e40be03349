"""Semantic segmentation: per-pixel logits ``[B, H, W, C_padded]`` against
class maps ``int32[B, H, W]``; mIoU and pixel accuracy."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from disco_jax.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class Segmentation(Task):
    """Per-pixel classification into ``classes`` classes (background one of
    them). The metrics come from one confusion matrix over the whole
    dataset, as the standard segmentation benchmarks compute them
    (PASCAL VOC, Cityscapes): ``miou`` (the primary metric) is the mean over
    classes of TP / (TP + FP + FN), over the classes that occur in the
    targets or the predictions; ``pixel_accuracy`` the share of pixels right.
    """

    name, metric, label = "segmentation", "miou", "mIoU"
    output_rank = 4

    def tally(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        """``int32[C, C]``: pixels of target class t predicted as p at ``[t, p]``."""
        c = self.classes
        pairs = targets.reshape(-1) * c + self.predict(outputs).reshape(-1)
        return jnp.zeros(c * c, jnp.int32).at[pairs].add(1).reshape(c, c)

    def metrics(self, total: np.ndarray) -> dict[str, float]:
        confusion = np.asarray(total, np.float64)
        hits = np.diag(confusion)
        union = confusion.sum(0) + confusion.sum(1) - hits
        seen = union > 0
        return {"miou": float(np.mean(hits[seen] / union[seen])),
                "pixel_accuracy": float(hits.sum() / confusion.sum())}
