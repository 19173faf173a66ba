"""From a trial config to its datasets, on the real (tiny) synthetic benchmark: label spaces of both
phases, the fine-tuning cap, the false-segmentation target, the order of combined noises and the
pairing of noisy labels across loss variants."""

import numpy as np
import pytest

from trainables.data.base import IGNORE_INDEX, fold_classes, task_lookup
from trainables.data.loading import primary_classes
from trainables.data.sources import load_task_data, pretrain_classes, pretrain_noise, target_class
from trainables.labels import VOC_CLASSES
from trainables.noise import NoiseConfig

CAT, DOG = VOC_CLASSES.index("cat") + 1, VOC_CLASSES.index("dog") + 1
# label_transform -> (extra config, outputs of the pre-training head). The synthetic benchmark's
# superclasses are its 5 shape families, all present among every fold's 15 pre-training classes.
TRANSFORMS = {
    "none": ({}, 16),
    "binarize": ({}, 2),
    "superclass": ({}, 6),
    "random_groups": ({"num_groups": 4}, 5),
    "target": ({}, 2),
}


@pytest.mark.parametrize(("transform", "case"), TRANSFORMS.items())
def test_pretrain_classes(tiny_cfg, transform, case):
    extra, expected = case
    assert pretrain_classes(tiny_cfg(label_transform=transform, **extra)) == expected


def test_pretrain_classes_of_random_groups_follows_num_groups(tiny_cfg):
    assert [pretrain_classes(tiny_cfg(label_transform="random_groups", num_groups=n)) for n in (1, 7, 15)] == [2, 8, 16]


@pytest.mark.parametrize(("fold", "expected"), [(1, 5), (2, 5), (3, 4), (4, 5)])
def test_voc_superclasses_count_the_superclasses_present(fold, expected):
    from trainables.config import PretrainFinetuneConfig

    # No VOC data is read: the count comes from the fold's classes and VOC's four superclasses. Fold 3
    # fine-tunes on person, so its pre-training sees only animal, vehicle and indoor.
    cfg = PretrainFinetuneConfig(data="voc:/nowhere", fold=fold, label_transform="superclass")
    assert pretrain_classes(cfg) == expected


@pytest.mark.parametrize(("transform", "case"), TRANSFORMS.items())
def test_pretrain_labels_lie_in_the_transformed_task(tiny_cfg, transform, case):
    extra, expected = case
    data = load_task_data(tiny_cfg(label_transform=transform, **extra))
    for dataset in (data.pretrain_train, data.pretrain_val, data.pretrain_test):
        assert dataset.num_classes == expected
        values = set(np.unique(dataset.labels).tolist())
        # Every output is used: each of the 15 classes has images in each split (the tiny config keeps 3).
        assert values == set(range(expected)) | {IGNORE_INDEX}


def test_finetune_labels_and_cap(tiny_cfg):
    data = load_task_data(tiny_cfg(fold=3))
    for dataset in (data.finetune_train, data.finetune_test):
        assert dataset.num_classes == 6
        assert set(np.unique(dataset.labels).tolist()) == set(range(6)) | {IGNORE_INDEX}
    classes, counts = np.unique(primary_classes(data.finetune_train.labels), return_counts=True)
    assert classes.tolist() == [1, 2, 3, 4, 5]
    assert counts.tolist() == [2] * 5  # finetune_train_per_class
    assert len(data.finetune_test) == 5 * 3  # the test split is not capped


def test_finetune_cap_follows_config(tiny_cfg):
    data = load_task_data(tiny_cfg(finetune_train_per_class=1))
    assert np.bincount(primary_classes(data.finetune_train.labels)).tolist() == [0, 1, 1, 1, 1, 1]


def test_fold_two_holds_cat_out():
    assert CAT in fold_classes(2)[1]
    assert DOG in fold_classes(2)[0]


@pytest.mark.parametrize(("fold", "source", "expected"), [(1, CAT, 3), (2, DOG, 7), (3, CAT, 8), (4, CAT, 8)])
def test_target_class_is_cat_or_dog_in_the_pretraining_label_space(fold, source, expected):
    assert target_class(fold) == expected
    assert task_lookup(fold, "pretrain")[source] == expected
    assert fold_classes(fold)[0][expected - 1] == source


def test_target_task_keeps_only_the_target_class(tiny_cfg):
    cfg = tiny_cfg(label_transform="target")
    data = load_task_data(cfg)
    clean = data.pretrain_train.clean_labels
    expected = np.where(clean == target_class(cfg.fold), 1, np.where(clean == IGNORE_INDEX, IGNORE_INDEX, 0))
    np.testing.assert_array_equal(data.pretrain_train.labels, expected)


def test_pretrain_noise_misclassify_unsegment_boundary_order(tiny_cfg):
    cfg = tiny_cfg(noise_boundary=2, noise_unsegment=0.25, noise_misclassify=0.5)
    assert pretrain_noise(cfg) == (
        NoiseConfig("misclassify", rate=0.5, num_classes=15),
        NoiseConfig("unsegment", p=0.25),
        NoiseConfig("boundary", max_radius=2),
    )


def test_pretrain_noise_false_segment_comes_first(tiny_cfg):
    cfg = tiny_cfg(fold=2, label_transform="target", noise_false_segment=0.5, noise_unsegment=0.5, noise_boundary=1)
    assert pretrain_noise(cfg) == (
        NoiseConfig("false_segment", p=0.5, target=7),
        NoiseConfig("unsegment", p=0.5),
        NoiseConfig("boundary", max_radius=1),
    )


def test_pretrain_noise_target_without_false_segments_still_keeps_the_target(tiny_cfg):
    assert pretrain_noise(tiny_cfg(label_transform="target")) == (NoiseConfig("false_segment", p=0.0, target=3),)
    assert pretrain_noise(tiny_cfg()) == ()


def test_full_unsegmentation_leaves_only_background_and_clean_labels_intact(tiny_cfg):
    clean_data = load_task_data(tiny_cfg())
    noisy = load_task_data(tiny_cfg(noise_unsegment=1.0)).pretrain_train
    clean = clean_data.pretrain_train.clean_labels
    np.testing.assert_array_equal(noisy.labels, np.where(clean == IGNORE_INDEX, IGNORE_INDEX, 0))
    np.testing.assert_array_equal(noisy.clean_labels, clean)
    assert set(np.unique(clean).tolist()) == set(range(16)) | {IGNORE_INDEX}
    # Validation and test score the clean task whatever the training noise.
    np.testing.assert_array_equal(load_task_data(tiny_cfg(noise_unsegment=1.0)).pretrain_val.labels,
                                  clean_data.pretrain_val.labels)


def test_noise_is_paired_across_losses_and_changes_with_the_seed(tiny_cfg):
    noisy = {"noise_unsegment": 0.5, "noise_misclassify": 0.5}
    ce = load_task_data(tiny_cfg(**noisy)).pretrain_train.labels
    sigmoidal = load_task_data(tiny_cfg(**noisy, loss="sigmoidal_neg")).pretrain_train.labels
    bootstrap = load_task_data(tiny_cfg(**noisy, loss="bootstrap_neg", beta=0.5, warmup_epochs=1)).pretrain_train.labels
    other_seed = load_task_data(tiny_cfg(**noisy, seed=1)).pretrain_train.labels
    np.testing.assert_array_equal(ce, sigmoidal)
    np.testing.assert_array_equal(ce, bootstrap)
    assert not np.array_equal(ce, other_seed)
    assert not np.array_equal(ce, load_task_data(tiny_cfg()).pretrain_train.labels)


def test_random_init_loads_no_pretraining_data(tiny_cfg):
    data = load_task_data(tiny_cfg(init="random"))
    assert (data.pretrain_train, data.pretrain_val, data.pretrain_test) == (None, None, None)
    np.testing.assert_array_equal(data.finetune_test.labels, load_task_data(tiny_cfg()).finetune_test.labels)
