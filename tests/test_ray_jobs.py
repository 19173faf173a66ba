"""README's Ray Jobs path, end to end on a real two-node cluster with token auth and the dashboard:
``ray job submit --working-dir . -- python study/run.py ...`` as a user types it, once for a smoke study
that succeeds and once for a study whose every trial errors.

What a tool reads: the CLI's exit code (0 / 1), the job's status (SUCCEEDED / FAILED) and the driver's
exit code as Ray recorded it. Where the results land: a relative ``--output`` resolves against
``$NOISY_TRANSFER_HOME`` (set on the nodes, as a cluster operator would), never inside Ray's per-job
copy of the working directory, which Ray deletes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from helpers.ray_cluster import LocalRayCluster, local_two_node_cluster

from study.spec import OUTPUT_HOME_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 400
TAIL_CHARS = 4000


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalRayCluster]:
    """Two nodes with the dashboard; their environment (which a job's driver inherits) names the
    stable results folder and puts this interpreter's ``python`` first on PATH, as a cluster image does."""
    monkeypatch.setenv(OUTPUT_HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with local_two_node_cluster(tmp_path, dashboard=True) as running:
        yield running


def _submit(cluster: LocalRayCluster, submission_id: str, *study_args: str) -> subprocess.Popen:
    """README's command, started: ``ray job submit --address URL --working-dir . -- python study/run.py ...``."""
    ray = Path(sys.executable).with_name("ray")
    argv = [str(ray), "job", "submit", "--address", cluster.dashboard_url, "--submission-id", submission_id,
            "--working-dir", ".", "--", "python", "study/run.py", *study_args]
    return subprocess.Popen(argv, cwd=ROOT, env=dict(cluster.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait(submit: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = submit.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        submit.kill()
        stdout, stderr = submit.communicate()
    return subprocess.CompletedProcess(submit.args, submit.returncode, stdout, stderr)


def _tail(done: subprocess.CompletedProcess) -> str:
    return f"stdout tail:\n{done.stdout[-TAIL_CHARS:]}\nstderr tail:\n{done.stderr[-TAIL_CHARS:]}"


def test_ray_job_submit_succeeds_for_a_smoke_study_and_fails_with_exit_code_1_when_every_trial_errors(
        cluster, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    token = Path(cluster.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    client = JobSubmissionClient(cluster.dashboard_url, headers={"Authorization": f"Bearer {token}"})
    home = tmp_path / "home"

    # VOC data that is not there: accepted (the folder exists), then every trial fails reading it
    empty_voc = tmp_path / "voc"
    empty_voc.mkdir()
    # both at once, to keep the test short: the failing job's trials end in seconds
    submits = [_submit(cluster, "smoke-ok", "--preset", "quick", "--smoke", "--output", "results"),
               _submit(cluster, "all-trials-fail", "--preset", "quick", "--smoke", "--name", "broken",
                       "--data", f"voc:{empty_voc}", "--max-failures", "0", "--output", "results")]
    ok, failing = [_wait(submit) for submit in submits]

    assert ok.returncode == 0, _tail(ok)
    info = client.get_job_info("smoke-ok")
    assert (info.status, info.driver_exit_code) == (JobStatus.SUCCEEDED, 0), info
    trials = pd.read_parquet(home / "results" / "quick-smoke" / "trials.parquet")
    assert len(trials) >= 2 and set(trials["status"]) == {"TERMINATED"}
    assert f"[noisy-transfer] results: {home / 'results' / 'quick-smoke'}" in ok.stdout, _tail(ok)

    assert failing.returncode == 1, _tail(failing)
    info = client.get_job_info("all-trials-fail")
    assert (info.status, info.driver_exit_code) == (JobStatus.FAILED, 1), info
    assert "exit code 1" in (info.message or ""), info.message
    trials = pd.read_parquet(home / "results" / "broken" / "trials.parquet")
    assert len(trials) >= 2 and set(trials["status"]) == {"ERROR"} and trials["error"].str.len().gt(0).all()
    console = client.get_job_logs("all-trials-fail")  # the driver's output, as `ray job logs` shows it
    failed = [line for line in console.splitlines() if line.startswith("[noisy-transfer] FAILED ")]
    assert len(failed) == len(trials) and "ended in error" in console, console[-TAIL_CHARS:]
    # each error is shown once: the FAILED line's traceback, not Tune's own copy as well
    assert console.count("FileNotFoundError: VOC2011 is incomplete") == len(trials), console[-TAIL_CHARS:]
    assert "Trial task failed" not in console, console[-TAIL_CHARS:]

    # Ray's per-job copies of the working directory (on both nodes) hold the code only, no results
    copies = [copy for temp_dir in (cluster.temp_dir, cluster.worker_temp_dir)
              for copy in temp_dir.glob("session_*/runtime_resources/working_dir_files/*")]
    assert copies, "the jobs ran from Ray's copies of --working-dir"
    assert not [path for copy in copies for path in copy.rglob("*.parquet")]
