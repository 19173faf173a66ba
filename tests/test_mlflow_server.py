"""MLflow done the MLflow way, checked through a real ``mlflow server`` on loopback: a finished smoke
study, moved to another folder and relocated, serves its experiment kind, source tags, the parent run's
summary metrics and artifacts, and every child's artifacts over the REST API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from helpers.ray_cluster import free_port

from study.relocate import ARTIFACTS_DIR, relocate
from study.run import main
from study.spec import parse_spec

pytestmark = pytest.mark.slow


def _get(base: str, route: str, **params: str) -> bytes:
    url = f"{base}{route}?{urllib.parse.urlencode(params)}" if params else f"{base}{route}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def _post(base: str, route: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}{route}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _serve(database: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{database}", "--workers", "1"],
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if _get(base, "/health") == b"OK":
                return server, base
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"mlflow server did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(1)


def test_a_moved_study_serves_its_runs_tags_metrics_and_artifacts_through_a_real_server(
        tmp_path, ray_local, monkeypatch, capsys):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # MLflow's default would put artifacts into ./mlruns here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = ["--preset", "quick", "--smoke", "--output", str(tmp_path / "first")]
    assert main(argv) == 0
    console = capsys.readouterr().out
    study_dir = parse_spec(argv).study_dir
    assert not (workdir / "mlruns").exists() and (study_dir / ARTIFACTS_DIR).is_dir()

    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(study_dir, moved)
    shutil.rmtree(study_dir)  # nothing may still point at the old place
    assert relocate(moved) > 0 and relocate(moved) == 0, "relocating twice changes nothing more"
    trials = pd.read_parquet(moved / "trials.parquet")

    server, base = _serve(moved / "mlflow.db", tmp_path / "server.log")
    try:
        experiment = json.loads(_get(base, "/api/2.0/mlflow/experiments/get-by-name",
                                     experiment_name="quick-smoke"))["experiment"]
        tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        # MLflow 3.17's UI ignores that tag: its workflow type (GenAI overview or the runs table) comes
        # from the URL's workflowType, else a browser-stored default of "genai". The link the study
        # prints carries it, and the UI this server sends reads that parameter and knows that value.
        link = f"#/experiments/{experiment['experiment_id']}/runs?workflowType=machine_learning"
        assert link in console, console[-2000:]
        page = _get(base, "/").decode()
        bundle = _get(base, "/" + page.split('src="')[1].split('"')[0]).decode()
        assert 'get("workflowType")' in bundle and '"machine_learning"' in bundle
        assert experiment["artifact_location"] == (moved / ARTIFACTS_DIR).as_uri()
        runs = _post(base, "/api/2.0/mlflow/runs/search",
                     {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        run_tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
        (parent,) = [r for r in runs if run_tags[r["info"]["run_id"]].get("noisy_transfer.role") == "study"]
        children = [r for r in runs if run_tags[r["info"]["run_id"]].get("mlflow.parentRunId")
                    == parent["info"]["run_id"]]
        assert sorted(run_tags[c["info"]["run_id"]]["trial_id"] for c in children) == sorted(trials["trial_id"])
        for run in [parent, *children]:
            tags = run_tags[run["info"]["run_id"]]
            assert tags["mlflow.source.name"] == "study/run.py" and tags["mlflow.user"]
            assert tags["mlflow.source.git.commit"] == run_tags[parent["info"]["run_id"]]["git_commit"]

        metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
        assert metrics["study/trials_terminated"] == len(trials) and metrics["study/wall_time_s"] > 0
        assert metrics["study/best_objective"] == pytest.approx(trials["objective"].max())
        parent_files = {f["path"] for f in json.loads(_get(
            base, "/api/2.0/mlflow/artifacts/list", run_id=parent["info"]["run_id"]))["files"]}
        assert {"report.md", "trials.parquet", "history.parquet", "study.json"} <= parent_files
        served = _get(base, "/get-artifact", path="trials.parquet", run_uuid=parent["info"]["run_id"])
        assert served == (moved / "trials.parquet").read_bytes()

        for child in children:
            run_id = child["info"]["run_id"]
            files = {f["path"] for f in json.loads(_get(base, "/api/2.0/mlflow/artifacts/list",
                                                        run_id=run_id))["files"]}
            assert {"config.json", "confusion.json"} <= files
            config = json.loads(_get(base, "/get-artifact", path="config.json", run_uuid=run_id))
            assert config["condition"] == run_tags[run_id]["condition"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
