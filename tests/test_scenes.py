"""Scenes: seeded multi-garment composites with class maps and tight boxes."""

import gzip

import numpy as np
import pytest

from disco_jax import data, scenes
from disco_jax.errors import ConfigError
from disco_jax.scenes import SceneConfig


def _garments(count=20, seed=0):
    """Stand-in garments: blobs of random ink, classes 0..9."""
    rng = np.random.default_rng(seed)
    items = np.zeros((count, 28, 28), np.uint8)
    for i in range(count):
        top, left = rng.integers(2, 8, size=2)
        items[i, top:top + 16, left:left + 14] = rng.integers(60, 256, size=(16, 14))
    return items, np.arange(count, dtype=np.int32) % 10


def test_a_scene_depends_only_on_split_seed_and_index():
    items, labels = _garments()
    config = SceneConfig()
    batch = scenes.generate(items, labels, 6, config, split="train", seed=3)
    alone = scenes.generate(items, labels, 1, config, split="train", seed=3, start=4)
    np.testing.assert_array_equal(batch.images[4], alone.images[0])
    np.testing.assert_array_equal(batch.class_maps[4], alone.class_maps[0])
    np.testing.assert_array_equal(batch.boxes[4], alone.boxes[0])
    other_seed = scenes.generate(items, labels, 6, config, split="train", seed=4)
    other_split = scenes.generate(items, labels, 6, config, split="test", seed=3)
    assert not np.array_equal(batch.images, other_seed.images)
    assert not np.array_equal(batch.images, other_split.images)


def test_class_maps_and_boxes_agree_and_boxes_are_tight():
    items, labels = _garments()
    made = scenes.generate(items, labels, 40, SceneConfig(), split="train", seed=0)
    assert made.images.shape == (40, 64, 64, 1) and made.class_maps.shape == (40, 64, 64)
    assert 0.0 <= made.images.min() and made.images.max() <= 1.0
    assert set(made.items_per_scene.tolist()) <= {1, 2, 3, 4}
    assert made.items_per_scene.min() == 1 and made.items_per_scene.max() == 4
    for image, class_map, boxes, classes in zip(made.images, made.class_maps, made.boxes,
                                                made.box_classes, strict=True):
        assert np.all(image[..., 0][class_map == 0] <= SceneConfig().ink)  # background is dark
        covered = np.zeros(class_map.shape, bool)
        for (x0, y0, x1, y1), label in zip(boxes.astype(int), classes, strict=True):
            if label < 0:
                assert x1 == y1 == 0
                continue
            inside = class_map[y0:y1, x0:x1] == label + 1
            # tight: the garment's class reaches every side of its box
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            covered[y0:y1, x0:x1] |= class_map[y0:y1, x0:x1] == label + 1
        assert np.all(covered == (class_map > 0))  # every labelled pixel lies in its box


def test_a_garment_is_never_hidden_more_than_max_hidden():
    """Opaque 28 px squares on a 56 px canvas, none may be hidden at all: two
    squares are placed side by side, each whole, or the second is left out."""
    items = np.full((3, 28, 28), 255, np.uint8)
    config = SceneConfig(canvas=56, items=(2, 2), scale=(1.0, 1.0), max_hidden=0.0)
    made = scenes.generate(items, np.array([0, 1, 2], np.int32), 30, config, split="train")
    for boxes, classes in zip(made.boxes, made.box_classes, strict=True):
        for (x0, y0, x1, y1), label in zip(boxes, classes, strict=True):
            if label >= 0:
                assert (x1 - x0, y1 - y0) == (28, 28)  # whole: nothing of it covered
    placed = made.items_per_scene
    assert placed.min() >= 1 and (placed == 2).any()
    assert np.all((made.class_maps > 0).sum(axis=(1, 2)) == 784 * placed)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_training_scenes_use_training_garments_and_test_scenes_test_garments(tmp_path):
    """A stand-in Fashion-MNIST whose training garments have ink 100 and test
    garments ink 200: each split's scenes show only its own."""
    items, labels = _garments(10)
    for split, ink in (("train", 100), ("test", 200)):
        images, label_file = data._FASHION_FILES[split]
        _write_idx(tmp_path / images, np.where(items > 0, ink, 0))
        _write_idx(tmp_path / label_file, labels)
    for split, ink in (("train", 100), ("test", 200)):
        made = scenes.load(split, 8, data_dir=tmp_path)
        assert made.images.max() == pytest.approx(ink / 255, abs=1e-6)
    dataset = scenes.load_dataset(16, 4, data_dir=tmp_path)
    assert dataset.classes == 11 and dataset.image_shape == (64, 64, 1)
    assert dataset.test.labels.shape == (4, 64, 64) and dataset.test.labels.dtype == np.int32
    assert abs(dataset.train.images.mean()) < 1e-4 and abs(dataset.train.images.std() - 1) < 1e-3
    fewer = scenes.load_dataset(8, 4, data_dir=tmp_path)  # the same test scenes
    np.testing.assert_array_equal(fewer.test.labels, dataset.test.labels)
    boxes = scenes.load_dataset(16, 4, data_dir=tmp_path, labels="boxes")  # for detection
    assert boxes.classes == 10 and boxes.test.labels.shape == (4, 4, 5)
    made = scenes.load("test", 4, data_dir=tmp_path)
    np.testing.assert_array_equal(boxes.test.labels[..., :4], made.boxes)
    np.testing.assert_array_equal(boxes.test.labels[..., 4], made.box_classes)
    np.testing.assert_array_equal(boxes.test.images, dataset.test.images)
    with pytest.raises(ConfigError, match="labels must be 'class_maps'.*or 'boxes'.*'masks'"):
        scenes.load_dataset(16, 4, data_dir=tmp_path, labels="masks")


@pytest.mark.parametrize("changes, message", [
    (dict(canvas=40), "canvas 40 px is smaller than a garment at scale 1.6 \\(45 px\\)"),
    (dict(items=(1, 30)), "30 garments of at least 17 x 17 px.*at most 20"),
    (dict(items=(0, 2)), "items must be 1 <= fewest <= most, got \\(0, 2\\)"),
    (dict(max_hidden=1.0), "max_hidden must be in \\[0, 1\\), got 1.0"),
    (dict(scale=(1.2, 0.8)), "scale must be 0 < smallest <= largest"),
])
def test_settings_no_scene_can_meet_are_refused_by_name(changes, message):
    items, labels = _garments()
    with pytest.raises(ConfigError, match=message):
        scenes.generate(items, labels, 2, SceneConfig(**changes), split="train")


def test_an_unknown_split_and_an_empty_count_are_refused():
    items, labels = _garments()
    with pytest.raises(ConfigError, match="not 'validation'"):
        scenes.generate(items, labels, 2, SceneConfig(), split="validation")
    with pytest.raises(ConfigError, match="at least 1, got 0"):
        scenes.generate(items, labels, 0, SceneConfig(), split="train")


@pytest.mark.skipif(not (data.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="apt-get install dataset-fashion-mnist (CI installs it)")
def test_scenes_of_the_offline_fashion_mnist():
    made = scenes.load("test", 50)
    assert made.classes == 10 and len(made) == 50
    assert made.class_maps.max() <= 10 and made.box_classes.max() <= 9
    assert 0.05 < (made.class_maps > 0).mean() < 0.6
