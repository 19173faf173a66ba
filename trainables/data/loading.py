"""In-memory torch datasets and loaders for the small data sets of this project.

Every data set here fits in memory, so a loader is index slicing on whole-data-set tensors: no
DataLoader workers, no per-sample Python work. Label noise and label transforms are applied once, when a
dataset is built, so every epoch (and every process) sees the same corruption. The shuffling and
augmentation of epoch e come from a ``torch.Generator`` seeded with ``(seed, e)``: a resumed run that calls
``set_epoch(e)`` sees exactly the batches an uninterrupted run saw, with no RNG state to checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from numbers import Integral

import numpy as np
import torch
from torch.utils.data import Dataset

from trainables.data.base import IGNORE_INDEX, ClassificationData, SegmentationData
from trainables.noise import NoiseConfig, corrupt_dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 RGB -> float32 standardised with the ImageNet mean and std (the statistics
    the AlexNet ImageNet weights expect; harmless for models trained from scratch)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


class SegmentationDataset(Dataset):
    """A segmentation split with its observed (noisy, transformed) labels fixed at construction.

    ``noise`` (a NoiseConfig or a sequence of them; ``()`` for none) corrupts the labels through
    ``trainables.noise.corrupt_dataset`` with ``seed``; then ``label_transform`` maps the ``(N, H, W)``
    label array to a new one (e.g. binarize). Attributes: ``clean_labels`` and ``labels`` (observed),
    ``(N, H, W)`` uint8 arrays; ``instances``; ``inputs`` ``(N, 3, H, W)`` uint8 and ``targets``
    ``(N, H, W)`` uint8 tensors, the loader's view; ``num_classes``, the label values a model predicts
    (``data.num_classes`` unless given, e.g. after a transform that merges classes). Items are
    ``(image (3, H, W) float32 normalised, label (H, W) int64, instances (H, W) int64)``.
    Raises ValueError when an observed label is neither below ``num_classes`` nor 255.
    """

    def __init__(
        self,
        data: SegmentationData,
        noise: NoiseConfig | Sequence[NoiseConfig] = (),
        label_transform: Callable[[np.ndarray], np.ndarray] | None = None,
        seed: int = 0,
        num_classes: int | None = None,
    ) -> None:
        self.num_classes = data.num_classes if num_classes is None else _check_int("num_classes", num_classes, 1)
        self.clean_labels = data.labels
        self.instances = data.instances
        labels = corrupt_dataset(data.labels, data.instances, noise, _check_int("seed", seed, 0))
        if label_transform is not None:
            labels = np.asarray(label_transform(labels))
            if labels.shape != data.labels.shape or labels.dtype.kind not in "iu":
                raise ValueError(
                    f"label_transform must return an integer array of shape {data.labels.shape}, "
                    f"got {labels.dtype} {labels.shape}"
                )
        outside = labels[((labels < 0) | (labels >= self.num_classes)) & (labels != IGNORE_INDEX)]
        if outside.size:
            raise ValueError(
                f"observed labels must be in [0, {self.num_classes - 1}] (num_classes={self.num_classes}) "
                f"or {IGNORE_INDEX}, got {outside[0]}"
            )
        self.labels = labels.astype(np.uint8)
        self.inputs = torch.from_numpy(np.ascontiguousarray(data.images))
        self.targets = torch.from_numpy(self.labels)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = normalize_images(self.inputs[index][None])[0]
        return image, self.targets[index].long(), torch.from_numpy(self.instances[index].astype(np.int64))


class ClassificationDataset(Dataset):
    """A classification split: images ``(N, 3, H, W)`` uint8 (normalised when read) or points ``(N, D)``
    (used as they are). Items are ``(input float32, label int64)`` with the observed label; the truth is
    in ``true_labels``."""

    def __init__(self, data: ClassificationData) -> None:
        self.true_labels = data.true_labels
        if data.inputs.ndim == 4:
            if data.inputs.dtype != np.uint8 or data.inputs.shape[1] != 3:
                raise ValueError(
                    f"image inputs must be (N, 3, H, W) uint8, got {data.inputs.dtype} {data.inputs.shape}"
                )
            self.inputs = torch.from_numpy(np.ascontiguousarray(data.inputs))
        elif data.inputs.ndim == 2:
            self.inputs = torch.from_numpy(np.ascontiguousarray(data.inputs, dtype=np.float32))
        else:
            raise ValueError(f"inputs must be (N, 3, H, W) images or (N, D) points, got shape {data.inputs.shape}")
        self.targets = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _as_float(self.inputs[index][None])[0], self.targets[index]


def _as_float(inputs: torch.Tensor) -> torch.Tensor:
    return normalize_images(inputs) if inputs.dtype == torch.uint8 else inputs


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _flip_crop(
    images: torch.Tensor, targets: torch.Tensor, flips: torch.Tensor, shifts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: a random crop of the image padded by ``max |shift|`` pixels, then a horizontal flip.

    ``images`` ``(B, C, H, W)`` float (padding reads 0, the mean colour after normalisation); ``targets``
    ``(B, H, W)`` label maps (padding reads 255, nearest: plain integer indexing) or ``(B,)`` class labels
    (unchanged). ``flips`` ``(B,)`` bool; ``shifts`` ``(B, 2)`` integer (row, column) offsets of the crop.
    One gather does both, so image and label move together.
    """
    batch, _, height, width = images.shape
    rows = torch.arange(height, device=images.device)[None, :] + shifts[:, :1]
    columns = torch.arange(width, device=images.device)[None, :]
    columns = torch.where(flips[:, None], width - 1 - columns, columns) + shifts[:, 1:]
    valid = ((rows >= 0) & (rows < height))[:, :, None] & ((columns >= 0) & (columns < width))[:, None, :]
    rows, columns = rows.clamp(0, height - 1), columns.clamp(0, width - 1)
    sample = torch.arange(batch, device=images.device)[:, None, None]
    gathered = images[sample, :, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)
    images = gathered * valid[:, None].to(gathered.dtype)
    if targets.ndim == 3:
        targets = targets[sample, rows[:, :, None], columns[:, None, :]]
        targets = torch.where(valid, targets, torch.full_like(targets, IGNORE_INDEX))
    return images, targets


def copy_flags(device: str | torch.device) -> tuple[bool, bool]:
    """``(pin_memory, non_blocking)`` for copying host batches to ``device``: on CUDA a batch is staged in
    page-locked memory so the copy runs asynchronously, overlapping the previous step's kernels; on the
    CPU there is no copy to overlap (and pinning needs a GPU)."""
    cuda = torch.device(device).type == "cuda"
    return cuda, cuda


class InMemoryLoader:
    """Batches ``(inputs, labels)`` of a dataset held as tensors, already on ``device``.

    ``inputs`` are float32 (images normalised), ``labels`` int64. See :func:`make_loader`.
    """

    def __init__(
        self,
        dataset: SegmentationDataset | ClassificationDataset,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        seed: int,
        device: str | torch.device,
        crop_padding: int | None,
        samples_per_epoch: int | None = None,
    ) -> None:
        self.dataset = dataset
        if samples_per_epoch is not None:
            _check_int("samples_per_epoch", samples_per_epoch, 1)
            if not shuffle:
                raise ValueError("samples_per_epoch needs shuffle=True: it cycles through fresh permutations")
        self.samples_per_epoch = samples_per_epoch
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.shuffle = bool(shuffle)
        self.seed = _check_int("seed", seed, 0)
        self.device = torch.device(device)
        images = dataset.inputs.ndim == 4
        # Points (moons) have no spatial structure to flip or crop.
        self.augment = bool(augment) and images
        if crop_padding is None:
            crop_padding = min(dataset.inputs.shape[-2:]) // 8 if images else 0
        self.crop_padding = _check_int("crop_padding", crop_padding, 0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s shuffling and augmentation for the next iteration."""
        self.epoch = _check_int("epoch", epoch, 0)

    def _count(self) -> int:
        return len(self.dataset) if self.samples_per_epoch is None else self.samples_per_epoch

    def __len__(self) -> int:
        return -(-self._count() // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = _epoch_generator(self.seed, self.epoch)
        count = self._count()
        if self.shuffle:  # one permutation, or as many as samples_per_epoch takes, cut to it
            size = len(self.dataset)
            order = torch.cat([torch.randperm(size, generator=generator) for _ in range(-(-count // size))])[:count]
        else:
            order = torch.arange(count)
        pin, non_blocking = copy_flags(self.device)
        for start in range(0, count, self.batch_size):
            index = order[start : start + self.batch_size]
            inputs, targets = self.dataset.inputs[index], self.dataset.targets[index]
            if self.augment:
                flips = torch.rand(len(index), generator=generator) < 0.5
                shifts = torch.randint(-self.crop_padding, self.crop_padding + 1, (len(index), 2), generator=generator)
            if pin:
                inputs, targets = inputs.pin_memory(), targets.pin_memory()
            inputs = _as_float(inputs.to(self.device, non_blocking=non_blocking))
            targets = targets.to(self.device, non_blocking=non_blocking)
            if self.augment:
                inputs, targets = _flip_crop(inputs, targets, flips.to(self.device), shifts.to(self.device))
            yield inputs, targets.long()


def make_loader(
    dataset: SegmentationDataset | ClassificationDataset,
    batch_size: int,
    *,
    shuffle: bool,
    augment: bool,
    seed: int,
    device: str | torch.device = "cpu",
    crop_padding: int | None = None,
    samples_per_epoch: int | None = None,
) -> InMemoryLoader:
    """A loader over ``dataset`` yielding ``(inputs, labels)`` batches on ``device``.

    ``shuffle``: a new order each epoch. ``augment`` (images only): per-sample horizontal flip and a
    random crop of the image padded by ``crop_padding`` px (default: 1/8 of the shorter side), applied to
    image and label map alike. ``samples_per_epoch`` (with ``shuffle``): an epoch is that many samples,
    drawn from as many fresh permutations of the dataset as it takes (the last one cut short), so data
    sets of different sizes get the same number of steps; None: one pass. Epoch e's draws come from
    ``(seed, e)``; call ``set_epoch(e)`` before iterating. On CUDA, batches are copied from pinned memory
    without blocking.
    """
    return InMemoryLoader(
        dataset, batch_size, shuffle=shuffle, augment=augment, seed=seed, device=device, crop_padding=crop_padding,
        samples_per_epoch=samples_per_epoch,
    )


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes,)`` int64 pixel (or sample) counts of labels 0..num_classes-1, ignoring 255.

    Raises ValueError for any other label value.
    """
    _check_int("num_classes", num_classes, 1)
    values = np.asarray(labels).reshape(-1)
    values = values[values != IGNORE_INDEX]
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        bad = values[(values < 0) | (values >= num_classes)][0]
        raise ValueError(f"labels must be in [0, {num_classes - 1}] or {IGNORE_INDEX}, got {bad}")
    return np.bincount(values.astype(np.int64), minlength=num_classes)


def primary_classes(labels: np.ndarray) -> np.ndarray:
    """``(N,)`` class of each ``(H, W)`` map in ``labels``: its most frequent label in 1..254 (the
    smallest on ties), 0 for a map without objects."""
    values = IGNORE_INDEX + 1
    flat = labels.reshape(len(labels), -1).astype(np.int64) + values * np.arange(len(labels))[:, None]
    counts = np.bincount(flat.reshape(-1), minlength=values * len(labels)).reshape(len(labels), values)
    counts[:, [0, IGNORE_INDEX]] = 0
    return np.where(counts.any(axis=1), counts.argmax(axis=1), 0)


def subsample_per_class(
    data: SegmentationData, n: int, rng_or_seed: np.random.Generator | int
) -> SegmentationData:
    """``n`` images of each class present in ``data`` (by :func:`primary_classes`), drawn without
    replacement from ``rng_or_seed``, kept in their original order.

    This makes the fine-tuning training set small next to the pre-training one, as in the thesis.
    Raises ValueError when a class has fewer than ``n`` images.
    """
    chosen, _ = split_per_class(data, n, rng_or_seed)
    return chosen


def split_per_class(
    data: SegmentationData, n: int, rng_or_seed: np.random.Generator | int
) -> tuple[SegmentationData, SegmentationData]:
    """``(chosen, rest)``: ``n`` images of each class present in ``data`` (by :func:`primary_classes`),
    drawn without replacement from ``rng_or_seed``, and every other image; both keep the original order,
    so the two parts are disjoint and together are ``data``.

    Raises ValueError when a class has fewer than ``n`` images.
    """
    _check_int("n", n, 1)
    if isinstance(rng_or_seed, np.random.Generator):
        rng = rng_or_seed
    else:
        rng = np.random.default_rng(np.random.SeedSequence(_check_int("rng_or_seed", rng_or_seed, 0)))
    classes = primary_classes(data.labels)
    chosen = []
    for cls in np.unique(classes):
        members = np.flatnonzero(classes == cls)
        if len(members) < n:
            raise ValueError(f"n={n} exceeds the {len(members)} images of class {cls}")
        chosen.append(rng.choice(members, n, replace=False))
    keep = np.zeros(len(data), dtype=bool)
    keep[np.concatenate(chosen) if chosen else []] = True
    return _rows(data, keep), _rows(data, ~keep)


def _rows(data: SegmentationData, mask: np.ndarray) -> SegmentationData:
    return SegmentationData(data.images[mask], data.labels[mask], data.instances[mask], data.class_names)
