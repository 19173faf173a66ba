"""The default: Table 1's key conditions on the synthetic data, sized to show its main effects in minutes.

The data is the benchmark with textured clutter (fragments with the objects' textures and colours), so
no low-level cue gives objectness away and a binarized pre-training has to learn shape, as on VOC
(issue 15; ``trainables.data.cues``). The sizes were chosen with ``benchmarks/transfer_sanity.py`` at one
thread, as a trial runs (benchmarks/README.md, "transfer_sanity.py"): a pre-training epoch of 900 images
took 3.6 s at 32 px and 7.3-9.1 s at 48 px, two trials side by side; at 15 pre-training epochs
CompleteLabels' validation curve was still climbing, at 20 it is flat; 24 fine-tuning epochs bring the
pretrained and the random-init curves to theirs. On all 4 folds this recipe transfers (15-class
pretrained/random 1.55-1.83 on an AMD EPYC, 1.50-1.82 on an Intel Xeon) and makes foreground/background
a task to learn (0.74-0.76).
Three seeds, so every condition has 3 paired differences (README, "What the default study shows").
"""

from search_spaces.base import Preset
from search_spaces.table1 import CONDITIONS

NAMES = ("RandomWeights", "CompleteLabels", "HalfUnsegmented", "SigmoidalLoss", "HalfRandomLabels",
         "BinarizedLabels")

PRESET = Preset(
    name="quick",
    description="Default: Table 1's key conditions on textured synthetic data, fold 1, 3 seeds "
                "(~9 min on 2 CPUs).",
    trainable="pretrain_finetune",
    conditions={name: CONDITIONS[name] for name in NAMES},
    # VOC keeps the short phases the preset always ran there (a look at the pipeline, not a result).
    recipes={"synthetic": {"clutter": "textured", "image_size": 32, "epochs_pretrain": 20, "epochs_finetune": 24},
             "voc": {"epochs_pretrain": 6, "epochs_finetune": 8}},
    folds=(1,),
    seeds=3,
    data_kinds=("synthetic", "voc"),
    smoke_conditions=("RandomWeights", "CompleteLabels"),
)
