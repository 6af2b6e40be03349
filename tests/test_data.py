"""Data: the offline Fashion-MNIST default, named tfds datasets, resumable batches."""

import gzip
import shutil

import numpy as np
import pytest

from disco_jax import data
from disco_jax.data import DataError

needs_fashion = pytest.mark.skipif(
    not (data.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist (CI installs it)")


@needs_fashion
def test_fashion_mnist_loads_offline_from_the_debian_package():
    dataset = data.load("fashion_mnist")
    assert dataset.train.images.shape == (60000, 28, 28, 1)
    assert dataset.test.images.shape == (10000, 28, 28, 1)
    assert dataset.classes == 10
    assert np.bincount(dataset.test.labels).tolist() == [1000] * 10
    assert abs(dataset.train.images.mean()) < 1e-3 and abs(dataset.train.images.std() - 1) < 1e-3
    assert "dataset-fashion-mnist" in dataset.source


@needs_fashion
def test_images_are_padded_to_32_pixels():
    dataset = data.load("fashion_mnist", image_size=32)
    assert dataset.image_shape == (32, 32, 1)
    border = dataset.test.images[:, :2]
    assert np.all(border == border.flat[0])  # the padding is one constant value


def test_missing_files_say_how_to_install_them(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion_mnist", data_dir=tmp_path)


@needs_fashion
def test_damaged_files_are_a_clear_error(tmp_path):
    for name in data.FASHION_MNIST_DIR.iterdir():
        shutil.copy(name, tmp_path / name.name)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x09"))
    with pytest.raises(DataError, match="holds 0 values, its header says"):
        data.load("fashion_mnist", data_dir=tmp_path)


def test_unknown_dataset_name_is_a_clear_error():
    with pytest.raises(DataError, match="unknown dataset 'fashion_mnits'"):
        data.load("fashion_mnits")


def test_named_tfds_dataset_loads_without_downloading():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):  # tfds' offline stand-in data
        dataset = data.load("cifar10")
    assert dataset.train.images.shape == (12, 32, 32, 3)
    assert dataset.train.labels.dtype == np.int32


def test_an_unprepared_tfds_dataset_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="is not prepared in .*nothing is downloaded"):
        data.load("cifar10", data_dir=tmp_path)
    assert not any(tmp_path.rglob("*.array_record*"))


def test_batches_depend_only_on_seed_and_step():
    first = [data.batch_indices(100, 32, step, seed=7) for step in range(7)]
    again = [data.batch_indices(100, 32, step, seed=7) for step in range(3, 7)]
    for a, b in zip(first[3:], again, strict=True):
        np.testing.assert_array_equal(a, b)
    epoch = np.concatenate(first[:3])
    assert len(set(epoch.tolist())) == 96  # no repeats within an epoch
    assert not np.array_equal(first[0], first[3])  # a new permutation each epoch
