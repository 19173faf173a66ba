"""The MLflow tracking server dies mid-study: the study keeps running, what could not be logged waits in
order in the study folder's outbox (study.replay), and is logged exactly once when the server is back,
at the study's end, or by ``python -m study.replay STUDY_DIR``.

The unit tests drive the MLflow callback through a client whose server "goes away" (every call raises a
refused connection) over a real SQLite store. The end-to-end tests run the real command line against a
real ``mlflow server`` (SQLite backend, loopback), SIGKILL the server's processes by pid after the first
trial's first epoch is logged, and restart it on the same port and store (or not); every server and
driver is killed by pid when the test ends, also when it fails.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import psutil
import pytest
import requests
from mlflow.tracking import MlflowClient
from helpers.ray_cluster import free_port
from test_faults import drivers  # noqa: F401  (the fixture, used by name)

from study.replay import OUTBOX_FILE, Outbox, Replayer, main as replay_main, replay
from study.tracking import MLflowTrials

ROOT = Path(__file__).resolve().parents[1]


# --- a server that goes away, in process ------------------------------------------------------------


WRITES = {"create_run", "log_batch", "set_tag", "set_terminated", "log_artifacts", "log_artifact"}


def no_sleep(seconds: float) -> None:
    """with_retries' waits, skipped (module level: the callback is pickled in one test)."""


class Outage:
    """An MlflowClient whose every call raises a refused connection while ``down``; with ``lose`` > 0 the
    next ``lose`` writes reach the store and then raise (the server committed, the response was lost)."""

    def __init__(self, client: MlflowClient) -> None:
        self.client, self.down, self.lose, self.calls_while_down = client, False, 0, 0

    def __getattr__(self, name: str):
        method = getattr(self.client, name)

        def call(*args, **kwargs):
            if self.down:
                self.calls_while_down += 1
                raise requests.ConnectionError("[Errno 111] Connection refused")
            result = method(*args, **kwargs)
            if self.lose and name in WRITES:
                self.lose -= 1
                raise requests.ConnectionError("Connection reset by peer")
            return result

        return call


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _callback(tmp_path: Path):
    """(callback, real client, outage, clock): an MLflowTrials on a fresh SQLite store behind an Outage."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    real = MlflowClient(uri)
    experiment = real.create_experiment("outage")
    parent = real.create_run(experiment).info.run_id
    callback = MLflowTrials(uri, experiment, parent, tmp_path / "artifacts")
    outage, clock = Outage(real), Clock()
    callback.writer._client, callback.writer.clock, callback.writer.sleep = outage, clock, no_sleep
    return callback, real, outage, clock


def _trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"condition": "C", "seed": 0, "lr": 0.1}, status="TERMINATED",
                           checkpoint=None, last_result={"objective": 0.5, "epoch_total": 3, "timestamp": 3},
                           get_error=lambda: None, error_file=None)


def _epoch(step: int) -> dict:
    return {"epoch_total": step, "finetune/train_loss": 1.0 / step, "timestamp": 100 + step}


def _children(real: MlflowClient, callback: MLflowTrials) -> dict[str, list]:
    runs = real.search_runs([callback.experiment_id],
                            filter_string=f"tags.`mlflow.parentRunId` = '{callback.parent_run_id}'")
    found: dict[str, list] = {}
    for run in runs:
        found.setdefault(run.data.tags["trial_id"], []).append(run)
    return found


def _history(real: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in real.get_metric_history(run_id, key))


def test_writes_while_the_server_is_down_wait_in_order_and_are_logged_once_when_it_is_back(tmp_path, capsys):
    callback, real, outage, clock = _callback(tmp_path)
    one, two = _trial("t1"), _trial("t2")
    callback.on_trial_start(0, [], one)
    callback.on_trial_result(0, [], one, _epoch(1))
    outage.down = True  # the server dies
    for step in (2, 3):
        callback.on_trial_result(0, [], one, _epoch(step))
    callback.on_trial_start(0, [], two)  # its run cannot be created now
    callback.on_trial_result(0, [], two, _epoch(1))
    callback.on_trial_complete(0, [], one)
    outbox = callback.writer.outbox
    assert outbox.pending() == 6, "epochs 2, 3; t2's start and epoch 1; t1's artifacts and end"
    assert outbox.first()[1]["op"] == "metrics" and outbox.first()[1]["metrics"][0][3] == 2, "in order"
    assert outage.calls_while_down == 5, "one call with 4 retries, then the queue is not tried before its time"
    assert "unreachable" in capsys.readouterr().out

    outage.down, outage.lose = False, 1  # back; the first replayed write commits but its response is lost
    clock.now += 11
    callback.on_trial_result(0, [], two, _epoch(2))  # the failed attempt leaves the queue in place
    assert outbox.pending() == 7
    clock.now += 11
    callback.on_trial_result(0, [], two, _epoch(3))  # now everything goes, in order, then this epoch
    assert outbox.pending() == 0 and "answers again: logged 8 queued item(s)" in capsys.readouterr().out

    runs = _children(real, callback)
    assert sorted(runs) == ["t1", "t2"] and all(len(r) == 1 for r in runs.values()), "one run per trial"
    first, second = runs["t1"][0].info.run_id, runs["t2"][0].info.run_id
    assert _history(real, first, "finetune/train_loss") == [(1, 1.0), (2, 0.5), (3, 1 / 3)], "each epoch once"
    assert _history(real, second, "epoch_total") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert real.get_run(first).info.status == "FINISHED" and real.get_run(first).data.tags["status"] == "FINISHED"
    assert real.get_run(second).data.params == {"condition": "C", "seed": "0", "lr": "0.1"}


def test_the_queue_survives_a_new_driver_and_study_replay_logs_it_once(tmp_path, capsys):
    """A driver killed during the outage: the queue on disk is what a new process replays (--resume, or
    python -m study.replay); replaying again finds nothing to do."""
    study_dir = tmp_path
    callback, real, outage, _ = _callback(tmp_path)
    outage.down = True
    callback.on_trial_start(0, [], _trial("t1"))
    for step in (1, 2):
        callback.on_trial_result(0, [], _trial("t1"), _epoch(step))
    assert Outbox(study_dir / OUTBOX_FILE).pending() == 3, "the queue is on disk, not in the driver"
    restored = pickle.loads(pickle.dumps(callback))  # as Ray restores its callbacks on --resume
    assert restored.writer.outbox.pending() == 3 and restored.writer._client is None

    (study_dir / "study.json").write_text(json.dumps({"study": "outage", "tracking_uri": callback.tracking_uri}))
    assert replay(study_dir) == 0 and "logged 3 queued item(s)" in capsys.readouterr().out
    assert replay(study_dir) == 0 and "nothing to replay" in capsys.readouterr().out
    (run,) = _children(real, callback)["t1"]
    assert _history(real, run.info.run_id, "epoch_total") == [(1, 1.0), (2, 2.0)]
    assert replay_main([str(tmp_path / "nowhere")]) == 2 and "no study.json" in capsys.readouterr().err


def test_a_replayed_start_finds_its_run_and_a_replayed_epoch_is_not_logged_twice(tmp_path):
    real = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = real.create_experiment("e")
    parent = real.create_run(experiment).info.run_id
    ids = {"trial_id": "t1", "experiment_id": experiment, "parent_run_id": parent}
    start = {"op": "start", **ids, "run_name": "t1", "tags": {"trial_id": "t1", "mlflow.parentRunId": parent},
             "params": {"lr": "0.1"}}
    epoch = {"op": "metrics", **ids, "metrics": [["epoch_total", 1.0, 5, 1], ["loss", 0.5, 5, 1]]}
    again = {**epoch, "metrics": [["epoch_total", 1.0, 9, 1], ["loss", 0.4, 9, 1], ["loss", 0.3, 9, 2]]}
    outbox = Outbox(tmp_path / OUTBOX_FILE)
    for op in (start, epoch, start, again):  # a start and an epoch the server took before its answer was lost
        Replayer(real, outbox).apply(op, replayed=True)
    (run,) = real.search_runs([experiment], filter_string="tags.trial_id = 't1'")
    assert _history(real, run.info.run_id, "loss") == [(1, 0.5), (2, 0.3)], "(key, step) once: the first value"
    assert run.data.params == {"lr": "0.1"} and outbox.runs() == {"t1": run.info.run_id}
    with pytest.raises(ValueError, match="unknown MLflow outbox operation 'nope'"):
        Replayer(real, outbox).apply({**ids, "op": "nope"}, replayed=True)


def test_the_outbox_is_a_bounded_fifo_on_disk(tmp_path):
    path = tmp_path / OUTBOX_FILE
    outbox = Outbox(path, max_items=2)
    assert outbox.pending() == 0 and not path.exists(), "no file until something is queued"
    assert [outbox.put({"n": n}) for n in range(4)] == [True, True, False, False]
    reopened = Outbox(path, max_items=2)  # another process, after a crash
    assert reopened.pending() == 2 and reopened.dropped() == 2
    item_id, op = reopened.first()
    assert op == {"n": 0}
    reopened.done(item_id)
    assert reopened.first()[1] == {"n": 1} and outbox.pending() == 1
    with pytest.raises(ValueError, match="max_items must be >= 1, got 0"):
        Outbox(path, max_items=0)
    with pytest.raises(ValueError):  # JSON has no NaN: a non-finite metric never reaches the queue
        outbox.put({"value": math.nan})
    assert pickle.loads(pickle.dumps(outbox)).pending() == 1, "pickled without its connection, reopened on use"


# --- a real mlflow server, killed by pid -------------------------------------------------------------


class Server:
    """``mlflow server`` on 127.0.0.1:``port`` over a SQLite store; started again on the same port and store
    after :meth:`kill`, which SIGKILLs it and its workers by pid."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port, self.proc, self.starts = root, port, None, 0
        self.uri = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        from study.sqlite_store import seed_sqlite_store, template_dir

        self.starts += 1
        # a migrated empty store, as a study's own SQLite store starts (MLflow's migrations take seconds)
        seed_sqlite_store(f"sqlite:///{self.root / 'mlflow.db'}", template_dir(self.root))
        log = self.root / f"server-{self.starts}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}", "--workers", "1",
             "--artifacts-destination", str(self.root / "mlartifacts")],
            cwd=self.root, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not self.healthy():
            assert self.proc.poll() is None and time.monotonic() < deadline, (
                f"mlflow server did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as response:
                return response.read() == b"OK"
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            processes = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            processes = []
        for process in processes:  # uvicorn's worker holds the port too: every process, by pid
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=30)
        psutil.wait_procs(processes, timeout=30)
        self.proc = None
        assert not self.healthy(), "the killed server still answers"


@pytest.fixture
def server(tmp_path):
    started = Server(tmp_path, free_port())
    started.start()
    yield started
    started.kill()


def _logged_epochs(database: Path) -> int:
    """Child-run epochs in the server's store (read directly: the test must not depend on the server)."""
    with sqlite3.connect(database, timeout=30) as db:
        return db.execute("SELECT count(*) FROM metrics WHERE key = 'epoch_total'").fetchone()[0]


def _queued(study_dir: Path) -> int:
    path = study_dir / OUTBOX_FILE
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return db.execute("SELECT count(*) FROM items").fetchone()[0] if "items" in tables else 0


EPOCHS = 6  # per trial, both phases


def _outage_study(tmp_path: Path, drivers, server: Server, name: str):
    """A 2-trial grid run one trial at a time, against ``server``; killed after the first epoch is logged,
    returned once the driver has queued a write. (driver, study folder, trial workers)."""
    from test_faults import fault_preset, preset_argv, trial_actors

    preset = fault_preset(name, {"First": {}, "Second": {"noise_unsegment": 0.5}}, epochs_pretrain=2,
                          epochs_finetune=EPOCHS - 2)
    driver = drivers(preset_argv(preset, tmp_path / "results", "--max-concurrent", "1", "--tracking-uri",
                                 server.uri), tmp_path / "driver.log")
    driver.wait_for(lambda: _logged_epochs(tmp_path / "mlflow.db") >= 1, "the first epoch in MLflow")
    server.kill()
    study_dir = tmp_path / "results" / name
    driver.wait_for(lambda: _queued(study_dir) > 0, "a write queued in the outbox")
    return driver, study_dir, trial_actors(driver)


def assert_mlflow_holds_history(study_dir: Path, log: str) -> pd.DataFrame:
    """Every value of history.parquet is in its trial's MLflow run at its epoch, each (key, step) once;
    trials.parquet has every trial TERMINATED. Returns trials."""
    from test_faults import assert_every_epoch_once, mlflow_study

    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert (trials["status"] == "TERMINATED").all() and len(trials) == 2, f"{trials[['trial_id', 'status']]}{log}"
    assert_every_epoch_once(study_dir, trials, log)
    history = pd.read_parquet(study_dir / "history.parquet")
    client, parent, children = mlflow_study(study_dir)
    metrics = [c for c in history.columns if "/" in c or c == "objective"]
    for run in children:
        rows = history.loc[history["trial_id"] == run.data.tags["trial_id"]]
        for key in metrics:
            expected = [(int(s), float(v)) for s, v in zip(rows["epoch_total"], rows[key]) if pd.notna(v) and math.isfinite(v)]
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert [s for s, _ in logged] == [s for s, _ in expected], f"{key} steps of {run.data.tags['trial_id']}{log}"
            assert [v for _, v in logged] == pytest.approx([v for _, v in expected]), f"{key} values{log}"
    assert parent.info.status == "FINISHED" and parent.data.metrics["study/trials_terminated"] == 2, log
    return trials


@pytest.mark.slow
def test_a_server_killed_mid_study_and_restarted_gets_every_epoch_exactly_once(tmp_path, drivers, server):
    driver, study_dir, workers = _outage_study(tmp_path, drivers, server, "outage-restart")
    for worker in workers:  # the trial waits while the server restarts: the study is still running after
        worker.send_signal(signal.SIGSTOP)
    try:
        server.start()  # same port, same store
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGCONT)
    assert driver.finish() == 0, f"every trial finished and everything was logged{driver.tail()}"
    log = driver.tail(8000)
    assert "unreachable" in log and "answers again" in log, f"the outage and the recovery, on the console{log}"
    assert _queued(study_dir) == 0, log
    assert_mlflow_holds_history(study_dir, log)


@pytest.mark.slow
def test_a_server_that_never_comes_back_leaves_parquet_complete_and_the_queue_is_logged_later(
        tmp_path, drivers, server):
    driver, study_dir, _ = _outage_study(tmp_path, drivers, server, "outage-gone")
    assert driver.finish() == 3, f"exit code 3: every trial ended, MLflow is missing items{driver.tail()}"
    log = driver.tail(8000)
    queued = _queued(study_dir)
    assert f"{queued} item(s) were not logged" in log and f"python -m study.replay {study_dir}" in log, log
    history = pd.read_parquet(study_dir / "history.parquet")
    assert sorted(history.groupby("trial_id").size()) == [EPOCHS] * 2, f"every epoch of both trials in parquet{log}"
    assert (pd.read_parquet(study_dir / "trials.parquet")["status"] == "TERMINATED").all(), log

    from test_faults import mlflow_study

    # python -m study.replay while the server is still down: exit code 3, nothing lost from the queue
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "study.replay", str(study_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 3 and _queued(study_dir) == queued, done.stdout + done.stderr
    # Then the server is back, and the same command with --resume sends the queue first (as python -m
    # study.replay would: tests/test_tracking_outage.py's unit tests replay it that way) and finds every
    # trial finished. One study for both paths: each end-to-end outage study costs over a minute.
    server.start()
    resumed = drivers([*driver.argv, "--resume"], tmp_path / "resume.log")
    assert resumed.finish() == 0, f"--resume replayed the queue and ended{resumed.tail()}"
    log = resumed.tail(8000)
    assert f"logged {queued} queued item(s)" in log and "start  " not in log, f"no trial ran again{log}"
    assert _queued(study_dir) == 0
    trials = assert_mlflow_holds_history(study_dir, log)
    _, _, children = mlflow_study(study_dir)
    assert dict(zip(trials["trial_id"], trials["mlflow_run_id"])) == {
        r.data.tags["trial_id"]: r.info.run_id for r in children}, "run ids of runs created on replay filled in"


def test_run_ids_of_runs_created_on_replay_are_filled_into_trials_parquet_keeping_its_metadata(tmp_path):
    import pyarrow.parquet as pq

    from study.export import write_parquet
    from study.replay import fill_run_ids

    path = write_parquet(pd.DataFrame({"trial_id": ["a", "b", "c"], "mlflow_run_id": ["ra", "", ""],
                                       "objective": [0.1, 0.2, 0.3]}), tmp_path / "trials.parquet", {"study": "s"})
    assert fill_run_ids(path, {"a": "other", "b": "rb"}) == 1, "only empty cells, only known runs"
    assert pd.read_parquet(path)["mlflow_run_id"].tolist() == ["ra", "rb", ""]
    assert pq.read_schema(path).metadata[b"noisy_transfer.study"] == b"s"
    assert fill_run_ids(path, {"b": "rb"}) == 0 and fill_run_ids(tmp_path / "none.parquet", {"b": "x"}) == 0
