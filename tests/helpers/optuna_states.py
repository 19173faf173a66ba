"""A small real search preset for the Optuna-state tests: smoke-sized trials with three fine-tuning epochs,
so ASHA (max_t 3, grace period 1, reduction factor 3) stops trials at fine-tuning epoch 1, and one trial
that fails for real (its data cache lies under a regular file, ``os.devnull``: writing the cache raises).

``PRESET`` is it; the space is a module-level function so the searcher pickled
into Ray's experiment state finds it again on ``--resume``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from search_spaces.base import SEGMENTATION_SMOKE, Preset

NAME = "optuna-states"
EPOCHS_FINETUNE = 3
FAILING_TRIAL = 1  # the Optuna trial number that fails
FAILING_DATA_CACHE = f"{os.devnull}/data-cache"  # no folder can be made under a regular file


def space(trial: Any, constants: Mapping[str, Any]) -> dict[str, Any] | None:
    """Two continuous parameters; the failing trial's data cache cannot be created (NotADirectoryError
    inside the trial, after validation, as a real fault would)."""
    space_without_failure(trial, constants)
    if trial.number == FAILING_TRIAL:
        return {"data_cache": FAILING_DATA_CACHE}
    return None


def space_without_failure(trial: Any, constants: Mapping[str, Any]) -> None:
    """The same two parameters, every trial healthy."""
    trial.suggest_float("lr_pretrain", 1e-4, 3e-2, log=True)
    trial.suggest_float("noise_unsegment", 0.0, 0.9)


PRESET = Preset(
    name=NAME, description="Optuna-state test search", trainable="pretrain_finetune",
    base={**SEGMENTATION_SMOKE, "epochs_finetune": EPOCHS_FINETUNE, "warmup_epochs": 0},
    folds=(1,), seeds=1, optuna_space=space, num_samples=5,
)
# For the resume test: no failing trial, whose retries (MAX_FAILURES, left as the product has it) cost time
HEALTHY_PRESET = dataclasses.replace(PRESET, name=f"{NAME}-healthy", optuna_space=space_without_failure)
