"""In-memory datasets and loaders: noise fixed at construction, per-epoch determinism, paired
augmentation, class counts and per-class subsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.data.base import IGNORE_INDEX, ClassificationData, SegmentationData
from trainables.data.loading import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationDataset,
    SegmentationDataset,
    class_counts,
    make_loader,
    primary_classes,
    subsample_per_class,
)
from trainables.noise import NoiseConfig

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _objects_data(n: int = 12, size: int = 16, num_classes: int = 3) -> SegmentationData:
    """n images, each with one square object of class 1 + i % num_classes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    labels = np.zeros((n, size, size), dtype=np.uint8)
    instances = np.zeros((n, size, size), dtype=np.uint16)
    for i in range(n):
        top, left = rng.integers(0, size - 6, size=2)
        labels[i, top : top + 6, left : left + 6] = 1 + i % num_classes
        instances[i, top : top + 6, left : left + 6] = 1
        labels[i, top + 6, left : left + 6] = IGNORE_INDEX
    names = ("background",) + tuple(f"c{k}" for k in range(1, num_classes + 1))
    return SegmentationData(images, labels, instances, names)


def _pixel_coded_data(n: int = 8, size: int = 12) -> SegmentationData:
    """Images whose label is a function of the pixel: label = red value // 64 (0..3)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    labels = (images[:, 0] // 64).astype(np.uint8)
    return SegmentationData(images, labels, np.zeros_like(labels, dtype=np.uint16), ("b", "x", "y", "z"))


def _raw(inputs: torch.Tensor) -> torch.Tensor:
    return torch.round((inputs * STD + MEAN) * 255.0)


def test_segmentation_item_is_normalised_with_its_maps():
    data = _objects_data()
    image, label, instances = SegmentationDataset(data)[5]
    assert image.dtype == torch.float32 and image.shape == (3, 16, 16)
    assert label.dtype == torch.int64 and instances.dtype == torch.int64
    expected = (torch.from_numpy(data.images[5]).float() / 255 - MEAN[0]) / STD[0]
    torch.testing.assert_close(image, expected)
    np.testing.assert_array_equal(label.numpy(), data.labels[5])
    np.testing.assert_array_equal(instances.numpy(), data.instances[5])


def test_noise_and_transform_are_applied_once_and_clean_labels_kept():
    data = _objects_data()
    dataset = SegmentationDataset(
        data, noise=NoiseConfig("unsegment", p=1.0), label_transform=lambda y: np.where(y == 255, 255, y + 1), seed=3
    )
    # Every object was unsegmented (-> 0), then the transform shifted every non-ignored label by one.
    np.testing.assert_array_equal(dataset.labels, np.where(data.labels == IGNORE_INDEX, IGNORE_INDEX, 1))
    np.testing.assert_array_equal(dataset.clean_labels, data.labels)
    np.testing.assert_array_equal(dataset.targets.numpy(), dataset.labels)
    assert dataset.num_classes == 4


def test_same_noise_seed_same_corruption():
    data = _objects_data(n=40)
    first = SegmentationDataset(data, noise=NoiseConfig("unsegment", p=0.5), seed=7)
    again = SegmentationDataset(data, noise=NoiseConfig("unsegment", p=0.5), seed=7)
    other = SegmentationDataset(data, noise=NoiseConfig("unsegment", p=0.5), seed=8)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert not np.array_equal(first.labels, other.labels)


def test_labels_outside_num_classes_are_rejected():
    with pytest.raises(ValueError, match=r"observed labels must be in \[0, 1\] \(num_classes=2\) or 255, got 2"):
        SegmentationDataset(_objects_data(), num_classes=2)
    with pytest.raises(ValueError, match="label_transform must return an integer array of shape"):
        SegmentationDataset(_objects_data(), label_transform=lambda y: y[:1])


def test_class_counts_exact_and_ignoring_255():
    labels = np.array([[0, 1, 1], [255, 2, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(class_counts(labels, 4), [2, 2, 1, 0])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\] or 255, got 2"):
        class_counts(labels, 2)


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_epochs_are_reproducible_and_differ():
    dataset = SegmentationDataset(_objects_data())
    loader = make_loader(dataset, 5, shuffle=True, augment=True, seed=11)
    assert len(loader) == 3
    epoch0 = _batches(loader)
    loader.set_epoch(1)
    epoch1 = _batches(loader)
    # A resumed run builds a new loader and jumps to epoch 1: it sees the same batches.
    resumed = make_loader(dataset, 5, shuffle=True, augment=True, seed=11)
    resumed.set_epoch(1)
    for (x, y), (rx, ry) in zip(epoch1, _batches(resumed)):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    assert [len(x) for x, _ in epoch0] == [5, 5, 2]
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(epoch0, epoch1))
    loader.set_epoch(0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch0, _batches(loader)))


def test_plain_loader_yields_the_items_in_order():
    dataset = SegmentationDataset(_objects_data())
    inputs, labels = zip(*make_loader(dataset, 5, shuffle=False, augment=False, seed=0))
    inputs, labels = torch.cat(inputs), torch.cat(labels)
    assert labels.dtype == torch.int64
    for i in range(len(dataset)):
        image, label, _ = dataset[i]
        assert torch.equal(inputs[i], image) and torch.equal(labels[i], label)


def test_augmentation_keeps_image_and_label_aligned():
    data = _pixel_coded_data()
    dataset = SegmentationDataset(data)
    loader = make_loader(dataset, 8, shuffle=False, augment=True, seed=5, crop_padding=3)
    changed = False
    for epoch in range(3):
        loader.set_epoch(epoch)
        (inputs, labels), = list(loader)
        raw = _raw(inputs)
        labelled = labels != IGNORE_INDEX
        assert torch.equal((raw[:, 0] // 64).long()[labelled], labels[labelled])
        # Padding: ignored label, mean colour (0 after normalisation) in the image.
        assert torch.all(inputs.permute(1, 0, 2, 3)[:, ~labelled] == 0)
        changed |= not torch.equal(labels, torch.from_numpy(data.labels).long())
    assert changed


def test_flip_only_augmentation_flips_whole_samples():
    data = _pixel_coded_data()
    dataset = SegmentationDataset(data)
    loader = make_loader(dataset, 8, shuffle=False, augment=True, seed=2, crop_padding=0)
    (inputs, labels), = list(loader)
    original = torch.from_numpy(data.labels).long()
    flipped = [torch.equal(labels[i], original[i].flip(-1)) for i in range(8)]
    kept = [torch.equal(labels[i], original[i]) for i in range(8)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    for i in range(8):
        expected = original[i].flip(-1) if flipped[i] else original[i]
        assert torch.equal((_raw(inputs[i : i + 1])[0, 0] // 64).long(), expected)


def test_classification_images_and_points():
    images = np.random.default_rng(0).integers(0, 256, size=(6, 3, 8, 8), dtype=np.uint8)
    labels = np.arange(6) % 3
    dataset = ClassificationDataset(ClassificationData(images, labels, labels, ("n", "a", "b")))
    x, y = dataset[4]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y.item() == 1
    batches = list(make_loader(dataset, 4, shuffle=True, augment=True, seed=0))
    assert [tuple(b[0].shape) for b in batches] == [(4, 3, 8, 8), (2, 3, 8, 8)]
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(labels.tolist())

    points = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    point_set = ClassificationDataset(ClassificationData(points, labels[:5], labels[:5], ("n", "p", "q")))
    (x, y), = list(make_loader(point_set, 8, shuffle=False, augment=True, seed=0))
    np.testing.assert_array_equal(x.numpy(), points)  # no augmentation and no normalisation for points


def test_samples_per_epoch_cycles_fresh_permutations_reproducibly():
    points = np.arange(10, dtype=np.float32).reshape(5, 2)  # sample i is the point (2i, 2i + 1)
    labels = np.arange(5) % 3
    dataset = ClassificationDataset(ClassificationData(points, labels, labels, ("n", "a", "b")))
    loader = make_loader(dataset, 4, shuffle=True, augment=False, seed=3, samples_per_epoch=12)
    assert len(loader) == 3

    def drawn(loader):
        return [int(row[0]) // 2 for x, _ in loader for row in x]

    epoch0 = drawn(loader)
    # 12 samples from 5: two whole permutations, then the first 2 of a third.
    assert len(epoch0) == 12 and sorted(epoch0[:5]) == sorted(epoch0[5:10]) == [0, 1, 2, 3, 4]
    assert len(set(epoch0[10:])) == 2
    loader.set_epoch(1)
    epoch1 = drawn(loader)
    assert epoch1 != epoch0
    resumed = make_loader(dataset, 4, shuffle=True, augment=False, seed=3, samples_per_epoch=12)
    resumed.set_epoch(1)
    assert drawn(resumed) == epoch1
    # Fewer samples than the data set: a cut permutation, no repeats.
    short = drawn(make_loader(dataset, 4, shuffle=True, augment=False, seed=3, samples_per_epoch=3))
    assert len(short) == len(set(short)) == 3
    with pytest.raises(ValueError, match="samples_per_epoch must be an integer >= 1, got 0"):
        make_loader(dataset, 4, shuffle=True, augment=False, seed=0, samples_per_epoch=0)
    with pytest.raises(ValueError, match="samples_per_epoch needs shuffle=True"):
        make_loader(dataset, 4, shuffle=False, augment=False, seed=0, samples_per_epoch=10)


def test_loader_argument_errors():
    dataset = SegmentationDataset(_objects_data())
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        make_loader(dataset, 0, shuffle=True, augment=False, seed=0)
    loader = make_loader(dataset, 4, shuffle=True, augment=False, seed=0)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -1"):
        loader.set_epoch(-1)


def test_primary_classes_and_subsample_per_class():
    data = _objects_data(n=12)
    np.testing.assert_array_equal(primary_classes(data.labels), 1 + np.arange(12) % 3)
    small = subsample_per_class(data, 2, 0)
    assert len(small) == 6
    np.testing.assert_array_equal(np.bincount(primary_classes(small.labels)), [0, 2, 2, 2])
    chosen = [next(j for j in range(12) if np.array_equal(data.images[j], image)) for image in small.images]
    assert chosen == sorted(chosen)  # original order kept
    again = subsample_per_class(data, 2, np.random.default_rng(np.random.SeedSequence(0)))
    np.testing.assert_array_equal(again.images, small.images)
    with pytest.raises(ValueError, match="n=5 exceeds the 4 images of class 1"):
        subsample_per_class(data, 5, 0)
