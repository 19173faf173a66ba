"""A resumable Optuna search: Ray Tune's ``OptunaSearch`` that hands orphaned Optuna trials back out.

Ray's ``OptunaSearch`` keeps its Optuna state in private attributes (``_ot_trials``: Ray trial id ->
Optuna trial, ``_ot_study``: the Optuna study, ``_space``: the define-by-run space). Resuming without
drawing extra trials needs them, so every access goes through :class:`OptunaSearchInternals`, which
checks that they exist and are what this code expects. If a Ray upgrade moved them, the study stops
before any trial starts with a message that names the installed Ray and the version tested here,
instead of a resumed search quietly drawing the wrong number of trials.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from study.faults import failure
from study.optuna_search import RAY_TRIAL_ID_ATTR, intermediate_value, trial_state
from study.spec import StudyError

TESTED_RAY = "2.60"  # the Ray version whose OptunaSearch internals this module was written against
# private attribute -> what it must hold (checked once the search is constructed, and after restore)
_ATTRIBUTES = {"_ot_trials": dict, "_ot_study": object, "_space": object, "_completed_trials": set}


class OptunaSearchInternals:
    """The only reader and writer of ``OptunaSearch``'s private state (see module docstring)."""

    def __init__(self, search: Any) -> None:
        import ray

        missing = [name for name, kind in _ATTRIBUTES.items()
                   if name not in vars(search) or not isinstance(vars(search)[name], kind)]
        if missing:
            raise StudyError(
                f"Ray {ray.__version__}'s OptunaSearch no longer has the attribute(s) {', '.join(missing)} "
                f"that resumable search studies rely on (written for Ray {TESTED_RAY}); install "
                f"ray[tune]=={TESTED_RAY}.* or update study/optuna_resume.py for this Ray"
            )
        self.search = search

    def owned_optuna_ids(self) -> set[int]:
        """Optuna ids of the trials some Ray trial owns."""
        return {trial._trial_id for trial in self.search._ot_trials.values()}

    def stored_trials(self) -> list[Any]:
        """Every Optuna trial of the study's storage (FrozenTrial, not copied)."""
        return self.search._ot_study.get_trials(deepcopy=False)

    def reseed_sampler(self) -> None:
        self.search._ot_study.sampler.reseed_rng()

    def told(self, trial_id: str) -> bool:
        """Whether Optuna has been told the end of Ray trial ``trial_id`` (by this search)."""
        return trial_id in self.search._completed_trials

    def mark_told(self, trial_id: str) -> None:
        self.search._completed_trials.add(trial_id)

    def owns(self, trial_id: str) -> bool:
        return trial_id in self.search._ot_trials

    def space_is_define_by_run(self) -> bool:
        return callable(self.search._space)

    def trial(self, trial_id: str) -> Any:
        """The optuna.Trial that Ray trial ``trial_id`` runs."""
        return self.search._ot_trials[trial_id]

    def stored(self, trial_id: str) -> Any:
        """The stored FrozenTrial of Ray trial ``trial_id`` as the database holds it now (state,
        intermediate values), not the copy cached when the search was last pickled."""
        return self.search._ot_study._storage.get_trial(self.trial(trial_id)._trial_id)

    def tell(self, trial_id: str, state: str, value: float | None) -> None:
        import optuna

        self.search._ot_study.tell(self.trial(trial_id), value, state=optuna.trial.TrialState[state])

    def adopt(self, trial_id: str, optuna_id: int) -> None:
        """Give Ray trial ``trial_id`` the stored Optuna trial ``optuna_id`` (its parameters as drawn)."""
        import optuna

        self.search._ot_trials[trial_id] = optuna.trial.Trial(self.search._ot_study, optuna_id)


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch whose restored copy continues its Optuna study without drawing extra trials.

    Optuna stores a trial in ``optuna.db`` the moment Ray asks for it; Ray records the Ray trial only
    at its next experiment snapshot. A driver killed in between leaves an Optuna trial that no Ray
    trial owns (RUNNING forever), and the restored search would ask for a new one in its place: the
    study would end with more Optuna trials than ``--num-samples``, the orphan's parameters drawn
    twice. Restored, this searcher hands those orphans to the next Ray trials first, with whatever
    parameters Optuna had already drawn for them (``suggest_*`` returns a trial's stored values).

    The sampler's random state is restored from that snapshot too, so it would draw the orphans'
    parameters again for the next trials; it is reseeded whenever Optuna holds trials the snapshot
    does not know (a resumed search then draws differently from an uninterrupted one, never twice).
    """

    def __init__(self, *args: Any, time_attr: str, max_t: int, intermediate_metric: str | None = None,
                 **kwargs: Any) -> None:
        """``time_attr``: the scheduler's clock (a report key); ``max_t``: its last value, which a trial
        that ran to the end reached (see :func:`study.optuna_search.trial_state`);
        ``intermediate_metric``: what the scheduler compares at that clock, recorded as Optuna's
        intermediate values (default: ``metric``, the trial's final value). The rest is
        ``OptunaSearch``'s."""
        super().__init__(*args, **kwargs)
        self.time_attr, self.max_t = time_attr, int(max_t)
        self.intermediate_metric = intermediate_metric or self.metric
        OptunaSearchInternals(self)  # refuse an incompatible Ray now, before any trial starts

    def restore(self, checkpoint_path: str) -> None:
        import optuna

        super().restore(checkpoint_path)
        internals = OptunaSearchInternals(self)
        owned = internals.owned_optuna_ids()
        unknown = [trial for trial in internals.stored_trials() if trial._trial_id not in owned]
        self._orphans = [trial._trial_id for trial in unknown if trial.state == optuna.trial.TrialState.RUNNING]
        if unknown:
            internals.reseed_sampler()

    def suggest(self, trial_id: str) -> dict | None:
        orphans = self.__dict__.get("_orphans") or []
        internals = OptunaSearchInternals(self)
        if orphans and internals.space_is_define_by_run() and not internals.owns(trial_id):
            internals.adopt(trial_id, orphans.pop(0))
        config = super().suggest(trial_id)
        if internals.owns(trial_id):  # an adopted orphan gets its new Ray trial id here too
            internals.trial(trial_id).set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """An intermediate value at the scheduler's clock, for reports that carry it and a finite metric
        (never a pre-training report, never NaN). A step already stored (a retried trial re-reports the
        epochs after its last checkpoint) is left as it was."""
        internals = OptunaSearchInternals(self)
        # getattr: a searcher pickled before intermediate_metric existed records its metric
        point = intermediate_value(result, getattr(self, "intermediate_metric", self.metric), self.time_attr)
        if point is None or internals.told(trial_id) or not internals.owns(trial_id):
            return
        stored = internals.stored(trial_id)
        if not stored.state.is_finished() and point[0] not in stored.intermediate_values:
            internals.trial(trial_id).report(point[1], step=point[0])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell Optuna the trial's true end: FAIL, PRUNED or COMPLETE (:func:`trial_state`).

        Ray hands the report the scheduler stopped a trial at only to this call, not to
        ``on_trial_result``: it is recorded as an intermediate value first. An Optuna trial already
        finished (told before a driver was killed, its Ray trial then re-run by ``--resume``) keeps
        its state: Optuna cannot change a finished trial.
        """
        internals = OptunaSearchInternals(self)
        if internals.told(trial_id) or not internals.owns(trial_id):
            return
        if not internals.stored(trial_id).state.is_finished():
            found = failure(result)
            if found is not None:  # ended cleanly for Ray (never retried), but failed: FAIL here
                internals.trial(trial_id).set_user_attr(*found)  # "diverged" or "config_error": the message
                internals.tell(trial_id, "FAIL", None)
            else:
                self.on_trial_result(trial_id, result or {})
                state, value = trial_state(result, error, metric=self.metric, time_attr=self.time_attr,
                                           max_t=self.max_t)
                internals.tell(trial_id, state, value)
        internals.mark_told(trial_id)
