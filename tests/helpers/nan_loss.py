"""A ``make_loss`` whose losses turn NaN after a number of batches: a deterministic divergence."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def nan_after(real_make_loss: Callable[..., torch.nn.Module], calls: int) -> Callable[..., torch.nn.Module]:
    """A replacement for ``make_loss``: its losses are the real ones for the first ``calls`` batches
    (counted over every loss it made: warm-up and main loss alike), NaN from then on."""
    count = [0]

    class NanAfter(torch.nn.Module):
        def __init__(self, loss: torch.nn.Module) -> None:
            super().__init__()
            self.loss = loss

        def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            count[0] += 1
            value = self.loss(logits, labels)
            return value * math.nan if count[0] > calls else value

    return lambda *args, **kwargs: NanAfter(real_make_loss(*args, **kwargs))
