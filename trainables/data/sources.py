"""From a trial config to the datasets of its two phases: source loading, fold views, noise, transforms.

This is where thesis 5.1's protocol is spelled out once: pre-training sees the fold's 15 classes with
noisy, transformed training labels and clean validation/test labels of the same transformed task;
fine-tuning sees the fold's 5 held-out classes with clean labels. Its training pool (the source's
training split) is divided per seed: ``finetune_val_per_class`` images per class form the fine-tuning
validation split (what the objective and early stopping score), and the training split is drawn from
the rest, capped at ``finetune_train_per_class`` images per class (transfer matters most when
fine-tuning data is scarce). The fine-tuning test split is the source's test split, scored for the
tables only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from trainables.config import PretrainFinetuneConfig, parse_data
from trainables.data.base import SegmentationData, fold_classes, task_lookup, task_view
from trainables.data.loading import SegmentationDataset, split_per_class, subsample_per_class
from trainables.labels import VOC_CLASSES, VOC_SUPERCLASSES, binarize, categorize, random_categories, superclass_mapping
from trainables.noise import NoiseConfig, target_only

# Seeds the per-seed draw of the fine-tuning validation split (changing it changes every result).
FINETUNE_VAL_STREAM = 0x76616C  # "val"
# The false-segmentation experiment's target (thesis 5.1): cat, or dog in the fold that holds cat out.
_TARGET_CHOICES = (VOC_CLASSES.index("cat") + 1, VOC_CLASSES.index("dog") + 1)

LabelTransform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TaskData:
    """The datasets of one trial; the pre-training ones are None when the trial does not pre-train."""

    finetune_train: SegmentationDataset
    finetune_val: SegmentationDataset
    finetune_test: SegmentationDataset
    pretrain_train: SegmentationDataset | None = None
    pretrain_val: SegmentationDataset | None = None
    pretrain_test: SegmentationDataset | None = None


def load_source(cfg: PretrainFinetuneConfig, split: str) -> tuple[SegmentationData, tuple[str, ...]]:
    """One split in the source label space (0..20, 255) and the 21 source class names."""
    kind, root = parse_data(cfg.data)
    cache_dir = cfg.data_cache or None
    if kind == "synthetic":
        from trainables.data.synthetic import SYNTHETIC_CLASSES, load_synthetic_segmentation, study_split_config

        synthetic = study_split_config(cfg.image_size, cfg.images_per_class, cfg.clutter)
        return load_synthetic_segmentation(split, synthetic, cache_dir), ("background",) + SYNTHETIC_CLASSES
    from trainables.data.voc import load_voc_segmentation

    return load_voc_segmentation(root, split, cache_dir=cache_dir), ("background",) + VOC_CLASSES


def superclasses(cfg: PretrainFinetuneConfig) -> dict[str, tuple[int, ...]]:
    """Meaningful groups of source classes: VOC's four superclasses, or the synthetic shape families."""
    if parse_data(cfg.data)[0] == "voc":
        return VOC_SUPERCLASSES
    from trainables.data.synthetic import SYNTHETIC_CLASSES

    families: dict[str, list[int]] = {}
    for class_id, name in enumerate(SYNTHETIC_CLASSES, start=1):
        families.setdefault(name.rsplit("_", 1)[1], []).append(class_id)
    return {family: tuple(ids) for family, ids in families.items()}


def target_class(fold: int) -> int:
    """The false-segmentation target in the fold's pre-training label space (1..15)."""
    pretrain, _ = fold_classes(fold)
    source = next(c for c in _TARGET_CHOICES if c in pretrain)
    return int(task_lookup(fold, "pretrain")[source])


def pretrain_transform(cfg: PretrainFinetuneConfig) -> LabelTransform:
    """The label transform of the pre-training task (applied after noise to training labels, and to
    the clean validation and test labels)."""
    pretrain, _ = fold_classes(cfg.fold)
    if cfg.label_transform == "binarize":
        return binarize
    if cfg.label_transform == "superclass":
        mapping = superclass_mapping(pretrain, superclasses(cfg))
        return lambda labels: categorize(labels, mapping)
    if cfg.label_transform == "random_groups":
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, cfg.fold, cfg.num_groups]))
        mapping = random_categories(tuple(range(1, len(pretrain) + 1)), cfg.num_groups, rng)
        return lambda labels: categorize(labels, mapping)
    if cfg.label_transform == "target":
        target = target_class(cfg.fold)
        return lambda labels: binarize(target_only(labels, target))
    return lambda labels: labels


def pretrain_classes(cfg: PretrainFinetuneConfig) -> int:
    """Number of outputs of the pre-training head (background included)."""
    count = {
        "none": 15,
        "binarize": 1,
        "target": 1,
        "random_groups": cfg.num_groups,
        "superclass": len(set(superclass_mapping(fold_classes(cfg.fold)[0], superclasses(cfg)).values()))
        if cfg.label_transform == "superclass" else 0,
    }[cfg.label_transform]
    return count + 1


def pretrain_noise(cfg: PretrainFinetuneConfig) -> tuple[NoiseConfig, ...]:
    """The noises of the pre-training labels, in the order they are applied."""
    noises = []
    if cfg.noise_misclassify:
        noises.append(NoiseConfig("misclassify", rate=cfg.noise_misclassify, num_classes=15))
    if cfg.label_transform == "target":
        noises.append(NoiseConfig("false_segment", p=cfg.noise_false_segment, target=target_class(cfg.fold)))
    if cfg.noise_unsegment:
        noises.append(NoiseConfig("unsegment", p=cfg.noise_unsegment))
    if cfg.noise_boundary:
        noises.append(NoiseConfig("boundary", max_radius=cfg.noise_boundary))
    return tuple(noises)


def finetune_splits(pool: SegmentationData, cfg: PretrainFinetuneConfig) -> tuple[SegmentationData, SegmentationData]:
    """``(train, val)`` of the fine-tuning task, both drawn from ``pool`` (its training images) per seed.

    Validation first: ``finetune_val_per_class`` images per class from the seed's validation stream;
    training from the rest, capped at ``finetune_train_per_class`` per class (0, VOC's default: all of
    the rest). Disjoint by construction, and neither shares an image with the test split.
    """
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, FINETUNE_VAL_STREAM]))
    try:
        val, rest = split_per_class(pool, cfg.finetune_val_per_class, rng)
        if cfg.finetune_train_per_class:
            rest = subsample_per_class(rest, cfg.finetune_train_per_class, cfg.seed)
    except ValueError as error:
        raise ValueError(f"fine-tuning splits of fold {cfg.fold} ({cfg.finetune_val_per_class} validation + "
                         f"{cfg.finetune_train_per_class or 'all other'} training images per class): {error}; "
                         "lower finetune_val_per_class / finetune_train_per_class") from None
    return rest, val


def load_task_data(cfg: PretrainFinetuneConfig) -> TaskData:
    """Every dataset a trial needs, with noise drawn once from ``cfg.seed`` (paired across losses)."""
    splits = {split: load_source(cfg, split) for split in ("train", "val", "test")}

    def view(split: str, task: str) -> SegmentationData:
        data, names = splits[split]
        return task_view(data, cfg.fold, task, names)

    finetune_train, finetune_val = finetune_splits(view("train", "finetune"), cfg)
    finetune = {"finetune_train": SegmentationDataset(finetune_train),
                "finetune_val": SegmentationDataset(finetune_val),
                "finetune_test": SegmentationDataset(view("test", "finetune"))}
    if not cfg.pretrains:
        return TaskData(**finetune)
    transform = pretrain_transform(cfg)
    num_pretrain = pretrain_classes(cfg)
    return TaskData(
        **finetune,
        pretrain_train=SegmentationDataset(view("train", "pretrain"), noise=pretrain_noise(cfg),
                                           label_transform=transform, seed=cfg.seed,
                                           num_classes=num_pretrain),
        pretrain_val=SegmentationDataset(view("val", "pretrain"), label_transform=transform,
                                         num_classes=num_pretrain),
        pretrain_test=SegmentationDataset(view("test", "pretrain"), label_transform=transform,
                                          num_classes=num_pretrain),
    )


def noisy_pretrain_labels(cfg: PretrainFinetuneConfig, data: SegmentationData) -> np.ndarray:
    """The ``(N, H, W)`` uint8 observed labels the pre-training training set of ``cfg`` would hold if its
    source training split were ``data`` (source label space 0..20, 255): the fold's pre-training view, then
    ``pretrain_noise`` drawn from ``cfg.seed`` and ``pretrain_transform``, through the very
    ``SegmentationDataset`` that :func:`load_task_data` builds. ``N`` counts the images of ``data`` that
    hold a pre-training class. Pure and cheap on a few small images: the search space check
    (``search_spaces.base.validate_search``) compares these maps across noise parameter values.
    """
    view = task_view(data, cfg.fold, "pretrain", data.class_names)
    dataset = SegmentationDataset(view, noise=pretrain_noise(cfg), label_transform=pretrain_transform(cfg),
                                  seed=cfg.seed, num_classes=pretrain_classes(cfg))
    return dataset.labels
