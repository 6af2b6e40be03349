"""Object detection as CenterNet does it (Zhou, Wang and Krähenbühl, "Objects
as Points", 2019): a per-class heatmap of object centres and, at each centre,
the box's size and the centre's sub-cell offset.

Outputs (at ``stride``, the network's output stride): ``heatmap``
``[B, h, w, C_padded]`` (logits of a centre of each class) and ``box``
``[B, h, w, 4_padded]`` (width, height in output cells; x, y offset of the
centre within its cell). Targets: ``f32[B, M, 5]`` rows ``(x0, y0, x1, y1,
class)`` in input pixels (``x1``, ``y1`` one past the box), class -1 for the
rows past an image's objects.

- Training: the heatmap target of each object is a Gaussian around its centre
  cell, with CornerNet's radius (:func:`gaussian_radius`, truncated there;
  sigma = (2 radius + 1) / 6), the maximum over objects of
  one class; the heatmap loss is the penalty-reduced focal loss (alpha 2,
  beta 4) over the number of objects; the size and offset losses are L1 at
  the objects' centre cells (weights ``size_weight``, ``offset_weight``).
- Decoding (jitted JAX, on the gathered outputs): sigmoid, peaks kept by a
  3x3 max-pool, the ``top_k`` best over positions and classes, boxes from
  the size and offset at each peak.
- Metrics: COCO AP (IoU 0.50:0.95) and AP50 from ``pycocotools``' COCOeval
  over the whole evaluated set (its ``maxDets`` 100 per image), boxes in input
  pixels; AP50 is the primary metric.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np

from disco_jax.data import DataError
from disco_jax.errors import ConfigError
from disco_jax.tasks.base import Task

BOX = 4
"""Channels of the box output: width, height, x offset, y offset."""


def gaussian_radius(height: jax.Array, width: jax.Array, min_overlap: float) -> jax.Array:
    """The Gaussian radius of a ``height`` x ``width`` box (in output cells)
    as CornerNet's and CenterNet's reference code compute it (Law and Deng,
    2018; Zhou et al., 2019): the smallest of three quadratics' roots for a
    corner shift that keeps IoU >= ``min_overlap``, each root taken as
    ``(b + sqrt(b^2 - 4ac)) / 2`` as that code does (which gives the radii
    their published models were trained with)."""
    def root(a, b, c):
        return (b + jnp.sqrt(jnp.maximum(b * b - 4 * a * c, 0.0))) / 2

    h, w, o = height, width, min_overlap
    r1 = root(1.0, h + w, w * h * (1 - o) / (1 + o))
    r2 = root(4.0, 2 * (h + w), (1 - o) * w * h)
    r3 = root(4 * o, -2 * o * (h + w), (o - 1) * w * h)
    return jnp.minimum(jnp.minimum(r1, r2), r3)


@dataclasses.dataclass(frozen=True)
class Detection(Task):
    """CenterNet detection of ``classes`` classes (see the module).

    Attributes:
      stride: input pixels per output cell.
      top_k: detections kept per image.
      min_overlap: the IoU a centre shift within the Gaussian's radius keeps.
      size_weight, offset_weight: weights of the L1 size and offset losses.
    """

    stride: int = 4
    top_k: int = 100
    min_overlap: float = 0.7
    size_weight: float = 0.1
    offset_weight: float = 1.0

    name, metric, label = "detection", "ap50", "AP50"
    output_rank = {"heatmap": 4, "box": 4}

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.stride, int) and self.stride >= 1):
            raise ConfigError(f"Detection stride must be a positive int, got {self.stride!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ConfigError(f"Detection top_k must be a positive int, got {self.top_k!r}")

    @property
    def output_channels(self):
        return {"heatmap": self.classes, "box": BOX}

    # training ---------------------------------------------------------------

    def _objects(self, targets: jax.Array, height: int, width: int):
        """Per object: valid, class, centre cell (x, y), centre in cells, size in cells."""
        boxes = targets[..., :4] / self.stride
        cls = targets[..., 4].astype(jnp.int32)
        valid = cls >= 0
        centre = jnp.stack([(boxes[..., 0] + boxes[..., 2]) / 2,
                            (boxes[..., 1] + boxes[..., 3]) / 2], -1)
        cell = jnp.stack([jnp.clip(jnp.floor(centre[..., 0]), 0, width - 1),
                          jnp.clip(jnp.floor(centre[..., 1]), 0, height - 1)], -1)
        size = jnp.stack([boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]], -1)
        return valid, jnp.maximum(cls, 0), cell.astype(jnp.int32), centre, size

    def heatmap_targets(self, targets: jax.Array, height: int, width: int) -> jax.Array:
        """``[B, height, width, classes]``: each class's maximum over its objects
        of a Gaussian (truncated at CornerNet's radius) around the centre cell,
        exactly 1 at the cell."""
        valid, cls, cell, _, size = self._objects(targets, height, width)
        radius = jnp.maximum(jnp.floor(gaussian_radius(size[..., 1], size[..., 0],
                                                       self.min_overlap)), 0.0)
        sigma = (2 * radius + 1) / 6
        at = cell.astype(jnp.float32)
        dx = jnp.arange(width, dtype=jnp.float32)[None, None, None, :] - at[..., 0, None, None]
        dy = jnp.arange(height, dtype=jnp.float32)[None, None, :, None] - at[..., 1, None, None]
        inside = ((jnp.abs(dx) <= radius[..., None, None])
                  & (jnp.abs(dy) <= radius[..., None, None]))
        bump = jnp.exp(-(dx * dx + dy * dy) / (2 * sigma[..., None, None] ** 2))
        bump = jnp.where(inside & valid[..., None, None], bump, 0.0)        # [B, M, h, w]
        own = jax.nn.one_hot(cls, self.classes) * valid[..., None].astype(jnp.float32)
        return jnp.max(bump[..., None] * own[:, :, None, None, :], axis=1)

    def loss(self, outputs, targets: jax.Array) -> jax.Array:
        logits, box = outputs["heatmap"], outputs["box"]
        height, width = logits.shape[1:3]
        heat = self.heatmap_targets(targets, height, width)
        positive = heat >= 1.0
        log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
        p = jnp.exp(log_p)
        focal = jnp.where(positive, jnp.square(1 - p) * log_p,
                          jnp.square(jnp.square(1 - heat)) * jnp.square(p) * log_not_p)
        count = jnp.maximum(positive.sum(), 1).astype(logits.dtype)
        valid, _, cell, centre, size = self._objects(targets, height, width)
        batch = jnp.arange(box.shape[0])[:, None]
        at = box[batch, cell[..., 1], cell[..., 0]]                         # [B, M, 4]
        weight = valid[..., None].astype(box.dtype)
        objects = jnp.maximum(valid.sum(), 1).astype(box.dtype)
        size_l1 = jnp.sum(jnp.abs(at[..., :2] - size) * weight) / objects
        offset = centre - cell.astype(centre.dtype)
        offset_l1 = jnp.sum(jnp.abs(at[..., 2:] - offset) * weight) / objects
        return (-focal.sum() / count + self.size_weight * size_l1
                + self.offset_weight * offset_l1)

    def distill(self, outputs, teacher, temperature: float) -> jax.Array:
        """Distillation from a teacher's outputs: binary cross-entropy of the
        heatmap to the teacher's probabilities (at ``temperature``) and L1 to
        its box output."""
        t = temperature
        soft = jax.nn.sigmoid(teacher["heatmap"] / t)
        logits = outputs["heatmap"] / t
        bce = -(soft * jax.nn.log_sigmoid(logits) + (1 - soft) * jax.nn.log_sigmoid(-logits))
        return t * t * bce.mean() + jnp.abs(outputs["box"] - teacher["box"]).mean()

    def accuracy(self, outputs, targets: jax.Array) -> jax.Array:
        """The share of objects whose centre cell scores at least 0.3 for their
        class (the training progress bar)."""
        logits = outputs["heatmap"]
        valid, cls, cell, _, _ = self._objects(targets, *logits.shape[1:3])
        batch = jnp.arange(logits.shape[0])[:, None]
        hit = jax.nn.sigmoid(logits[batch, cell[..., 1], cell[..., 0], cls]) >= 0.3
        return (jnp.sum(hit & valid) / jnp.maximum(valid.sum(), 1)).astype(logits.dtype)

    # decoding and metrics -----------------------------------------------------

    def _peaks(self, outputs):
        """The ``top_k`` best peaks: ``(scores, classes, cells y * width + x,
        boxes)``, best first."""
        heat = jax.nn.sigmoid(outputs["heatmap"])
        batch, height, width, classes = heat.shape
        peaks = jax.lax.reduce_window(heat, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1),
                                      "SAME")
        heat = jnp.where(heat == peaks, heat, 0.0)
        k = min(self.top_k, height * width * classes)
        scores, index = jax.lax.top_k(heat.reshape(batch, -1), k)
        cls, cell = index % classes, index // classes
        y, x = cell // width, cell % width
        box = outputs["box"][jnp.arange(batch)[:, None], y, x]             # [B, K, 4]
        w, h = jnp.maximum(box[..., 0], 0.0), jnp.maximum(box[..., 1], 0.0)
        cx, cy = x.astype(box.dtype) + box[..., 2], y.astype(box.dtype) + box[..., 3]
        boxes = self.stride * jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        return scores, cls.astype(jnp.int32), cell, boxes

    def predict(self, outputs):
        """``(boxes f32[B, K, 4] (x0, y0, x1, y1) in input pixels, scores
        f32[B, K], classes int32[B, K])``, best first, K = ``top_k``."""
        scores, classes, _, boxes = self._peaks(outputs)
        return boxes, scores, classes

    def tally(self, outputs, targets):
        """The batch's detections and targets, kept: ``(boxes, scores,
        classes, targets)`` (:meth:`combine` concatenates them)."""
        boxes, scores, classes = self.predict(outputs)
        return boxes, scores, classes, targets

    def combine(self, total, part):
        part = tuple(np.asarray(x) for x in part)
        if total is None:
            return part
        return tuple(np.concatenate([a, b]) for a, b in zip(total, part, strict=True))

    def metrics(self, total) -> dict[str, float]:
        """``ap`` (IoU 0.50:0.95) and ``ap50`` from pycocotools' COCOeval over
        every image tallied.

        Raises:
          DataError: the images hold no object at all (COCO's AP is undefined).
        """
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        boxes, scores, classes, targets = total
        images = list(range(1, len(targets) + 1))
        annotations = []
        for image, rows in zip(images, targets, strict=True):
            for x0, y0, x1, y1, cls in rows[rows[:, 4] >= 0]:
                annotations.append({"id": len(annotations) + 1, "image_id": image,
                                    "category_id": int(cls) + 1, "iscrowd": 0,
                                    "bbox": [float(x0), float(y0), float(x1 - x0),
                                             float(y1 - y0)],
                                    "area": float((x1 - x0) * (y1 - y0))})
        if not annotations:
            raise DataError(f"the {len(images)} images evaluated hold no object: COCO AP is "
                            "undefined; evaluate on images with objects")
        truth = COCO()
        truth.dataset = {"images": [{"id": i} for i in images], "annotations": annotations,
                         "categories": [{"id": c + 1} for c in range(self.classes)]}
        ids = np.repeat(np.asarray(images, np.float64), boxes.shape[1])
        flat = boxes.reshape(-1, 4).astype(np.float64)
        found = np.column_stack([ids, flat[:, 0], flat[:, 1], flat[:, 2] - flat[:, 0],
                                 flat[:, 3] - flat[:, 1], scores.reshape(-1),
                                 classes.reshape(-1) + 1.0])
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            truth.createIndex()
            evaluation = COCOeval(truth, truth.loadRes(found), "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        return {"ap50": float(evaluation.stats[1]), "ap": float(evaluation.stats[0])}

    def agreement(self, outputs, reference, tolerance: float) -> tuple[int, int, int]:
        """The mesh's detections against the reference's, rank by rank over
        ``top_k`` per image: a detection differs when its class, its cell, its
        box (by more than ``2 * stride * tolerance`` pixels, what an output
        error of ``tolerance`` can move it) or its score (by more than
        ``tolerance``) does. It is a float tie when it is another detection
        (another class or cell) whose score equals the reference's at that
        rank within ``tolerance``: two candidates that score the same up to
        rounding, taken in the other order, or a peak that a neighbouring
        cell equals up to rounding. Such a swap moves the detections after
        it by a rank, so another detection is also a tie when the reference
        has, at another rank of that image, one of its class in its cell or a
        neighbouring one whose score equals its own within ``tolerance`` (the
        same detections, ordered otherwise), or when it scores within
        ``tolerance`` of the reference's last one (it crossed the top-k cut).
        The same detection with another box or score is never a tie."""
        mine = [np.asarray(x) for x in self._peaks(outputs)]
        ref = [np.asarray(x) for x in self._peaks(reference)]
        other = (mine[1] != ref[1]) | (mine[2] != ref[2])
        score_gap = np.abs(mine[0] - ref[0])
        differ = (other | (np.abs(mine[3] - ref[3]).max(-1) > 2 * self.stride * tolerance)
                  | (score_gap > tolerance))
        width = np.shape(outputs["heatmap"])[2]
        (my_y, my_x), (ref_y, ref_x) = (np.divmod(p[2], width) for p in (mine, ref))
        # [B, rank here, rank there]: its class, its cell or a neighbour, its score
        elsewhere = ((mine[1][:, :, None] == ref[1][:, None, :])
                     & (np.abs(my_y[:, :, None] - ref_y[:, None, :]) <= 1)
                     & (np.abs(my_x[:, :, None] - ref_x[:, None, :]) <= 1)
                     & (np.abs(mine[0][:, :, None] - ref[0][:, None, :]) <= tolerance))
        at_cut = mine[0] <= ref[0][:, -1:] + tolerance
        ties = differ & other & ((score_gap <= tolerance) | elsewhere.any(-1) | at_cut)
        return differ.size, int(differ.sum()), int(ties.sum())

    def check(self, split) -> None:
        """Raises DataError naming the image and the box when a target is not
        ``f32[N, M, 5]``, a box lies outside the image or is empty, or a class
        does not fit the head."""
        targets = np.asarray(split.labels)
        if targets.ndim != 3 or targets.shape[-1] != 5:
            raise DataError(f"detection targets must be [N, M, 5] rows (x0, y0, x1, y1, "
                            f"class), got shape {targets.shape}")
        height, width = split.images.shape[1:3]
        cls = targets[..., 4]
        valid = cls >= 0
        for what, bad in (
                (f"a class outside [0, {self.classes}) (the head has {self.classes})",
                 valid & (cls >= self.classes) | (cls != np.round(cls)) | (cls < -1)),
                (f"a box outside the {width} x {height} image",
                 valid & ((targets[..., 0] < 0) | (targets[..., 1] < 0)
                          | (targets[..., 2] > width) | (targets[..., 3] > height))),
                ("an empty box (x1 <= x0 or y1 <= y0)",
                 valid & ((targets[..., 2] <= targets[..., 0])
                          | (targets[..., 3] <= targets[..., 1])))):
            if bad.any():
                image, row = (int(i) for i in np.argwhere(bad)[0])
                raise DataError(f"image {image}, object {row}: {what}: "
                                f"{targets[image, row].tolist()}; fix or drop it")
