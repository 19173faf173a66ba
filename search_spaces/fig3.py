"""Thesis Figure 3: fine-tuning mean IU against the number of pre-training categories.

Meaningful categories are VOC's superclasses (person, animal, vehicle, indoor) on VOC and the shape
families on the synthetic data; random categorisations group the 15 classes into 4, 7 and 11 at random.
"""

from search_spaces.base import Preset

CONDITIONS = {
    "RandomWeights": {"init": "random"},  # 0 categories
    "Binarized": {"label_transform": "binarize"},  # 1
    "Superclasses": {"label_transform": "superclass"},  # 4 on VOC, 5 shape families on synthetic
    "RandomGroups4": {"label_transform": "random_groups", "num_groups": 4},
    "RandomGroups7": {"label_transform": "random_groups", "num_groups": 7},
    "RandomGroups11": {"label_transform": "random_groups", "num_groups": 11},
    "Exact": {},  # 15
}

PRESET = Preset(
    name="fig3",
    description="Thesis Figure 3: binarised, superclass, random 4/7/11 groups, exact and random weights.",
    trainable="pretrain_finetune",
    conditions=CONDITIONS,
    smoke_conditions=("RandomWeights", "Superclasses", "RandomGroups4"),
)
