"""The embedded synthetic benchmark: determinism, the disk cache, label/instance consistency, fold views
and the PU classification view."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from trainables.data.base import IGNORE_INDEX, fold_classes, task_view
from trainables.data.synthetic import (
    CACHE_ENV,
    SYNTHETIC_CLASSES,
    SyntheticConfig,
    cache_path,
    load_synthetic_classification,
    load_synthetic_segmentation,
)
import trainables.data.synthetic as synthetic

TINY = SyntheticConfig(image_size=32, images_per_class=3, val_per_class=1, test_per_class=2)
NAMES = ("background",) + SYNTHETIC_CLASSES


@pytest.fixture(scope="module")
def tiny_train(tmp_path_factory):
    return load_synthetic_segmentation("train", TINY, tmp_path_factory.mktemp("cache"))


def _assert_same(a, b):
    for name in ("images", "labels", "instances"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_class_names_are_20_distinct_shape_texture_pairs():
    assert len(SYNTHETIC_CLASSES) == 20 and len(set(SYNTHETIC_CLASSES)) == 20


def test_every_fold_pretrains_on_every_shape_and_texture():
    for fold in range(1, 5):
        pretrain, finetune = fold_classes(fold)
        seen = {SYNTHETIC_CLASSES[c - 1].split("_")[0] for c in pretrain}
        seen_shapes = {SYNTHETIC_CLASSES[c - 1].split("_")[1] for c in pretrain}
        for c in finetune:
            texture, shape = SYNTHETIC_CLASSES[c - 1].split("_")
            assert texture in seen and shape in seen_shapes


def test_shapes_dtypes_and_class_order(tiny_train):
    data = tiny_train
    assert data.images.shape == (60, 3, 32, 32) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.uint8 and data.instances.dtype == np.uint16
    assert data.class_names == NAMES
    for index in range(len(data)):
        classes = set(np.unique(data.labels[index]).tolist()) - {0, IGNORE_INDEX}
        assert classes == {index // 3 + 1}


def test_same_seed_same_arrays_different_seed_differs(tmp_path, tiny_train):
    again = load_synthetic_segmentation("train", TINY, tmp_path / "other")
    _assert_same(again, tiny_train)
    reseeded = load_synthetic_segmentation("train", dataclasses.replace(TINY, seed=1), tmp_path / "other")
    assert not np.array_equal(reseeded.images, tiny_train.images)
    assert not np.array_equal(reseeded.labels, tiny_train.labels)


def test_splits_differ(tmp_path):
    config = dataclasses.replace(TINY, val_per_class=3)
    train = load_synthetic_segmentation("train", config, tmp_path)
    val = load_synthetic_segmentation("val", config, tmp_path)
    assert not np.array_equal(train.images, val.images)


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    first = load_synthetic_segmentation("test", TINY, tmp_path)
    path = cache_path("test", TINY, tmp_path)
    assert path.exists() and path.suffix == ".npz"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind

    def fail(*args):
        raise AssertionError("regenerated although the cache holds the split")

    monkeypatch.setattr(synthetic, "_generate", fail)
    _assert_same(load_synthetic_segmentation("test", TINY, tmp_path), first)


@pytest.mark.parametrize("corruption", ["garbage", "wrong_keys", "wrong_shape"])
def test_corrupt_cache_is_reported_and_rebuilt(tmp_path, corruption):
    first = load_synthetic_segmentation("test", TINY, tmp_path)
    path = cache_path("test", TINY, tmp_path)
    if corruption == "garbage":
        path.write_bytes(b"not an npz file")
    elif corruption == "wrong_keys":
        with open(path, "wb") as stream:
            np.savez_compressed(stream, images=first.images)
    else:
        with open(path, "wb") as stream:
            np.savez_compressed(stream, images=first.images[:1], labels=first.labels, instances=first.instances)
    with pytest.warns(UserWarning, match=f"corrupt synthetic cache file {path}"):
        rebuilt = load_synthetic_segmentation("test", TINY, tmp_path)
    _assert_same(rebuilt, first)
    _assert_same(load_synthetic_segmentation("test", TINY, tmp_path), first)  # the file was rewritten


def test_cache_dir_defaults_to_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_path("val", TINY).parent == tmp_path
    assert cache_path("val", TINY) != cache_path("val", dataclasses.replace(TINY, seed=5))


def test_single_object_images_have_one_consistent_object_and_a_border_band(tiny_train):
    data = tiny_train
    for labels, instances in zip(data.labels, data.instances):
        assert np.unique(instances).tolist() == [0, 1]
        objects = instances == 1
        # Instance pixels are exactly the pixels labelled with the object's class.
        assert np.array_equal(objects, (labels != 0) & (labels != IGNORE_INDEX))
        band = labels == IGNORE_INDEX
        assert band.any()
        # The band separates object from background: no object pixel touches a background pixel.
        background = labels == 0
        assert not (objects[1:] & background[:-1]).any() and not (objects[:-1] & background[1:]).any()
        assert not (objects[:, 1:] & background[:, :-1]).any() and not (objects[:, :-1] & background[:, 1:]).any()
        # ... and is thin: every band pixel has an object pixel within 2 px.
        padded = np.pad(objects, 2)
        near = np.zeros_like(objects)
        for dy in range(5):
            for dx in range(5):
                near |= padded[dy : dy + 32, dx : dx + 32]
        assert near[band].all()


def test_border_width_controls_the_band(tmp_path):
    none = load_synthetic_segmentation("val", dataclasses.replace(TINY, border_width=0), tmp_path)
    thin = load_synthetic_segmentation("val", TINY, tmp_path)
    wide = load_synthetic_segmentation("val", dataclasses.replace(TINY, border_width=2), tmp_path)
    assert not (none.labels == IGNORE_INDEX).any()
    assert (thin.labels == IGNORE_INDEX).sum() < (wide.labels == IGNORE_INDEX).sum()
    np.testing.assert_array_equal(none.images, thin.images)  # the band only changes the labels


def test_multi_object_images_are_consistent(tmp_path):
    data = load_synthetic_segmentation("val", dataclasses.replace(TINY, objects_per_image=3), tmp_path)
    counts = []
    for labels, instances in zip(data.labels, data.instances):
        ids = np.unique(instances[instances > 0])
        assert ids.tolist() == list(range(1, len(ids) + 1))  # visible objects numbered 1..M
        counts.append(len(ids))
        for object_id in ids:
            assert len(np.unique(labels[instances == object_id])) == 1  # one class per object
        assert np.array_equal(instances > 0, (labels != 0) & (labels != IGNORE_INDEX))
    assert max(counts) >= 2


def test_fold_views(tiny_train):
    pretrain = task_view(tiny_train, 2, "pretrain", NAMES)
    finetune = task_view(tiny_train, 2, "finetune", NAMES)
    assert len(pretrain) == 15 * 3 and len(finetune) == 5 * 3
    assert set(np.unique(pretrain.labels).tolist()) == set(range(16)) | {IGNORE_INDEX}
    assert set(np.unique(finetune.labels).tolist()) == set(range(6)) | {IGNORE_INDEX}
    # Single-object images: no fine-tuning class image is in the pre-training view.
    _, held_out = fold_classes(2)
    held_out_images = {tiny_train.images[i].tobytes() for i in range(len(tiny_train)) if i // 3 + 1 in held_out}
    assert not held_out_images & {image.tobytes() for image in pretrain.images}


def test_classification_view_keeps_exact_fraction_of_positives(tmp_path):
    config = dataclasses.replace(TINY, images_per_class=4)
    data = load_synthetic_classification("train", 0.25, seed=3, config=config, cache_dir=tmp_path)
    assert data.inputs.shape == (80, 3, 32, 32) and data.class_names[0] == "negative"
    np.testing.assert_array_equal(data.true_labels, np.where(np.arange(80) < 40, np.arange(80) // 4 + 1, 0))
    kept = data.labels > 0
    assert kept.sum() == 10  # round(0.25 * 40 positives)
    np.testing.assert_array_equal(data.labels[kept], data.true_labels[kept])
    other = load_synthetic_classification("train", 0.25, seed=4, config=config, cache_dir=tmp_path)
    assert not np.array_equal(other.labels, data.labels)
    everything = load_synthetic_classification("train", 1.0, seed=3, config=config, cache_dir=tmp_path)
    np.testing.assert_array_equal(everything.labels, everything.true_labels)


def test_classification_pn_view_drops_unlabelled_and_test_keeps_truth(tmp_path):
    config = dataclasses.replace(TINY, images_per_class=4)
    pn = load_synthetic_classification("train", 0.5, seed=0, config=config, cache_dir=tmp_path, pn=True)
    assert len(pn) == 40 and (pn.labels > 0).sum() == 20
    np.testing.assert_array_equal(pn.labels, pn.true_labels)
    test = load_synthetic_classification("test", 0.0, seed=0, config=config, cache_dir=tmp_path)
    np.testing.assert_array_equal(test.labels, test.true_labels)
    assert (test.labels > 0).sum() == 20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 8}, r"image_size must be an integer in \[16, 1024\], got 8"),
        ({"images_per_class": 0}, r"images_per_class must be an integer in \[1, 100000\], got 0"),
        ({"objects_per_image": True}, r"objects_per_image must be an integer in \[1, 8\], got True"),
        ({"border_width": 5}, r"border_width must be an integer in \[0, 4\], got 5"),
        ({"object_scale": (0.4, 0.2)}, r"object_scale must be a tuple .* got \(0.4, 0.2\)"),
        ({"seed": -1}, r"seed must be an integer"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**kwargs)


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val', 'test'\), got 'dev'"):
        load_synthetic_segmentation("dev", TINY, tmp_path)
    with pytest.raises(ValueError, match=r"labelled_fraction must be a number in \[0, 1\], got 1.5"):
        load_synthetic_classification("train", 1.5, seed=0, config=TINY, cache_dir=tmp_path)
    multi = dataclasses.replace(TINY, objects_per_image=2)
    with pytest.raises(ValueError, match="objects_per_image must be 1 for the classification view, got 2"):
        load_synthetic_classification("train", 0.5, seed=0, config=multi, cache_dir=tmp_path)
