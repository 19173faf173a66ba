"""How much low-level cues give objectness away on the synthetic benchmark (issue 15).

On VOC, telling an object from the background is hard (FCN-AlexNet reaches mean IU 0.75 with complete
labels, thesis Table 3): objects and clutter share colours, textures and edges, and only shape and the
composition of parts tell them apart. That is what makes a binarized (foreground/background)
pre-training learn transferable features. A benchmark whose objects differ from the background by a
pixel-level cue (the synthetic generator's flat clutter against its textured objects) gives objectness
away: a network learns the cue, not objects.

The measure: a per-pixel logistic regression on features a first convolution layer sees without any
shape (the pixel's colour, the local contrast of the grey level over 3x3 and 7x7 windows, the gradient
magnitude raw and over 5x5), fitted on one set of images and scored on another as foreground/background
mean IU, band pixels (255) left out. Near 1: the cue alone segments objects. Near 0.5: it barely beats
calling everything background (whose mean IU is about 0.43 at 15% foreground).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from trainables.data.base import IGNORE_INDEX

FEATURES = ("red", "green", "blue", "contrast 3x3", "contrast 7x7", "gradient", "gradient 5x5")


def low_level_features(image: np.ndarray) -> np.ndarray:
    """``(S, S, F)`` float64 features of one ``(3, S, S)`` uint8 image, F = ``len(FEATURES)``."""
    rgb = image.astype(np.float64).transpose(1, 2, 0) / 255.0
    grey = rgb.mean(axis=-1)
    channels = [rgb[..., c] for c in range(3)]
    for window in (3, 7):
        mean = ndimage.uniform_filter(grey, window)
        channels.append(np.sqrt(np.maximum(ndimage.uniform_filter(grey * grey, window) - mean * mean, 0.0)))
    gradient = np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))
    channels += [gradient, ndimage.uniform_filter(gradient, 5)]
    return np.stack(channels, axis=-1)


def _pixels(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features (P, F), foreground (P,) bool) of every labelled pixel of ``(N, 3, S, S)`` images and
    ``(N, S, S)`` labels (0 background, 1..K objects, 255 band)."""
    features, foreground = [], []
    for image, label in zip(images, labels):
        keep = label != IGNORE_INDEX
        features.append(low_level_features(image)[keep])
        foreground.append(label[keep] > 0)
    return np.concatenate(features), np.concatenate(foreground)


def cue_mean_iu(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                test_labels: np.ndarray, steps: int = 100) -> float:
    """Foreground/background mean IU on the test images of a per-pixel logistic regression on
    :func:`low_level_features`, fitted (L-BFGS, ``steps`` iterations, standardised features, class-balanced
    loss) on the training images. Images ``(N, 3, S, S)`` uint8, labels ``(N, S, S)``. Deterministic."""
    x_train, y_train = _pixels(train_images, train_labels)
    x_test, y_test = _pixels(test_images, test_labels)
    if y_train.all() or not y_train.any():
        raise ValueError("the training images need both foreground and background pixels")
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8
    x = torch.as_tensor((x_train - mean) / std, dtype=torch.float64)
    y = torch.as_tensor(y_train, dtype=torch.float64)
    # Balanced: foreground is ~15% of the pixels; unweighted, "all background" is a strong local optimum.
    weight = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (weight * torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (torch.as_tensor((x_test - mean) / std) @ w + b > 0).numpy()
    ious = [np.sum((predicted == c) & (y_test == c)) / max(np.sum((predicted == c) | (y_test == c)), 1)
            for c in (False, True)]
    return float(np.mean(ious))
