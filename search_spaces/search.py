"""The Optuna search the product exists for: which loss wins transferability back at which noise level.

Scientific parameters: the unsegmented fraction and the misclassification rate (each over [0, 0.9])
and the loss. Nuisance parameters, tuned jointly: the loss's own parameter (define-by-run: q only
for the weighted loss, beta for bootstrap, gamma for focal, prior for nnPU), warmup epochs and the
pre-training learning rate. ASHA stops poor fine-tunings early on the ``finetune/epoch`` clock.
"""

from typing import Any, Mapping

from search_spaces.base import Preset

LOSSES = ("ce", "weighted_neg", "sigmoidal_neg", "bootstrap_neg", "focal", "nnpu")


def space(trial: Any, constants: Mapping[str, Any]) -> None:
    """Define-by-run Optuna space (``trial`` is an optuna.Trial; ``constants`` the fixed config)."""
    trial.suggest_float("noise_unsegment", 0.0, 0.9)
    trial.suggest_float("noise_misclassify", 0.0, 0.9)
    loss = trial.suggest_categorical("loss", LOSSES)
    if loss == "weighted_neg":
        trial.suggest_float("q", 0.05, 1.0)
    elif loss == "bootstrap_neg":
        trial.suggest_float("beta", 0.0, 1.0)
    elif loss == "focal":
        trial.suggest_float("gamma", 0.0, 5.0)
    elif loss == "nnpu":
        trial.suggest_float("prior", 0.05, 0.5)
    trial.suggest_int("warmup_epochs", 0, min(3, constants["epochs_pretrain"] - 1))
    trial.suggest_float("lr_pretrain", 3e-4, 1e-2, log=True)


PRESET = Preset(
    name="search",
    description="Optuna search over noise rates x loss (+ its nuisance params), TPE + ASHA.",
    trainable="pretrain_finetune",
    base={"class_weighting": True, "label_transform": "binarize"},
    folds=(1,),
    seeds=1,
    optuna_space=space,
    num_samples=32,
)
