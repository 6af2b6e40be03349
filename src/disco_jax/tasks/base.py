"""The task protocol (see :mod:`disco_jax.tasks`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from disco_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Task:
    """What a task family brings: subclasses set ``classes`` and define
    :meth:`loss`, :meth:`predict`, :meth:`tally` and :meth:`metrics`.

    Tasks are frozen dataclasses: equal tasks are one key of the jitted
    training and evaluation steps (one compilation per model structure and
    task, not per call).

    Attributes:
      classes: the output channels that carry the task's logits (the model's
        output may be padded to a multiple of N; the padding is dropped).
    """

    classes: int

    name = "task"
    """The task family's name (a report's ``task``)."""
    metric = "metric"
    """The primary metric's name (a key of :meth:`metrics`)."""
    label = "metric"
    """The primary metric as a table heads it."""
    higher_is_better = True
    display_scale, unit = 100.0, "points"
    """How tables show the metric: ``display_scale`` times its value (a share
    in percent), differences in ``unit``."""
    output_rank = 2
    """Rank of the model's output (``[B, C]``; ``[B, H, W, C]`` per pixel), or
    for a model with several outputs (a dict) the same structure of ranks."""

    def __post_init__(self):
        if not (isinstance(self.classes, int | np.integer) and self.classes >= 1):
            raise ConfigError(f"{type(self).__name__} needs classes >= 1, got {self.classes!r}")

    @property
    def output_channels(self):
        """The output channels that carry the task's values (the rest, up to a
        multiple of N, is padding): an int, or the outputs' structure of them."""
        return self.classes

    def outputs(self, raw):
        """The model's output without the padding channels (last axis of every output)."""
        return jax.tree.map(lambda x, keep: x[..., :keep], raw, self.output_channels)

    def loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        """The mean training loss of a batch: cross-entropy over the last axis,
        ``targets`` the class of each output position."""
        return optax.softmax_cross_entropy_with_integer_labels(outputs, targets).mean()

    def distill(self, outputs: jax.Array, teacher: jax.Array, temperature: float) -> jax.Array:
        """The distillation term: ``T^2 * KL(teacher_T || student_T)`` per output
        position, averaged (Hinton et al., 2015)."""
        t = temperature
        return t * t * optax.losses.kl_divergence_with_log_targets(
            jax.nn.log_softmax(outputs / t), jax.nn.log_softmax(teacher / t)).mean()

    def accuracy(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        """The share of positions predicted right (the training progress bar)."""
        return jnp.mean(self.predict(outputs) == targets)

    def predict(self, outputs: jax.Array) -> jax.Array:
        """Predictions from outputs: the class of each position."""
        return jnp.argmax(outputs, -1)

    def agreement(self, outputs: np.ndarray, reference: np.ndarray,
                  tolerance: float) -> tuple[int, int, int]:
        """How the mesh's outputs agree with the single-device reference's:
        ``(positions, mismatches, ties)``: the predicted positions, those
        predicted differently, and of those the ones where the reference's
        top two outputs lie within ``tolerance`` (a float tie, not an error)."""
        differ = np.argmax(outputs, -1) != np.argmax(reference, -1)
        top2 = np.sort(reference, -1)[..., -2:]
        ties = differ & (top2[..., 1] - top2[..., 0] <= tolerance)
        return differ.size, int(differ.sum()), int(ties.sum())

    def tally(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        """What a batch adds to the metrics: an array that sums over batches
        (or, with :meth:`combine` overridden, whatever that combines)."""
        raise NotImplementedError

    def combine(self, total, part):
        """The tally of the batches so far (``total``, None before the first)
        and one more batch's: their sum."""
        part = np.asarray(part)
        return part if total is None else total + part

    def metrics(self, total) -> dict[str, float]:
        """The metrics from every batch's :meth:`tally`, combined (:meth:`combine`)."""
        raise NotImplementedError

    def versus_reference(self, total, reference_total) -> dict[str, float]:
        """Task-specific measures of the mesh's outputs against the reference's,
        from both tallies (the PSNR between the two images, say). Default: none."""
        return {}

    def baselines(self, split) -> dict[str, dict[str, float]]:
        """Metrics of methods that need no model (bicubic upscaling, say) on
        ``split``, by name, for the tables' baseline rows. Default: none."""
        return {}

    def check(self, split) -> None:
        """Raises :class:`~disco_jax.errors.DataError`, naming the example and
        the value, when ``split``'s targets do not fit this task (a class past
        the head, say). The default checks nothing."""


def as_task(task: Task | int) -> Task:
    """``task``, or ``Classification(task)`` for an int (a number of classes)."""
    from disco_jax.tasks.classification import Classification

    if isinstance(task, Task):
        return task
    if isinstance(task, int | np.integer) and not isinstance(task, bool):
        return Classification(int(task))
    raise ConfigError(f"expected a disco_jax.tasks.Task or a number of classes, got {task!r}")
