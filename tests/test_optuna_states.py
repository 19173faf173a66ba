"""Optuna states that tell the truth: a trial the scheduler stopped is PRUNED with intermediate values at the
scheduler's clock, an errored one FAIL, a finished one COMPLETE with its final objective; Optuna trials and
MLflow child runs name each other, also across --resume.

The rule and the searcher's hooks are checked directly (exact states for given reports); the end-to-end
tests run real small searches through ``study/run.py``'s ``main``: a test preset, smoke-sized with three
fine-tuning epochs, so ASHA (grace period 1, reduction factor 3) stops trials at fine-tuning epoch 1, and a
define-by-run space that makes one trial fail for real (its data cache is a regular file).
"""

from __future__ import annotations

import json
import math
import pickle
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from study.optuna_resume import ResumableOptunaSearch
from study.optuna_search import (
    MLFLOW_RUN_ID_ATTR,
    OPTUNA_NUMBER_TAG,
    RAY_TRIAL_ID_ATTR,
    OptunaLink,
    intermediate_value,
    optuna_storage_url,
    trial_state,
)

CLOCK, METRIC, MAX_T = "finetune/epoch", "objective", 3
RULE = {"metric": METRIC, "time_attr": CLOCK, "max_t": MAX_T}


def finetune(epoch: int, objective: float) -> dict[str, Any]:
    return {"phase": "finetune", CLOCK: epoch, "epoch_total": 1 + epoch, METRIC: objective, "training_iteration": 1 + epoch}


PRETRAIN = {"phase": "pretrain", "pretrain/epoch": 1, "epoch_total": 1, METRIC: math.nan, "training_iteration": 1}


# --- the rule ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("result, error, expected", [
    (finetune(3, 0.4), True, ("FAIL", None)),  # an error wins over a full last report
    (None, True, ("FAIL", None)),
    (None, False, ("PRUNED", None)),  # removed before it reported (stopped while pending)
    (PRETRAIN, False, ("PRUNED", None)),  # stopped before fine-tuning: no clock
    (finetune(1, 0.25), False, ("PRUNED", None)),  # ASHA stopped it at the first rung
    (finetune(2, 0.25), False, ("PRUNED", None)),
    (finetune(3, 0.375), False, ("COMPLETE", 0.375)),
    ({**finetune(3, 0.5), CLOCK: np.int64(3), METRIC: np.float32(0.5)}, False, ("COMPLETE", 0.5)),
    (finetune(4, 0.5), False, ("COMPLETE", 0.5)),  # past max_t counts as the end
    (finetune(3, math.nan), False, ("FAIL", None)),  # ran to the end, measured nothing comparable
    ({k: v for k, v in finetune(3, 0.5).items() if k != METRIC}, False, ("FAIL", None)),
    ({**finetune(3, 0.5), CLOCK: True}, False, ("PRUNED", None)),  # a bool is no clock value
])
def test_the_state_rule_gives_exact_states_and_values(result, error, expected):
    assert trial_state(result, error, **RULE) == expected


@pytest.mark.parametrize("result, expected", [
    (PRETRAIN, None),  # no clock: never a pre-training step
    ({**PRETRAIN, METRIC: 0.3}, None),
    (finetune(2, math.nan), None),  # never NaN
    (finetune(2, math.inf), None),
    ({k: v for k, v in finetune(2, 0.5).items() if k != METRIC}, None),
    (finetune(2, 0.5), (2, 0.5)),  # the step is the clock, not training_iteration (3)
    ({**finetune(2, 0.5), CLOCK: np.int64(2)}, (2, 0.5)),
    (None, None),
])
def test_intermediate_values_are_finite_and_at_the_schedulers_clock(result, expected):
    assert intermediate_value(result, METRIC, CLOCK) == expected


# --- the searcher's hooks, without Ray ----------------------------------------------------------------

def _space(trial: optuna.Trial) -> None:
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)


def _search(tmp_path: Path, name: str = "s") -> ResumableOptunaSearch:
    storage = optuna.storages.RDBStorage(optuna_storage_url(tmp_path))
    return ResumableOptunaSearch(space=_space, metric=METRIC, mode="max", sampler=optuna.samplers.RandomSampler(seed=0),
                                 storage=storage, study_name=name, time_attr=CLOCK, max_t=MAX_T)


def _stored(tmp_path: Path, name: str = "s") -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=optuna_storage_url(tmp_path))
    return {t.user_attrs[RAY_TRIAL_ID_ATTR]: t for t in study.get_trials()}


def test_the_searcher_tells_pruned_complete_and_fail_with_clock_steps(tmp_path):
    search = _search(tmp_path)
    for trial_id in ("stopped", "finished", "errored"):
        search.suggest(trial_id)
        search.on_trial_result(trial_id, PRETRAIN)
    search.on_trial_result("stopped", finetune(1, 0.2))
    # Ray hands the report the scheduler stopped a trial at to on_trial_complete only
    search.on_trial_complete("stopped", result=finetune(2, 0.1))
    for epoch, value in ((1, 0.3), (2, 0.4), (2, 0.9), (3, 0.5)):  # (2, 0.9): a retry re-reports epoch 2
        search.on_trial_result("finished", finetune(epoch, value))
    search.on_trial_complete("finished", result=finetune(3, 0.5))
    search.on_trial_result("errored", finetune(1, 0.6))
    search.on_trial_complete("errored", error=True)
    search.on_trial_complete("errored", error=True)  # a second end is ignored, not an Optuna error

    stored = _stored(tmp_path)
    assert (stored["stopped"].state.name, stored["stopped"].intermediate_values) == ("PRUNED", {1: 0.2, 2: 0.1})
    assert stored["stopped"].value == 0.1, "Optuna gives a pruned trial its last intermediate value"
    assert stored["finished"].state.name == "COMPLETE" and stored["finished"].value == 0.5
    assert stored["finished"].intermediate_values == {1: 0.3, 2: 0.4, 3: 0.5}, "the first report of a step stays"
    assert (stored["errored"].state.name, stored["errored"].value) == ("FAIL", None)
    assert stored["errored"].intermediate_values == {1: 0.6}


def test_a_restored_search_keeps_told_states_and_tells_the_rest(tmp_path):
    search = _search(tmp_path)
    for trial_id in ("a", "b"):
        search.suggest(trial_id)
        search.on_trial_result(trial_id, finetune(1, 0.3))
    search.save(str(tmp_path / "searcher.pkl"))  # Ray's snapshot: neither trial has ended
    search.on_trial_complete("a", result=finetune(1, 0.3))  # told after the snapshot, then the driver dies

    restored = _search(tmp_path)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("a", finetune(2, 0.35))  # Ray re-runs "a" from its checkpoint
    restored.on_trial_complete("a", result=finetune(3, 0.4))
    restored.on_trial_result("b", finetune(1, 0.7))  # already stored: kept as first reported
    restored.on_trial_result("b", finetune(2, 0.8))
    restored.on_trial_complete("b", result=finetune(3, 0.9))
    stored = _stored(tmp_path)
    assert stored["a"].state.name == "PRUNED" and stored["a"].intermediate_values == {1: 0.3}, (
        "a finished Optuna trial keeps its state; Optuna cannot change it")
    assert stored["b"].state.name == "COMPLETE" and stored["b"].value == 0.9
    assert stored["b"].intermediate_values == {1: 0.3, 2: 0.8, 3: 0.9}
    assert len(stored) == 2


def test_an_adopted_orphan_names_its_new_ray_trial(tmp_path):
    search = _search(tmp_path)
    search.suggest("ray-1")
    orphan = optuna.load_study(study_name="s", storage=optuna_storage_url(tmp_path)).ask()
    orphan.suggest_float("lr", 1e-4, 1e-1, log=True)  # drawn for a Ray trial the killed driver never recorded
    orphan.set_user_attr(RAY_TRIAL_ID_ATTR, "killed-driver-trial")
    search._orphans = [orphan._trial_id]
    search.suggest("ray-2")
    stored = _stored(tmp_path)
    assert stored["ray-2"].number == orphan.number and "killed-driver-trial" not in stored


def test_tpe_is_multivariate_grouped_with_a_constant_liar_and_warns_nothing():
    from study.driver import make_sampler

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler = make_sampler("tpe")
    assert sampler._multivariate and sampler._group and sampler._constant_liar
    assert isinstance(make_sampler("random"), optuna.samplers.RandomSampler)


# --- the links --------------------------------------------------------------------------------------

def test_the_link_writes_the_run_id_into_the_running_trial_and_returns_its_number(tmp_path):
    search = _search(tmp_path)
    search.suggest("ray-a")
    search.suggest("ray-b")
    link = OptunaLink(optuna_storage_url(tmp_path), "s")
    assert link.link_run("ray-b", "run-b") == 1
    assert link.link_run("nobody", "run-x") is None
    copy = pickle.loads(pickle.dumps(link))  # Ray pickles callbacks: the link travels without its engine
    assert copy._storage is None and copy.link_run("ray-a", "run-a") == 0
    search.on_trial_complete("ray-a", error=True)
    assert link.link_run("ray-a", "run-late") == 0, "a finished trial still gives its number"
    stored = _stored(tmp_path)
    assert stored["ray-a"].user_attrs[MLFLOW_RUN_ID_ATTR] == "run-a"
    assert stored["ray-b"].user_attrs[MLFLOW_RUN_ID_ATTR] == "run-b"


def test_mlflow_child_runs_carry_the_optuna_trial_number(tmp_path):
    from study.tracking import MLflowTrials

    search = _search(tmp_path)
    search.suggest("ray-a")
    search.suggest("ray-b")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e")
    parent = client.create_run(experiment).info.run_id
    link = OptunaLink(optuna_storage_url(tmp_path), "s")
    callback = MLflowTrials(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment, parent, tmp_path / "art",
                            optuna_link=link)
    runs = {t: callback.run_id(SimpleNamespace(trial_id=t, config={"seed": 0})) for t in ("ray-b", "ray-a")}
    stored = _stored(tmp_path)
    for trial_id, run_id in runs.items():
        assert client.get_run(run_id).data.tags[OPTUNA_NUMBER_TAG] == str(stored[trial_id].number)
        assert stored[trial_id].user_attrs[MLFLOW_RUN_ID_ATTR] == run_id
    fresh = MLflowTrials(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment, parent, tmp_path / "art", optuna_link=link)
    assert fresh.run_id(SimpleNamespace(trial_id="ray-a", config={})) == runs["ray-a"], "found again by tag"


# --- importances ------------------------------------------------------------------------------------

def test_importances_use_complete_trials_and_count_the_others(tmp_path):
    from analysis.stats import optuna_importances

    study = optuna.create_study(study_name="imp", storage=optuna_storage_url(tmp_path), direction="maximize")
    for index in range(6):
        trial = study.ask()
        x = trial.suggest_float("x", 0, 1)
        trial.suggest_float("y", 0, 1)  # a parameter that does not matter
        if index == 4:
            trial.report(100.0, 1)  # a pruned trial's huge truncated value must not count
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif index == 5:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, x)
    frame, note = optuna_importances(SimpleNamespace(folder=tmp_path, name="imp"))
    assert note == "parameter importances from 4 COMPLETE Optuna trial(s); left out: 1 FAIL, 1 PRUNED"
    assert set(frame["param"]) == {"x", "y"} and frame["importance"].sum() == pytest.approx(1.0)
    optuna.create_study(study_name="few", storage=optuna_storage_url(tmp_path)).add_trial(
        optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    empty, few = optuna_importances(SimpleNamespace(folder=tmp_path, name="few"))
    assert empty.empty and few == ("no parameter importances: they need >= 2 COMPLETE trials, optuna.db has "
                                   "0 COMPLETE Optuna trial(s); left out: 1 FAIL")


# --- real searches ----------------------------------------------------------------------------------

def check_search(study_dir: Path, name: str, samples: int, resumed: bool = False) -> dict[str, int]:
    """Every Optuna trial's state, value, intermediate values and links against what Ray and MLflow hold;
    the count of trials per state. ``resumed``: a killed driver's last reports may be missing from Ray's
    result files (history.parquet), never from Optuna, which was told them first."""
    from helpers.optuna_states import EPOCHS_FINETUNE

    trials = pd.read_parquet(study_dir / "trials.parquet").set_index("trial_id")
    history = pd.read_parquet(study_dir / "history.parquet")
    optuna_trials = optuna.load_study(study_name=name, storage=optuna_storage_url(study_dir)).get_trials()
    assert len(optuna_trials) == len(trials) == samples, (len(optuna_trials), trials.index.tolist())
    meta = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    counts: dict[str, int] = {}
    for trial in optuna_trials:
        ray_id = trial.user_attrs[RAY_TRIAL_ID_ATTR]
        row = trials.loc[ray_id]
        finetune_rows = history[(history["trial_id"] == ray_id) & (history["phase"] == "finetune")]
        clock = dict(zip(finetune_rows["epoch"].astype(int), finetune_rows["objective"]))  # the finetune/epoch clock
        where = f"Optuna trial {trial.number} (Ray {ray_id}, {row['status']}, fine-tuning epochs {sorted(clock)})"
        if row["status"] == "ERROR":
            assert trial.state.name == "FAIL" and trial.value is None, where
        elif max(clock) < EPOCHS_FINETUNE:
            assert trial.state.name == "PRUNED", where
        else:
            assert trial.state.name == "COMPLETE" and trial.value == row["objective"] == clock[EPOCHS_FINETUNE], where
        if resumed:
            assert clock.items() <= trial.intermediate_values.items(), where
            assert sorted(trial.intermediate_values) == list(range(1, len(trial.intermediate_values) + 1)), where
        else:
            assert trial.intermediate_values == clock, f"{where}: one value per fine-tuning epoch, never NaN"
        assert all(math.isfinite(v) for v in trial.intermediate_values.values()), where
        assert trial.user_attrs[MLFLOW_RUN_ID_ATTR] == row["mlflow_run_id"], where
        run = client.get_run(row["mlflow_run_id"])
        assert run.data.tags[OPTUNA_NUMBER_TAG] == str(trial.number) and run.data.tags["trial_id"] == ray_id, where
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


@pytest.mark.slow
def test_a_real_search_tells_optuna_pruned_complete_and_fail(tmp_path, ray_local, monkeypatch):
    from helpers.optuna_states import PRESET as preset

    from search_spaces import PRESETS
    from study.run import EXIT_ERROR, main

    monkeypatch.setitem(PRESETS, preset.name, preset)
    output = tmp_path / "results"
    code = main(["--preset", preset.name, "--num-samples", "5", "--max-concurrent", "1", "--output", str(output),
                 "--max-failures", "0"])  # the failing trial fails once, not eleven times
    assert code == EXIT_ERROR, "the failing trial ends in error; the others run"
    counts = check_search(output / preset.name, preset.name, samples=5)
    assert counts.get("FAIL") == 1 and counts.get("PRUNED", 0) >= 1 and counts.get("COMPLETE", 0) >= 1, counts


# The test preset through the real command line, in a subprocess with its own Ray (so it can be killed);
# test_faults.Driver runs it in the repository root.
RESUMABLE_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests")
    from helpers.optuna_states import HEALTHY_PRESET
    from search_spaces import PRESETS
    PRESETS[HEALTHY_PRESET.name] = HEALTHY_PRESET
    from study.run import main
    sys.exit(main(sys.argv[1:]))
""")


def _running_mid_finetune(optuna_db: Path) -> tuple[int, int]:
    """(finished trials, running trials with an intermediate value) in a live study's optuna.db."""
    import sqlite3
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{optuna_db}?mode=ro", uri=True, timeout=1)) as db:
            finished = db.execute("SELECT count(*) FROM trials WHERE state != 'RUNNING'").fetchone()[0]
            running = db.execute("SELECT count(DISTINCT t.trial_id) FROM trials t JOIN trial_intermediate_values v "
                                 "ON v.trial_id = t.trial_id WHERE t.state = 'RUNNING'").fetchone()[0]
            return finished, running
    except sqlite3.Error:  # not created yet, or busy
        return 0, 0


@pytest.mark.slow
def test_a_killed_and_resumed_search_keeps_states_values_and_links(tmp_path):
    from helpers.optuna_states import HEALTHY_PRESET
    from test_faults import Driver, kill_driver

    from study.run import EXIT_ERROR

    NAME = HEALTHY_PRESET.name

    output = tmp_path / "results"
    argv = [sys.executable, "-c", RESUMABLE_DRIVER, "--preset", NAME, "--num-samples", "5", "--max-concurrent", "1",
            "--output", str(output)]
    started: list[Driver] = []
    try:
        started.append(Driver(argv, tmp_path / "first.log"))
        started[0].wait_for(lambda: all(n >= 1 for n in _running_mid_finetune(output / NAME / "optuna.db")),
                            "a told trial followed by one in the middle of fine-tuning")
        kill_driver(started[0])
        before = {t.number: t for t in optuna.load_study(study_name=NAME, storage=optuna_storage_url(
            output / NAME)).get_trials()}
        # The kill as it also lands: mid-copy of Ray's snapshot to the storage, which leaves the experiment
        # state empty (Ray would then forget every trial; study.state_backup puts its last snapshot back)
        (state,) = (output / "ray" / NAME).glob("experiment_state-*.json")
        state.write_bytes(b"")
        started.append(Driver([*argv, "--resume"], tmp_path / "second.log"))
        # 0, or 1 where Ray could not restore the interrupted trial (its snapshot can name a checkpoint that
        # CHECKPOINTS_TO_KEEP = 1 had deleted by the kill): that trial then ends in error, and must be FAIL
        assert started[1].finish() in (0, EXIT_ERROR), f"--resume failed{started[1].tail()}"
        log = started[1].log.read_text()
        assert f"state file(s) {state.name} were cut short" in log and "Failed to restore" not in log, log
    finally:  # every driver and the Ray processes it started, by pid
        for driver in started:
            driver.cleanup()
    counts = check_search(output / NAME, NAME, samples=5, resumed=True)
    assert counts.get("PRUNED", 0) >= 1 and counts.get("COMPLETE", 0) >= 1 and "RUNNING" not in counts, counts
    after = {t.number: t for t in optuna.load_study(study_name=NAME, storage=optuna_storage_url(output / NAME)).get_trials()}
    interrupted = [n for n, t in before.items() if t.state.name == "RUNNING" and t.intermediate_values]
    assert interrupted, f"the kill came mid fine-tuning: {[(n, t.state.name) for n, t in before.items()]}"
    for number, old in before.items():
        new = after[number]
        assert new.params == old.params, number
        if old.state.name != "RUNNING":
            assert (new.state, new.value, new.intermediate_values) == (old.state, old.value, old.intermediate_values)
        assert old.intermediate_values.items() <= new.intermediate_values.items(), number
        if old.state.name != "RUNNING" or number in interrupted:  # drawn and started by the first driver
            assert new.user_attrs == old.user_attrs, f"trial {number}: its Ray trial and MLflow run are the same"


def test_a_diverged_trial_is_fail_with_its_message(tmp_path):
    # A diverged trial returns cleanly (Ray: TERMINATED, never retried) with one report that carries no
    # clock; without the divergence rule it would read as PRUNED.
    import optuna

    from study.optuna_resume import ResumableOptunaSearch

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    search = ResumableOptunaSearch(space=lambda trial: {"x": trial.suggest_float("x", 0, 1)}, metric="objective",
                                   mode="max", storage=storage, study_name="s", time_attr="epoch_total", max_t=6)
    search.suggest("a")
    search.on_trial_result("a", {"epoch_total": 3, "objective": 0.5})
    search.on_trial_complete("a", {"objective": float("nan"), "diverged": 1,
                                   "diverged_message": "non-finite loss at epoch 4, batch 0"})
    trial = optuna.load_study(study_name="s", storage=storage).trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["diverged"] == "non-finite loss at epoch 4, batch 0"
