"""Image classification data: the offline default and named tfds datasets.

- ``"fashion_mnist"`` (the default) is read from the files of the Debian
  package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``,
  files under ``/usr/share/datasets/fashion-mnist``); nothing is downloaded.
- Any other name (``cifar10``, ``imagenette``, ``imagenet2012``, ...) goes
  through tensorflow-datasets from its data directory; a download is only
  attempted with ``download=True``.

:func:`load` returns whole splits as arrays (images ``f32[N, H, W, C]``
standardised with the training set's mean and std, labels ``int32[N]``);
:func:`batch_indices` gives the examples of training step s, the same for a
given seed and step whether or not the run was interrupted before.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import numpy as np

from disco_jax.errors import DiscoError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


SCENES = "fashion_scenes"
"""The name of the scenes of segmentation and detection (:func:`disco_jax.scenes.load_dataset`)."""

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
"""Fashion-MNIST's class names, by label."""


class DataError(DiscoError):
    """A dataset that cannot be found, read or understood."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: ``images: f32[N, H, W, C]``, ``labels: int32[N]``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset with its training and test splits (``classes``: the classes,
    or for super-resolution the image channels)."""

    name: str
    train: Split
    test: Split
    classes: int
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape of one test image: what the model runs on at inference
        (training inputs may be smaller crops, as super-resolution's patches)."""
        return tuple(self.test.images.shape[1:])


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped: big-endian dims, then uint8 data."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path} cannot be read ({err}); reinstall the data with "
                        "'apt-get install --reinstall dataset-fashion-mnist'") from None
    ndim = raw[3] if len(raw) > 4 else 0
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    dims = np.frombuffer(raw, ">u4", ndim, offset=4).astype(int)
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != np.prod(dims):
        raise DataError(f"{path} holds {data.size} values, its header says {tuple(dims)}")
    return data.reshape(dims)


def _fashion_mnist(data_dir: Path) -> tuple[dict[str, tuple], str]:
    missing = [name for files in _FASHION_FILES.values() for name in files
               if not (data_dir / name).is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST is not in {data_dir} (missing {', '.join(missing)}). Install the "
            "offline copy with 'apt-get install dataset-fashion-mnist' (as root), or point "
            "DISCO_FASHION_MNIST_DIR at a folder with the four IDX files.")
    splits = {}
    for split, (images, labels) in _FASHION_FILES.items():
        x, y = _read_idx(data_dir / images), _read_idx(data_dir / labels)
        if len(x) != len(y):
            raise DataError(f"{data_dir}: {len(x)} {split} images but {len(y)} labels")
        splits[split] = (x[..., None], y)
    return splits, f"Debian package dataset-fashion-mnist ({data_dir})"


def fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where Fashion-MNIST is read from: ``data_dir``, else
    ``$DISCO_FASHION_MNIST_DIR``, else the Debian package's folder."""
    return Path(data_dir or os.environ.get("DISCO_FASHION_MNIST_DIR", FASHION_MNIST_DIR))


def fashion_mnist_items(split: str, data_dir: str | os.PathLike | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """One split of Fashion-MNIST as it is stored: ``(u8[M, 28, 28], int32[M])``
    (the items :mod:`disco_jax.scenes` composes scenes from).

    Raises:
      DataError: ``split`` is not "train" or "test", or the files are missing.
    """
    if split not in _FASHION_FILES:
        raise DataError(f"Fashion-MNIST has the splits {tuple(_FASHION_FILES)}, not {split!r}")
    folder = fashion_mnist_dir(data_dir)
    raw, _ = _fashion_mnist(folder)
    images, labels = raw[split]
    return images[..., 0], labels.astype(np.int32)


def _tfds(name: str, data_dir: str | None, download: bool) -> tuple[dict[str, tuple], str]:
    """A prepared tfds dataset through ``tfds.data_source`` (array_record, no TensorFlow)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # tfds raises DatasetNotFoundError and others
        first_line = str(err).strip().splitlines()[0][:200]
        raise DataError(f"unknown dataset {name!r} ({type(err).__name__}: {first_line}). "
                        "The offline default is 'fashion_mnist'; other names are "
                        "tensorflow-datasets names such as 'cifar10'.") from None
    splits = {}
    try:
        if download:
            builder.download_and_prepare(file_format="array_record")
        for split, candidates in (("train", ("train",)), ("test", ("test", "validation"))):
            for candidate in candidates:
                try:
                    source = tfds.data_source(name, split=candidate, data_dir=data_dir,
                                              download=False)
                    break
                except (KeyError, ValueError):
                    if candidate == candidates[-1]:
                        raise
            examples = [source[i] for i in range(len(source))]
            splits[split] = (np.stack([ex["image"] for ex in examples]),
                             np.asarray([ex["label"] for ex in examples]))
    except Exception as err:
        raise DataError(
            f"dataset {name!r} is not prepared in {builder.data_dir} ({type(err).__name__}). "
            f"Prepare it (array_record format) on a machine with internet access, e.g. "
            f"disco_jax.data.load({name!r}, download=True), and pass its data_dir; nothing "
            "is downloaded unless asked.") from None
    return splits, f"tensorflow-datasets {name} ({builder.data_dir})"


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pads (for a few pixels more) or resizes square images to ``size``."""
    height = images.shape[1]
    if height == size:
        return images
    if size > height and (size - height) % 2 == 0 and size - height <= 8:
        pad = (size - height) // 2
        return np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    import jax

    return np.asarray(jax.image.resize(images, (len(images), size, size, images.shape[-1]),
                                       "bilinear"))


def load(name: str = "fashion_mnist", *, image_size: int | None = None,
         data_dir: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """Loads a classification dataset into memory.

    Arguments:
      name: ``"fashion_mnist"`` (offline, from the Debian package) or a
        tensorflow-datasets name.
      image_size: pad (28 -> 32) or resize images to this square size.
      data_dir: where the files are (default: the Debian package folder or
        ``$DISCO_FASHION_MNIST_DIR`` for Fashion-MNIST; tfds' default otherwise).
      download: let tensorflow-datasets download (never on the default path).

    Raises:
      DataError: unknown name, files missing (says how to install them), or damaged.
    """
    if name == SCENES:
        raise DataError(f"{SCENES} has a class per pixel, not per image: it is the "
                        "data of segmentation and detection (python -m "
                        "experiments.segmentation, experiments.detection; "
                        "disco_jax.scenes.load_dataset); a classifier needs a classification "
                        "dataset such as fashion_mnist")
    if name == "fashion_mnist":
        raw, source = _fashion_mnist(fashion_mnist_dir(data_dir))
    else:
        raw, source = _tfds(name, None if data_dir is None else str(data_dir), download)
    train_x = raw["train"][0].astype(np.float32) / 255.0
    mean, std = float(train_x.mean()), float(train_x.std())
    splits = {}
    for split, (images, labels) in raw.items():
        x = (images.astype(np.float32) / 255.0 - mean) / std
        if image_size is not None:
            x = _resize(x, image_size)
        splits[split] = Split(x.astype(np.float32), labels.astype(np.int32))
    classes = int(max(splits["train"].labels.max(), splits["test"].labels.max())) + 1
    return Dataset(name, splits["train"], splits["test"], classes, source)


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Indices of the examples of training step ``step``.

    Each epoch is a fresh permutation drawn from ``(seed, epoch)``, so the
    batch of a step depends only on (seed, step): a resumed run sees the same
    data as an uninterrupted one. Batches never straddle epochs; the remainder
    of an epoch is dropped.
    """
    if not 0 < batch_size <= num_examples:
        raise DataError(f"batch size {batch_size} must be in [1, {num_examples}]")
    per_epoch = num_examples // batch_size
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return order[index * batch_size:(index + 1) * batch_size]
