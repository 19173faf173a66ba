"""Optuna states that tell the truth, and the links between an Optuna trial, its Ray trial and its MLflow run.

Ray's ``OptunaSearch`` tells Optuna COMPLETE, with the value at the stopping point, for a trial the
scheduler stopped early; it reports intermediate values at Ray's ``training_iteration`` (pre-training
reports and their NaN objective included). TPE, the parameter importances and optuna-dashboard then see
truncated trials as finished ones. The rule here (:func:`trial_state`) decides from what Ray hands the
searcher at a trial's end; :func:`intermediate_value` which reports become intermediate values.

Links, both kept in the stores themselves so they survive ``--resume`` and need no shared object:
the searcher writes the Ray trial id into its Optuna trial's user attributes when it draws it; the
MLflow callback, when it creates a trial's child run, finds that Optuna trial through
:class:`OptunaLink`, writes the run id into it and tags the run with the Optuna trial number.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

RAY_TRIAL_ID_ATTR = "ray_trial_id"  # Optuna user attribute: the Ray trial that ran the Optuna trial
MLFLOW_RUN_ID_ATTR = "mlflow_run_id"  # Optuna user attribute: that Ray trial's MLflow child run
OPTUNA_NUMBER_TAG = "optuna_trial_number"  # MLflow child-run tag: the Optuna trial number (study-wide, 0-based)


def optuna_storage_url(study_dir: Path | str) -> str:
    """The SQLite URL of a study's Optuna storage, ``<study folder>/optuna.db``."""
    return f"sqlite:///{Path(study_dir) / 'optuna.db'}"


def intermediate_value(result: Mapping[str, Any] | None, metric: str, time_attr: str) -> tuple[int, float] | None:
    """(step, value) for Optuna's ``trial.report`` from one Ray report, or None when the report does not
    carry the scheduler's clock ``time_attr`` (pre-training) or ``metric`` is missing or not finite.

    The step is the clock's value (e.g. the fine-tuning epoch), so Optuna's intermediate values line up
    with what the scheduler compared, never with Ray's ``training_iteration``.
    """
    if not result or time_attr not in result or metric not in result:
        return None
    clock, value = result[time_attr], result[metric]
    if not _is_number(clock) or not _is_number(value) or not math.isfinite(float(value)):
        return None
    return int(clock), float(value)


def trial_state(result: Mapping[str, Any] | None, error: bool, *, metric: str, time_attr: str,
                max_t: int) -> tuple[str, float | None]:
    """(Optuna state name, value) of a Ray trial that ended with last report ``result``.

    - ``error`` (Ray gave up on the trial) -> ``FAIL``, no value;
    - no result, or one without the clock, or the clock short of ``max_t`` (the scheduler's last clock
      value: the trial was stopped early, by ASHA or before it started) -> ``PRUNED``, no value (Optuna
      takes the last intermediate value as a pruned trial's value);
    - the clock at ``max_t`` (or past it) with a finite ``metric`` -> ``COMPLETE`` with that value;
    - the clock at ``max_t`` without a finite ``metric`` -> ``FAIL``: it ran to the end but measured
      nothing Optuna may compare (Optuna itself fails a trial told NaN).
    """
    if error:
        return "FAIL", None
    clock = (result or {}).get(time_attr)
    if not _is_number(clock) or clock < max_t:
        return "PRUNED", None
    value = result.get(metric) if result else None
    if not _is_number(value) or not math.isfinite(float(value)):
        return "FAIL", None
    return "COMPLETE", float(value)


def _is_number(value: Any) -> bool:
    """A real number (Python or NumPy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


class OptunaLink:
    """The MLflow side of the Optuna <-> MLflow link: given a Ray trial id and its MLflow run id, write the
    run id into the Optuna trial that Ray trial runs and return that trial's number.

    It holds only the storage URL and the study name (it is pickled with Ray's callbacks); the storage is
    opened on first use. The Optuna trial is found by its ``ray_trial_id`` user attribute, which the
    searcher writes when it draws the trial.
    """

    def __init__(self, storage_url: str, study_name: str) -> None:
        self.storage_url = storage_url
        self.study_name = study_name
        self._storage: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_storage": None}

    @property
    def storage(self) -> Any:
        if self._storage is None:
            import optuna

            self._storage = optuna.storages.RDBStorage(self.storage_url)
        return self._storage

    def link_run(self, ray_trial_id: str, run_id: str) -> int | None:
        """The Optuna trial number of ``ray_trial_id`` (None when no Optuna trial names it); its
        ``mlflow_run_id`` user attribute becomes ``run_id`` while the trial is still running."""
        trial = self.find(ray_trial_id)
        if trial is None:
            return None
        if not trial.state.is_finished() and trial.user_attrs.get(MLFLOW_RUN_ID_ATTR) != run_id:
            self.storage.set_trial_user_attr(trial._trial_id, MLFLOW_RUN_ID_ATTR, run_id)
        return trial.number

    def find(self, ray_trial_id: str) -> Any:
        """The Optuna FrozenTrial whose ``ray_trial_id`` is ``ray_trial_id`` (the newest such), or None."""
        study_id = self.storage.get_study_id_from_name(self.study_name)
        trials = self.storage.get_all_trials(study_id, deepcopy=False)
        named = [t for t in trials if t.user_attrs.get(RAY_TRIAL_ID_ATTR) == ray_trial_id]
        return max(named, key=lambda t: t.number) if named else None
