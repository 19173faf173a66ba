"""Thesis Table 2: PU classification (CIFAR-10 positives vs CIFAR-100 negatives), per annotation and loss.

Without a CIFAR root the synthetic classification view stands in (classes 1-10 positive, 11-20 negative).
The weighted and bootstrap losses use observed-frequency class weights as in the thesis; the sigmoidal
loss does not (the thesis found weighting it over-balances).
"""

from search_spaces.base import Preset

CONDITIONS = {
    "P+N/CrossEntropyU.": {"setup": "pn", "labelled_fraction": 1.0},
    "50%(P+N)/CrossEntropyU.": {"setup": "pn", "labelled_fraction": 0.5},
    "50%P+U/CrossEntropyU.": {"setup": "pu", "labelled_fraction": 0.5},
    "50%P+U/WeightedNeg.": {"setup": "pu", "labelled_fraction": 0.5, "loss": "weighted_neg", "q": 0.5,
                            "class_weighting": True},
    "50%P+U/SigmoidalNeg.": {"setup": "pu", "labelled_fraction": 0.5, "loss": "sigmoidal_neg",
                             "warmup_epochs": 2},
    "50%P+U/BootstrapHard": {"setup": "pu", "labelled_fraction": 0.5, "loss": "bootstrap_neg",
                             "beta": 0.8, "class_weighting": True, "warmup_epochs": 2},
}

PRESET = Preset(
    name="table2",
    description="Thesis Table 2: CIFAR (or synthetic) PU classification: P+N, 50%(P+N), 50%P+U x 4 losses.",
    trainable="pu_classification",
    conditions=CONDITIONS,
    seeds=3,
    data_kinds=("synthetic", "cifar"),
    smoke_conditions=("50%(P+N)/CrossEntropyU.", "50%P+U/SigmoidalNeg."),
    time_attr="train/epoch",
)
