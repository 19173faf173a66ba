"""End-to-end studies on a local Ray: every preset at smoke size, MLflow runs, parquet files, resume,
and the command line's refusals of bad input before Ray starts."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from search_spaces import PRESETS
from search_spaces.base import TRAINABLE_CONFIGS
from study.export import HISTORY_COLUMNS, TRIAL_COLUMNS
from study.run import main
from study.spec import parse_spec

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str) -> Path:
    argv = ["--smoke", "--output", str(tmp_path / "results"), *args]
    assert main(argv) == 0
    spec = parse_spec(argv)
    return spec.study_dir


def _children(study_dir: Path) -> tuple[MlflowClient, list, object]:
    meta = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    runs = client.search_runs([meta["experiment_id"]], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("noisy_transfer.role") == "study"]
    assert len(parents) == 1, "exactly one parent run per study"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, children, parents[0]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_end_to_end_at_smoke_size(preset, tmp_path, ray_local):
    study_dir = _run(tmp_path, "--preset", preset)
    trials = pd.read_parquet(study_dir / "trials.parquet")
    history = pd.read_parquet(study_dir / "history.parquet")
    spec = PRESETS[preset]
    config_keys = [f.name for f in fields(TRAINABLE_CONFIGS[spec.trainable])]

    expected = 4 if spec.is_search else len(spec.trial_configs(json.loads(
        (study_dir / "study.json").read_text())["data"], smoke=True))
    assert len(trials) == expected
    assert set(TRIAL_COLUMNS) <= set(trials.columns)
    assert set(config_keys) - {"pretrain_cache", "data_cache"} <= set(trials.columns)
    assert set(HISTORY_COLUMNS) <= set(history.columns)
    assert (trials["status"] == "TERMINATED").all(), trials[["trial_id", "status", "error"]]
    assert trials["trial_id"].is_unique
    # every trial has its whole history once: epoch_total runs 1..n without gaps or doubles
    for trial_id, rows in history.groupby("trial_id"):
        steps = rows["epoch_total"].tolist()
        assert steps == list(range(1, len(steps) + 1)), (trial_id, steps)
    finished = trials[trials["status"] == "TERMINATED"]
    assert finished["objective"].between(0, 1).all()
    if spec.trainable == "pretrain_finetune":
        assert set(history["phase"]) <= {"pretrain", "finetune"}
        assert "finetune/test_mean_iu" in history
    else:
        assert set(history["phase"]) == {"train"}
        assert "test/mean_f1" in history

    client, children, parent = _children(study_dir)
    assert parent.data.tags["preset"] == preset
    assert {"git_commit", "command", "versions", "data"} <= set(parent.data.tags)
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(trials["trial_id"])
    assert set(trials["mlflow_run_id"]) == {r.info.run_id for r in children}
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["condition"] and run.data.tags["status"] == "FINISHED"
        assert run.data.params["condition"] == run.data.tags["condition"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch_total")]
        assert steps == sorted(set(steps)) and steps[0] == 1, "each step logged once, in order"
        objective = client.get_metric_history(run.info.run_id, "objective")
        assert objective and all(math.isfinite(m.value) for m in objective)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "confusion.json"} <= artifacts


def test_a_study_stopped_with_ctrl_c_resumes_and_has_every_trial_exactly_once(tmp_path):
    """Ctrl-C (SIGINT) after the first trial finishes; --resume runs the rest, reruns nothing."""
    output = tmp_path / "results"
    argv = [sys.executable, str(ROOT / "study" / "run.py"), "--preset", "table1", "--smoke",
            "--max-concurrent", "1", "--output", str(output)]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own Ray, whatever else runs on this machine
    driver = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        # a trial's last report (smoke: its only fine-tuning epoch) has reached Ray's result file
        while not any('"finetune/epoch"' in p.read_text()
                      for p in (output / "ray" / "table1-smoke").glob("*/result.json")):
            assert driver.poll() is None, driver.stdout.read()
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.5)
        driver.send_signal(signal.SIGINT)
        log, _ = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    study_dir = output / "table1-smoke"
    first = pd.read_parquet(study_dir / "trials.parquet")
    done_first = set(first.loc[first["status"] == "TERMINATED", "trial_id"])
    expected = len(PRESETS["table1"].trial_configs("synthetic", smoke=True))
    assert 1 <= len(done_first) < expected, log[-3000:]
    assert "continue with --resume" in log
    assert driver.returncode == 130, "an interrupted study exits 130 (README, Exit codes)"

    resumed = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = pd.read_parquet(study_dir / "trials.parquet")
    history = pd.read_parquet(study_dir / "history.parquet")
    assert after["trial_id"].is_unique and set(first["trial_id"]) <= set(after["trial_id"])
    assert len(after) == expected
    assert (after["status"] == "TERMINATED").all()
    # finished trials were not run again: their objective and history are unchanged
    kept = after.set_index("trial_id").loc[sorted(done_first), "objective"]
    assert kept.tolist() == first.set_index("trial_id").loc[sorted(done_first), "objective"].tolist()
    for trial_id, rows in history.groupby("trial_id"):
        assert rows["epoch_total"].tolist() == list(range(1, len(rows) + 1)), trial_id
    _, children, parent = _children(study_dir)
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(after["trial_id"])
    assert all(r.info.status == "FINISHED" for r in children)


def test_a_second_study_in_the_same_folder_is_refused(tmp_path, ray_local, capsys):
    _run(tmp_path, "--preset", "quick")
    assert main(["--smoke", "--output", str(tmp_path / "results"), "--preset", "quick"]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--data", "voc"], "needs a local root"),
        (["--data", "imagenet:/x"], "--data"),
        (["--data", "voc:/does/not/exist"], "does not exist"),
        (["--folds", "5"], "--folds"),
        (["--folds", "1,x"], "--folds"),
        (["--seeds", "-1"], "--seeds must be a positive integer"),
        (["--num-samples", "0", "--preset", "search"], "--num-samples must be a positive integer"),
        (["--num-samples", "3"], "grid"),
        (["--max-concurrent", "-2"], "--max-concurrent"),
        (["--gpus-per-trial", "-1"], "--gpus-per-trial"),
        (["--sampler", "grid"], "--sampler"),
        (["--preset", "table2", "--data", "voc:/tmp"], "runs on synthetic or cifar"),
        (["--preset", "table2", "--folds", "1"], "no folds"),
        (["--imagenet-weights", "/no/such/file.pt"], "--imagenet-weights"),
    ],
)
def test_bad_command_line_exits_2_with_one_line_before_ray_starts(argv, message, tmp_path, capsys):
    import ray

    was_running = ray.is_initialized()
    assert main([*argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists(), "nothing written"
    assert ray.is_initialized() == was_running, "Ray not started"


def test_list_presets_names_every_preset(capsys):
    assert main(["--list-presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)


def test_analysis_reads_a_real_study_report_notebook_and_mlflow_route_agree(tmp_path, ray_local, monkeypatch):
    """The analysis on a real smoke study: report tables and PNGs, the notebook, MLflow == parquet."""
    import nbformat
    from nbclient import NotebookClient
    from PIL import Image

    from analysis.load import load_study, study_from_mlflow
    from analysis.report import write_report
    from analysis.tables import table1

    study_dir = _run(tmp_path, "--preset", "quick", "--seeds", "2")
    report = write_report(study_dir)
    text = report.read_text()
    for condition in ("RandomWeights", "CompleteLabels"):
        assert condition in text
    pngs = sorted((study_dir / "figures").glob("*.png"))
    assert pngs and all(Image.open(p).size[0] > 100 for p in pngs)

    meta = json.loads((study_dir / "study.json").read_text())
    from_parquet = table1(load_study(study_dir))
    from_mlflow = table1(study_from_mlflow(meta["tracking_uri"], meta["study"]))
    columns = ["condition", "fold", "mean", "std"]
    pd.testing.assert_frame_equal(
        from_parquet[columns].sort_values(columns[:2]).reset_index(drop=True),
        from_mlflow[columns].sort_values(columns[:2]).reset_index(drop=True),
        check_dtype=False, check_categorical=False,
    )
    assert from_parquet["mean"].notna().all()

    monkeypatch.setenv("NOISY_TRANSFER_STUDY_DIR", str(study_dir))
    notebook = nbformat.read(ROOT / "analysis" / "notebooks" / "transferability.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
