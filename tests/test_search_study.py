"""A real smoke search through ``study/run.py``: the objective is validation, the report shows test.

The search chooses by ``objective`` (fine-tuning validation mean IU); every table reports the test
split. Checked where a user reads them: the Ray reports exported to history.parquet, the MLflow child
runs, and report.md's best-settings table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.report import write_report
from study.run import main
from study.spec import parse_spec

pytestmark = pytest.mark.slow


def test_a_smoke_search_optimises_validation_and_reports_test(tmp_path: Path, ray_local):
    argv = ["--preset", "search", "--smoke", "--num-samples", "3", "--output", str(tmp_path / "results")]
    assert main(argv) == 0
    study_dir = parse_spec(argv).study_dir
    trials = pd.read_parquet(study_dir / "trials.parquet")
    history = pd.read_parquet(study_dir / "history.parquet")
    finetune = history[history["phase"] == "finetune"].sort_values(["trial_id", "epoch"])
    assert len(trials) == 3 and len(finetune) >= 3

    # objective = the mean of the last k validation mean IUs, in every fine-tuning report
    for trial_id, rows in finetune.groupby("trial_id"):
        k = int(trials.set_index("trial_id").loc[trial_id, "objective_last_k"])
        val = rows["finetune/val_mean_iu"].to_numpy()
        expected = [np.mean(val[max(0, i + 1 - k): i + 1]) for i in range(len(val))]
        assert rows["objective"].to_numpy() == pytest.approx(expected, rel=1e-9, abs=0)
    # validation and test are two measurements, kept apart
    assert not np.allclose(finetune["finetune/val_mean_iu"], finetune["finetune/test_mean_iu"])
    for split in ("val", "test"):
        assert {f"finetune/{split}_{name}" for name in ("mean_iu", "mean_acc", "pixel_acc", "fw_iu")} <= set(history)

    # MLflow holds both series under the same names, with the parquet's values
    meta = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    for row in trials.itertuples():
        logged = {key: [m.value for m in client.get_metric_history(row.mlflow_run_id, key)]
                  for key in ("finetune/val_mean_iu", "finetune/test_mean_iu")}
        rows = finetune[finetune["trial_id"] == row.trial_id]
        assert logged["finetune/val_mean_iu"] == pytest.approx(rows["finetune/val_mean_iu"].tolist())
        assert logged["finetune/test_mean_iu"] == pytest.approx(rows["finetune/test_mean_iu"].tolist())

    # the report's best-settings table names the validation objective and the test score, side by side
    text = write_report(study_dir).read_text()
    best = text[text.index("best settings per noise level and loss"):]
    header = best.splitlines()[next(i for i, line in enumerate(best.splitlines()) if line.startswith("|"))]
    assert "val_objective" in header and "test_score" in header
    assert "chosen on validation, reported on test" in text
    assert not any(math.isnan(v) for v in trials["objective"])
