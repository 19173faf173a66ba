"""The moons data set of thesis Figure 4 and the plotting grid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainables.data.moons import grid, make_moons


def test_shape_dtype_and_balance():
    data = make_moons()
    assert data.inputs.shape == (800, 2) and data.inputs.dtype == np.float32
    assert data.labels.dtype == data.true_labels.dtype == np.int64
    assert (data.true_labels == 1).sum() == (data.true_labels == 0).sum() == 400
    np.testing.assert_array_equal(data.labels, data.true_labels)  # labelled_fraction=1.0
    assert data.class_names == ("negative", "positive")


def test_noise_free_points_lie_on_the_two_half_circles():
    data = make_moons(n_per_class=200, noise=0.0)
    x, y = data.inputs[:, 0].astype(np.float64), data.inputs[:, 1].astype(np.float64)
    pos, neg = data.true_labels == 1, data.true_labels == 0
    np.testing.assert_allclose(x[pos] ** 2 + y[pos] ** 2, 1.0, atol=1e-6)
    assert (y[pos] >= -1e-6).all()
    np.testing.assert_allclose((x[neg] - 1.0) ** 2 + (y[neg] - 0.5) ** 2, 1.0, atol=1e-6)
    assert (y[neg] <= 0.5 + 1e-6).all()


def test_noise_is_gaussian_with_the_given_spread():
    clean, noisy = make_moons(n_per_class=2000, noise=0.0), make_moons(n_per_class=2000, noise=0.1)
    # Same seed, same angle draw: the difference is the added noise alone.
    offsets = noisy.inputs.astype(np.float64) - clean.inputs
    np.testing.assert_allclose(offsets.std(axis=0), 0.1, atol=0.005)
    np.testing.assert_allclose(offsets.mean(axis=0), 0.0, atol=0.005)


def test_determinism_and_independent_splits():
    a, b = make_moons(seed=3), make_moons(seed=3)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.allclose(a.inputs, make_moons(seed=4).inputs)
    splits = [make_moons(seed=3, split=s).inputs for s in ("train", "val", "test")]
    assert not np.allclose(splits[0], splits[1]) and not np.allclose(splits[1], splits[2])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**32))
def test_labelled_fraction_keeps_an_exact_count_of_positives(n, fraction, seed):
    data = make_moons(n_per_class=n, labelled_fraction=fraction, seed=seed)
    assert (data.labels == 1).sum() == int(np.floor(fraction * n + 0.5))
    assert not ((data.labels == 1) & (data.true_labels == 0)).any()
    test = make_moons(n_per_class=n, labelled_fraction=fraction, seed=seed, split="test")
    np.testing.assert_array_equal(test.labels, test.true_labels)


def test_grid_covers_the_bounds_in_row_major_order():
    xx, yy, points = grid((-1.0, 2.0, -0.5, 1.5), 5)
    assert xx.shape == yy.shape == (5, 5) and points.shape == (25, 2) and points.dtype == np.float32
    np.testing.assert_allclose(xx[0], [-1.0, -0.25, 0.5, 1.25, 2.0])
    np.testing.assert_allclose(yy[:, 0], [-0.5, 0.0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(points[:, 0].reshape(5, 5), xx)
    np.testing.assert_allclose(points[:, 1].reshape(5, 5), yy)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_per_class": 0}, "n_per_class must be an integer >= 1, got 0"),
        ({"noise": -0.1}, "noise must be a finite number >= 0, got -0.1"),
        ({"labelled_fraction": 1.2}, r"labelled_fraction must be a number in \[0, 1\], got 1.2"),
        ({"seed": -2}, "seed must be an integer >= 0, got -2"),
        ({"split": "dev"}, r"split must be one of \('train', 'val', 'test'\), got 'dev'"),
    ],
)
def test_make_moons_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_moons(**kwargs)


@pytest.mark.parametrize(
    ("bounds", "resolution", "message"),
    [
        ((0.0, 1.0, 0.0), 5, "bounds must be 4 finite numbers"),
        ((0.0, np.inf, 0.0, 1.0), 5, "bounds must be 4 finite numbers"),
        ((1.0, 0.0, 0.0, 1.0), 5, "bounds must have x_min < x_max and y_min < y_max"),
        ((0.0, 1.0, 0.0, 1.0), 1, "resolution must be an integer >= 2, got 1"),
    ],
)
def test_grid_rejects_bad_arguments(bounds, resolution, message):
    with pytest.raises(ValueError, match=message):
        grid(bounds, resolution)
