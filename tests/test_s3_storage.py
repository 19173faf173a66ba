"""``--storage s3://bucket/prefix`` against a real S3-compatible server on loopback (moto's standalone
server, one per test, killed by pid even when the test fails): a smoke study keeps Ray's experiment
state and checkpoints in the bucket and no secret anywhere; a driver SIGKILLed mid-study resumes from
the bucket; a trial whose worker is SIGKILLed is retried from its checkpoint in the bucket.

The studies reach the server the way a user's would: through the AWS environment variables that pyarrow's
S3 filesystem (what Ray Tune's storage uses) reads, ``AWS_ENDPOINT_URL`` among them. The drivers, and the
helpers that kill them and their workers, are test_faults.py's.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from helpers.ray_cluster import free_port
import test_faults as faults
from test_faults import (  # noqa: F401  (drivers: the fixture, used by name)
    ROOT,
    assert_every_epoch_once,
    drivers,
    fault_preset,
    kill_driver,
    mlflow_study,
    preset_argv,
    trial_actors,
)

pytestmark = pytest.mark.slow
BUCKET, PREFIX = "noisy-transfer", "studies"
SECRET = "s3-secret-key-planted-by-the-test"  # AWS_SECRET_ACCESS_KEY of every study here
API_KEY = "another-planted-api-key-value"  # an unrelated credential in the environment
CHECKPOINT_KEY = re.compile(rf"^{PREFIX}/[^/]+/(?P<trial>[^/]+)/checkpoint_(?P<index>\d+)/")


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A boto3 client of a fresh moto server holding an empty bucket BUCKET; every driver this test
    starts gets the AWS variables that point pyarrow at it."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(tmp_path / "moto.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(server, port, tmp_path / "moto.log")
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test-access-key-id",
               "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1", "NT_TEST_API_KEY": API_KEY}
        for key, value in env.items():
            monkeypatch.setitem(faults.ENV, key, value)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="test-access-key-id", aws_secret_access_key=SECRET)
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.kill()
        server.wait(timeout=30)


def _wait_for_port(server: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, f"moto server exited: {log.read_text()[-2000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"moto server not listening after 60 s: {log.read_text()[-2000:]}"
            time.sleep(0.2)


def keys(client: Any, prefix: str = PREFIX) -> list[str]:
    """Every object key under ``prefix`` in the bucket."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def bucket_checkpoints(client: Any) -> dict[str, int]:
    """Trial folder -> index of its newest checkpoint in the bucket (0-based: epochs done - 1)."""
    found: dict[str, int] = {}
    for key in keys(client):
        match = CHECKPOINT_KEY.match(key)
        if match:
            found[match["trial"]] = max(found.get(match["trial"], -1), int(match["index"]))
    return found


def bucket_reports(client: Any, study: str) -> dict[str, list[dict[str, Any]]]:
    """Ray's per-trial result.json in the bucket, every report in order, keyed by trial id."""
    found: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(k for k in keys(client, f"{PREFIX}/{study}/") if k.endswith("/result.json")):
        for line in client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines():
            result = json.loads(line)
            found.setdefault(result["trial_id"], []).append(result)
    return found


def bucket_trial_states(client: Any, study: str) -> dict[str, str]:
    """Trial id -> status in Ray's newest experiment state in the bucket ({} before the first sync)."""
    states = sorted(k for k in keys(client, f"{PREFIX}/{study}/experiment_state-") if k.endswith(".json"))
    if not states:
        return {}
    data = json.loads(client.get_object(Bucket=BUCKET, Key=states[-1])["Body"].read())
    trials = (json.loads(state) for state, _ in data["trial_data"])
    return {trial["trial_id"]: trial["status"] for trial in trials}


def bucket_variant_state(client: Any, study: str) -> tuple[str, bytes, set[str]] | None:
    """The grid generator's newest saved state in the bucket: (key, bytes, the trial ids it counts as
    running); None before the first. Ray 2.60 saves it beside the experiment state in each snapshot."""
    from ray import cloudpickle

    found = sorted(k for k in keys(client, f"{PREFIX}/{study}/basic-variant-state-") if k.endswith(".json"))
    if not found:
        return None
    body = client.get_object(Bucket=BUCKET, Key=found[-1])["Body"].read()
    return found[-1], body, set(cloudpickle.loads(body)["_live_trials"])


def assert_no_secret(client: Any, *folders: Path) -> None:
    """No planted credential in any object of the bucket or any file under ``folders``."""
    planted = (SECRET.encode(), API_KEY.encode())
    leaks = [f"s3://{BUCKET}/{key}" for key in keys(client, "")
             if any(s in client.get_object(Bucket=BUCKET, Key=key)["Body"].read() for s in planted)]
    leaks += [str(path) for folder in folders for path in folder.rglob("*")
              if path.is_file() and any(s in path.read_bytes() for s in planted)]
    assert not leaks, f"a planted credential is written in {leaks}"


def assert_study_complete(output: Path, study: str, log: str, expected_trials: int,
                          storage: str = f"s3://{BUCKET}/{PREFIX}") -> pd.DataFrame:
    """The study folder's parquet and MLflow hold every trial, TERMINATED, each epoch once; Ray's
    storage was the bucket only (no local ray/ folder)."""
    trials = pd.read_parquet(output / study / "trials.parquet")
    assert len(trials) == expected_trials and trials["trial_id"].is_unique, f"{trials['trial_id'].tolist()}{log}"
    assert (trials["status"] == "TERMINATED").all(), f"{trials[['trial_id', 'status', 'error']]}{log}"
    assert_every_epoch_once(output / study, trials, log)
    _, parent, children = mlflow_study(output / study)
    assert parent.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in children), log
    assert not (output / "ray").exists(), f"Ray wrote its storage locally, not in the bucket{log}"
    meta = json.loads((output / study / "study.json").read_text())
    assert meta["storage"] == storage and meta["started_in"] == str((output / study).resolve()), meta
    return trials


# The endpoint as README shows it: AWS_ENDPOINT_URL, or pyarrow's options in the URI's query instead
@pytest.mark.parametrize("endpoint_in", ["environment", "uri"])
def test_a_study_on_s3_keeps_rays_state_and_checkpoints_in_the_bucket_and_no_secret_anywhere(
        tmp_path, drivers, s3, monkeypatch, endpoint_in):
    output, study, storage = tmp_path / "results", "quick-smoke", f"s3://{BUCKET}/{PREFIX}"
    if endpoint_in == "uri":
        monkeypatch.delitem(faults.ENV, "AWS_ENDPOINT_URL")
        storage += f"?endpoint_override={s3.meta.endpoint_url.removeprefix('http://')}&scheme=http"
    argv = [sys.executable, str(ROOT / "study" / "run.py"), "--smoke", "--output", str(output),
            "--storage", storage]
    driver = drivers(argv, tmp_path / "driver.log")
    assert driver.finish() == 0, f"driver failed{driver.tail()}"
    log = driver.tail()
    trials = assert_study_complete(output, study, log, expected_trials=2, storage=storage)

    stored = keys(s3)
    top = {key.removeprefix(f"{PREFIX}/{study}/") for key in stored if key.count("/") == 2}
    assert "tuner.pkl" in top and any(k.startswith("experiment_state-") for k in top), f"{sorted(top)}{log}"
    for trial_id in trials["trial_id"]:
        mine = [k for k in stored if f"_{trial_id}_" in k]
        assert any(k.endswith("/result.json") for k in mine), f"no result.json of {trial_id}: {mine}{log}"
        assert any(CHECKPOINT_KEY.match(k) and k.endswith("/state.pt") for k in mine), (
            f"no checkpoint of {trial_id} in the bucket: {mine}{log}")
    # What Ray reported is what the study exported: the bucket's result.json is the parquet's source.
    reported = bucket_reports(s3, study)
    assert {t: rows[-1]["objective"] for t, rows in reported.items()} == pytest.approx(
        dict(zip(trials["trial_id"], trials["objective"]))), log
    assert_no_secret(s3, output, tmp_path)


def test_a_killed_driver_resumes_its_study_from_the_bucket(tmp_path, drivers, s3):
    conditions = {"CompleteLabels": {}, "HalfUnsegmented": {"noise_unsegment": 0.5}}
    # 30 epochs per trial: long enough for the kill to land while the second trial runs
    preset = fault_preset("s3-driver-kill", conditions, epochs_pretrain=2, epochs_finetune=28)
    study, output = "s3-driver-kill", tmp_path / "results"
    argv = preset_argv(preset, output, "--max-concurrent", "1", "--storage", f"s3://{BUCKET}/{PREFIX}")
    first = drivers(argv, tmp_path / "first.log")

    # Ray's state in the bucket says the first trial ended; the second checkpointed into it and trains on.
    # (Checkpoint indices count checkpoints, not epochs: uploads to the bucket make trials pace theirs.)
    # On the way, keep the grid generator's state saved while the first trial ran.
    early: list[tuple[str, bytes, set[str]]] = []

    def one_done_one_running() -> bool:
        saved = bucket_variant_state(s3, study)
        if saved and not early and len(saved[2]) == 1 and not bucket_trial_states(s3, study).get(
                next(iter(saved[2]))) == "TERMINATED":
            early.append(saved)
        done = [t for t, status in bucket_trial_states(s3, study).items() if status == "TERMINATED"]
        return len(done) == 1 and len(bucket_checkpoints(s3)) == 2 and bool(trial_actors(first))

    first.wait_for(one_done_one_running, "a finished trial followed by a running one, in the bucket")
    kill_driver(first)
    first_pids = set(first.seen)
    (done_id,) = [t for t, status in bucket_trial_states(s3, study).items() if status == "TERMINATED"]
    assert first.log.read_text().count("done   ") == 1, f"the study ended before the kill{first.tail()}"
    # Ray's log of the running trial reaches the bucket when the driver syncs it; its checkpoint, when the
    # worker reports it. A kill in between (it happened in CI) leaves no log before the checkpoint: here
    # it is made so every time, and history.parquet must take those epochs from the checkpoint in the bucket.
    for key in keys(s3, f"{PREFIX}/{study}/"):
        if key.endswith(("/result.json", "/progress.csv")) and f"_{done_id}_" not in key:
            s3.delete_object(Bucket=BUCKET, Key=key)
    # Ray copies the generator's state and the experiment state to the bucket one after the other, from
    # files the next snapshot may be rewriting, so a kill can leave them from different snapshots (it did
    # in CI: the resumed driver then waited forever, counting the finished trial against --max-concurrent
    # 1). Here it is made so every time: the generator's state from while the first trial ran.
    assert early and early[0][2] == {done_id}, f"no generator state saved while {done_id} ran: {early}"
    s3.put_object(Bucket=BUCKET, Key=early[0][0], Body=early[0][1])

    second = drivers([*argv, "--resume"], tmp_path / "second.log")
    assert second.finish() == 0, f"--resume failed{second.tail()}"
    log = second.tail()
    assert "no Ray Tune state" not in log, f"the resume did not find Ray's state in the bucket{log}"
    assert f"start  {done_id}" not in log, f"the finished trial {done_id} started again{log}"
    assert_study_complete(output, study, log, expected_trials=len(conditions))
    # The trial that had finished is restored from the bucket's experiment state, not run again.
    results = bucket_reports(s3, study)
    assert {r["pid"] for r in results[done_id]} <= first_pids, (
        f"finished trial {done_id} ran again: pids {[r['pid'] for r in results[done_id]]}{log}")
    for trial_id, rows in results.items():
        epochs = [r["epoch_total"] for r in rows]
        assert epochs == sorted(set(epochs)), f"Ray's reports of {trial_id}: {epochs}{log}"


def test_a_killed_worker_is_retried_from_its_checkpoint_in_the_bucket(tmp_path, drivers, s3):
    preset = fault_preset("s3-worker-kill", {"CompleteLabels": {}}, epochs_pretrain=3, epochs_finetune=25)
    study, output = "s3-worker-kill", tmp_path / "results"
    driver = drivers(preset_argv(preset, output, "--max-concurrent", "1", "--max-failures", "1",
                                 "--storage", f"s3://{BUCKET}/{PREFIX}"), tmp_path / "driver.log")
    driver.wait_for(lambda: max(bucket_checkpoints(s3).values(), default=-1) >= 1 and bool(trial_actors(driver)),
                    "second checkpoint of the trial in the bucket")
    (worker,) = trial_actors(driver)
    killed_pid = worker.pid
    worker.send_signal(signal.SIGKILL)
    assert driver.finish() == 0, f"driver failed{driver.tail()}"
    log = driver.tail()
    assert_study_complete(output, study, log, expected_trials=1)

    ((_, results),) = bucket_reports(s3, study).items()
    shown = [(r["epoch_total"], r["pid"]) for r in results]
    before = [r["epoch_total"] for r in results if r["pid"] == killed_pid]
    after = [r["epoch_total"] for r in results if r["pid"] != killed_pid]
    assert before == list(range(1, len(before) + 1)) and after, f"no retry in a new worker: {shown}{log}"
    # The new worker restored the last checkpoint (or, when the kill raced its registration, the one
    # before), read back from the bucket, Ray's only storage here: it did not start over.
    assert after == list(range(after[0], 29)) and after[0] in (len(before), len(before) + 1) and after[0] > 1, (
        f"Ray's reports of the retried trial (epoch, pid): {shown}{log}")
