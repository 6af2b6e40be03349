"""Super-resolution data: the photographs the scikit-image wheel ships.

``skimage/data`` holds ~20 photographs in the installed package (nothing is
downloaded). They are split by image: :data:`TEST_PHOTOS`, four whole
512 x 512 images, are never trained on; training patches come from
:data:`TRAIN_PHOTOS` only.

Images are RGB in [0, 1] (grey photographs repeated over the three
channels): RGB because a super-resolution model is used on colour images,
while the metrics follow the field and measure the Y channel
(:class:`disco_jax.tasks.SuperResolution`). The low-resolution input of an
image is its bicubic downscaling by ``scale`` (antialiased Keys cubic,
a = -0.5, as MATLAB's ``imresize`` that the benchmarks use), after cropping
the high-resolution image to a multiple of ``scale``. Training pairs are
seeded random patches of whole downscaled images (the high-resolution patch
aligned with the low-resolution one), each flipped or rotated by a multiple
of 90 degrees at random.
"""

from __future__ import annotations

import numpy as np

from disco_jax.data import DataError, Dataset, Split

NAME = "skimage_photos"
"""The dataset's name (``--dataset`` of :mod:`experiments.super_resolution`)."""

TEST_PHOTOS = ("astronaut", "camera", "immunohistochemistry", "moon")
"""The held-out test images (functions of :mod:`skimage.data`), each 512 x 512."""

TRAIN_PHOTOS = ("chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "brick",
                "grass", "gravel", "coins", "cell")
"""The images training patches come from (never tested on)."""


def photo(name: str) -> np.ndarray:
    """``f32[H, W, 3]`` in [0, 1]: photograph ``name`` of :mod:`skimage.data`."""
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None or name.startswith("_"):
        raise DataError(f"skimage.data has no photograph {name!r}")
    image = np.asarray(loader())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise DataError(f"skimage.data.{name} is not an image ({image.shape})")
    return image[..., :3].astype(np.float32) / np.float32(np.iinfo(image.dtype).max)


def downscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic downscaling of ``[..., H, W, C]`` by ``scale`` (H, W multiples of it)."""
    import jax
    import jax.numpy as jnp

    *lead, height, width, channels = images.shape
    size = (*lead, height // scale, width // scale, channels)
    return np.asarray(jax.image.resize(jnp.asarray(images), size, "bicubic", antialias=True))


def pair(image: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)``: ``image`` cropped to a multiple of ``scale`` and its
    bicubic downscaling."""
    height, width = (side - side % scale for side in image.shape[:2])
    high = image[:height, :width]
    return downscale(high, scale), high


def patches(images: list[np.ndarray], count: int, patch: int, scale: int, *,
            seed: int = 0, names: tuple[str, ...] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random training pairs: low-resolution ``f32[count, patch,
    patch, C]`` and the aligned high-resolution ``f32[count, scale * patch,
    scale * patch, C]``, from ``images`` (high resolution) picked in
    proportion to their area, each pair flipped / rotated at random.

    Raises:
      DataError: an image whose low-resolution version is smaller than ``patch``.
    """
    names = names or tuple(f"image {i}" for i in range(len(images)))
    pairs = [pair(image, scale) for image in images]
    for name, (low, _) in zip(names, pairs, strict=True):
        if min(low.shape[:2]) < patch:
            raise DataError(f"{name} is {low.shape[0]} x {low.shape[1]} px at 1/{scale} "
                            f"scale, smaller than a {patch} px training patch; use a smaller "
                            f"--patch or leave the image out")
    rng = np.random.default_rng(seed)
    areas = np.array([low.shape[0] * low.shape[1] for low, _ in pairs], np.float64)
    picks = rng.choice(len(pairs), size=count, p=areas / areas.sum())
    channels = pairs[0][0].shape[-1]
    low_out = np.empty((count, patch, patch, channels), np.float32)
    high_out = np.empty((count, scale * patch, scale * patch, channels), np.float32)
    for index, pick in enumerate(picks):
        low, high = pairs[pick]
        top = int(rng.integers(0, low.shape[0] - patch + 1))
        left = int(rng.integers(0, low.shape[1] - patch + 1))
        a = low[top:top + patch, left:left + patch]
        b = high[scale * top:scale * (top + patch), scale * left:scale * (left + patch)]
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        a, b = np.rot90(a, turns), np.rot90(b, turns)
        if flip:
            a, b = a[:, ::-1], b[:, ::-1]
        low_out[index], high_out[index] = a, b
    return low_out, high_out


def load_dataset(scale: int = 2, patch: int = 24, train_patches: int = 8000, *,
                 test: tuple[str, ...] = TEST_PHOTOS, train: tuple[str, ...] = TRAIN_PHOTOS,
                 seed: int = 0) -> Dataset:
    """The super-resolution dataset: ``train`` = ``train_patches`` random
    patch pairs (images: low resolution, labels: high resolution) of the
    ``train`` photographs; ``test`` = the ``test`` photographs whole
    (they must share one size).

    Raises:
      DataError: a photograph named in both lists, test photographs of
        different sizes, a patch larger than a training image, or an
        impossible count.
    """
    if not (isinstance(scale, int) and scale >= 2):
        raise DataError(f"scale must be an integer >= 2, got {scale!r}")
    if patch < 1 or train_patches < 1:
        raise DataError(f"patch and train_patches must be positive, got {patch}, "
                        f"{train_patches}")
    if set(test) & set(train):
        raise DataError(f"photographs both trained and tested on: {sorted(set(test) & set(train))}")
    pairs = [pair(photo(name), scale) for name in test]
    shapes = {name: low.shape for name, (low, _) in zip(test, pairs, strict=True)}
    if len(set(shapes.values())) > 1:
        raise DataError(f"the test photographs must share one size to batch, got {shapes}")
    low, high = patches([photo(name) for name in train], train_patches, patch, scale,
                        seed=seed, names=train)
    return Dataset(
        name=NAME, train=Split(low, high),
        test=Split(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])),
        classes=3, source=f"skimage.data photographs: test {', '.join(test)}; train "
                          f"{', '.join(train)}")
