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

_INT64 = torch.iinfo(torch.int64)


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
    """Accumulates a ``(C, C)`` int64 count matrix (rows ground truth, columns prediction) over batches.

    Torch batches are counted on their own device and stay there: nothing is copied to the host, and a
    GPU never waits, until ``matrix`` (or ``compute``) is read, once per evaluation.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self._matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        # Device-side counts not yet on the host: C*C cells, one bin for skipped pixels, then the count,
        # smallest and largest of the out-of-range predictions (checked when the counts are read).
        self._pending: torch.Tensor | None = None

    @property
    def matrix(self) -> np.ndarray:
        """The ``(C, C)`` int64 counts so far (copies any device counts to the host first)."""
        self._flush()
        return self._matrix

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Count predicted class ids against targets of any equal shape (e.g. ``(N, H, W)``).

        Targets equal to ``ignore_index`` or outside 0..C-1 are skipped; a counted prediction outside
        0..C-1 is a ValueError. NumPy batches are checked at once; torch batches are counted on their
        own device without a host sync, so theirs is raised when ``matrix`` or ``compute`` is next read,
        and then none of the batches since the last read is counted.
        """
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(
                f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
            self._update_on_device(pred, target)
            return
        c = self.num_classes
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        target = np.asarray(target).reshape(-1).astype(np.int64)
        keep = (target != self.ignore_index) & (target >= 0) & (target < c)
        pred, target = pred[keep], target[keep]
        bad = (pred < 0) | (pred >= c)
        if bad.any():
            raise ValueError(f"pred values must be in 0..{c - 1}, got {np.unique(pred[bad]).tolist()}")
        self._matrix += np.bincount(target * c + pred, minlength=c * c).reshape(c, c)

    def _update_on_device(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        # Only fixed-shape ops (no boolean indexing, no bincount, no .any()): each would read the device.
        c = self.num_classes
        device = pred.device if isinstance(pred, torch.Tensor) else target.device
        if self._pending is not None and self._pending.device != device:
            self._flush()
        if self._pending is None:
            self._pending = torch.zeros(c * c + 4, dtype=torch.int64, device=device)
            self._pending[-2], self._pending[-1] = _INT64.max, _INT64.min
        pred = torch.as_tensor(pred, device=device).reshape(-1).long()
        target = torch.as_tensor(target, device=device).reshape(-1).long()
        if target.numel() == 0:  # a shape, known on the host: amin/amax need an element
            return
        keep = (target != self.ignore_index) & (target >= 0) & (target < c)
        bad = keep & ((pred < 0) | (pred >= c))
        index = torch.where(keep & ~bad, target * c + pred, c * c)  # skipped pixels land in bin C*C
        self._pending.scatter_add_(0, index, torch.ones_like(index))
        stats = self._pending[-3:]
        stats[0] += bad.sum()
        stats[1] = torch.minimum(stats[1], torch.where(bad, pred, _INT64.max).amin())
        stats[2] = torch.maximum(stats[2], torch.where(bad, pred, _INT64.min).amax())

    def _flush(self) -> None:
        """Add the device counts to the host matrix: the one copy (and sync) per evaluation."""
        if self._pending is None:
            return
        pending, self._pending = self._pending.cpu().numpy(), None
        c = self.num_classes
        bad, low, high = (int(v) for v in pending[-3:])
        if bad:
            raise ValueError(f"pred values must be in 0..{c - 1}, got {bad} predictions from {low} to {high}")
        self._matrix += pending[: c * c].reshape(c, c)

    def compute(self) -> dict[str, float | list[float]]:
        """The scores of :func:`scores_from_matrix` for everything counted so far."""
        return scores_from_matrix(self.matrix)

    def reset(self) -> None:
        """Forget every count (e.g. between evaluation epochs)."""
        self._pending = None
        self._matrix[:] = 0

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts (e.g. from another worker) to this matrix; returns ``self``."""
        if not isinstance(other, ConfusionMatrix) or other.num_classes != self.num_classes:
            raise ValueError(f"other must be a ConfusionMatrix with num_classes={self.num_classes}, got {other!r}")
        self.matrix  # noqa: B018 (reading it flushes the device counts)
        self._matrix += other.matrix
        return self

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, counted={int(self.matrix.sum())})"
