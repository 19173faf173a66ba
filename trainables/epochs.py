"""The one epoch loop of every training phase: pre-training, fine-tuning and PU classification.

Each epoch: train (set the loader's epoch, one pass, step the schedule), run the evaluations due this
epoch, then let the phase turn the epoch's numbers into its report and checkpoint, and report them.
What differs between phases is passed in:

- :class:`EpochTrainer`: the model, optimizer, schedule, loader and the loss for each epoch;
- :class:`Evaluation`: a named scoring and the epochs it runs on (the fine-tuning test set every
  ``eval_interval`` epochs, the pre-training task's test set on the last epoch, ...; a validation
  split scored every epoch or a probe at chosen epochs is one more entry);
- ``record``: :class:`EpochResult` -> ``(report metrics, checkpoint state)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainables.engine import train_one_epoch
from trainables.runtime import Reporter

Scores = dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    """A scoring of the model (``score() -> scores``) run after training on the epochs where ``due``."""

    name: str
    due: Callable[[int], bool]
    score: Callable[[], Scores]


@dataclass(frozen=True)
class EpochResult:
    """What one epoch produced: the 1-based ``epoch``, its mean ``train_loss`` and the ``scores`` of the
    evaluations that ran (by name; an evaluation not due this epoch is absent)."""

    epoch: int
    last: bool
    train_loss: float
    scores: dict[str, Scores]


@dataclass(frozen=True)
class EpochTrainer:
    """Trains one epoch: ``loss_for(epoch)`` is that epoch's loss (a warm-up, then the configured one).

    ``fit`` is the one-pass function (:func:`trainables.engine.train_one_epoch`); a trainable passes the
    name it imported, so a test that patches that name counts the epochs trained.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    loader: Any
    loss_for: Callable[[int], torch.nn.Module]
    device: torch.device
    autocast_dtype: torch.dtype | None
    fit: Callable[..., dict[str, float]] = train_one_epoch

    def __call__(self, epoch: int) -> float:
        """Train epoch ``epoch`` (1-based), step the schedule; return the mean training loss."""
        self.loader.set_epoch(epoch)
        stats = self.fit(self.model, self.loader, self.loss_for(epoch), self.optimizer, device=self.device,
                         autocast_dtype=self.autocast_dtype)
        if self.scheduler is not None:
            self.scheduler.step()
        return stats["train_loss"]


def run_epochs(
    train: Callable[[int], float],
    evaluations: Sequence[Evaluation],
    record: Callable[[EpochResult], tuple[dict[str, Any], dict[str, Any] | None]],
    report: Reporter,
    *,
    done: int,
    epochs: int,
) -> dict[str, Any] | None:
    """Run epochs ``done + 1 .. epochs``; each one is reported as ``report(*record(result))``.

    Returns the last report's metrics (None when nothing was left to run).
    """
    metrics = None
    for epoch in range(done + 1, epochs + 1):
        train_loss = train(epoch)
        scores = {evaluation.name: evaluation.score() for evaluation in evaluations if evaluation.due(epoch)}
        metrics, state = record(EpochResult(epoch, epoch == epochs, train_loss, scores))
        report(metrics, state)
    return metrics


def warmup_then(warmup: torch.nn.Module, main: torch.nn.Module, warmup_epochs: int) -> Callable[[int], torch.nn.Module]:
    """``loss_for(epoch)``: ``warmup`` for epochs ``1 .. warmup_epochs``, ``main`` after (thesis 4)."""
    return lambda epoch: warmup if epoch <= warmup_epochs else main


def every(interval: int, last: int) -> Callable[[int], bool]:
    """Due on epoch ``last`` and every ``interval`` epochs counted back from it."""
    return lambda epoch: (last - epoch) % interval == 0


def on_epochs(*chosen: int) -> Callable[[int], bool]:
    """Due on the ``chosen`` epochs only."""
    wanted = frozenset(chosen)
    return lambda epoch: epoch in wanted
