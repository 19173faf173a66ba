"""Thesis Table 1: how each segmentation noise changes transferability, and what wins it back."""

from search_spaces.base import Preset

# Condition -> config overrides. Row groups follow the thesis: baselines, inexhaustive segmentation,
# misclassification, false segmentation.
CONDITIONS = {
    "ImageNetModel": {"init": "imagenet", "model": "fcn_alexnet"},  # only with --imagenet-weights
    "RandomWeights": {"init": "random"},
    "CompleteLabels": {},
    "HalfUnsegmented": {"noise_unsegment": 0.5},
    # Thesis 5.2: the sigmoidal negative loss on binarized labels, after warmup epochs of
    # class-weighted cross-entropy (section 4, "implementation details"), with Table 3's class
    # weighting (0.7:1.75, observed-frequency balancing): 5.2 "applied the sigmoidal negative loss
    # [of Table 3] to the pre-training phase of the experiment ... in Section 5.1" and names no other.
    "SigmoidalLoss": {"noise_unsegment": 0.5, "label_transform": "binarize", "loss": "sigmoidal_neg",
                      "warmup_epochs": 2, "class_weighting": True},
    "AllRandomLabels": {"noise_misclassify": 1.0},
    "HalfRandomLabels": {"noise_misclassify": 0.5},
    "BinarizedLabels": {"noise_misclassify": 1.0, "label_transform": "binarize"},
    "NoFalseSegmented": {"label_transform": "target"},
    "FalseSegmentedHalf": {"label_transform": "target", "noise_false_segment": 0.5},
}

PRESET = Preset(
    name="table1",
    description="Thesis Table 1: every noise condition and baseline, x 4 folds x 3 seeds.",
    trainable="pretrain_finetune",
    conditions=CONDITIONS,
    folds=(1, 2, 3, 4),
    seeds=3,
    smoke_conditions=("RandomWeights", "CompleteLabels", "SigmoidalLoss", "FalseSegmentedHalf"),
)
