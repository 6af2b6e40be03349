"""Tasks: what differs between the task families DISCO serves.

A :class:`Task` owns the loss, the metrics (one primary, and whether higher
is better), the predictions, distillation from a teacher's outputs, and how
the mesh's outputs are compared with the single-device reference's. The
training loop (:func:`disco_jax.train.train`), :func:`~disco_jax.train.evaluate`
and the importances of :mod:`disco_jax.sparsify` take a task and never ask
which one it is; a new family is one module here.

- :class:`Classification`: logits ``[B, C_padded]``, top-1.
- :class:`Segmentation`: per-pixel logits ``[B, H, W, C_padded]``, mIoU over
  the classes from one dataset-level confusion matrix, and pixel accuracy.
- :class:`Detection`: CenterNet outputs (a centre heatmap per class, box size
  and offset), decoded to boxes; COCO AP and AP50 from pycocotools.
- :class:`SuperResolution`: the high-resolution image ``[B, rH, rW, C_padded]``,
  PSNR (Y channel, border cropped) and SSIM from scikit-image.

Where a function takes a task, an ``int`` still means
``Classification(classes)``.
"""

from disco_jax.tasks.base import Task, as_task
from disco_jax.tasks.classification import Classification
from disco_jax.tasks.detection import Detection
from disco_jax.tasks.segmentation import Segmentation
from disco_jax.tasks.super_resolution import SuperResolution

__all__ = ["Classification", "Detection", "Segmentation", "SuperResolution", "Task", "as_task"]
