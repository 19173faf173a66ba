"""The one checkpoint schema of both trainables, and of the MLflow artifacts written from it.

A checkpoint is what a trial hands to ``report(metrics, state)`` each epoch: :meth:`Checkpoint.to_dict`
is the dict saved (``torch.save``, loaded back with ``weights_only=True`` by
:func:`trainables.runtime.load_state`), :meth:`Checkpoint.from_dict` the dict loaded, so the keys written
are visibly the keys read. A key is present in the dict exactly when its field is not None.

=====================  ===============================================================================
``config``             the trial's config dict (a resumed run refuses a checkpoint of another config)
``phase``              ``"pretrain"`` or ``"finetune"`` (pretrain-finetune), ``"train"`` (PU)
``epoch``              completed epochs of ``phase``
``model``              the whole model's state dict        } the optimisation state: absent from a
``optimizer``          the optimizer's state dict          } finished pre-training, which keeps
``scheduler``          the LR schedule's state dict        } only g (``features``); no scheduler
``rng``                torch's default generator state     } in PU
``history``            per-epoch metrics so far: the pre-training metrics (``pretrain``), the whole
                       reports (``train``)
``cache_hit``          whether the pre-trained g came from the pre-training cache (pretrain-finetune)
``features``           a finished pre-training's g (state dict of ``model.features``)
``samples``            example images with predictions: the noisy pre-training task's (a finished
                       pre-training) or the fine-tuning test set's (the final fine-tuning checkpoint)
``evals``              the fine-tuning test evaluations so far, one dict of scores each
``pretrain_samples``   the finished pre-training's ``samples`` ({} without pre-training)
``confusion``          the last evaluation's ``(C, C)`` confusion counts (final checkpoint only)
``boundary``           the moons classifier's decision boundary (final PU checkpoint only)
``reports``            every report of the trial up to this checkpoint, when run through Ray Tune
                       (``trainables.runtime.carrying_reports``; the export fills gaps in Ray's log from it)
=====================  ===============================================================================
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

Tensors = dict[str, torch.Tensor]
# The keys each kind of checkpoint must have; the kind follows from phase (and features).
REQUIRED = {
    "pretrain": ("model", "optimizer", "scheduler", "rng", "history", "cache_hit"),
    "pretrain finished": ("features", "history", "samples", "cache_hit"),
    "finetune": ("model", "optimizer", "scheduler", "rng", "evals", "pretrain_samples", "cache_hit"),
    "train": ("model", "optimizer", "rng", "history"),
}


@dataclass
class Checkpoint:
    """One trial's checkpoint (see the module docstring for each field)."""

    config: dict[str, Any]
    phase: str
    epoch: int
    model: Tensors | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: torch.Tensor | None = None
    history: list[dict[str, Any]] | None = None
    cache_hit: bool | None = None
    features: Tensors | None = None
    samples: Tensors | None = None
    evals: list[dict[str, float]] | None = None
    pretrain_samples: Tensors | None = None
    confusion: torch.Tensor | None = None
    boundary: Tensors | None = None
    reports: list[dict[str, Any]] | None = None

    @property
    def kind(self) -> str:
        """The key of :data:`REQUIRED` this checkpoint answers to."""
        return "pretrain finished" if self.phase == "pretrain" and self.features is not None else self.phase

    def to_dict(self) -> dict[str, Any]:
        """The dict that is saved: every field that is not None, under its own name."""
        return {field.name: getattr(self, field.name) for field in fields(self)
                if getattr(self, field.name) is not None}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Checkpoint:
        """The checkpoint saved as ``state`` (a :meth:`to_dict` dict). Raises ValueError naming the keys
        when ``state`` has unknown keys, an unknown phase or lacks a key its phase needs."""
        names = {field.name for field in fields(cls)}
        unknown = sorted(set(state) - names)
        if unknown or not {"config", "phase", "epoch"} <= set(state):
            raise ValueError(f"not a noisy-transfer checkpoint: unknown keys {unknown}, keys {sorted(state)}")
        checkpoint = cls(**dict(state))
        if checkpoint.kind not in REQUIRED:
            raise ValueError(f"checkpoint phase must be one of ('pretrain', 'finetune', 'train'), "
                             f"got {checkpoint.phase!r}")
        missing = [key for key in REQUIRED[checkpoint.kind] if state.get(key) is None]
        if missing:
            raise ValueError(f"{checkpoint.kind!r} checkpoint lacks {missing}; it has {sorted(state)}")
        checkpoint.epoch = int(checkpoint.epoch)
        return checkpoint

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
        """Load the optimisation state into ``model``, ``optimizer`` (and ``scheduler``), and set torch's
        default generator to the saved state, so training continues the same random stream."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        if scheduler is not None:
            scheduler.load_state_dict(self.scheduler)
        torch.set_rng_state(self.rng)


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, *,
                   snapshot: bool = False) -> dict[str, Any]:
    """The optimisation fields of a :class:`Checkpoint` (``model``, ``optimizer``, ``scheduler``, ``rng``)
    for ``Checkpoint(**...)``. ``snapshot`` copies the tensors, for a reporter that keeps the state while
    training goes on; without it they are the live tensors (saved at once by Ray's reporter)."""
    model_state = model.state_dict()
    optimizer_state = optimizer.state_dict()
    if snapshot:
        model_state = {key: value.detach().clone() for key, value in model_state.items()}
        optimizer_state = copy.deepcopy(optimizer_state)
    return {"model": model_state, "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict() if scheduler is not None else None, "rng": torch.get_rng_state()}
