"""The Optuna search the product exists for: which loss wins transferability back at which noise level.

Scientific parameters: the unsegmented fraction (over [0, 0.9]), the pre-training label transform
(``none``: the 15 classes; ``binarize``: object vs background), the misclassification rate (over
[0, 0.9], drawn only with ``none``: misclassification permutes classes 1..15, and binarizing maps them
all to 1, so with ``binarize`` it could not change a single label) and the loss. Nuisance parameters,
tuned jointly: the loss's own parameter (define-by-run: q only for the weighted loss, beta for
bootstrap, gamma for focal, prior for nnPU, over the ranges of ``trainables.loss_table``), warmup epochs
and the pre-training learning rate. ASHA stops poor trials early on one clock over both phases,
``epoch_total``: its rungs inside pre-training compare the transfer probe (``probe/val_mean_iu`` at that
pre-training epoch, ``trainables.probe``), those in fine-tuning the latest fine-tuning validation mean IU
(``scheduler/score`` carries both), so the costly pre-training of a poor trial is cut short too.
``search_spaces.base.validate_search`` checks, before Ray starts, that every noise parameter drawn
changes the noisy labels.
"""

from typing import Any, Mapping

from search_spaces.base import Preset
from trainables.loss_table import LOSS_NAMES, LOSSES

# The label transforms the search compares (a scientific choice, thesis 5.1 and Figure 3).
LABEL_TRANSFORMS = ("none", "binarize")
NOISE_RANGE = (0.0, 0.9)


def space(trial: Any, constants: Mapping[str, Any]) -> None:
    """Define-by-run Optuna space (``trial`` is an optuna.Trial; ``constants`` the fixed config)."""
    trial.suggest_float("noise_unsegment", *NOISE_RANGE)
    if trial.suggest_categorical("label_transform", LABEL_TRANSFORMS) == "none":
        trial.suggest_float("noise_misclassify", *NOISE_RANGE)  # binarize would erase it: drawn only here
    loss = trial.suggest_categorical("loss", LOSS_NAMES)
    parameter = LOSSES[loss]  # the loss's own parameter and its search range: trainables.loss_table
    if parameter is not None:
        trial.suggest_float(parameter.name, *parameter.searched)
    trial.suggest_int("warmup_epochs", 0, min(3, constants["epochs_pretrain"] - 1))
    trial.suggest_float("lr_pretrain", 3e-4, 1e-2, log=True)


PRESET = Preset(
    name="search",
    description="Optuna search over noise rates x label transform x loss (+ its nuisance params), TPE + ASHA.",
    trainable="pretrain_finetune",
    base={"class_weighting": True, "transfer_probe": True},
    folds=(1,),
    seeds=1,
    optuna_space=space,
    # One clock over both phases (every trial of the search has the same phase lengths): ASHA's rungs
    # inside pre-training compare the transfer probe, those in fine-tuning the latest validation mean IU.
    time_attr="epoch_total",
    scheduler_metric="scheduler/score",
    num_samples=32,
)
