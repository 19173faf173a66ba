"""A transfer probe: how well pre-training's g transfers *now*, cheaply enough to ask during pre-training.

Self-supervised pre-training runs watch a linear probe or a kNN monitor on frozen features; this is the
segmentation version. At a probe epoch, g (the pre-training model's ``features``) is frozen and run once
over the fine-tuning training and validation images; a fresh head h, shaped as fine-tuning's, is trained
on the cached training features for ``PROBE_STEPS`` full-batch Adam steps and scored on the validation
features (mean IU over the 5 fine-tuning classes and background). Nothing here reads the test split.

The probe is a pure function of g's weights, the two splits and the seed: a resumed trial reports the
probe values an uninterrupted one does. Its schedule is :func:`rung_epochs`, the epochs where the search's
ASHA compares trials, so the scheduler compares probe with probe at the same pre-training epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from trainables.data.base import IGNORE_INDEX
from trainables.metrics import ConfusionMatrix
from trainables.models import SplitModel, reset_head

PROBE_STEPS = 60  # full-batch Adam steps of the fresh head (the probe's fixed budget)
PROBE_LR = 0.02  # a 1x1 head on frozen features tolerates a large step; 60 steps converge at this rate
# ASHA's rungs on the search's one clock (epoch_total): FIRST_RUNG * RUNG_FACTOR^k epochs. The probes are
# the rungs inside pre-training. The first rung was epoch 3 until benchmarks/early_stopping.py measured its
# probe's Spearman correlation with the final validation objective at 0.27 over 12 trials (epoch 9: 0.50):
# at epoch 3 g has barely left its random start, so the first rung moved later, to 5 (rungs 5, 15, 45...).
FIRST_RUNG = 5
RUNG_FACTOR = 3


def rung_epochs(max_t: int, first: int = FIRST_RUNG, factor: int = RUNG_FACTOR) -> tuple[int, ...]:
    """The rungs of Ray's ASHA with ``grace_period=first``, ``reduction_factor=factor`` and ``max_t``,
    ascending, computed as Ray's ``_Bracket`` computes them (``first * factor**k`` for
    ``k < int(log(max_t / first) / log(factor) + 1)``), so a probe epoch is exactly a rung."""
    if first < 1 or factor < 2 or max_t < first:
        raise ValueError(f"rungs need 1 <= first <= max_t and factor >= 2, got first={first}, factor={factor}, "
                         f"max_t={max_t}")
    count = int(math.log(max_t / first) / math.log(factor) + 1)
    return tuple(first * factor**k for k in range(count))


def probe_epochs(epochs_pretrain: int, epochs_finetune: int) -> tuple[int, ...]:
    """The pre-training epochs at which a trial with the probe on runs it: the rungs inside pre-training
    (on the clock ``epoch_total`` that counts pre-training then fine-tuning epochs)."""
    total = epochs_pretrain + epochs_finetune
    return tuple(e for e in rung_epochs(total) if e <= epochs_pretrain) if total >= FIRST_RUNG else ()


@torch.no_grad()  # not inference_mode: the probe's head trains on these tensors
def frozen_features(model: SplitModel, loader: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """g's outputs ``(N, C, h, w)`` float32 and the labels ``(N, H, W)`` int64 of every batch of
    ``loader``, in eval mode (batch-norm running statistics, no dropout); ``model``'s mode is restored."""
    was_training = model.training
    model.eval()
    try:
        features, labels = zip(*((model.features(inputs).float(), targets) for inputs, targets in loader))
    finally:
        model.train(was_training)
    return torch.cat(features), torch.cat(labels)


def transfer_probe(
    pretrained: SplitModel,
    shape: SplitModel,
    train: Iterable,
    val: Iterable,
    *,
    seed: int,
    steps: int = PROBE_STEPS,
    lr: float = PROBE_LR,
) -> dict[str, float]:
    """Score ``pretrained``'s frozen g on the fine-tuning task: ``{"val_mean_iu", "seconds"}``.

    ``shape``: a model of the fine-tuning task's shape (its head, reset here from ``seed`` before every
    probe, is the probe's h; its resampling maps h's outputs onto the label grid). ``train``/``val``:
    loaders of the fine-tuning training and validation splits, unaugmented. ``seconds``: the probe's wall
    time, features included.
    """
    started = time.perf_counter()
    train_x, train_y = frozen_features(pretrained, train)
    val_x, val_y = frozen_features(pretrained, val)
    reset_head(shape, generator=torch.Generator().manual_seed(seed))
    head = shape.head
    head.train()
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    size = tuple(train_y.shape[-2:])
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(shape.resample(head(train_x), size), train_y, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    head.eval()
    with torch.no_grad():
        logits = shape.resample(head(val_x), tuple(val_y.shape[-2:]))
    matrix = ConfusionMatrix(logits.shape[1])
    matrix.update(logits.argmax(dim=1), val_y)
    return {"val_mean_iu": float(matrix.compute()["mean_iu"]), "seconds": time.perf_counter() - started}

