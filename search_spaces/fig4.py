"""Thesis Figure 4: decision boundaries of the 2-layer MLP on the moons with half the positives unlabelled."""

from search_spaces.base import Preset

CONDITIONS = {
    "Complete/Logistic": {"setup": "pu", "labelled_fraction": 1.0},
    "HalfUnlabelled/Weighted": {"setup": "pu", "labelled_fraction": 0.5, "loss": "weighted_neg", "q": 0.5},
    "HalfUnlabelled/Sigmoidal": {"setup": "pu", "labelled_fraction": 0.5, "loss": "sigmoidal_neg",
                                 "warmup_epochs": 50},
    "HalfUnlabelled/Bootstrap": {"setup": "pu", "labelled_fraction": 0.5, "loss": "bootstrap_neg",
                                 "beta": 0.8, "warmup_epochs": 50},
}

PRESET = Preset(
    name="fig4",
    description="Thesis Figure 4: moons decision boundaries per loss (complete vs half unlabelled).",
    trainable="pu_classification",
    conditions=CONDITIONS,
    base={"data": "moons", "epochs": 300, "lr": 1e-2, "batch_size": 64},
    seeds=1,
    data_kinds=("moons",),
    time_attr="train/epoch",
)
