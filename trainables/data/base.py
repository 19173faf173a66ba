"""The containers every data source returns, and the fold arithmetic of thesis Table 1.

Arrays, not tensors: sources are pure numpy so they can be cached, hashed and corrupted without torch.
Conventions (DESIGN.md): label maps use 0 = background, 1..K = object classes, 255 = ignore; instance
maps use 0 = no object, 1..M = object ids (per image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255
NUM_FOLDS = 4
NUM_SOURCE_CLASSES = 20  # VOC has 20 object classes; the synthetic benchmark mirrors that
CLASSES_PER_FOLD = 5


@dataclass(frozen=True)
class SegmentationData:
    """One split of a segmentation data set, held in memory.

    images: ``(N, 3, H, W)`` uint8 RGB.
    labels: ``(N, H, W)`` uint8 class map (0 background, 1..K classes, 255 ignore).
    instances: ``(N, H, W)`` uint16 object ids (0 none, 1..M per image).
    class_names: ``K + 1`` names, index 0 is ``"background"``.
    """

    images: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got shape {self.images.shape}")
        expected = (n, *self.images.shape[2:])
        for name in ("labels", "instances"):
            shape = getattr(self, name).shape
            if shape != expected:
                raise ValueError(f"{name} must have shape {expected} to match images, got {shape}")

    @property
    def num_classes(self) -> int:
        """Number of label values a model predicts, background included (``K + 1``)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ClassificationData:
    """One split of a classification data set (CIFAR P/N, the synthetic classification view, moons).

    inputs: ``(N, 3, H, W)`` uint8 images, or ``(N, D)`` float32 points for moons.
    labels: ``(N,)`` int64 observed labels (0 = negative / unlabelled, 1..K positive classes).
    true_labels: ``(N,)`` int64 true labels; equal to ``labels`` on test splits.
    class_names: ``K + 1`` names, index 0 is the negative class.
    """

    inputs: np.ndarray
    labels: np.ndarray
    true_labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.inputs)
        for name in ("labels", "true_labels"):
            shape = getattr(self, name).shape
            if shape != (n,):
                raise ValueError(f"{name} must have shape ({n},) to match inputs, got {shape}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.inputs)


def check_fold(fold: int) -> int:
    """Return ``fold`` if it is one of 1..4, else raise a ValueError that names the allowed range."""
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 1 <= fold <= NUM_FOLDS:
        raise ValueError(f"fold must be an integer in 1..{NUM_FOLDS}, got {fold!r}")
    return int(fold)


def fold_classes(fold: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Source class ids (1..20) of a fold: ``(pretrain_classes, finetune_classes)``.

    Fold f fine-tunes on classes ``5(f-1)+1 .. 5f`` (thesis Table 1: fold 1 is aeroplane..bottle) and
    pre-trains on the 15 others, in ascending order.
    """
    fold = check_fold(fold)
    finetune = tuple(range(CLASSES_PER_FOLD * (fold - 1) + 1, CLASSES_PER_FOLD * fold + 1))
    pretrain = tuple(c for c in range(1, NUM_SOURCE_CLASSES + 1) if c not in finetune)
    return pretrain, finetune


def task_lookup(fold: int, task: str) -> np.ndarray:
    """A 256-entry lookup table that maps source labels (0..20, 255) to the task's label space.

    ``task="pretrain"``: the fold's 15 pre-training classes become 1..15 in order, its 5 held-out
    classes become 0 (background). ``task="finetune"``: the 5 held-out classes become 1..5, the 15
    others 0. 0 stays 0 and 255 stays 255. Apply with ``lookup[labels]``.
    """
    pretrain, finetune = fold_classes(fold)
    if task == "pretrain":
        kept = pretrain
    elif task == "finetune":
        kept = finetune
    else:
        raise ValueError(f"task must be 'pretrain' or 'finetune', got {task!r}")
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[IGNORE_INDEX] = IGNORE_INDEX
    for new_id, source_id in enumerate(kept, start=1):
        lookup[source_id] = new_id
    return lookup


def task_view(
    data: SegmentationData, fold: int, task: str, source_names: tuple[str, ...]
) -> SegmentationData:
    """The images of ``data`` (in source label space 0..20) that belong to a fold's task, relabelled.

    An image belongs to the task when it contains at least one object of the task's classes (with
    single-object images, exactly the images of those classes). Instances of objects whose class maps
    to background are cleared, so noise never acts on them. ``source_names`` has 21 entries.
    """
    lookup = task_lookup(fold, task)
    kept_classes = np.flatnonzero((lookup[:IGNORE_INDEX] > 0))
    has_task_object = np.isin(data.labels, kept_classes).reshape(len(data), -1).any(axis=1)
    labels = lookup[data.labels[has_task_object]]
    instances = np.where(labels == 0, 0, data.instances[has_task_object]).astype(data.instances.dtype)
    names = ("background",) + tuple(source_names[c] for c in kept_classes)
    return SegmentationData(data.images[has_task_object], labels, instances, names)
