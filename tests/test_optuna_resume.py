"""The adapter over Ray's private OptunaSearch state: it refuses a Ray whose internals moved, and a
restored search hands an orphaned Optuna trial (stored, owned by no Ray trial) to the next Ray trial."""

from __future__ import annotations

import optuna
import pytest
import ray

from study.optuna_resume import TESTED_RAY, OptunaSearchInternals, ResumableOptunaSearch
from study.spec import StudyError


def _space(trial: optuna.Trial) -> None:
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)


def _search(tmp_path, name: str = "s") -> ResumableOptunaSearch:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return ResumableOptunaSearch(space=_space, metric="objective", mode="max",
                                 sampler=optuna.samplers.RandomSampler(seed=0), storage=storage, study_name=name,
                                 time_attr="finetune/epoch", max_t=3)


class _MovedInternals:
    """What an OptunaSearch of a future Ray might look like: the Ray->Optuna trial map renamed."""

    def __init__(self) -> None:
        self._trials_by_ray_id = {}
        self._ot_study = None
        self._space = _space


def test_a_search_whose_private_attributes_moved_is_refused_naming_ray_and_the_fix():
    with pytest.raises(StudyError) as error:
        OptunaSearchInternals(_MovedInternals())
    message = str(error.value)
    assert "_ot_trials" in message and "_ot_study" not in message
    assert f"Ray {ray.__version__}" in message and f"ray[tune]=={TESTED_RAY}" in message


def test_an_attribute_of_the_wrong_kind_is_refused_too():
    fake = _MovedInternals()
    fake._ot_trials = ["not", "a", "dict"]
    with pytest.raises(StudyError, match="_ot_trials"):
        OptunaSearchInternals(fake)


def test_the_installed_ray_passes_the_check_and_an_adopted_orphan_keeps_its_parameters(tmp_path):
    search = _search(tmp_path)
    internals = OptunaSearchInternals(search)
    assert internals.space_is_define_by_run()
    first = search.suggest("ray-1")
    # an Optuna trial asked for directly (a driver killed before Ray recorded its trial): an orphan
    orphan = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").ask()
    orphan_lr = orphan.suggest_float("lr", 1e-4, 1e-1, log=True)
    (owned,) = internals.owned_optuna_ids()
    assert {t._trial_id for t in internals.stored_trials()} == {owned, orphan._trial_id}
    search._orphans = [orphan._trial_id]
    adopted = search.suggest("ray-2")
    assert adopted == {"lr": orphan_lr} != first
    assert internals.owns("ray-2") and search._orphans == []
    assert internals.owned_optuna_ids() == {owned, orphan._trial_id}, "the orphan is owned now; no third Optuna trial was drawn"
    assert len(internals.stored_trials()) == 2
