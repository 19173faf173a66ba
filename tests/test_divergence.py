"""A diverged trial is a result, not a crash: the trainable ends it with one report that says so
(``trainables.runtime.ending_on_divergence``), and every writer of trial data records it as failed with
its message (MLflow FAILED with the ``error`` tag and the metric ``diverged``, parquet ERROR with
``diverged`` 1, the console's DIVERGED line). The end-to-end test (runs once, never retried, never
resumed) is tests/test_faults.py's diverging-trial test."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers.nan_loss import nan_after

from study.faults import diverged
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
