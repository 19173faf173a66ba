"""A real search whose scheduler stops trials during pre-training, on the transfer probe.

Small trials (6 pre-training and 2 fine-tuning epochs: one clock 1..8, one rung at epoch 5, which is the
probe's epoch) with a wide learning-rate range, so some pre-trainings learn far less than others by
epoch 5 and ASHA stops them there.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.load import load_study
from analysis.stats import search_summary
from search_spaces import PRESETS
from search_spaces.base import SEGMENTATION_SMOKE
from search_spaces.search import PRESET as SEARCH
from study.run import main
from study.spec import parse_spec

pytestmark = pytest.mark.slow


def space(trial: Any, constants: Mapping[str, Any]) -> None:
    trial.suggest_float("lr_pretrain", 1e-5, 3e-2, log=True)
    trial.suggest_float("noise_unsegment", 0.0, 0.9)


PROBE_SEARCH = dataclasses.replace(
    SEARCH, name="probe-search", optuna_space=space, num_samples=6,
    base={**SEARCH.base, **SEGMENTATION_SMOKE, "images_per_class": 6, "finetune_val_per_class": 2,
          "epochs_pretrain": 6, "epochs_finetune": 2, "warmup_epochs": 0, "label_transform": "none"},
)


def test_the_scheduler_stops_poor_pretrainings_on_the_probe(tmp_path, ray_local, monkeypatch):
    monkeypatch.setitem(PRESETS, PROBE_SEARCH.name, PROBE_SEARCH)
    argv = ["--preset", PROBE_SEARCH.name, "--max-concurrent", "2", "--output", str(tmp_path / "out")]
    assert main(argv) == 0
    study_dir = parse_spec(argv).study_dir
    trials = pd.read_parquet(study_dir / "trials.parquet").set_index("trial_id")
    history = pd.read_parquet(study_dir / "history.parquet")
    stopped = trials[trials["status"] == "STOPPED"]
    assert len(stopped), f"ASHA stopped no trial: {trials[['status', 'stopped_at']]}"
    assert set(stopped["stopped_at"]) == {"pretrain:5"}  # at the rung, which is the probe epoch
    for trial_id in stopped.index:
        rows = history[history["trial_id"] == trial_id]
        assert set(rows["phase"]) == {"pretrain"} and rows["epoch"].max() == 5
        assert rows.set_index("epoch").loc[5, "probe/val_mean_iu"] == rows.set_index("epoch").loc[5, "scheduler/score"]
    complete = trials[trials["status"] == "TERMINATED"]
    assert len(complete) and (complete["stopped_at"] == "").all()

    # MLflow says so too, and Optuna holds the stopped trials PRUNED at the probe's clock value
    meta = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    for trial_id, row in stopped.iterrows():
        tags = client.get_run(row["mlflow_run_id"]).data.tags
        assert tags["status"] == "STOPPED" and tags["stopped_at"] == "pretrain:5"
    study = optuna.load_study(study_name=meta["study"], storage=f"sqlite:///{study_dir / 'optuna.db'}")
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    for trial_id, row in stopped.iterrows():
        pruned = by_ray[trial_id]
        assert pruned.state == optuna.trial.TrialState.PRUNED
        assert pruned.intermediate_values == pytest.approx({5: row["probe/val_mean_iu"]})
    for trial_id in complete.index:
        assert by_ray[trial_id].state == optuna.trial.TrialState.COMPLETE
        assert by_ray[trial_id].value == pytest.approx(trials.loc[trial_id, "objective"])

    # the tables leave the stopped trials out, and say so
    summary = search_summary(load_study(study_dir))
    assert set(summary.trials["trial_id"]) == set(complete.index)
    assert any(f"{len(stopped)} trial(s) stopped early" in note for note in summary.notes)
