"""The default: a small Table-1-style study on the synthetic data that runs in minutes on a laptop."""

from search_spaces.base import Preset
from search_spaces.table1 import CONDITIONS

NAMES = ("RandomWeights", "CompleteLabels", "HalfUnsegmented", "SigmoidalLoss", "HalfRandomLabels",
         "BinarizedLabels")

PRESET = Preset(
    name="quick",
    description="Default: Table 1's key conditions on synthetic data, fold 1, 2 seeds (~10 min on 2 CPUs).",
    trainable="pretrain_finetune",
    conditions={name: CONDITIONS[name] for name in NAMES},
    base={"epochs_pretrain": 6, "epochs_finetune": 8, "images_per_class": 40},
    folds=(1,),
    seeds=2,
    data_kinds=("synthetic", "voc"),
    smoke_conditions=("RandomWeights", "CompleteLabels"),
)
