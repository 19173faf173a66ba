"""Faults injected for real into real studies: a trial's worker SIGKILLed mid-trial, the driver SIGKILLed
mid-study (grid and Optuna search) and resumed, a trial whose loss genuinely diverges to NaN.

Every study runs the real command line (``study/run.py``'s ``main``) in a subprocess with its own local
Ray (``RAY_ADDRESS=local``), as a user would. The grid studies add one test preset, composed from the
real :class:`Preset` with smoke sizes and a few more epochs, so a trial lasts long enough to be hit
mid-run (``--smoke`` has one epoch per phase); the search study is ``--preset search --smoke``. Each test checks afterwards, in Ray's own result files, that the fault really happened (a
new worker pid, a driver that died before the study ended), so none of them can pass vacuously. Every
process a test starts, and every Ray process those started, is killed by pid when the test ends.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import psutil
import pytest
from mlflow.tracking import MlflowClient

from search_spaces.base import SEGMENTATION_SMOKE

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)}  # each driver starts its own Ray
DEADLINE_S = 240  # generous bound on any wait for a study to reach a state (never a timing assertion)

# ``python study/run.py`` with one more preset, given as JSON: the real CLI, the real driver, a grid
# that is smoke-sized but has enough epochs per trial to be interrupted in the middle of one.
DRIVER = textwrap.dedent("""
    import json, sys
    from search_spaces import PRESETS
    from search_spaces.base import Preset
    extra = json.loads(sys.argv[1])
    PRESETS[extra["name"]] = Preset(**{**extra, "folds": tuple(extra["folds"])})
    from study.run import main
    sys.exit(main(sys.argv[2:]))
""")


def fault_preset(name: str, conditions: dict[str, dict[str, Any]], epochs_pretrain: int,
                 epochs_finetune: int) -> dict[str, Any]:
    return {
        "name": name, "description": "fault-injection test grid", "trainable": "pretrain_finetune",
        "conditions": conditions, "folds": [1], "seeds": 1,
        "base": {**SEGMENTATION_SMOKE, "epochs_pretrain": epochs_pretrain, "epochs_finetune": epochs_finetune,
                 "warmup_epochs": 0},
    }


def preset_argv(preset: dict[str, Any], output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", DRIVER, json.dumps(preset), "--preset", preset["name"],
            "--output", str(output), *extra]


class Driver:
    """A study driver subprocess, and every process it spawns (Ray's head, raylet, workers).

    Ray processes outlive a SIGKILLed driver as orphans, no longer its descendants, so the tree is
    recorded on every poll while the driver lives; :meth:`cleanup` kills what is left, by pid.
    """

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv, self.log = argv, log
        self.seen: dict[int, psutil.Process] = {}
        with open(log, "w") as handle:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=handle, stderr=subprocess.STDOUT)

    def tail(self, chars: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"\n--- driver log ({self.log}), last {chars} chars ---\n{text[-chars:]}"

    def track(self) -> None:
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Poll until ``condition()``; fail if the driver exits first or DEADLINE_S passes."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            self.track()
            if condition():
                return
            assert self.proc.poll() is None, f"driver exited ({self.proc.returncode}) before {what}{self.tail()}"
            assert time.monotonic() < deadline, f"no {what} after {DEADLINE_S} s{self.tail()}"
            time.sleep(0.1)

    def finish(self) -> int:
        deadline = time.monotonic() + DEADLINE_S
        while self.proc.poll() is None:
            self.track()
            if time.monotonic() >= deadline:
                self.proc.send_signal(signal.SIGUSR2)  # study/run.py prints every thread's stack: where it hangs
                time.sleep(2)
                raise AssertionError(f"driver did not finish in {DEADLINE_S} s{self.tail(12000)}")
            time.sleep(0.2)
        return self.proc.returncode

    def alive(self) -> list[psutil.Process]:
        alive = []
        for process in self.seen.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.NoSuchProcess:
                pass
        return alive

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for process in self.alive():
            try:
                process.kill()  # psutil checks the pid still names the process it recorded
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def drivers():
    """``start(argv, log)`` -> :class:`Driver`; every driver and its Ray processes die at teardown."""
    started: list[Driver] = []

    def start(argv: list[str], log: Path) -> Driver:
        started.append(Driver(argv, log))
        return started[-1]

    yield start
    for driver in started:
        driver.cleanup()


# --- reading what a study left behind -------------------------------------------------------------
# Ray's driver writes result.json into a staging folder and syncs it into the storage folder only with
# its experiment state (every ~10 s, forced every CHECKPOINTS_TO_KEEP checkpoints): while a study runs,
# the storage's result.json lags. Checkpoints are written straight to storage by the trial's worker,
# so progress is read from them, and result.json only once a driver has exited.


def checkpoints(storage: Path, study: str) -> dict[str, int]:
    """Trial folder name -> index of its newest checkpoint (0-based: epochs done - 1)."""
    found = {}
    for folder in (storage / study).glob("*/"):
        indices = [int(c.name.rpartition("_")[2]) for c in folder.glob("checkpoint_*") if c.is_dir()]
        if indices:
            found[folder.name] = max(indices)
    return found


def trial_actors(driver: "Driver") -> list[psutil.Process]:
    """The driver's live Ray worker processes that host a trial (Ray titles them ray::ImplicitFunc)."""
    actors = []
    for process in driver.alive():
        try:
            if process.cmdline()[:1] and process.cmdline()[0].startswith("ray::ImplicitFunc"):
                actors.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return actors


def reports(storage: Path, study: str) -> dict[str, list[dict[str, Any]]]:
    """Ray's per-trial result.json, every report in order, keyed by trial id."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((storage / study).glob("*/result.json")):
        for line in path.read_text().splitlines():
            result = json.loads(line)
            found.setdefault(result["trial_id"], []).append(result)
    return found


def mlflow_study(study_dir: Path) -> tuple[MlflowClient, Any, list]:
    """(client, the study's parent run, its child runs), after checking there is one parent."""
    meta = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    runs = client.search_runs([meta["experiment_id"]], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("noisy_transfer.role") == "study"]
    assert len(parents) == 1, f"one parent run per study, found {len(parents)}"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, parents[0], children


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def assert_every_epoch_once(study_dir: Path, trials: pd.DataFrame, log: str) -> None:
    """history.parquet and every MLflow child run hold epochs 1..n of each trial exactly once."""
    history = pd.read_parquet(study_dir / "history.parquet")
    client, parent, children = mlflow_study(study_dir)
    by_trial = {run.data.tags["trial_id"]: run for run in children}
    assert sorted(by_trial) == sorted(trials["trial_id"]) and len(children) == len(trials), (
        f"one MLflow child run per trial: runs {sorted(r.data.tags['trial_id'] for r in children)}, "
        f"trials {sorted(trials['trial_id'])}{log}")
    for trial in trials.itertuples():
        n = trial.epochs_pretrain * (trial.init == "pretrain") + trial.epochs_finetune
        rows = history.loc[history["trial_id"] == trial.trial_id, "epoch_total"].tolist()
        assert rows == list(range(1, n + 1)), f"history of {trial.trial_id}: epoch_total {rows}{log}"
        run_id = by_trial[trial.trial_id].info.run_id
        assert steps(client, run_id, "epoch_total") == list(range(1, n + 1)), (
            f"MLflow epoch_total steps of {trial.trial_id}{log}")
        first_finetune = n - trial.epochs_finetune + 1
        assert steps(client, run_id, "finetune/train_loss") == list(range(first_finetune, n + 1)), (
            f"MLflow finetune/train_loss steps of {trial.trial_id}{log}")
        if trial.init == "pretrain":
            assert steps(client, run_id, "pretrain/train_loss") == list(range(1, first_finetune)), (
                f"MLflow pretrain/train_loss steps of {trial.trial_id}{log}")


# --- 1. a trial's worker is SIGKILLed ---------------------------------------------------------------


def test_a_killed_trial_worker_is_retried_from_its_checkpoint_and_loses_or_doubles_no_epoch(tmp_path, drivers):
    # 28 epochs: with worker reuse an 8-epoch trial lasts a few seconds, and the kill could land after
    # its last report (nothing left to retry) instead of mid-trial.
    preset = fault_preset("worker-kill", {"CompleteLabels": {}}, epochs_pretrain=3, epochs_finetune=25)
    output, storage, study = tmp_path / "results", tmp_path / "results" / "ray", "worker-kill"
    # --max-failures 1: the flag reaches Ray in a real study (one retry is all this trial needs)
    driver = drivers(preset_argv(preset, output, "--max-concurrent", "1", "--max-failures", "1"),
                     tmp_path / "driver.log")

    # Two epochs checkpointed, the trial's worker busy with the next one: SIGKILL it.
    driver.wait_for(lambda: max(checkpoints(storage, study).values(), default=-1) >= 1 and trial_actors(driver),
                    "second checkpoint of the trial")
    (worker,) = trial_actors(driver)
    killed_pid = worker.pid
    worker.send_signal(signal.SIGKILL)
    assert driver.finish() == 0, f"driver failed{driver.tail()}"
    log = driver.tail()

    # The fault happened and Ray recovered the trial in a new worker, from its last checkpoint.
    ((trial_id, results),) = reports(storage, study).items()
    pids = [r["pid"] for r in results]
    assert killed_pid in pids and pids[-1] != killed_pid, f"no retry in a new worker: pids {pids}{log}"
    # Ray's reports: epochs 1..k from the killed worker, then j..28 from the new one, restored from the
    # epoch-k checkpoint (j = k + 1) or, when the kill raced the controller registering that checkpoint,
    # from the one before (j = k: that one epoch is trained twice). No epoch is lost; MLflow and parquet
    # still hold each epoch once (below).
    shown = [(r["epoch_total"], r["pid"]) for r in results]
    before = [r["epoch_total"] for r in results if r["pid"] == killed_pid]
    after = [r["epoch_total"] for r in results if r["pid"] != killed_pid]
    assert before == list(range(1, len(before) + 1)) and after, f"Ray's reports (epoch, pid): {shown}{log}"
    assert after == list(range(after[0], 29)) and after[0] in (len(before), len(before) + 1), (
        f"Ray's reports of the retried trial (epoch, pid): {shown}{log}")

    trials = pd.read_parquet(output / study / "trials.parquet")
    assert trials["trial_id"].tolist() == [trial_id], f"the trial once: {trials['trial_id'].tolist()}{log}"
    assert trials["status"].tolist() == ["TERMINATED"] and trials["error"].tolist() == [""], (
        f"{trials[['status', 'error']]}{log}")
    assert_every_epoch_once(output / study, trials, log)
    client, parent, (child,) = mlflow_study(output / study)
    assert child.info.status == "FINISHED" and child.data.tags["status"] == "FINISHED", log
    assert parent.info.status == "FINISHED", log

    # Resumed from the checkpoint, the trial ends exactly as an uninterrupted run of its config.
    from trainables.config import PretrainFinetuneConfig
    from trainables.pretrain_finetune import run

    params = json.loads(next((storage / study).glob("*/params.json")).read_text())
    config = PretrainFinetuneConfig.from_dict({**params, "pretrain_cache": ""})  # pre-train it again too
    torch_threads = _torch_threads(1)
    try:
        uninterrupted = run(config, report=lambda metrics, state: None)
    finally:
        _torch_threads(torch_threads)
    for key in ("objective", "finetune/train_loss", "finetune/test_mean_iu"):
        assert trials[key].iloc[0] == pytest.approx(uninterrupted[key], abs=1e-6), (key, log)


def _torch_threads(count: int) -> int:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)  # the trial ran with 1 thread (1 CPU per trial)
    return previous


# --- 2. the driver is SIGKILLed, then resumed -------------------------------------------------------


def kill_driver(driver: Driver, workers: list[psutil.Process] | None = None) -> None:
    """SIGKILL the driver. Its Ray must let go of the trials: every trial worker exits by itself (an
    orphan still training would write into the resumed study); Ray's other leftovers are then killed
    (its dashboard and runtime-env agents notice their raylet died only after a minute or more).
    ``workers``: the trial workers, listed beforehand by a caller that must kill without delay."""
    workers = trial_actors(driver) if workers is None else workers
    driver.proc.send_signal(signal.SIGKILL)
    driver.proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while any(_running(w) for w in workers):
        assert time.monotonic() < deadline, (
            f"trial workers {[w.pid for w in workers if _running(w)]} still run 60 s after their driver "
            f"was killed{driver.tail()}")
        time.sleep(0.2)
    driver.cleanup()


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_stale_lock_of(study_dir: Path, driver: Driver) -> None:
    lock = json.loads((study_dir / ".study.lock").read_text())
    assert lock["pid"] == driver.proc.pid and not psutil.pid_exists(driver.proc.pid), (
        f"the killed driver's lock is left behind: {lock}{driver.tail()}")


def test_a_killed_driver_resumes_the_grid_and_runs_no_finished_trial_again(tmp_path, drivers):
    conditions = {"CompleteLabels": {}, "HalfUnsegmented": {"noise_unsegment": 0.5},
                  "RandomWeights": {"init": "random"}}
    # 30 epochs per pre-training trial: with worker reuse a 5-epoch trial lasts about a second, too short
    # for the kill to land while the second trial runs.
    preset = fault_preset("driver-kill", conditions, epochs_pretrain=2, epochs_finetune=28)
    last = 29  # checkpoint index of a finished pre-training trial's last epoch
    output, storage, study = tmp_path / "results", tmp_path / "results" / "ray", "driver-kill"
    argv = preset_argv(preset, output, "--max-concurrent", "1")
    first = drivers(argv, tmp_path / "first.log")

    # The first trial (30 epochs) finished, the second one checkpointed an epoch and trains on.
    def one_done_one_running() -> bool:
        progress = sorted(checkpoints(storage, study).values(), reverse=True)
        return len(progress) >= 2 and progress[0] == last and 0 <= progress[1] < last and bool(trial_actors(first))

    first.wait_for(one_done_one_running, "finished trial followed by a running one")
    kill_driver(first)
    first_pids = set(first.seen)
    finished_before = {name for name, index in checkpoints(storage, study).items() if index == last}
    assert_stale_lock_of(output / study, first)
    assert len(checkpoints(storage, study)) < len(conditions), f"the study ended before the kill{first.tail()}"
    # What a driver killed before it synced the running trial's log leaves (Ray's log is the driver's to
    # write and sync, the checkpoint the worker's; seen with S3 storage): a checkpoint and no log. The
    # export must take the epochs before that checkpoint from the checkpoint (trainables.runtime.REPORTS).
    (running,) = [name for name, index in checkpoints(storage, study).items() if index < last]
    for log_file in ("result.json", "progress.csv"):
        (storage / study / running / log_file).unlink(missing_ok=True)

    second = drivers([*argv, "--resume"], tmp_path / "second.log")
    assert second.finish() == 0, f"--resume failed{second.tail()}"
    log = second.tail()
    assert not (output / study / ".study.lock").exists(), f"the resumed driver releases the lock{log}"

    trials = pd.read_parquet(output / study / "trials.parquet")
    assert trials["trial_id"].is_unique and len(trials) == len(conditions), f"{trials['trial_id'].tolist()}{log}"
    assert (trials["status"] == "TERMINATED").all(), f"{trials[['trial_id', 'status', 'error']]}{log}"
    assert_every_epoch_once(output / study, trials, log)
    # Nothing finished ran twice: a finished trial run again would take its own cached extractor
    # (cache hits), and each trial that finished before the kill has exactly one report per epoch, all
    # from a worker of the first driver. A trial still running at the kill may legitimately reuse the
    # pre-training it had cached just before, if Ray's last snapshot predates its first checkpoint.
    history = pd.read_parquet(output / study / "history.parquet")
    results = reports(storage, study)
    for trial_id, rows in results.items():
        assert [r["epoch_total"] for r in rows] == sorted({r["epoch_total"] for r in rows}), (
            f"Ray's reports of {trial_id} (epoch, pid): {[(r['epoch_total'], r['pid']) for r in rows]}{log}")
    folders = {next((storage / study).glob(f"*_{trial_id}_*")).name: trial_id for trial_id in results}
    assert finished_before and finished_before <= set(folders), (finished_before, log)
    for folder in finished_before:
        rows = results[folders[folder]]
        assert {r["pid"] for r in rows} <= first_pids, (
            f"finished trial {folders[folder]} ran again after the resume: pids {[r['pid'] for r in rows]}{log}")
        hits = history.loc[history["trial_id"] == folders[folder], "pretrain/cache_hit"]
        assert (hits == 0).all(), f"finished trial {folders[folder]} took its pre-training from the cache{log}"
    client, parent, children = mlflow_study(output / study)
    assert parent.info.status == "FINISHED", f"parent run {parent.info.status}{log}"
    assert all(run.info.status == "FINISHED" for run in children), log


def checkpoint_folders(storage: Path, study: str) -> set[Path]:
    return set((storage / study).glob("*/checkpoint_*"))


def kill_at_a_checkpoint_deletion(driver: Driver, storage: Path, study: str) -> None:
    """SIGKILL the driver the moment Ray deletes a trial's older checkpoint, i.e. right after it registered
    a newer one and before its experiment-state snapshot naming that newer one reaches the storage
    (Ray 2.60 deletes first, snapshots at the end of the controller's step, copies in a background thread).
    Polled every 2 ms: the window is that step's remainder plus the copy."""
    deadline, seen, workers, polls = time.monotonic() + DEADLINE_S, checkpoint_folders(storage, study), [], 0
    while True:
        now = checkpoint_folders(storage, study)
        if seen - now and now:
            kill_driver(driver, workers)
            return
        seen, polls = now, polls + 1
        if polls % 100 == 0:  # psutil is slow: refresh the worker list every ~0.2 s, not every poll
            driver.track()
            workers = trial_actors(driver)
            assert driver.proc.poll() is None, f"driver exited before a checkpoint deletion{driver.tail()}"
            assert time.monotonic() < deadline, f"no checkpoint deletion after {DEADLINE_S} s{driver.tail()}"
        time.sleep(0.002)


def snapshot_checkpoints(storage: Path, study: str) -> list[str]:
    """The checkpoint folder names Ray's newest experiment state in the storage restores trials from
    (read with Ray 2.60's own loaders: the evidence that a kill landed while the snapshot lagged)."""
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.experiment.trial import Trial

    state = json.loads(Path(_find_newest_experiment_checkpoint(str(storage / study))).read_text())
    named = []
    for trial_json, run_metadata in state["trial_data"]:
        trial = Trial.from_json_state(trial_json, stub=True)
        trial.restore_run_metadata(run_metadata)
        if trial.checkpoint is not None:
            named.append(Path(trial.checkpoint.path).name)
    return named


REPAIRED = "deleted by the killed driver; restoring from its successor"  # study.checkpoint_repair's line
KILLS = 3  # at most: each kill costs a driver start (~20-50 s on 2 cores); kills stop at the first that leaves
# the snapshot naming a deleted checkpoint (so far every kill has)


def test_a_driver_killed_right_after_a_checkpoint_deletion_resumes_from_one_that_exists(tmp_path, drivers):
    # Short epochs (a reused worker runs one in ~0.1-0.3 s): each driver is SIGKILLed the moment Ray deletes
    # a checkpoint, until a kill leaves the snapshot naming the deleted one (at most KILLS times), then one
    # runs the study to its end. Ray's snapshot then often names the
    # deleted checkpoint; without study.checkpoint_repair the resumed trial failed 3 times.
    preset = fault_preset("snapshot-race", {"CompleteLabels": {}}, epochs_pretrain=2, epochs_finetune=30)
    output, storage, study = tmp_path / "results", tmp_path / "results" / "ray", "snapshot-race"
    argv = preset_argv(preset, output, "--max-concurrent", "1")
    logs, deleted = [], 0
    for kill in range(KILLS):
        logs.append(tmp_path / f"driver{kill}.log")
        driver = drivers([*argv, "--resume"] if kill else argv, logs[-1])
        kill_at_a_checkpoint_deletion(driver, storage, study)
        existing = {path.name for path in checkpoint_folders(storage, study)}
        named = snapshot_checkpoints(storage, study)
        print(f"kill {kill}: the snapshot names {named}, the storage holds {sorted(existing)}")
        deleted += len(set(named) - existing)
        if deleted:
            break
    last = drivers([*argv, "--resume"], tmp_path / "last.log")
    assert last.finish() == 0, f"the last --resume failed{last.tail()}"
    log = last.tail()
    # Not vacuous: some kill left the snapshot naming a deleted checkpoint, and each was repaired
    assert deleted >= 1, f"no kill of {KILLS} left Ray's snapshot naming a deleted checkpoint{log}"
    resumed = "".join(path.read_text(errors="replace") for path in [*logs[1:], last.log])
    assert resumed.count(REPAIRED) == deleted, f"{deleted} deleted checkpoints named, repairs:{log}"
    trials = pd.read_parquet(output / study / "trials.parquet")
    assert len(trials) == 1 and trials["status"].tolist() == ["TERMINATED"], f"{trials[['status', 'error']]}{log}"
    # MLflow holds every epoch once; Ray's result.json (history.parquet) lacks the epochs between a
    # deleted checkpoint and its successor (copied with the snapshot that never reached the storage)
    n = 32
    client, parent, (child,) = mlflow_study(output / study)
    assert steps(client, child.info.run_id, "epoch_total") == list(range(1, n + 1)), f"MLflow epoch_total{log}"
    assert child.info.status == "FINISHED" and parent.info.status == "FINISHED", log
    rows = pd.read_parquet(output / study / "history.parquet")["epoch_total"].tolist()
    assert rows == sorted(set(rows)) and rows[-1] == n, f"history.parquet epoch_total {rows}{log}"
    # never from scratch: the restored trial went on from a checkpoint, so no report repeats epoch 1
    epochs = [r["epoch_total"] for r in reports(storage, study)[trials["trial_id"].iloc[0]]]
    assert epochs.count(1) == 1, f"Ray's reports' epoch_total {epochs}{log}"


def optuna_trials(study_dir: Path, name: str) -> list:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=True)
    finally:
        storage.remove_session()
        storage.engine.dispose()


def child_runs_in(mlflow_db: Path) -> int:
    """Child runs in a live study's MLflow store (read-only; 0 while the store is busy or not there)."""
    try:
        with closing(sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True, timeout=1)) as db:
            return db.execute("SELECT count(*) FROM tags WHERE key = 'mlflow.parentRunId'").fetchone()[0]
    except sqlite3.Error:
        return 0


SEARCHED = ("noise_unsegment", "noise_misclassify", "loss", "warmup_epochs", "lr_pretrain")


def test_a_killed_search_resumes_its_optuna_study_and_draws_exactly_num_samples(tmp_path, drivers):
    samples = 4
    output, storage, study = tmp_path / "results", tmp_path / "results" / "ray", "search-smoke"
    argv = [sys.executable, str(ROOT / "study" / "run.py"), "--preset", "search", "--smoke", "--num-samples",
            str(samples), "--max-concurrent", "1", "--output", str(output)]
    first = drivers(argv, tmp_path / "first.log")

    # A trial finished (smoke: 1 pre-training + 1 fine-tuning epoch) and the next one has started (its
    # MLflow run exists) but not yet checkpointed: Optuna has drawn it, Ray's snapshot may not hold it.
    def one_done_next_started() -> bool:
        progress = checkpoints(storage, study)
        done = sum(index == 1 for index in progress.values())
        return done >= 1 and len(progress) == done and child_runs_in(output / study / "mlflow.db") > done

    first.wait_for(one_done_next_started, "finished trial followed by a new one")
    kill_driver(first)
    assert_stale_lock_of(output / study, first)
    asked_before = optuna_trials(output / study, study)
    finished_before = [t for t in asked_before if t.state.name in ("COMPLETE", "PRUNED")]
    assert 1 <= len(finished_before) < samples, (
        f"the kill came mid-search: {[(t.number, t.state.name) for t in asked_before]}{first.tail()}")

    second = drivers([*argv, "--resume"], tmp_path / "second.log")
    assert second.finish() == 0, f"--resume failed{second.tail()}"
    log = second.tail()

    trials = pd.read_parquet(output / study / "trials.parquet")
    assert len(trials) == samples and trials["trial_id"].is_unique, (
        f"--num-samples {samples}, the study has {trials['trial_id'].tolist()}{log}")
    assert (trials["status"] == "TERMINATED").all(), f"{trials[['trial_id', 'status', 'error']]}{log}"
    assert_every_epoch_once(output / study, trials, log)
    asked = optuna_trials(output / study, study)
    assert len(asked) <= samples, (
        f"optuna.db holds {len(asked)} trials for --num-samples {samples}: "
        f"{[(t.number, t.state.name, t.params.get('loss')) for t in asked]}{log}")
    for old in asked_before:  # what Optuna had drawn before the kill is kept, not drawn again
        new = next(t for t in asked if t.number == old.number)
        assert {key: new.params[key] for key in old.params} == old.params, (old.number, log)
    for old in finished_before:  # ... and the trials it had finished are in the study, once
        same = [row for row in trials.itertuples(index=False)
                if all(getattr(row, key) == old.params[key] for key in SEARCHED)]
        assert len(same) == 1, f"Optuna trial {old.number} {old.params} in trials.parquet {len(same)} times{log}"
    drawn = [tuple(row) for row in trials[list(SEARCHED)].itertuples(index=False)]
    assert len(set(drawn)) == len(drawn), f"a resumed search draws no parameters twice: {drawn}{log}"
    told = sorted(t.params["lr_pretrain"] for t in asked if t.state.name in ("COMPLETE", "PRUNED"))
    assert told == sorted(trials["lr_pretrain"]), f"Optuna was told of every trial, once{log}"
    client, parent, children = mlflow_study(output / study)
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(trials["trial_id"]), (
        f"one MLflow child run per trial{log}")
    assert parent.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in children), log


# --- 3. a trial's loss diverges ---------------------------------------------------------------------

# Plain SGD with lr * weight_decay = 10 multiplies every weight by (1 - 10) = -9 per step on top of the
# gradient step: the weights, then the logits, overflow float32 within a few dozen steps. A real
# divergence, no patched loss; batches of 4 make it happen in pre-training epoch 2 on the smoke data.
DIVERGES = {"optimizer": "sgd", "lr_pretrain": 10.0, "momentum": 0.9, "weight_decay": 1.0, "batch_size": 4}


def ray_trials(storage: Path, study: str) -> dict[str, Any]:
    """Trial id -> Ray's own record of the trial (status, num_failures), from the experiment state."""
    from ray.tune import ExperimentAnalysis

    return {trial.trial_id: trial for trial in ExperimentAnalysis(str(storage / study)).trials}


def test_a_diverging_trial_runs_once_fails_with_its_message_and_a_resume_leaves_it_alone(tmp_path, drivers):
    preset = fault_preset("diverges", {"Diverges": DIVERGES, "CompleteLabels": {}}, epochs_pretrain=3,
                          epochs_finetune=2)
    output, storage, study = tmp_path / "results", tmp_path / "results" / "ray", "diverges"
    driver = drivers(preset_argv(preset, output, "--max-concurrent", "2"), tmp_path / "driver.log")
    # exit code 1: a trial ended in error (README "Exit codes"); the driver still ran the study to its end
    assert driver.finish() == 1, f"the driver stops on a failed trial, or exits 0 despite it{driver.tail()}"
    log = driver.tail()

    # The divergence is deterministic: the same config outside Ray fails with the same message.
    from trainables.config import PretrainFinetuneConfig
    from trainables.pretrain_finetune import run

    params = next(json.loads(p.read_text()) for p in (storage / study).glob("*/params.json")
                  if json.loads(p.read_text())["condition"] == "Diverges")
    with pytest.raises(FloatingPointError) as raised:
        run(PretrainFinetuneConfig.from_dict({**params, "pretrain_cache": ""}), report=lambda metrics, state: None)
    message = str(raised.value)
    assert "non-finite" in message and "nan" in message.lower(), message

    trials = pd.read_parquet(output / study / "trials.parquet").set_index("condition")
    bad = trials.loc["Diverges", "trial_id"]
    # It ran exactly once: Ray counted no failure, so it never retried it (the default --max-failures is
    # 10), and every report it made came from one start (Ray restarts the count on each restore).
    ray_trial = ray_trials(storage, study)[bad]
    assert str(ray_trial.status) == "TERMINATED" and ray_trial.num_failures == 0, (
        f"{ray_trial.status}, {ray_trial.num_failures} failures{log}")
    first = reports(storage, study)[bad]
    assert [r["iterations_since_restore"] for r in first] == [1, 2], f"reports of one start: {first}{log}"
    assert first[0]["epoch_total"] == 1 and first[-1]["diverged"] == 1 and first[-1]["diverged_message"] == message
    console = (tmp_path / "driver.log").read_text(errors="replace")
    assert f"DIVERGED {bad}" in console and "Traceback" not in console, f"one line, no traceback{log}"

    assert trials.loc["Diverges", "status"] == "ERROR" and trials.loc["Diverges", "diverged"] == 1, (
        f"{trials[['status', 'error', 'diverged']]}{log}")
    assert trials.loc["Diverges", "error"] == message, f"error column: {trials.loc['Diverges', 'error']!r}{log}"
    assert trials.loc["CompleteLabels", "status"] == "TERMINATED" and trials.loc["CompleteLabels", "error"] == "", log
    assert trials.loc["CompleteLabels", "diverged"] == 0, log
    assert math.isfinite(trials.loc["CompleteLabels", "objective"]), log
    history = pd.read_parquet(output / study / "history.parquet")
    diverged = history.loc[history["trial_id"] == bad]
    assert diverged["epoch_total"].tolist() == [1], f"epoch 1 only: the NaN epoch is not a row{log}"
    assert diverged["pretrain/train_loss"].map(math.isfinite).all(), f"no NaN epoch is reported{log}"

    client, parent, children = mlflow_study(output / study)
    runs = {run.data.tags["condition"]: run for run in children}
    failed = runs["Diverges"]
    assert failed.info.status == "FAILED" and failed.data.tags["status"] == "FAILED", log
    assert failed.data.tags["error"] == message, f"MLflow error tag: {failed.data.tags['error'][-500:]!r}{log}"
    assert [(m.step, m.value) for m in client.get_metric_history(failed.info.run_id, "diverged")] == [(2, 1.0)], log
    assert runs["CompleteLabels"].info.status == "FINISHED", log
    assert parent.info.status == "FINISHED", f"every trial ended, so the study did: {parent.info.status}{log}"

    # --resume (Ray's resume_errored) reruns errored trials; the diverged one ended, so it stays as it is.
    resumed = drivers(preset_argv(preset, output, "--max-concurrent", "2", "--resume"), tmp_path / "resume.log")
    assert resumed.finish() == 1, f"still one failed trial{resumed.tail()}"
    log = resumed.tail()
    assert f"start  {bad}" not in log, f"the diverged trial started again{log}"
    assert reports(storage, study)[bad] == first, f"the diverged trial reported again{log}"
    assert ray_trials(storage, study)[bad].num_failures == 0, log
    again = pd.read_parquet(output / study / "trials.parquet").set_index("condition")
    assert again.loc["Diverges", ["status", "error", "diverged"]].tolist() == ["ERROR", message, 1], log
    client, parent, children = mlflow_study(output / study)
    assert sorted(r.data.tags["condition"] for r in children) == ["CompleteLabels", "Diverges"], log
    assert {r.data.tags["condition"]: r.info.status for r in children}["Diverges"] == "FAILED", log
