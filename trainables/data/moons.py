"""The 2-D moons data set of thesis Figure 4 (5.2): two interleaving half circles, pure numpy.

Class 1 is the upper moon (the positives), class 0 the lower moon (the negatives). A PU version keeps
label 1 on a ``labelled_fraction`` of the positives and labels the rest 0, like the CIFAR set-up.
"""

from __future__ import annotations

import numpy as np

from trainables.data.base import ClassificationData

SPLITS = ("train", "val", "test")
CLASS_NAMES = ("negative", "positive")


def make_moons(
    n_per_class: int = 400,
    noise: float = 0.1,
    labelled_fraction: float = 1.0,
    seed: int = 0,
    split: str = "train",
) -> ClassificationData:
    """``2 * n_per_class`` points of two interleaving half circles (radius 1) with Gaussian noise.

    Positives lie on ``(cos t, sin t)``, negatives on ``(1 - cos t, 0.5 - sin t)``, with ``t`` uniform
    in [0, pi] and isotropic Gaussian noise of standard deviation ``noise`` (data units) added.
    Each split draws from its own child of ``seed``, so train, val and test never share points.
    On train and val, exactly ``round(labelled_fraction * n_per_class)`` positives keep label 1 and
    the others are labelled 0; test labels are the true labels.

    Returns inputs ``(2 n_per_class, 2)`` float32, labels and true_labels ``(2 n_per_class,)`` int64,
    positives first.
    """
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ValueError(f"n_per_class must be an integer >= 1, got {n_per_class!r}")
    if not _is_number(noise) or not 0.0 <= noise < np.inf:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if not _is_number(labelled_fraction) or not 0.0 <= labelled_fraction <= 1.0:
        raise ValueError(f"labelled_fraction must be a number in [0, 1], got {labelled_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    rng = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(len(SPLITS))[SPLITS.index(split)])
    t = rng.uniform(0.0, np.pi, size=(2, n_per_class))
    positives = np.stack([np.cos(t[0]), np.sin(t[0])], axis=1)
    negatives = np.stack([1.0 - np.cos(t[1]), 0.5 - np.sin(t[1])], axis=1)
    points = np.concatenate([positives, negatives]) + rng.normal(0.0, noise, size=(2 * n_per_class, 2))
    true_labels = np.repeat(np.array([1, 0], dtype=np.int64), n_per_class)
    labels = true_labels.copy()
    if split != "test":
        n_labelled = int(np.floor(labelled_fraction * n_per_class + 0.5))
        labels[rng.permutation(n_per_class)[n_labelled:]] = 0
    return ClassificationData(points.astype(np.float32), labels, true_labels, CLASS_NAMES)


def grid(
    bounds: tuple[float, float, float, float], resolution: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A regular grid over ``bounds = (x_min, x_max, y_min, y_max)`` for decision-boundary plots.

    Returns ``xx`` and ``yy`` of shape ``(resolution, resolution)`` (rows follow y, columns x, as
    ``numpy.meshgrid`` and ``matplotlib.contourf`` expect) and ``points`` ``(resolution**2, 2)``
    float32, the grid's (x, y) pairs in row-major order so ``f(points).reshape(xx.shape)`` lines up.
    """
    if len(bounds) != 4 or not all(_is_number(b) and np.isfinite(b) for b in bounds):
        raise ValueError(f"bounds must be 4 finite numbers (x_min, x_max, y_min, y_max), got {bounds!r}")
    x_min, x_max, y_min, y_max = bounds
    if not (x_min < x_max and y_min < y_max):
        raise ValueError(f"bounds must have x_min < x_max and y_min < y_max, got {bounds!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
    xx, yy = np.meshgrid(np.linspace(x_min, x_max, resolution), np.linspace(y_min, y_max, resolution))
    points = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)
    return xx, yy, points


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
