"""The default: Table 1's key conditions on the synthetic data, sized to show its main effects in minutes.

The data is the benchmark with textured clutter (fragments with the objects' textures and colours), so
no low-level cue gives objectness away and a binarized pre-training has to learn shape, as on VOC
(issue 15; ``trainables.data.cues``). Sizes chosen with ``benchmarks/transfer_sanity.py``: 48 px images
cost 0.56 of 64 px ones; 24 pre-training epochs bring CompleteLabels' validation curve to its plateau
and 30 fine-tuning epochs bring both the pretrained and the random-init curves to theirs (README,
"What the default study shows").
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
