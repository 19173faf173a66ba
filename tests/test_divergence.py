"""A diverged trial is a result, not a crash: the trainable ends it with one report that says so
(``trainables.runtime.ending_on_divergence``), and every writer of trial data records it as failed with
its message (MLflow FAILED with the ``error`` tag and the metric ``diverged``, parquet ERROR with
``diverged`` 1, the console's DIVERGED line). The end-to-end test (runs once, never retried, never
resumed) is tests/test_faults.py's diverging-trial test."""

from __future__ import annotations

import io
import json
import math
import sys
import textwrap
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers.nan_loss import nan_after
from test_faults import drivers  # noqa: F401  (the fixture, used by name)

from study.faults import diverged, failure
from trainables.engine import Diverged
from trainables.runtime import DIVERGED, DIVERGED_MESSAGE, ending_on_divergence

# Plain SGD with lr * weight_decay = 10 overflows float32 within a few dozen steps: a real divergence
# (tests/test_faults.py uses the same config); batches of 4 make it happen in pre-training epoch 2.
DIVERGES = {"optimizer": "sgd", "lr_pretrain": 10.0, "momentum": 0.9, "weight_decay": 1.0, "batch_size": 4}
MESSAGE = "non-finite loss, training diverged: loss is nan at epoch 2, batch 3"


def test_a_genuinely_diverging_pretraining_ends_with_one_divergence_report_instead_of_raising(tiny_cfg):
    from trainables.pretrain_finetune import run

    reports: list[dict] = []
    states: list = []

    def report(metrics, state):
        reports.append(metrics)
        states.append(state)

    with ending_on_divergence(report):
        run(tiny_cfg(**DIVERGES, epochs_pretrain=3, warmup_epochs=0, pretrain_cache=""), report)
    assert [r.get("epoch_total") for r in reports[:-1]] == [1], "epoch 1 reported, the NaN epoch never"
    last = reports[-1]
    assert set(last) == {"objective", DIVERGED, DIVERGED_MESSAGE} and math.isnan(last["objective"])
    assert last[DIVERGED] == 1 and last[DIVERGED_MESSAGE].startswith("non-finite loss, training diverged: loss is")
    assert "at epoch 2" in last[DIVERGED_MESSAGE], last
    assert states[-1] is None, "the divergence report carries no checkpoint: the last one stays epoch 1's"
    assert diverged(last) == last[DIVERGED_MESSAGE]


def test_a_pu_trial_whose_loss_turns_nan_ends_with_the_divergence_report(monkeypatch):
    from search_spaces.base import smoke_config
    from trainables import pu_classification as pu
    from trainables.config import PUClassificationConfig

    monkeypatch.setattr(pu, "make_loss", nan_after(pu.make_loss, calls=3))  # NaN from the 4th batch
    cfg = PUClassificationConfig(**{**smoke_config("pu_classification"), "epochs": 2, "batch_size": 64})
    reports: list[dict] = []
    with ending_on_divergence(lambda metrics, state: reports.append(metrics)):
        pu.run(cfg, lambda metrics, state: reports.append(metrics))
    assert reports[-1][DIVERGED] == 1 and "loss is nan" in reports[-1][DIVERGED_MESSAGE]
    assert all(DIVERGED not in r for r in reports[:-1])


def test_other_errors_are_not_swallowed():
    for error in (FloatingPointError("not ours"), ValueError("bad"), RuntimeError("CUDA out of memory")):
        with pytest.raises(type(error)):
            with ending_on_divergence(lambda metrics, state: pytest.fail("nothing may be reported")):
                raise error


def test_diverged_reads_only_a_divergence_report():
    assert diverged(None) is None and diverged({}) is None
    assert diverged({"objective": 0.5, "epoch_total": 3}) is None
    assert diverged({DIVERGED: 0, DIVERGED_MESSAGE: "x"}) is None
    assert diverged({DIVERGED: 1, DIVERGED_MESSAGE: MESSAGE}) == MESSAGE
    assert "diverged" in diverged({DIVERGED: 1})  # a message even when the report lost it
    assert issubclass(Diverged, FloatingPointError)  # callers catching FloatingPointError still do


# --- what the driver makes of it ------------------------------------------------------------------


def _reports() -> list[dict]:
    epoch = {"phase": "pretrain", "pretrain/epoch": 1, "epoch_total": 1, "pretrain/train_loss": 2.0,
             "objective": math.nan, "timestamp": 100, "time_total_s": 5.0}
    return [epoch, {"objective": math.nan, DIVERGED: 1, DIVERGED_MESSAGE: MESSAGE, "timestamp": 101,
                    "time_total_s": 6.0}]


def _trial(trial_id: str, last: dict, status: str = "TERMINATED") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"condition": "C", "seed": 0, "fold": 1}, status=status,
                           checkpoint=None, last_result=last, get_error=lambda: None, error_file=None)


def test_mlflow_marks_the_diverged_run_failed_with_the_error_tag_and_the_diverged_metric(tmp_path):
    from mlflow.tracking import MlflowClient

    from study.tracking import MLflowTrials

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("diverged")
    parent = client.create_run(experiment).info.run_id
    callback = MLflowTrials(uri, experiment, parent, tmp_path / "artifacts")
    trial = _trial("t1", _reports()[-1])
    callback.on_trial_start(0, [], trial)
    for result in _reports():
        callback.on_trial_result(0, [], trial, result)
    callback.on_trial_complete(0, [], trial)
    run = client.get_run(callback.run_id(trial))
    assert run.info.status == "FAILED" and run.data.tags["status"] == "FAILED"
    assert run.data.tags["error"] == MESSAGE
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, DIVERGED)] == [(2, 1.0)]
    # the divergence report logged no epoch: epoch 1 only, once
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_total")] == [1]
    assert (tmp_path / "artifacts" / "t1" / "config.json").is_file(), "its config, to see what diverged"


def test_parquet_rows_say_error_and_diverged_and_history_drops_the_divergence_report():
    from study.export import trial_frames

    ok_last = {"phase": "finetune", "epoch_total": 1, "objective": 0.5, "timestamp": 100, "time_total_s": 5.0}
    trials, history = trial_frames(
        [_trial("bad", _reports()[-1]), _trial("ok", ok_last)],
        {"bad": pd.DataFrame(_reports()), "ok": pd.DataFrame([ok_last])},
        study="s", preset="quick", run_ids={}, config_keys=["condition", "seed"])
    rows = trials.set_index("trial_id")
    assert rows.loc["bad", "status"] == "ERROR" and rows.loc["bad", "error"] == MESSAGE
    assert rows.loc["bad", DIVERGED] == 1 and rows.loc["ok", DIVERGED] == 0
    assert rows.loc["ok", "status"] == "TERMINATED" and rows.loc["ok", "error"] == ""
    assert DIVERGED_MESSAGE not in trials.columns
    bad = history.loc[history["trial_id"] == "bad"]
    assert bad["epoch_total"].tolist() == [1] and bad["pretrain/train_loss"].tolist() == [2.0]
    assert DIVERGED not in history.columns


def test_analysis_tables_leave_a_diverged_trial_out():
    from analysis.load import Study
    from analysis.tables import finished_trials
    from study.export import trial_frames

    trials, history = trial_frames([_trial("bad", _reports()[-1])], {"bad": pd.DataFrame(_reports())},
                                   study="s", preset="quick", run_ids={}, config_keys=["condition"])
    study = Study(trials=trials, history=history, meta={})
    assert finished_trials(study).empty


def test_the_console_prints_the_divergence_in_every_mode_and_counts_it_failed():
    from study.progress import StudyProgress

    out = io.StringIO()
    progress = StudyProgress(2, "off", out=out, clock=lambda: 0.0)
    bad, ok = _trial("bad", _reports()[-1]), _trial("ok", {"objective": 0.5})
    progress.on_trial_start(0, [], bad)
    progress.on_trial_complete(0, [], bad)
    assert "DIVERGED bad" in out.getvalue() and MESSAGE in out.getvalue()
    assert "1 finished, 1 failed" in progress.status_line([bad, ok])


# --- a config error inside a trial: a result too ----------------------------------------------------

BAD_BATCH = "invalid trial config: PretrainFinetuneConfig: batch_size"


def test_a_config_the_trainable_refuses_ends_the_trial_with_one_config_error_report(tiny_cfg):
    from trainables.config import PretrainFinetuneConfig
    from trainables.runtime import CONFIG_ERROR, CONFIG_ERROR_MESSAGE, trial_config

    reports: list[tuple[dict, object]] = []
    good = tiny_cfg().to_dict()
    assert trial_config(PretrainFinetuneConfig, good, lambda m, s: reports.append((m, s))) == tiny_cfg()
    assert reports == [], "a valid config reports nothing"
    keys = ("objective", "scheduler/score")
    assert trial_config(PretrainFinetuneConfig, {**good, "batch_size": 0}, lambda m, s: reports.append((m, s)),
                        keys) is None
    ((last, state),) = reports
    assert set(last) == {*keys, CONFIG_ERROR, CONFIG_ERROR_MESSAGE} and all(math.isnan(last[k]) for k in keys)
    assert last[CONFIG_ERROR] == 1 and last[CONFIG_ERROR_MESSAGE].startswith(BAD_BATCH) and state is None
    assert failure(last) == (CONFIG_ERROR, last[CONFIG_ERROR_MESSAGE]) and diverged(last) is None
    assert failure(_reports()[-1]) == (DIVERGED, MESSAGE) and failure({"objective": 0.5}) is None
    with pytest.raises(TypeError):  # not a config error: a bug, raised (and retried) as before
        trial_config(PretrainFinetuneConfig, None, lambda m, s: pytest.fail("nothing may be reported"))


def _config_error_trial(trial_id: str = "bad") -> SimpleNamespace:
    from trainables.runtime import CONFIG_ERROR, CONFIG_ERROR_MESSAGE

    last = {"objective": math.nan, CONFIG_ERROR: 1, CONFIG_ERROR_MESSAGE: f"{BAD_BATCH} must be >= 1, got 0",
            "timestamp": 50, "time_total_s": 0.1}
    return _trial(trial_id, last)


def test_a_config_error_is_failed_in_mlflow_parquet_optuna_and_on_the_console(tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    from study.export import trial_frames
    from study.optuna_resume import ResumableOptunaSearch
    from study.progress import StudyProgress
    from study.tracking import MLflowTrials
    from trainables.runtime import CONFIG_ERROR

    bad = _config_error_trial()
    message = bad.last_result["config_error_message"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("config")
    callback = MLflowTrials(uri, experiment, client.create_run(experiment).info.run_id, tmp_path / "artifacts")
    callback.on_trial_start(0, [], bad)
    callback.on_trial_result(0, [], bad, bad.last_result)
    callback.on_trial_complete(0, [], bad)
    run = client.get_run(callback.run_id(bad))
    assert run.info.status == "FAILED" and run.data.tags["error"] == message
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, CONFIG_ERROR)] == [(1, 1.0)]
    assert client.get_metric_history(run.info.run_id, "epoch_total") == [], "no epoch ran"

    trials, history = trial_frames([bad], {"bad": pd.DataFrame([bad.last_result])}, study="s", preset="quick",
                                   run_ids={}, config_keys=["condition"])
    assert trials.loc[0, ["status", "error", DIVERGED]].tolist() == ["ERROR", message, 0]
    assert history.empty, "its one report is no epoch"

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    search = ResumableOptunaSearch(space=lambda trial: {"x": trial.suggest_float("x", 0, 1)}, metric="objective",
                                   mode="max", storage=storage, study_name="s", time_attr="epoch_total", max_t=6)
    search.suggest("bad")
    search.on_trial_complete("bad", bad.last_result)
    (stored,) = optuna.load_study(study_name="s", storage=storage).trials
    assert stored.state == optuna.trial.TrialState.FAIL and stored.user_attrs[CONFIG_ERROR] == message

    out = io.StringIO()
    progress = StudyProgress(1, "off", out=out, clock=lambda: 0.0)
    progress.on_trial_start(0, [], bad)
    progress.on_trial_complete(0, [], bad)
    assert "CONFIG ERROR bad" in out.getvalue() and message in out.getvalue()
    assert "0 finished, 1 failed" in progress.status_line([bad])


@pytest.mark.slow
def test_a_trial_whose_config_its_trainable_refuses_runs_once_and_a_resume_leaves_it_alone(tmp_path, drivers):
    """The driver validates every config first, so the test changes one behind its back after that (as a
    searcher's draw or a worker running other code could): the trainable refuses it."""
    from test_faults import DRIVER, fault_preset, mlflow_study, ray_trials, reports

    driver_code = DRIVER.replace("from study.run import main", textwrap.dedent("""
        resolve = Preset._resolve
        def _resolve(self, base, name, *args):
            config = resolve(self, base, name, *args)
            return {**config, "batch_size": 0} if name == "BadConfig" else config
        Preset._resolve = _resolve
        from study.run import main"""))
    preset = fault_preset("bad-config", {"BadConfig": {}, "CompleteLabels": {}}, epochs_pretrain=1, epochs_finetune=1)
    output, storage, study = tmp_path / "results", tmp_path / "results" / "ray", "bad-config"
    argv = [sys.executable, "-c", driver_code, json.dumps(preset), "--preset", "bad-config", "--output", str(output),
            "--max-concurrent", "2"]
    driver = drivers(argv, tmp_path / "driver.log")
    assert driver.finish() == 1, f"exit code 1: a trial ended in error{driver.tail()}"
    log = driver.tail()
    trials = pd.read_parquet(output / study / "trials.parquet").set_index("condition")
    bad = trials.loc["BadConfig", "trial_id"]
    ray_trial = ray_trials(storage, study)[bad]
    assert str(ray_trial.status) == "TERMINATED" and ray_trial.num_failures == 0, f"never retried{log}"
    first = reports(storage, study)[bad]
    assert len(first) == 1 and first[0]["config_error"] == 1, f"one start, one report: {first}{log}"
    message = first[0]["config_error_message"]
    assert message.startswith(BAD_BATCH) and "got 0" in message, message
    assert trials.loc["BadConfig", ["status", "error", DIVERGED]].tolist() == ["ERROR", message, 0], log
    assert trials.loc["CompleteLabels", "status"] == "TERMINATED", log
    assert f"CONFIG ERROR {bad}" in log and "Traceback" not in log, log
    client, parent, children = mlflow_study(output / study)
    failed = {r.data.tags["condition"]: r for r in children}["BadConfig"]
    assert failed.info.status == "FAILED" and failed.data.tags["error"] == message, log

    resumed = drivers(argv + ["--resume"], tmp_path / "resume.log")
    assert resumed.finish() == 1, resumed.tail()
    assert f"start  {bad}" not in resumed.tail() and reports(storage, study)[bad] == first, (
        f"the refused trial started again{resumed.tail()}")
