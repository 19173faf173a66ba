"""Thesis Figure 5: F1 against the labelled fraction of positives, PU vs PN, per loss."""

from search_spaces.base import Preset
from search_spaces.table2 import CONDITIONS as TABLE2
from search_spaces.table2 import RECIPES

# Thesis Figure 5 sweeps 0..100% labelled positives. At 0% the P+U training set holds no positive label
# (every image is labelled 0) and the P+N one is empty, so 0% is a P+U point only.
FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
_LOSSES = {
    "WeightedNeg.": TABLE2["50%P+U/WeightedNeg."],
    "SigmoidalNeg.": TABLE2["50%P+U/SigmoidalNeg."],
    "BootstrapHard": TABLE2["50%P+U/BootstrapHard"],
}

CONDITIONS = {}
for _fraction in FRACTIONS:
    _percent = round(100 * _fraction)
    if _fraction > 0:
        CONDITIONS[f"{_percent}%(P+N)/CrossEntropyU."] = {"setup": "pn", "labelled_fraction": _fraction}
    for _loss, _overrides in _LOSSES.items():
        CONDITIONS[f"{_percent}%P+U/{_loss}"] = {**_overrides, "labelled_fraction": _fraction}

PRESET = Preset(
    name="fig5",
    description="Thesis Figure 5: labelled fraction 0..100% for PU (3 losses), 10..100% for PN, 3 seeds.",
    trainable="pu_classification",
    conditions=CONDITIONS,
    seeds=3,
    data_kinds=("synthetic", "cifar"),
    smoke_conditions=("50%(P+N)/CrossEntropyU.", "50%P+U/WeightedNeg."),
    time_attr="train/epoch",
    recipes=RECIPES,
)
