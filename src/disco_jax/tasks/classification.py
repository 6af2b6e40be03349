"""Image classification: logits ``[B, C_padded]`` against labels ``int32[B]``; top-1."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from disco_jax.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class Classification(Task):
    """Classification into ``classes`` classes; the metric is top-1 accuracy."""

    name, metric, label = "classification", "top1", "top-1"

    def tally(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        """``[correct, examples]``."""
        correct = jnp.sum(self.predict(outputs) == targets)
        return jnp.stack([correct, jnp.asarray(targets.shape[0], correct.dtype)])

    def metrics(self, total: np.ndarray) -> dict[str, float]:
        correct, count = np.asarray(total, np.float64)
        return {"top1": float(correct / count)}
