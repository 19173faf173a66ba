"""The one table of losses and the parameter each takes, as plain data (no torch).

Three places need it and read it from here: the trial configs (``trainables.config``: which parameter
a loss needs, its range, before any trial starts), the losses themselves (``trainables.losses.make_loss``
and each loss's argument check) and the search preset (``search_spaces.search``: which parameter to
draw for the loss it drew, and over which range). Adding a loss is one row here plus its ``nn.Module``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real


@dataclass(frozen=True)
class LossParameter:
    """A loss's scalar parameter: its name, the interval it must lie in, and the search's range.

    low/high: the interval's ends; low_open/high_open: whether an end is excluded.
    searched: (low, high) that the search preset draws it from (a nuisance parameter, tuned per loss);
    always inside the interval.
    """

    name: str
    low: float
    high: float
    low_open: bool
    high_open: bool
    searched: tuple[float, float]

    def contains(self, value: object) -> bool:
        """Whether ``value`` is a real number (not a bool) inside the interval."""
        if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
            return False
        above = self.low < value if self.low_open else self.low <= value
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    @property
    def inequality(self) -> str:
        """The interval as a chained inequality, e.g. ``0 < q <= 1``."""
        low, high = (f"{end:g}" for end in (self.low, self.high))
        return f"{low} {'<' if self.low_open else '<='} {self.name} {'<' if self.high_open else '<='} {high}"

    @property
    def interval(self) -> str:
        """The interval in bracket notation, e.g. ``(0.0, 1.0]``."""
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


# Loss name -> the one parameter it takes (None: none). Order is the order configs and --help list them.
LOSSES: dict[str, LossParameter | None] = {
    "ce": None,
    "weighted_neg": LossParameter("q", 0.0, 1.0, low_open=True, high_open=False, searched=(0.05, 1.0)),
    "sigmoidal_neg": None,
    "bootstrap_neg": LossParameter("beta", 0.0, 1.0, low_open=False, high_open=False, searched=(0.0, 1.0)),
    # gamma = inf would zero every loss term; gamma = 0 is cross-entropy.
    "focal": LossParameter("gamma", 0.0, math.inf, low_open=False, high_open=True, searched=(0.0, 5.0)),
    "nnpu": LossParameter("prior", 0.0, 1.0, low_open=True, high_open=True, searched=(0.05, 0.5)),
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)
# Parameter name -> its row; every loss parameter is a config field of the same name.
PARAMETERS: dict[str, LossParameter] = {p.name: p for p in LOSSES.values() if p is not None}


def parameter_names(loss: str) -> tuple[str, ...]:
    """The parameters loss ``loss`` takes: ``()`` or a 1-tuple."""
    parameter = LOSSES[loss]
    return () if parameter is None else (parameter.name,)


def losses_using(parameter: str) -> tuple[str, ...]:
    """The losses that take ``parameter``."""
    return tuple(name for name, p in LOSSES.items() if p is not None and p.name == parameter)
