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
