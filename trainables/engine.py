"""Plain training and evaluation functions in the style of torchvision's segmentation references: every
dependency (model, loader, loss, optimizer, device) is passed in, nothing is global.

Loaders are :func:`trainables.data.loading.make_loader` loaders: they yield ``(inputs, labels)`` batches
already on the device and know their ``epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from trainables.metrics import ConfusionMatrix


class Diverged(FloatingPointError):
    """Training diverged: a loss became NaN or infinite. Deterministic for a given config (a retry from the
    last checkpoint diverges again), so a trial ends on it as a result, not a crash
    (:func:`trainables.runtime.ending_on_divergence`)."""


def _autocast(device: str | torch.device, dtype: torch.dtype | None) -> torch.autocast:
    # float16 would need loss scaling (a GradScaler) to train; bfloat16 keeps float32's range.
    if dtype not in (None, torch.bfloat16):
        raise ValueError(f"autocast_dtype must be None or torch.bfloat16, got {dtype}")
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def train_one_epoch(
    model: nn.Module,
    loader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    device: str | torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One pass over ``loader`` in training mode, one optimizer step per batch.

    ``loss_fn(logits, labels)`` gets float32 logits (``(N, C, H, W)`` or ``(N, C)``). Returns
    ``{"train_loss": mean loss over batches weighted by batch size}``. Raises :class:`Diverged` (a
    FloatingPointError: "non-finite loss, ...") naming the value, epoch and batch when a loss is NaN or infinite, before
    stepping on it.
    """
    model.train()
    total, count = 0.0, 0
    for batch, (inputs, labels) in enumerate(loader):
        with _autocast(device, autocast_dtype):
            logits = model(inputs)
        loss = loss_fn(logits.float(), labels)
        value = loss.item()
        if not math.isfinite(value):
            # Stop before stepping on it: the weights would turn NaN and every later number with them.
            raise Diverged(f"non-finite loss, training diverged: loss is {value} at epoch "
                                     f"{loader.epoch}, batch {batch}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += value * len(inputs)
        count += len(inputs)
    _check_finite_weights(model, loader.epoch)
    return {"train_loss": total / count if count else math.nan}


def _check_finite_weights(model: nn.Module, epoch: int) -> None:
    """Raise :class:`Diverged` when a weight is NaN or infinite after an epoch's last step: the next loss
    would show it, but after the last epoch only the evaluation would, with NaN outputs scored as if
    they were predictions. One host sync per epoch."""
    params = [p.detach() for p in model.parameters()]
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        raise Diverged(f"non-finite weights, training diverged: a weight is NaN or infinite after epoch {epoch}")


def predict(model: nn.Module, inputs: torch.Tensor, *, device: str | torch.device) -> torch.Tensor:
    """Argmax class predictions (int64, on ``device``): ``(N, H, W)`` for segmentation models, ``(N,)``
    for classifiers. Puts ``model`` in eval mode."""
    model.eval()
    with torch.inference_mode():
        return model(inputs.to(device)).argmax(dim=1)


def _confusion(model: nn.Module, loader: Iterable, num_classes: int, device: str | torch.device) -> ConfusionMatrix:
    """Count every batch of ``loader`` on ``device``; the counts reach the host once, when the caller
    reads ``matrix`` or ``compute()`` (no GPU sync per batch)."""
    matrix = ConfusionMatrix(num_classes)
    for inputs, labels in loader:
        matrix.update(predict(model, inputs, device=device), labels.to(device))
    return matrix


def evaluate_segmentation(model: nn.Module, loader: Iterable, num_classes: int, *, device: str | torch.device) -> dict:
    """Scores of ``model`` on every batch of ``loader`` (255 ignored): the keys of
    ``ConfusionMatrix.compute()`` (pixel_acc, mean_acc, mean_iu, fw_iu, per-class iu, ...) plus
    ``confusion``, the ``(C, C)`` count matrix (rows truth, columns prediction) as nested lists."""
    matrix = _confusion(model, loader, num_classes, device)
    return {**matrix.compute(), "confusion": matrix.matrix.tolist()}


def evaluate_classification(
    model: nn.Module, loader: Iterable, num_classes: int, *, device: str | torch.device
) -> dict:
    """Classification scores over ``loader``: ``acc``, ``mean_precision``, ``mean_recall``, ``mean_f1``
    (means over the classes in the ground truth or the prediction; a class never predicted has
    precision 0, see :mod:`trainables.metrics`) and ``confusion`` (nested lists, rows truth)."""
    matrix = _confusion(model, loader, num_classes, device)
    scores = matrix.compute()
    return {
        "acc": scores["pixel_acc"],
        "mean_precision": scores["mean_precision"],
        "mean_recall": scores["mean_recall"],
        "mean_f1": scores["mean_f1"],
        "confusion": matrix.matrix.tolist(),
    }
