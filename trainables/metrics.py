"""Segmentation and classification scores from a confusion matrix (thesis appendix D.2, FCN definitions).

Rows are ground truth, columns predictions. A class absent from both ground truth and prediction has
NaN scores and is left out of every mean. A class in the ground truth that is never predicted has
precision 0 (scikit-learn's ``zero_division=0``), not NaN: a collapsed model that predicts one class
must not score a high mean precision over the classes it never predicts.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch

from trainables.data.base import IGNORE_INDEX


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def scores_from_matrix(matrix: np.ndarray) -> dict[str, float | list[float]]:
    """Scores of a ``(C, C)`` count matrix (rows ground truth, columns prediction), as plain Python values.

    ``pixel_acc`` = trace / total; per class ``recall`` = tp / gt, ``precision`` = tp / predicted (0 for a
    class in the ground truth but never predicted), ``iu`` = tp / (gt + predicted - tp), ``f1`` = 2 tp /
    (gt + predicted) (equal to 2PR / (P + R) where both are defined; 0 for a class present but never
    predicted); ``mean_acc`` = ``mean_recall`` and ``mean_iu``, ``mean_precision``, ``mean_f1`` are
    means over the classes in the ground truth or the prediction (NaN, the scores of a class in
    neither, skipped); ``fw_iu`` weighs each class's IU by its ground-truth frequency.
    """
    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or (counts < 0).any():
        raise ValueError(f"matrix must be a square (C, C) array of counts >= 0, got shape {counts.shape}")
    counts = counts.astype(np.float64)
    tp = np.diag(counts)
    ground_truth = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    total = counts.sum()
    recall = _ratio(tp, ground_truth)
    # zero_division=0: a class in the ground truth that is never predicted has precision 0 (tp = 0).
    precision = np.where((predicted == 0) & (ground_truth > 0), 0.0, _ratio(tp, predicted))
    iu = _ratio(tp, ground_truth + predicted - tp)
    f1 = _ratio(2 * tp, ground_truth + predicted)
    frequency = ground_truth / total if total > 0 else np.zeros_like(ground_truth)
    seen = frequency > 0
    return {
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": _nanmean(recall),
        "mean_iu": _nanmean(iu),
        "fw_iu": float((frequency[seen] * iu[seen]).sum()) if total > 0 else float("nan"),
        "iu": iu.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "mean_precision": _nanmean(precision),
        "mean_recall": _nanmean(recall),
        "mean_f1": _nanmean(f1),
    }


class ConfusionMatrix:
    """Accumulates a ``(C, C)`` int64 count matrix (rows ground truth, columns prediction) over batches."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Count predicted class ids against targets of any equal shape (e.g. ``(N, H, W)``).

        Targets equal to ``ignore_index`` or outside 0..C-1 are skipped; a counted prediction outside
        0..C-1 is a ValueError. Torch tensors are counted on their own device.
        """
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(
                f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        c = self.num_classes
        if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
            device = pred.device if isinstance(pred, torch.Tensor) else target.device
            pred = torch.as_tensor(pred, device=device).reshape(-1).long()
            target = torch.as_tensor(target, device=device).reshape(-1).long()
            lib = torch
        else:
            pred = np.asarray(pred).reshape(-1).astype(np.int64)
            target = np.asarray(target).reshape(-1).astype(np.int64)
            lib = np
        keep = (target != self.ignore_index) & (target >= 0) & (target < c)
        pred, target = pred[keep], target[keep]
        bad = (pred < 0) | (pred >= c)
        if bad.any():
            raise ValueError(f"pred values must be in 0..{c - 1}, got {lib.unique(pred[bad]).tolist()}")
        counts = lib.bincount(target * c + pred, minlength=c * c).reshape(c, c)
        self.matrix += counts.cpu().numpy() if lib is torch else counts

    def compute(self) -> dict[str, float | list[float]]:
        """The scores of :func:`scores_from_matrix` for everything counted so far."""
        return scores_from_matrix(self.matrix)

    def reset(self) -> None:
        """Forget every count (e.g. between evaluation epochs)."""
        self.matrix[:] = 0

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts (e.g. from another worker) to this matrix; returns ``self``."""
        if not isinstance(other, ConfusionMatrix) or other.num_classes != self.num_classes:
            raise ValueError(f"other must be a ConfusionMatrix with num_classes={self.num_classes}, got {other!r}")
        self.matrix += other.matrix
        return self

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, counted={int(self.matrix.sum())})"
