"""Thesis Table 3: foreground/background segmentation with 50% of objects unsegmented, per loss.

Scored on the pre-training task's test split (``pretrain/test_*``); the class weighting of the thesis
(0.7:1.75, i.e. observed-frequency balancing) is on for every row.
"""

from search_spaces.base import Preset

_BINARY = {"label_transform": "binarize", "class_weighting": True}
CONDITIONS = {
    "Complete/CrossEntropy": {**_BINARY},
    "50%Unseg./CrossEntropy": {**_BINARY, "noise_unsegment": 0.5},
    "50%Unseg./WeightedNeg.": {**_BINARY, "noise_unsegment": 0.5, "loss": "weighted_neg", "q": 0.5},
    "50%Unseg./SigmoidalNeg.": {**_BINARY, "noise_unsegment": 0.5, "loss": "sigmoidal_neg",
                                "warmup_epochs": 2},
}

PRESET = Preset(
    name="table3",
    description="Thesis Table 3: binary segmentation, 50% unsegmented, CE vs weighted vs sigmoidal loss.",
    trainable="pretrain_finetune",
    conditions=CONDITIONS,
    folds=(1, 2, 3, 4),
    seeds=2,
    smoke_conditions=("50%Unseg./CrossEntropy", "50%Unseg./SigmoidalNeg."),
)
