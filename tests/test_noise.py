"""Per-object label noise: statistics over thousands of objects, whole-object properties, determinism,
and every documented failure mode."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from trainables.noise import (
    NOISE_KINDS,
    NoiseConfig,
    boundary_noise,
    corrupt,
    corrupt_dataset,
    false_segment,
    misclassify,
    random_label_confusion,
    target_only,
    unsegment,
)

SEEDS = st.integers(0, 2**32 - 1)
PROBABILITIES = st.floats(0.0, 1.0)


def scattered_maps(seed, height=12, width=12, num_objects=6, num_classes=5, ignore_fraction=0.1):
    """Random maps whose objects are scattered pixels, with some pixels (object or not) set to 255."""
    g = np.random.default_rng(seed)
    instances = g.integers(0, num_objects + 1, size=(height, width)).astype(np.uint16)
    classes = np.concatenate([[0], g.integers(1, num_classes + 1, size=num_objects)])
    label = classes[instances].astype(np.uint8)
    label[g.random((height, width)) < ignore_fraction] = 255
    return label, instances


def blob_maps(seed, size=24, num_objects=4, num_classes=5):
    """Random maps of overlapping rectangles (later ones cover earlier ones), with a 255 band inside each."""
    g = np.random.default_rng(seed)
    instances = np.zeros((size, size), dtype=np.uint16)
    for obj in range(1, num_objects + 1):
        top, left = g.integers(0, size - 4, size=2)
        height, width = g.integers(2, 10, size=2)
        instances[top : top + height, left : left + width] = obj
    classes = np.concatenate([[0], g.integers(1, num_classes + 1, size=num_objects)])
    label = classes[instances].astype(np.uint8)
    label[(instances > 0) & (g.random((size, size)) < 0.05)] = 255
    return label, instances


def many_objects(num_objects, num_classes=3):
    """One image of ``num_objects`` two-pixel objects; object i has class 1 + (i - 1) % num_classes."""
    instances = (np.arange(2 * num_objects) // 2 + 1).reshape(num_objects, 2).astype(np.uint16)
    label = (1 + (instances.astype(np.int64) - 1) % num_classes).astype(np.uint8)
    return label, instances


def object_values(out, label, instances):
    """{object id: set of output values on its pixels that were not 255}."""
    ids = np.unique(instances[instances > 0])
    return {int(obj): set(np.unique(out[(instances == obj) & (label != 255)]).tolist()) for obj in ids}


def assert_within_binomial(successes, trials, p, sigmas=5.0):
    spread = sigmas * math.sqrt(p * (1 - p) / trials) + 1e-12
    assert abs(successes / trials - p) <= spread, (successes, trials, p)


def rng(seed=0):
    return np.random.default_rng(seed)


# ---- unsegment -------------------------------------------------------------------------------------


def test_unsegment_flips_a_binomial_fraction_of_objects():
    label, instances = many_objects(6000)
    out = unsegment(label, instances, 0.3, rng(1))
    flipped_objects = (out == 0).sum() // 2
    assert (out == 0).sum() % 2 == 0  # both pixels of an object flip together
    assert_within_binomial(flipped_objects, 6000, 0.3)


def test_unsegment_mapping_uses_per_class_probabilities_and_zero_for_missing_classes():
    label, instances = many_objects(6000)
    out = unsegment(label, instances, {1: 0.2, 2: 0.8}, rng(2))
    for cls, p in ((1, 0.2), (2, 0.8)):
        of_class = label == cls
        assert_within_binomial((out[of_class] == 0).sum() // 2, of_class.sum() // 2, p)
    np.testing.assert_array_equal(out[label == 3], 3)


@settings(max_examples=50, deadline=None)
@given(seed=SEEDS, p=PROBABILITIES)
def test_unsegment_flips_whole_objects_and_leaves_ignore_and_background(seed, p):
    label, instances = scattered_maps(seed)
    label_before, instances_before = label.copy(), instances.copy()
    out = unsegment(label, instances, p, rng(seed))
    np.testing.assert_array_equal(label, label_before)
    np.testing.assert_array_equal(instances, instances_before)
    assert out.dtype == label.dtype
    np.testing.assert_array_equal(out[label == 255], 255)
    np.testing.assert_array_equal(out[instances == 0], label[instances == 0])
    for obj, values in object_values(out, label, instances).items():
        true_class = set(np.unique(label[(instances == obj) & (label != 255)]).tolist())
        assert values in (true_class, {0}) or not true_class, (obj, values)


def test_unsegment_p_one_clears_every_object_p_zero_keeps_all():
    label, instances = scattered_maps(3)
    np.testing.assert_array_equal(unsegment(label, instances, 0.0, rng()), label)
    np.testing.assert_array_equal(unsegment(label, instances, 1.0, rng()), np.where(label == 255, 255, 0))


# ---- misclassify ----------------------------------------------------------------------------------


def test_misclassify_draws_observed_classes_from_the_confusion_columns():
    confusion = np.array([[0.7, 0.1, 0.2], [0.2, 0.8, 0.3], [0.1, 0.1, 0.5]])
    label, instances = many_objects(9000)
    out = misclassify(label, instances, confusion, rng(4))
    for true in (1, 2, 3):
        observed = out[label == true][::2]  # one pixel per object
        assert (out[label == true][1::2] == observed).all()  # whole objects
        for obs in (1, 2, 3):
            assert_within_binomial((observed == obs).sum(), len(observed), confusion[obs - 1, true - 1])


def test_misclassify_with_a_permutation_matrix_relabels_exactly():
    label, instances = scattered_maps(5, num_classes=3)
    permutation = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]])  # 1 -> 2, 2 -> 3, 3 -> 1
    out = misclassify(label, instances, permutation, rng())
    expected = np.array([0, 2, 3, 1] + [0] * 251 + [255])[label]
    np.testing.assert_array_equal(out, expected)


@settings(max_examples=50, deadline=None)
@given(seed=SEEDS, rate=PROBABILITIES)
def test_misclassify_changes_whole_objects_only(seed, rate):
    label, instances = scattered_maps(seed, num_classes=4)
    label_before = label.copy()
    out = misclassify(label, instances, random_label_confusion(4, rate), rng(seed))
    np.testing.assert_array_equal(label, label_before)
    np.testing.assert_array_equal(out[label == 255], 255)
    np.testing.assert_array_equal(out[label == 0], 0)
    for values in object_values(out, label, instances).values():
        assert len(values) <= 1 and values <= {1, 2, 3, 4}


def test_random_label_confusion_is_the_thesis_matrix():
    matrix = random_label_confusion(4, 0.5)
    np.testing.assert_allclose(np.diag(matrix), 0.5 + 0.5 / 4)
    np.testing.assert_allclose(matrix[~np.eye(4, dtype=bool)], 0.5 / 4)
    np.testing.assert_allclose(random_label_confusion(3, 1.0), np.full((3, 3), 1 / 3))
    np.testing.assert_allclose(random_label_confusion(3, 0.0), np.eye(3))


# ---- false segmentation ---------------------------------------------------------------------------


def test_target_only_keeps_target_and_ignore():
    label = np.array([[0, 1, 2], [3, 255, 2]], dtype=np.uint8)
    out = target_only(label, 2)
    np.testing.assert_array_equal(out, [[0, 0, 2], [0, 255, 2]])
    assert out.dtype == np.uint8


def test_false_segment_labels_a_binomial_fraction_of_non_target_objects():
    label, instances = many_objects(9000)
    out = false_segment(label, instances, 2, 0.5, rng(6))
    np.testing.assert_array_equal(out[label == 2], 2)
    others = out[label != 2]
    assert set(np.unique(others).tolist()) <= {0, 2}
    assert (others[::2] == others[1::2]).all()  # whole objects
    assert_within_binomial((others[::2] == 2).sum(), len(others) // 2, 0.5)


def test_false_segment_extremes():
    label, instances = scattered_maps(7)
    np.testing.assert_array_equal(false_segment(label, instances, 3, 0.0, rng()), target_only(label, 3))
    everything = false_segment(label, instances, 3, 1.0, rng())
    np.testing.assert_array_equal(everything, np.where(label == 255, 255, np.where(instances > 0, 3, 0)))


# ---- boundary noise -------------------------------------------------------------------------------


def disk(radius):
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, max_radius=st.integers(0, 4))
def test_boundary_noise_on_one_object_is_a_disk_dilation_or_erosion(seed, max_radius):
    label = np.zeros((20, 20), dtype=np.uint8)
    instances = np.zeros((20, 20), dtype=np.uint16)
    instances[0:7, 5:15] = 1  # touching the frame, which must not erode it
    label[instances == 1] = 7
    mask = boundary_noise(label, instances, max_radius, rng(seed)) == 7
    candidates = [ndimage.binary_dilation(instances == 1, disk(r)) for r in range(1, max_radius + 1)]
    candidates += [ndimage.binary_erosion(instances == 1, disk(r), border_value=1) for r in range(1, max_radius + 1)]
    assert any((mask == c).all() for c in [instances == 1, *candidates])


def test_boundary_noise_draws_every_direction_and_radius():
    label = np.zeros((20, 20), dtype=np.uint8)
    instances = np.zeros((20, 20), dtype=np.uint16)
    instances[5:15, 5:15] = 1
    label[instances == 1] = 2
    # Pixel counts of the 10x10 square dilated / eroded by disks of radius 1..2: every outcome must occur.
    outcomes = {int((boundary_noise(label, instances, 2, rng(seed)) == 2).sum()) for seed in range(200)}
    sizes = {100}
    for r in (1, 2):
        sizes.add(int(ndimage.binary_dilation(instances == 1, disk(r)).sum()))
        sizes.add(int(ndimage.binary_erosion(instances == 1, disk(r)).sum()))
    assert outcomes == sizes and len(sizes) == 5


@settings(max_examples=50, deadline=None)
@given(seed=SEEDS, max_radius=st.integers(0, 4))
def test_boundary_noise_never_overlaps_objects_or_changes_a_class(seed, max_radius):
    label, instances = blob_maps(seed)
    label_before = label.copy()
    out = boundary_noise(label, instances, max_radius, rng(seed))
    np.testing.assert_array_equal(label, label_before)
    np.testing.assert_array_equal(out[label == 255], 255)
    changed = out != label
    # Inside an object a pixel can only be lost to background; outside, only background can be claimed.
    assert (out[changed & (instances > 0)] == 0).all()
    assert (label[changed & (instances == 0)] == 0).all()
    for cls in np.unique(out[changed & (instances == 0)]):
        objects_of_class = np.isin(instances, np.unique(instances[label == cls]))
        distance = ndimage.distance_transform_edt(~objects_of_class)
        assert (distance[changed & (out == cls)] <= max_radius).all()


def test_boundary_noise_radius_zero_is_identity():
    label, instances = blob_maps(8)
    np.testing.assert_array_equal(boundary_noise(label, instances, 0, rng()), label)


# ---- NoiseConfig ----------------------------------------------------------------------------------


VALID_CONFIGS = [
    NoiseConfig("none"),
    NoiseConfig("unsegment", p=0.5),
    NoiseConfig("misclassify", rate=1.0, num_classes=15),
    NoiseConfig("false_segment", p=0.5, target=3),
    NoiseConfig("boundary", max_radius=3),
]


@pytest.mark.parametrize("config", VALID_CONFIGS, ids=lambda c: c.kind)
def test_noise_config_dict_round_trip(config):
    assert NoiseConfig.from_dict(config.to_dict()) == config
    assert set(config.to_dict()) == {"kind", "p", "rate", "num_classes", "target", "max_radius"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "salt"}, r"kind must be one of .*'unsegment'.*got 'salt'"),
        ({"kind": "unsegment", "p": 1.5}, r"p must be a probability in \[0, 1\], got 1.5"),
        ({"kind": "misclassify", "rate": -0.1, "num_classes": 3}, r"rate must be a probability in \[0, 1\]"),
        ({"kind": "misclassify", "rate": 0.5}, r"num_classes must be an integer >= 1, got 0"),
        ({"kind": "false_segment", "p": 0.5}, r"target must be an integer >= 1, got 0"),
        ({"kind": "boundary", "max_radius": -1}, r"max_radius must be an integer >= 0, got -1"),
        ({"kind": "unsegment", "p": 0.5, "rate": 0.5}, r"rate=0.5 is not used by kind 'unsegment'"),
        ({"kind": "none", "max_radius": 2}, r"max_radius=2 is not used by kind 'none'"),
    ],
)
def test_noise_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseConfig(**kwargs)


def test_noise_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown NoiseConfig keys \['prob'\]"):
        NoiseConfig.from_dict({"kind": "unsegment", "prob": 0.5})
    with pytest.raises(ValueError, match="needs 'kind'"):
        NoiseConfig.from_dict({"p": 0.5})


def test_noise_kinds_all_construct():
    assert {config.kind for config in VALID_CONFIGS} == set(NOISE_KINDS)


# ---- corrupt / corrupt_dataset ---------------------------------------------------------------------


def test_corrupt_uses_spawned_children_of_seed_and_index():
    label, instances = blob_maps(9, num_classes=3)
    configs = [NoiseConfig("misclassify", rate=1.0, num_classes=3), NoiseConfig("unsegment", p=0.5)]
    children = np.random.SeedSequence([11, 4]).spawn(2)
    expected = misclassify(label, instances, random_label_confusion(3, 1.0), np.random.default_rng(children[0]))
    expected = unsegment(expected, instances, 0.5, np.random.default_rng(children[1]))
    np.testing.assert_array_equal(corrupt(label, instances, configs, seed=11, index=4), expected)
    single = unsegment(label, instances, 0.5, np.random.default_rng(np.random.SeedSequence([11, 4]).spawn(1)[0]))
    np.testing.assert_array_equal(corrupt(label, instances, configs[1], seed=11, index=4), single)
    np.testing.assert_array_equal(corrupt(label, instances, [configs[1]], seed=11, index=4), single)


def test_corrupt_draws_of_one_noise_do_not_depend_on_the_others():
    label, instances = many_objects(500)
    later = NoiseConfig("unsegment", p=0.5)
    after_identity = corrupt(label, instances, [NoiseConfig("unsegment", p=0.0), later], seed=1, index=0)
    after_none = corrupt(label, instances, [NoiseConfig("none"), later], seed=1, index=0)
    np.testing.assert_array_equal(after_identity, after_none)


def test_corrupt_identity_cases_return_copies():
    label, instances = scattered_maps(10)
    for config in ([], NoiseConfig("none")):
        out = corrupt(label, instances, config, seed=0, index=0)
        np.testing.assert_array_equal(out, label)
        assert out is not label


def test_corrupt_depends_on_seed_and_index():
    label, instances = many_objects(500)
    config = NoiseConfig("unsegment", p=0.5)
    first = corrupt(label, instances, config, seed=3, index=0)
    np.testing.assert_array_equal(first, corrupt(label, instances, config, seed=3, index=0))
    assert (first != corrupt(label, instances, config, seed=3, index=1)).any()
    assert (first != corrupt(label, instances, config, seed=4, index=0)).any()


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, order_seed=SEEDS)
def test_corrupt_dataset_equals_per_image_corrupt_in_any_order(seed, order_seed):
    maps = [blob_maps([seed, i]) for i in range(5)]
    labels = np.stack([m[0] for m in maps])
    instances = np.stack([m[1] for m in maps])
    configs = [NoiseConfig("boundary", max_radius=2), NoiseConfig("unsegment", p=0.5)]
    noisy = corrupt_dataset(labels, instances, configs, seed=seed)
    assert noisy.dtype == labels.dtype and noisy.shape == labels.shape
    for i in rng(order_seed).permutation(5):
        np.testing.assert_array_equal(noisy[i], corrupt(labels[i], instances[i], configs, seed, int(i)))


# ---- bad input ------------------------------------------------------------------------------------


def test_bad_probabilities_are_rejected():
    label, instances = scattered_maps(0)
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got -0.2"):
        unsegment(label, instances, -0.2, rng())
    with pytest.raises(ValueError, match=r"p\[2\] must be a probability in \[0, 1\], got 2"):
        unsegment(label, instances, {2: 2}, rng())
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got 1.1"):
        false_segment(label, instances, 1, 1.1, rng())
    with pytest.raises(ValueError, match=r"rate must be a probability in \[0, 1\], got 2"):
        random_label_confusion(3, 2)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 0"):
        random_label_confusion(0, 0.5)


@pytest.mark.parametrize(
    ("confusion", "message"),
    [
        (np.ones((2, 3)) / 2, r"confusion must be a square \(K, K\) matrix.*got shape \(2, 3\)"),
        (np.array([[1.5, 0.0], [-0.5, 1.0]]), r"confusion must have finite entries >= 0, got minimum -0.5"),
        (np.array([[0.5, 0.5], [0.4, 0.5]]), r"confusion columns must each sum to 1.*\[0.9, 1.0\]"),
    ],
)
def test_bad_confusion_matrices_are_rejected(confusion, message):
    label, instances = scattered_maps(0, num_classes=2)
    with pytest.raises(ValueError, match=message):
        misclassify(label, instances, confusion, rng())


def test_misclassify_rejects_labels_outside_its_classes():
    label = np.array([[0, 1, 4], [255, 5, 5]], dtype=np.uint8)
    instances = np.array([[0, 1, 2], [0, 3, 3]], dtype=np.uint16)
    with pytest.raises(ValueError, match=r"label values must be in 0..3 \(K from confusion\) or 255, got \[4, 5\]"):
        misclassify(label, instances, np.eye(3), rng())


def test_mismatched_maps_and_mixed_objects_are_rejected():
    label, instances = scattered_maps(0)
    with pytest.raises(ValueError, match=r"label and instances must have the same shape.*\(12, 12\).*\(12, 11\)"):
        unsegment(label, instances[:, :11], 0.5, rng())
    mixed = label.copy()
    mixed[instances == 2] = 1
    mixed[np.argwhere(instances == 2)[0][0], np.argwhere(instances == 2)[0][1]] = 3
    with pytest.raises(ValueError, match=r"object 2 in instances has pixels of more than one class in label: \[1, 3\]"):
        boundary_noise(mixed, instances, 1, rng())
    with pytest.raises(TypeError, match="label must be an integer numpy array"):
        unsegment(label.astype(float), instances, 0.5, rng())
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        unsegment(label, instances, 0.5, 0)


def test_other_bad_arguments_are_rejected():
    label, instances = scattered_maps(0)
    with pytest.raises(ValueError, match="max_radius must be an integer >= 0, got -1"):
        boundary_noise(label, instances, -1, rng())
    with pytest.raises(ValueError, match=r"label must be a 2-D \(H, W\) map .* got shape \(1, 12, 12\)"):
        boundary_noise(label[None], instances[None], 1, rng())
    with pytest.raises(ValueError, match="target must be an integer >= 1, got 0"):
        target_only(label, 0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        corrupt(label, instances, NoiseConfig("none"), seed=-1, index=0)
    with pytest.raises(TypeError, match="config must be a NoiseConfig or a sequence of them, got dict"):
        corrupt(label, instances, [{"kind": "none"}], seed=0, index=0)
    with pytest.raises(ValueError, match=r"labels must be \(N, H, W\), got shape \(12, 12\)"):
        corrupt_dataset(label, instances, NoiseConfig("none"), seed=0)
