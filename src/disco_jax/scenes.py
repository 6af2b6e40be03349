"""Multi-object scenes composed from Fashion-MNIST garments, offline and seeded.

The images of segmentation and detection: each scene is a square canvas with
a few garments, each rescaled and placed at random, in the manner of the
MultiMNIST recipes (Sabour, Frosst and Hinton, "Dynamic Routing Between
Capsules", 2017: items overlaid with bounded overlap; the MNIST
object-detection generators: items rescaled and pasted at random positions on
a larger canvas, with tight boxes). Here:

- a scene depends only on ``(split, seed, index)``: generating scene 7 alone
  gives the same scene as generating the first 100;
- training scenes are made only of training-split garments, test scenes only
  of test-split garments;
- a garment drawn later lies on top; a placement is redrawn (up to
  ``attempts`` times, after which that garment is left out) when it would
  leave an earlier garment with less than ``1 - max_hidden`` of its own
  pixels visible;
- a garment's own pixels are those brighter than ``ink`` (in [0, 1]); it is
  composited with opacity ``min(1, pixel / ink)``, so where it owns a pixel
  the image shows it alone.

Labels per scene: a class map (0 background, ``1 + class`` where a garment
owns the pixel, the topmost winning) and each visible garment's tight box
``(x0, y0, x1, y1)`` in pixels (``x1``, ``y1`` one past the last owned
pixel) with its class.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from disco_jax.errors import ConfigError

SPLITS = {"train": 0, "test": 1}
"""The Fashion-MNIST splits scenes are made from, and their index in a scene's seed."""


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How scenes are composed.

    Attributes:
      canvas: side of the square scene in pixels.
      items: fewest and most garments drawn per scene (each scene draws its
        count uniformly in this range).
      scale: smallest and largest rescaling of a 28 x 28 garment.
      max_hidden: the largest fraction of a garment's own pixels the garments
        above it may cover, in [0, 1).
      ink: intensity in (0, 1) above which a garment owns a pixel.
      attempts: placements tried per garment before it is left out.
    """

    canvas: int = 64
    items: tuple[int, int] = (1, 4)
    scale: tuple[float, float] = (0.6, 1.6)
    max_hidden: float = 0.3
    ink: float = 0.1
    attempts: int = 50

    def most_that_fit(self, item_side: int = 28) -> int:
        """The most garments of the smallest scale that fit on the canvas by
        area, each at most ``max_hidden`` hidden (the bound :meth:`check`
        holds the most items to)."""
        smallest = _side(item_side, self.scale[0])
        return math.floor(self.canvas**2 / (smallest**2 * (1.0 - self.max_hidden)))

    def check(self, item_side: int = 28) -> None:
        """Raises ConfigError, naming the value, for settings no scene can meet."""
        low, high = self.items
        if not 1 <= low <= high:
            raise ConfigError(f"scene items must be 1 <= fewest <= most, got {self.items}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"scene scale must be 0 < smallest <= largest, got {self.scale}")
        if not 0.0 <= self.max_hidden < 1.0:
            raise ConfigError(f"max_hidden must be in [0, 1), got {self.max_hidden}")
        if not 0.0 < self.ink < 1.0:
            raise ConfigError(f"ink must be in (0, 1), got {self.ink}")
        if self.attempts < 1:
            raise ConfigError(f"attempts must be at least 1, got {self.attempts}")
        largest = _side(item_side, self.scale[1])
        if self.canvas < largest:
            raise ConfigError(
                f"canvas {self.canvas} px is smaller than a garment at scale {self.scale[1]} "
                f"({largest} px): raise the canvas to {largest} or lower the largest scale")
        if high > self.most_that_fit(item_side):
            smallest, fit = _side(item_side, self.scale[0]), self.most_that_fit(item_side)
            raise ConfigError(
                f"{high} garments of at least {smallest} x {smallest} px, each at most "
                f"{self.max_hidden:.0%} hidden, do not fit on a {self.canvas} px canvas (by "
                f"area at most {fit}): lower the most items, the scale or raise the canvas")


@dataclasses.dataclass(frozen=True)
class Scenes:
    """Scenes and their labels, ``K`` = the config's most items.

    Attributes:
      images: ``f32[N, S, S, 1]`` in [0, 1].
      class_maps: ``int32[N, S, S]``: 0 background, ``1 + class`` elsewhere.
      boxes: ``f32[N, K, 4]`` ``(x0, y0, x1, y1)`` of the visible garments,
        topmost last; rows past a scene's garments are 0.
      box_classes: ``int32[N, K]``: each box's class, -1 past the scene's garments.
      classes: garment classes (background not counted).
    """

    images: np.ndarray
    class_maps: np.ndarray
    boxes: np.ndarray
    box_classes: np.ndarray
    classes: int

    def __len__(self) -> int:
        return len(self.images)

    @property
    def items_per_scene(self) -> np.ndarray:
        """``int32[N]``: the garments each scene holds."""
        return (self.box_classes >= 0).sum(axis=1).astype(np.int32)


def _side(item_side: int, scale: float) -> int:
    return max(1, round(item_side * scale))


def _rescale(item: np.ndarray, scale: float) -> np.ndarray:
    """A garment ``f32[h, w]`` in [0, 1] rescaled (bilinear) to ``round(h * scale)``."""
    from scipy import ndimage

    side = _side(item.shape[0], scale)
    zoomed = ndimage.zoom(item, side / item.shape[0], order=1, grid_mode=True, mode="nearest")
    return np.clip(zoomed, 0.0, 1.0)


def scene(items: np.ndarray, labels: np.ndarray, config: SceneConfig, *, split: str,
          seed: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scene ``index`` of ``(split, seed)``, from that split's garments.

    Arguments:
      items: ``u8[M, 28, 28]`` garments of ``split`` (:func:`disco_jax.data.fashion_mnist_items`).
      labels: ``int32[M]`` their classes.

    Returns:
      ``(image f32[S, S, 1], class_map int32[S, S], boxes f32[K, 4], box_classes int32[K])``.
    """
    if split not in SPLITS:
        raise ConfigError(f"scenes are made from the splits {tuple(SPLITS)}, not {split!r}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    size = config.canvas
    image = np.zeros((size, size), np.float32)
    owner = np.zeros((size, size), np.int32)  # 0: background, t + 1: garment t
    own_area, classes = [], []
    for _ in range(rng.integers(config.items[0], config.items[1] + 1)):
        for _ in range(config.attempts):
            pick = rng.integers(len(items))
            patch = _rescale(items[pick].astype(np.float32) / 255.0,
                             rng.uniform(*config.scale))
            side = patch.shape[0]
            y, x = rng.integers(0, size - side + 1, size=2)
            own = patch > config.ink
            region = owner[y:y + side, x:x + side]
            visible = np.bincount(owner.ravel(), minlength=len(classes) + 1)[1:]
            covered = np.bincount(region[own], minlength=len(classes) + 1)[1:]
            if own.any() and np.all(visible - covered
                                    >= (1.0 - config.max_hidden) * np.asarray(own_area)):
                break
        else:
            continue  # no placement kept the garments below visible enough
        alpha = np.minimum(1.0, patch / config.ink)
        window = image[y:y + side, x:x + side]
        window[...] = alpha * patch + (1.0 - alpha) * window
        region[own] = len(classes) + 1
        own_area.append(int(own.sum()))
        classes.append(int(labels[pick]))
    most = config.items[1]
    boxes = np.zeros((most, 4), np.float32)
    box_classes = np.full(most, -1, np.int32)
    for t, label in enumerate(classes):
        ys, xs = np.nonzero(owner == t + 1)
        boxes[t] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        box_classes[t] = label
    class_map = np.where(owner > 0, np.asarray([0, *classes], np.int32)[owner] + 1, 0)
    return image[..., None], class_map.astype(np.int32), boxes, box_classes


def generate(items: np.ndarray, labels: np.ndarray, count: int, config: SceneConfig, *,
             split: str, seed: int = 0, start: int = 0) -> Scenes:
    """Scenes ``start .. start + count - 1`` of ``(split, seed)`` (see :func:`scene`)."""
    config.check(items.shape[1])
    if count < 1:
        raise ConfigError(f"scene count must be at least 1, got {count}")
    parts = [scene(items, labels, config, split=split, seed=seed, index=start + i)
             for i in range(count)]
    images, class_maps, boxes, box_classes = (np.stack(part) for part in zip(*parts, strict=True))
    return Scenes(images, class_maps, boxes, box_classes, classes=int(labels.max()) + 1)


def load(split: str, count: int, config: SceneConfig | None = None, *, seed: int = 0,
         data_dir: str | os.PathLike | None = None) -> Scenes:
    """``count`` scenes of ``split`` ("train" or "test"), composed from that
    split of the offline Fashion-MNIST (:mod:`disco_jax.data`).

    Raises:
      ConfigError: settings no scene can meet (:meth:`SceneConfig.check`).
      DataError: Fashion-MNIST is not installed (says how).
    """
    from disco_jax.data import fashion_mnist_items

    config = config or SceneConfig()
    config.check()
    items, labels = fashion_mnist_items(split, data_dir)
    return generate(items, labels, count, config, split=split, seed=seed)



def load_dataset(train_scenes: int = 20000, test_scenes: int = 2000,
                 config: SceneConfig | None = None, *, seed: int = 0,
                 data_dir: str | os.PathLike | None = None, labels: str = "class_maps"):
    """The scenes as a :class:`~disco_jax.data.Dataset`: images standardised
    with the training scenes' mean and std, and as targets either
    (``labels="class_maps"``, segmentation) the class maps, ``classes`` =
    garment classes + 1 (background), or (``labels="boxes"``, detection)
    ``f32[N, K, 5]`` rows ``(x0, y0, x1, y1, class)`` of the visible garments,
    class -1 past a scene's garments, ``classes`` = garment classes. The test
    scenes depend only on ``(seed, index)``: the same fixed test set for every
    run of one seed, whatever the number of training scenes.

    Raises:
      ConfigError: ``labels`` is neither.
    """
    from disco_jax.data import SCENES, Dataset, Split

    if labels not in ("class_maps", "boxes"):
        raise ConfigError(f"scene labels must be 'class_maps' (segmentation) or 'boxes' "
                          f"(detection), got {labels!r}")
    config = config or SceneConfig()
    train = load("train", train_scenes, config, seed=seed, data_dir=data_dir)
    test = load("test", test_scenes, config, seed=seed, data_dir=data_dir)
    mean, std = float(train.images.mean()), float(train.images.std())

    def targets(made: Scenes) -> np.ndarray:
        if labels == "class_maps":
            return made.class_maps
        return np.concatenate([made.boxes, made.box_classes[..., None].astype(np.float32)], -1)

    splits = [Split(((made.images - mean) / std).astype(np.float32), targets(made))
              for made in (train, test)]
    return Dataset(SCENES, *splits, classes=train.classes + (labels == "class_maps"),
                   source=f"scenes of {config.items[0]}-{config.items[1]} Fashion-MNIST "
                          f"garments on a {config.canvas} px canvas (disco_jax.scenes, "
                          f"seed {seed}), {labels.replace('_', ' ')}")
