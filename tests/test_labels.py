"""Label transforms: exact maps, the VOC superclass grouping of thesis Figure 3, random partitions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainables.data.base import fold_classes
from trainables.labels import (
    VOC_CLASSES,
    VOC_SUPERCLASSES,
    binarize,
    categorize,
    random_categories,
    superclass_mapping,
)


def test_binarize_keeps_background_and_ignore():
    label = np.array([[0, 1, 7], [255, 20, 0]], dtype=np.uint8)
    out = binarize(label)
    np.testing.assert_array_equal(out, [[0, 1, 1], [255, 1, 0]])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(label, [[0, 1, 7], [255, 20, 0]])


def test_categorize_maps_classes_and_keeps_background_and_ignore():
    label = np.array([[0, 1, 2], [3, 255, 1]], dtype=np.int64)
    out = categorize(label, {1: 2, 2: 1, 3: 2})
    np.testing.assert_array_equal(out, [[0, 2, 1], [2, 255, 2]])
    assert out.dtype == np.int64


def test_categorize_rejects_missing_classes_and_gapped_categories():
    label = np.array([[0, 1, 4, 6]], dtype=np.uint8)
    with pytest.raises(ValueError, match=r"label has classes \[4, 6\] missing from mapping"):
        categorize(label, {1: 1})
    with pytest.raises(ValueError, match=r"categories must be the integers 1..n without gaps, got \[1, 3\]"):
        categorize(label, {1: 1, 4: 3, 6: 3})


def test_voc_tables():
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person" and VOC_CLASSES[19] == "tvmonitor"
    assert list(VOC_SUPERCLASSES) == ["person", "animal", "vehicle", "indoor"]
    assert VOC_SUPERCLASSES["person"] == (15,)
    assert VOC_SUPERCLASSES["animal"] == (3, 8, 10, 12, 13, 17)
    assert VOC_SUPERCLASSES["vehicle"] == (1, 2, 4, 6, 7, 14, 19)
    assert VOC_SUPERCLASSES["indoor"] == (5, 9, 11, 16, 18, 20)
    assert sorted(c for members in VOC_SUPERCLASSES.values() for c in members) == list(range(1, 21))


def test_superclass_mapping_of_fold_one():
    pretrain, _ = fold_classes(1)  # bus, car, cat, ..., tvmonitor (6..20)
    mapping = superclass_mapping(pretrain)
    # person=1, animal=2, vehicle=3, indoor=4; task class i is source class pretrain[i-1]
    expected_by_source = {6: 3, 7: 3, 8: 2, 9: 4, 10: 2, 11: 4, 12: 2, 13: 2, 14: 3, 15: 1, 16: 4, 17: 2,
                          18: 4, 19: 3, 20: 4}  # fmt: skip
    assert mapping == {task: expected_by_source[source] for task, source in enumerate(pretrain, 1)}


def test_superclass_mapping_numbers_only_present_superclasses():
    # fold 3 pre-trains on everything but 11..15 (no person): animal=1, vehicle=2, indoor=3
    pretrain, _ = fold_classes(3)
    mapping = superclass_mapping(pretrain)
    assert set(mapping.values()) == {1, 2, 3}
    assert mapping[pretrain.index(3) + 1] == 1  # bird
    assert mapping[pretrain.index(1) + 1] == 2  # aeroplane
    assert mapping[pretrain.index(5) + 1] == 3  # bottle
    with pytest.raises(ValueError, match=r"classes must be integers in 1..20, got 21"):
        superclass_mapping((1, 21))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_classes=st.integers(1, 15), data=st.data())
def test_random_categories_is_a_partition_into_n_nonempty_groups(seed, num_classes, data):
    n = data.draw(st.integers(1, num_classes))
    classes = tuple(range(1, num_classes + 1))
    mapping = random_categories(classes, n, np.random.default_rng(seed))
    assert sorted(mapping) == list(classes)
    assert set(mapping.values()) == set(range(1, n + 1))
    assert mapping == random_categories(classes, n, np.random.default_rng(seed))


def test_random_categories_rejects_bad_n():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"n must be an integer in 1..3 \(the number of classes\), got 4"):
        random_categories((1, 2, 3), 4, rng)
    with pytest.raises(ValueError, match=r"n must be an integer in 1..3 \(the number of classes\), got 0"):
        random_categories((1, 2, 3), 0, rng)


# --- Figure 3's x axis: the categories a trial's pre-training actually had -------------------------


def test_pretrain_categories_fold_3_voc_superclasses_drop_person():
    from trainables.labels import pretrain_categories

    # Fold 3 fine-tunes on diningtable, dog, horse, motorbike, person: person's superclass is gone.
    assert VOC_CLASSES.index("person") + 1 in fold_classes(3)[1]
    assert [pretrain_categories("superclass", fold, "voc") for fold in (1, 2, 3, 4)] == [4, 4, 3, 4]
    assert pretrain_categories("none", 3, "voc") == 15
    assert pretrain_categories("binarize", 3, "voc") == pretrain_categories("target", 3, "voc") == 1
    assert pretrain_categories("random_groups", 3, "voc", num_groups=7) == 7
    assert pretrain_categories("superclass", 3, "voc", init="random") == 0
    assert pretrain_categories("none", 3, "voc", init="imagenet") is None


def test_pretrain_categories_synthetic_shape_families():
    from trainables.data.synthetic import SYNTHETIC_CLASSES
    from trainables.labels import pretrain_categories, source_superclasses

    families = source_superclasses("synthetic")
    assert sorted(families) == ["box", "cross", "disk", "star", "tri"]
    assert families["disk"] == (1, 6, 11, 16)
    assert all(SYNTHETIC_CLASSES[c - 1].endswith("_disk") for c in families["disk"])
    # every fold keeps 3 of each family's 4 classes, so all 5 families
    assert [pretrain_categories("superclass", fold, "synthetic") for fold in (1, 2, 3, 4)] == [5, 5, 5, 5]


@pytest.mark.parametrize("transform,groups", [("none", 0), ("binarize", 0), ("target", 0), ("superclass", 0),
                                              ("random_groups", 4), ("random_groups", 11)])
@pytest.mark.parametrize("kind", ["voc", "synthetic"])
def test_pretrain_categories_match_the_trainable_head(transform, groups, kind):
    """The recorded count is the pre-training head's classes minus background, in every fold."""
    from types import SimpleNamespace

    from trainables.data.sources import pretrain_classes
    from trainables.labels import pretrain_categories

    data = "synthetic" if kind == "synthetic" else "voc:/nonexistent"
    for fold in (1, 2, 3, 4):
        # the fields pretrain_classes reads (a real config would check that the VOC root exists)
        cfg = SimpleNamespace(data=data, fold=fold, label_transform=transform, num_groups=groups)
        assert pretrain_categories(transform, fold, kind, groups) == pretrain_classes(cfg) - 1


def test_pretrain_categories_rejects_bad_input():
    from trainables.labels import pretrain_categories

    with pytest.raises(ValueError, match="data_kind must be 'voc' or 'synthetic'.*got 'cifar'"):
        pretrain_categories("none", 1, "cifar")
    with pytest.raises(ValueError, match=r"num_groups in 1..15, got 0"):
        pretrain_categories("random_groups", 1, "voc", num_groups=0)
    with pytest.raises(ValueError, match="label_transform must be one of .* got 'exact'"):
        pretrain_categories("exact", 1, "voc")
    with pytest.raises(ValueError, match="init must be 'pretrain', 'random' or 'imagenet', got 'scratch'"):
        pretrain_categories("none", 1, "voc", init="scratch")
