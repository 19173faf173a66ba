"""Label transforms that trade precision for accuracy (thesis 5.1): binarize, categorize, VOC superclasses.

Label maps are integer arrays of any shape (0 background, 1..K classes, 255 ignore); every function
returns a new map of the same dtype and keeps 0 and 255.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral

import numpy as np

from trainables.data.base import IGNORE_INDEX, fold_classes

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _ids(*names: str) -> tuple[int, ...]:
    return tuple(sorted(VOC_CLASSES.index(name) + 1 for name in names))


# The VOC paper's four superclasses (thesis Figure 3), in the order categories are numbered.
VOC_SUPERCLASSES = {
    "person": _ids("person"),
    "animal": _ids("bird", "cat", "cow", "dog", "horse", "sheep"),
    "vehicle": _ids("aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train"),
    "indoor": _ids("bottle", "chair", "diningtable", "pottedplant", "sofa", "tvmonitor"),
}


def _check_label(label: np.ndarray) -> None:
    if not isinstance(label, np.ndarray) or label.dtype.kind not in "iu":
        raise TypeError(f"label must be an integer numpy array, got {getattr(label, 'dtype', type(label))}")
    if label.size and label.min() < 0:
        raise ValueError(f"label values must be >= 0 (0 background, 1..K, {IGNORE_INDEX} ignore), got {label.min()}")


def _check_classes(classes: Sequence[int], maximum: int | None = None) -> tuple[int, ...]:
    classes = tuple(classes)
    upper = maximum if maximum is not None else IGNORE_INDEX - 1
    for cls in classes:
        if isinstance(cls, bool) or not isinstance(cls, Integral) or not 1 <= cls <= upper:
            raise ValueError(f"classes must be integers in 1..{upper}, got {cls!r} in {classes}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct, got {classes}")
    return tuple(int(cls) for cls in classes)


def binarize(label: np.ndarray) -> np.ndarray:
    """Every class 1..K -> 1 (foreground); 0 and 255 kept. Same shape and dtype as ``label``."""
    _check_label(label)
    foreground = (label != 0) & (label != IGNORE_INDEX)
    return np.where(foreground, 1, label).astype(label.dtype)


def categorize(label: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Each class -> its category ``mapping[class]``; 0 and 255 kept. Same shape and dtype as ``label``.

    ``mapping`` is ``{class: category}`` with categories numbering 1..n without gaps. A class present
    in ``label`` but missing from ``mapping`` is a ValueError naming it.
    """
    _check_label(label)
    _check_classes(mapping.keys())
    categories = sorted(set(mapping.values()))
    if categories != list(range(1, len(categories) + 1)):
        raise ValueError(f"mapping categories must be the integers 1..n without gaps, got {categories}")
    present = np.unique(label)
    missing = [int(c) for c in present if c not in (0, IGNORE_INDEX) and int(c) not in mapping]
    if missing:
        raise ValueError(f"label has classes {missing} missing from mapping (which covers {sorted(mapping)})")
    lookup = np.arange(max(int(present.max(initial=0)), IGNORE_INDEX) + 1)
    lookup[list(mapping)] = list(mapping.values())
    return lookup[label].astype(label.dtype)


def superclass_mapping(
    classes: Sequence[int], superclasses: Mapping[str, Sequence[int]] = VOC_SUPERCLASSES
) -> dict[int, int]:
    """Group a task's classes by superclass: ``{task class: category}``.

    ``classes`` are source ids (e.g. a fold's 15 pre-training classes, 1..20), which the task relabels
    1..len(classes) in that order. ``superclasses`` maps a name to its source ids (default: VOC's, in the
    order person, animal, vehicle, indoor); categories are numbered 1..n over the superclasses present,
    in that order. A class in no superclass is a ValueError naming it.
    """
    known = max(c for members in superclasses.values() for c in members)
    classes = _check_classes(classes, maximum=known)
    present = [members for members in superclasses.values() if set(members) & set(classes)]
    category_of = {source: category for category, members in enumerate(present, 1) for source in members}
    orphans = [c for c in classes if c not in category_of]
    if orphans:
        raise ValueError(f"classes {orphans} belong to no superclass of {list(superclasses)}")
    return {task_class: category_of[source] for task_class, source in enumerate(classes, 1)}


def random_categories(classes: Sequence[int], n: int, rng: np.random.Generator) -> dict[int, int]:
    """A random partition of ``classes`` into ``n`` non-empty groups: ``{class: group 1..n}``.

    Each group gets one class of a random permutation, then the remaining classes join uniformly drawn
    groups (a random surjection; not uniform over set partitions, which the thesis does not ask for).
    """
    classes = _check_classes(classes)
    if isinstance(n, bool) or not isinstance(n, Integral) or not 1 <= n <= len(classes):
        raise ValueError(f"n must be an integer in 1..{len(classes)} (the number of classes), got {n!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    groups = np.concatenate([np.arange(1, n + 1), rng.integers(1, n + 1, size=len(classes) - n)])
    order = rng.permutation(len(classes))
    return {classes[i]: int(group) for i, group in zip(order, groups)}


def source_superclasses(data_kind: str) -> dict[str, tuple[int, ...]]:
    """The meaningful groups of a segmentation source's class ids (1..20): VOC's four superclasses
    (``"voc"``), or the synthetic benchmark's shape families (``"synthetic"``: the classes that share a
    shape, e.g. ``stripes_disk`` and ``checks_disk``), as ``{name: source ids}``."""
    if data_kind == "voc":
        return dict(VOC_SUPERCLASSES)
    if data_kind == "synthetic":
        from trainables.data.synthetic import SYNTHETIC_CLASSES

        families: dict[str, list[int]] = {}
        for class_id, name in enumerate(SYNTHETIC_CLASSES, start=1):
            families.setdefault(name.rsplit("_", 1)[1], []).append(class_id)
        return {family: tuple(ids) for family, ids in families.items()}
    raise ValueError(f"data_kind must be 'voc' or 'synthetic' (the segmentation sources), got {data_kind!r}")


def pretrain_categories(label_transform: str, fold: int, data_kind: str, num_groups: int = 0,
                        init: str = "pretrain") -> int | None:
    """How many foreground categories a trial's pre-training task has (thesis Figure 3's x axis).

    ``none``: the fold's 15 classes; ``binarize`` and ``target`` (false segmentation): 1;
    ``random_groups``: ``num_groups``; ``superclass``: the superclasses of ``data_kind`` that the
    fold's pre-training classes fall into (VOC: 4, but 3 in fold 3, which holds out person; synthetic:
    the 5 shape families). ``init="random"`` has no pre-training: 0; ``init="imagenet"`` is not a
    pre-training of this study: None.
    """
    if data_kind not in ("voc", "synthetic"):
        raise ValueError(f"data_kind must be 'voc' or 'synthetic' (the segmentation sources), got {data_kind!r}")
    if init == "random":
        return 0
    if init == "imagenet":
        return None
    if init != "pretrain":
        raise ValueError(f"init must be 'pretrain', 'random' or 'imagenet', got {init!r}")
    pretrain, _ = fold_classes(fold)
    if label_transform == "none":
        return len(pretrain)
    if label_transform in ("binarize", "target"):
        return 1
    if label_transform == "superclass":
        return len(set(superclass_mapping(pretrain, source_superclasses(data_kind)).values()))
    if label_transform == "random_groups":
        if isinstance(num_groups, bool) or not isinstance(num_groups, Integral) or not 1 <= num_groups <= 15:
            raise ValueError(f"label_transform='random_groups' needs num_groups in 1..15, got {num_groups!r}")
        return int(num_groups)
    raise ValueError(f"label_transform must be one of none, binarize, target, superclass, random_groups, "
                     f"got {label_transform!r}")


# matplotlib's tab20 colours as uint8 RGB: class k > 0 is drawn in PALETTE[(k - 1) % 20]
PALETTE = np.array([
    [31, 119, 180], [174, 199, 232], [255, 127, 14], [255, 187, 120], [44, 160, 44], [152, 223, 138],
    [214, 39, 40], [255, 152, 150], [148, 103, 189], [197, 176, 213], [140, 86, 75], [196, 156, 148],
    [227, 119, 194], [247, 182, 210], [127, 127, 127], [199, 199, 199], [188, 189, 34], [219, 219, 141],
    [23, 190, 207], [158, 218, 229]], dtype=np.uint8)


def label_rgb(label: np.ndarray) -> np.ndarray:
    """A label map ``(H, W)`` as an RGB image ``(H, W, 3)`` uint8: class k > 0 in ``PALETTE[(k - 1) % 20]``,
    background black, ignore (255) white. The MLflow sample figures and the report's figures both draw
    labels with it, so a class has one colour everywhere."""
    rgb = PALETTE[(label.astype(np.int64) - 1) % len(PALETTE)]
    rgb[label == 0] = 0
    rgb[label == IGNORE_INDEX] = 255
    return rgb
