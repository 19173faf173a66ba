"""Fine-tuning reports on epochs that were not evaluated carry NaN test scores (eval_interval > 1):
MLflow logs no value for them, the parquet history keeps them as NaN, the trial row the last score."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd

from study.export import _history


def _reports() -> list[dict]:
    # eval_interval=2 over 3 fine-tuning epochs: epochs 1 and 3 evaluated, epoch 2 not.
    scores = {1: 0.4, 2: math.nan, 3: 0.6}
    return [{"phase": "finetune", "finetune/epoch": e, "epoch_total": e, "finetune/train_loss": 1.0 / e,
             "finetune/test_mean_iu": scores[e], "objective": 0.4 if e < 3 else 0.5, "timestamp": e}
            for e in (1, 2, 3)]


def test_mlflow_logs_no_value_for_an_epoch_that_was_not_evaluated(tmp_path):
    from mlflow.tracking import MlflowClient

    from study.tracking import MLflowTrials

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("interval")
    parent = client.create_run(experiment).info.run_id
    callback = MLflowTrials(uri, experiment, parent, tmp_path / "artifacts")
    trial = SimpleNamespace(trial_id="t1", config={"condition": "C", "seed": 0})
    for result in _reports():
        callback.on_trial_result(0, [], trial, result)
    run_id = callback.run_id(trial)
    logged = {m.step: m.value for m in client.get_metric_history(run_id, "finetune/test_mean_iu")}
    assert logged == {1: 0.4, 3: 0.6}
    assert [m.step for m in client.get_metric_history(run_id, "finetune/train_loss")] == [1, 2, 3]


def test_parquet_history_keeps_the_nan_row():
    trial = SimpleNamespace(trial_id="t1", config={"condition": "C", "seed": 0, "fold": 1})
    history = _history(pd.DataFrame(_reports()), trial, "s")
    assert history["epoch"].tolist() == [1, 2, 3]
    values = history["finetune/test_mean_iu"].tolist()
    assert values[0] == 0.4 and math.isnan(values[1]) and values[2] == 0.6
