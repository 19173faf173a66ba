"""Losses for clean positive and noisy negative labels (thesis section 4), as ``nn.Module``s.

Logits are ``(N, C, ...)``, targets ``(N, ...)`` integer; class 0 is the negative / background class and
target 255 is ignored. Let ``p = softmax(logits)`` over C, ``y`` the target and ``yhat = argmax_c p_c``
(an index, so no gradient flows through the choice). Every loss but focal and nnPU keeps the
cross-entropy ``-log p_y`` for ``y > 0`` and changes only the element loss of ``y = 0``. The reduction
is the mean over non-ignored elements; with ``class_weights`` (length C) each element's loss is
multiplied by the weight of its observed class and the sum is divided by the sum of those weights, as
``torch.nn.CrossEntropyLoss`` does. A batch whose targets are all 255 gives a zero loss with a grad_fn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.data.base import IGNORE_INDEX
from trainables.loss_table import LOSSES, PARAMETERS, parameter_names

ClassWeights = torch.Tensor | Sequence[float] | np.ndarray | None

# Loss name -> the parameters make_loss needs for it, read from the one table in trainables.loss_table.
LOSS_PARAMS: dict[str, tuple[str, ...]] = {name: parameter_names(name) for name in LOSSES}


def _check_param(name: str, value: object) -> float:
    """``value`` as a float, if it lies in parameter ``name``'s interval of the loss table."""
    parameter = PARAMETERS[name]
    if not parameter.contains(value):
        raise ValueError(f"{name} must be a number in {parameter.interval}, got {value!r}")
    return float(value)


def _as_class_weights(class_weights: ClassWeights) -> torch.Tensor | None:
    if class_weights is None:
        return None
    weights = torch.as_tensor(class_weights, dtype=torch.float32)
    if weights.ndim != 1 or len(weights) < 1:
        raise ValueError(f"class_weights must be a 1-D length-C sequence, got shape {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"class_weights must be finite and >= 0, got {weights.tolist()}")
    return weights


def _checked_target(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``target`` as int64 with its ignored elements set to class 0, and the ``keep`` mask of the others
    (both ``(N, ...)``), after checking the shapes, the dtype and the class range."""
    if logits.ndim < 2:
        raise ValueError(f"logits must be (N, C, ...), got shape {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target must have shape {expected} to match logits {tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer (long) tensor, got {target.dtype}")
    num_classes = logits.shape[1]
    target = target.long()
    keep = target != ignore_index
    out_of_range = keep & ((target < 0) | (target >= num_classes))
    if out_of_range.any():
        raise ValueError(
            f"target values must be in 0..{num_classes - 1} or {ignore_index} (ignored), "
            f"got {torch.unique(target[out_of_range]).tolist()}"
        )
    return torch.where(keep, target, 0), keep


def _flatten(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities ``(M, C)`` and targets ``(M,)`` of the non-ignored elements."""
    target, keep = _checked_target(logits, target, ignore_index)
    log_p = F.log_softmax(logits, dim=1).movedim(1, -1).reshape(-1, logits.shape[1])
    return log_p[keep.reshape(-1)], target.reshape(-1)[keep.reshape(-1)]


def _weighted_mean(element_loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    total = weights.sum()
    # An all-ignored (or all-zero-weight) batch divides 0 by 1, so the loss is 0 with a grad_fn, not NaN.
    return (weights * element_loss).sum() / torch.where(total > 0, total, torch.ones_like(total))


class _NegativeClassLoss(nn.Module):
    """Cross-entropy for ``y > 0`` and :meth:`negative_loss` for ``y = 0``, reduced as described above."""

    def __init__(self, class_weights: ClassWeights = None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", _as_class_weights(class_weights), persistent=False)

    def negative_loss(self, log_p: torch.Tensor) -> torch.Tensor:
        """The element loss ``(N, ...)`` of elements labelled 0, from their log-probabilities ``(N, C, ...)``."""
        return -log_p[:, 0]

    def element_loss(self, log_p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Every element's loss ``(N, ...)`` from log-probabilities ``(N, C, ...)`` and targets ``(N, ...)``."""
        positive = -log_p.gather(1, target[:, None])[:, 0]
        return torch.where(target == 0, self.negative_loss(log_p), positive)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(N, C, ...)`` logits against ``(N, ...)`` targets."""
        # Every element is scored in place, class axis 1, and an ignored one weighs 0 (its target set to
        # class 0 so that gather stays in range): no compaction of the non-ignored elements into an
        # (M, C) copy, whose boolean indexing and its backward (nonzero, index, a zero-filled
        # index_put) were ~10% of a small_fcn training step at batch 32, 32 px on the CPU.
        target, keep = _checked_target(logits, target, self.ignore_index)
        log_p = F.log_softmax(logits, dim=1)
        if self.class_weights is None:
            weights = keep.to(log_p.dtype)
        else:
            if len(self.class_weights) != logits.shape[1]:
                raise ValueError(
                    f"class_weights has {len(self.class_weights)} entries but logits have C={logits.shape[1]} classes"
                )
            weights = self.class_weights.to(log_p.dtype)[target] * keep
        return _weighted_mean(self.element_loss(log_p, target), weights)


class CrossEntropyLoss(_NegativeClassLoss):
    """Plain cross-entropy: ``-log p_y`` for every element (``y = 0`` included)."""


class WeightedNegativeLoss(_NegativeClassLoss):
    """Weighted negative loss: ``-q * log p_0`` for ``y = 0``, with ``0 < q <= 1`` (q = 1 is cross-entropy)."""

    def __init__(self, q: float, class_weights: ClassWeights = None, ignore_index: int = IGNORE_INDEX):
        super().__init__(class_weights, ignore_index)
        self.q = _check_param("q", q)

    def negative_loss(self, log_p: torch.Tensor) -> torch.Tensor:
        return -self.q * log_p[:, 0]


class SigmoidalNegativeLoss(_NegativeClassLoss):
    """Sigmoidal negative loss: ``1 - p_0`` for ``y = 0``; it saturates (gradient -> 0) for confident
    positive predictions on negative labels (thesis Figure 2)."""

    def negative_loss(self, log_p: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(log_p[:, 0])


class BootstrapNegativeLoss(_NegativeClassLoss):
    """Hard bootstrapping negative loss: ``-beta * log p_0 - (1 - beta) * log p_yhat`` for ``y = 0``,
    with ``0 <= beta <= 1`` (beta = 1 is cross-entropy)."""

    def __init__(self, beta: float, class_weights: ClassWeights = None, ignore_index: int = IGNORE_INDEX):
        super().__init__(class_weights, ignore_index)
        self.beta = _check_param("beta", beta)

    def negative_loss(self, log_p: torch.Tensor) -> torch.Tensor:
        predicted = log_p.detach().argmax(dim=1, keepdim=True)
        return -self.beta * log_p[:, 0] - (1.0 - self.beta) * log_p.gather(1, predicted)[:, 0]


class FocalLoss(_NegativeClassLoss):
    """Focal loss (Lin et al. 2017, beyond the thesis): ``-(1 - p_y)**gamma * log p_y`` for every
    element, ``gamma >= 0`` (gamma = 0 is cross-entropy)."""

    def __init__(self, gamma: float, class_weights: ClassWeights = None, ignore_index: int = IGNORE_INDEX):
        super().__init__(class_weights, ignore_index)
        self.gamma = _check_param("gamma", gamma)

    def element_loss(self, log_p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p_y = log_p.gather(1, target[:, None])[:, 0]
        if self.gamma == 0.0:
            return -log_p_y
        # expm1 keeps 1 - p_y accurate near p_y = 1; the clamp keeps pow's gradient finite at exactly 0.
        one_minus_p = (-torch.expm1(log_p_y)).clamp_min(1e-12)
        return -(one_minus_p**self.gamma) * log_p_y


class NNPULoss(nn.Module):
    """Non-negative PU risk (Kiryo et al. 2017, beyond the thesis), extended to K positive classes.

    Positives are elements with ``y > 0``, unlabelled ones have ``y = 0``. The positive-vs-negative score
    is ``g = logsumexp(z_1..z_K) - z_0`` and the sigmoid loss is ``l(g, +1) = sigmoid(-g)``,
    ``l(g, -1) = sigmoid(g)``. With means over the positive (p) and unlabelled (u) elements::

        R_p^+ = mean_p sigmoid(-g)    R_p^- = mean_p sigmoid(g)    R_u^- = mean_u sigmoid(g)
        R = prior * R_p^+ + max(0, R_u^- - prior * R_p^-) + mean_p CE(z_1..z_K, y)

    where the last term is the cross-entropy among the positive classes 1..K only (0 when K = 1). A
    batch without positives drops the positive means (they count as 0); one without unlabelled
    elements has ``R_u^- = 0``. The ``max`` is the plain non-negative correction, without the
    gradient-ascent step of Kiryo et al.'s Algorithm 1. ``0 < prior < 1`` is the class prior of the
    positives among all elements. Class weights are rejected: the prior already sets the balance.
    """

    def __init__(self, prior: float, class_weights: ClassWeights = None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if class_weights is not None:
            raise ValueError("class_weights are not supported by nnpu: the class prior already balances the risk")
        self.prior = _check_param("prior", prior)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar risk of ``(N, C, ...)`` logits (C >= 2) against ``(N, ...)`` targets."""
        if logits.ndim >= 2 and logits.shape[1] < 2:
            raise ValueError(f"nnpu needs logits with C >= 2 classes (negative + positives), got C={logits.shape[1]}")
        log_p, target = _flatten(logits, target, self.ignore_index)
        # log p_c differs from z_c by a per-element constant, so g is the same computed from log_p.
        g = torch.logsumexp(log_p[:, 1:], dim=1) - log_p[:, 0]
        positive = target > 0
        positive_log_p = F.log_softmax(log_p[positive][:, 1:], dim=1)
        cross_entropy = -positive_log_p.gather(1, target[positive][:, None] - 1)[:, 0]
        risk_p_plus = _mean_or_zero(torch.sigmoid(-g[positive]))
        risk_p_minus = _mean_or_zero(torch.sigmoid(g[positive]))
        risk_u_minus = _mean_or_zero(torch.sigmoid(g[~positive]))
        negative_risk = torch.clamp(risk_u_minus - self.prior * risk_p_minus, min=0.0)
        return self.prior * risk_p_plus + negative_risk + _mean_or_zero(cross_entropy)


def _mean_or_zero(values: torch.Tensor) -> torch.Tensor:
    """Mean of a 1-D tensor, or a zero that keeps the graph when it is empty."""
    return values.sum() / max(len(values), 1)


def frequency_class_weights(counts: Sequence[int] | np.ndarray) -> torch.Tensor:
    """The balancing weights ``total / (C * count_c)`` of the thesis, as a float32 tensor ``(C,)``.

    ``counts`` are the observed label counts per class (length C); a class with count 0 gets weight 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 1:
        raise ValueError(f"counts must be a 1-D length-C array, got shape {counts.shape}")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"counts must be finite and >= 0, got {counts.tolist()}")
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (len(counts) * counts[present])
    return torch.as_tensor(weights, dtype=torch.float32)


_LOSSES = {
    "ce": CrossEntropyLoss,
    "weighted_neg": WeightedNegativeLoss,
    "sigmoidal_neg": SigmoidalNegativeLoss,
    "bootstrap_neg": BootstrapNegativeLoss,
    "focal": FocalLoss,
    "nnpu": NNPULoss,
}


def make_loss(name: str, class_weights: ClassWeights = None, **params: float) -> nn.Module:
    """Build a loss by name (a key of ``LOSS_PARAMS``) with exactly the parameters it takes."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses are {sorted(_LOSSES)}")
    valid = LOSS_PARAMS[name]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"loss {name!r} does not take parameters {unknown}; its parameters are {list(valid)}")
    missing = [param for param in valid if param not in params]
    if missing:
        raise ValueError(f"loss {name!r} needs parameters {missing}")
    return _LOSSES[name](class_weights=class_weights, **params)


def pu_class_weights(counts: Sequence[int] | np.ndarray) -> torch.Tensor:
    """The thesis's PU class weights (section 5.2), a float32 tensor ``(C,)``: the negative class against
    all positive classes as one group, ``w_0 = N / (2 N_0)`` and ``w_k = N / (2 (N - N_0))`` for every
    positive class ``k = 1..C-1``, where ``counts`` are the observed label counts per class (length C >= 2),
    ``N`` their sum and ``N_0 = counts[0]``. 50%P+U on CIFAR (25,000 labelled positives, 75,000 labelled
    0) gives 0.67 and 2, the thesis's "around 0.67 for the negative class and 2 for positive classes".
    A side with no observed label (``N_0 = 0`` or ``N = N_0``) gets weight 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2:
        raise ValueError(f"counts must be a 1-D length-C array with C >= 2 (negative + positives), got shape "
                         f"{counts.shape}")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"counts must be finite and >= 0, got {counts.tolist()}")
    total, negatives = counts.sum(), counts[0]
    positives = total - negatives
    weights = np.empty_like(counts)
    weights[0] = total / (2.0 * negatives) if negatives > 0 else 0.0
    weights[1:] = total / (2.0 * positives) if positives > 0 else 0.0
    return torch.as_tensor(weights, dtype=torch.float32)
