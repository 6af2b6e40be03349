"""Image super-resolution: an image ``[B, rH, rW, C_padded]`` from a low-
resolution one, against the high-resolution ``f32[B, rH, rW, C]`` in [0, 1];
PSNR on the Y channel and SSIM, as the super-resolution papers compute them."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from disco_jax.errors import ConfigError
from disco_jax.tasks.base import Task

Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
"""ITU-R BT.601 luma of RGB in [0, 1], as 8-bit studio range ``16 + Y_WEIGHTS @ rgb * 255``
(MATLAB's ``rgb2ycbcr``, the convention of the SR benchmarks since SRCNN)."""


def quantise(images) -> np.ndarray:
    """Images in [0, 1] as the 8-bit values a saved image holds (float64, 0..255)."""
    return np.round(np.clip(np.asarray(images, np.float64), 0.0, 1.0) * 255.0)


def luma(images: np.ndarray) -> np.ndarray:
    """The Y channel (BT.601, 16..235) of 8-bit ``[..., 3]`` RGB (or ``[..., 1]``
    grey, taken as R = G = B)."""
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, -1)
    return 16.0 + images @ Y_WEIGHTS


@dataclasses.dataclass(frozen=True)
class SuperResolution(Task):
    """Upscaling by ``scale``: the model's output is the high-resolution image
    (``classes``: its channels, 3 for RGB; the output may be padded to a
    multiple of N, the padding dropped).

    Training loss: mean absolute error (L1, as EDSR and SwinIR train). The
    metrics, per test image and then averaged over the images (the
    benchmarks' protocol), on the output clipped to [0, 1] and rounded to 8
    bits, with ``scale`` pixels cropped at every border:

    - ``psnr``: PSNR in dB of the Y channel (BT.601), data range 255
      (:func:`skimage.metrics.peak_signal_noise_ratio`); the primary metric;
    - ``ssim``: SSIM of the Y channel with Wang et al.'s settings (Gaussian
      weights, sigma 1.5, population covariance; data range 255,
      :func:`skimage.metrics.structural_similarity`).
    """

    scale: int = 2

    name, metric, label = "super_resolution", "psnr", "PSNR"
    output_rank = 4
    display_scale, unit = 1.0, "dB"

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.scale, int | np.integer) and self.scale >= 2):
            raise ConfigError(f"SuperResolution scale must be an integer >= 2, "
                              f"got {self.scale!r}")

    def loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return jnp.abs(outputs - targets).mean()

    def distill(self, outputs: jax.Array, teacher: jax.Array, temperature: float) -> jax.Array:
        """L1 to the teacher's image (a regression has no temperature to soften)."""
        return jnp.abs(outputs - teacher).mean()

    def predict(self, outputs: jax.Array) -> jax.Array:
        """The image: outputs clipped to [0, 1]."""
        return jnp.clip(outputs, 0.0, 1.0)

    def accuracy(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        """PSNR in dB of the batch, all channels (the training progress bar)."""
        mse = jnp.mean((self.predict(outputs) - targets) ** 2)
        return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))

    def agreement(self, outputs: np.ndarray, reference: np.ndarray,
                  tolerance: float) -> tuple[int, int, int]:
        """``(values, differ, ties)``: the 8-bit values of the output images,
        those the mesh rounds to another value than the reference, and of
        those the ones where the reference lies within ``tolerance`` of a
        rounding boundary."""
        differ = quantise(outputs) != quantise(reference)
        scaled = np.clip(np.asarray(reference, np.float64), 0.0, 1.0) * 255.0
        boundary = np.abs(scaled - np.floor(scaled) - 0.5) * (1 / 255.0) <= tolerance
        return differ.size, int(differ.sum()), int((differ & boundary).sum())

    def tally(self, outputs: jax.Array, targets: jax.Array):
        """The batch's images and targets, kept for :meth:`metrics`."""
        return {"images": self.predict(outputs), "targets": targets}

    def combine(self, total, part):
        part = jax.tree.map(np.asarray, part)
        if total is None:
            return part
        return jax.tree.map(lambda a, b: np.concatenate([a, b]), total, part)

    def metrics(self, total) -> dict[str, float]:
        return self.image_metrics(total["images"], total["targets"])

    def image_metrics(self, images, targets) -> dict[str, float]:
        """PSNR and SSIM (Y channel, ``scale`` border cropped), averaged over images."""
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity

        border = self.scale
        psnr, ssim = [], []
        for image, target in zip(images, targets, strict=True):
            y, y_ref = (luma(quantise(a))[border:-border, border:-border]
                        for a in (image, target))
            with np.errstate(divide="ignore"):  # identical images: PSNR inf, as skimage says
                psnr.append(peak_signal_noise_ratio(y_ref, y, data_range=255.0))
            ssim.append(structural_similarity(y_ref, y, data_range=255.0,
                                              gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False))
        return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim))}

    def versus_reference(self, total, reference_total) -> dict[str, float]:
        """PSNR in dB of the mesh's images against the reference's (RGB, 8-bit)."""
        mse = np.mean((quantise(total["images"]) - quantise(reference_total["images"])) ** 2)
        return {"psnr_vs_reference": float("inf") if mse == 0 else
                float(10 * np.log10(255.0 ** 2 / mse))}

    def bicubic(self, images) -> np.ndarray:
        """Bicubic upscaling of ``images`` by ``scale``, clipped to [0, 1] (the
        networks' own skip, :func:`disco_jax.models.upsampling.bicubic`)."""
        from disco_jax.models.upsampling import bicubic

        return np.clip(np.asarray(bicubic(jnp.asarray(images), self.scale)), 0.0, 1.0)

    def baselines(self, split) -> dict[str, dict[str, float]]:
        """Bicubic upscaling of the test inputs (Keys cubic, a = -0.5), measured
        like the models."""
        return {"bicubic": self.image_metrics(self.bicubic(split.images), split.labels)}

    def check(self, split) -> None:
        from disco_jax.data import DataError

        images, targets = np.shape(split.images), np.shape(split.labels)
        want = (images[0], images[1] * self.scale, images[2] * self.scale, images[3])
        if tuple(targets) != want:
            raise DataError(f"super-resolution x{self.scale} of inputs {images} needs "
                            f"targets {want}, got {targets}")
        if targets[1] <= 2 * self.scale or targets[2] <= 2 * self.scale:
            raise DataError(f"images of {targets[1]} x {targets[2]} px leave nothing once "
                            f"the {self.scale}-pixel border is cropped for PSNR")
