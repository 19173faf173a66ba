"""Real studies on a GPU cluster in miniature: cluster.yaml's node types, a real Ray autoscaler and GPU
workers it launches and terminates itself (``helpers.autoscaling_cluster``), all on this machine.

Each study is the real command line (``study/run.py``) in a subprocess that reaches the cluster through
RAY_ADDRESS and the cluster's token. The GPUs are logical (this machine has no CUDA device), so the
trials train on the CPU (``select_device``) while Ray schedules, packs and autoscales them by GPU as on
AWS. Each test prints its timeline (``pytest -s`` shows it): nodes up and gone, trials and their nodes.
Also here: ``select_device`` on a node with logical GPUs only, and on a real GPU node.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.autoscaling_cluster import (
    SimulatedCluster,
    autoscaling_cluster,
    declared_node_types,
    nodes_running_trials,
)
from test_faults import (
    assert_every_epoch_once,
    checkpoints,
    fault_preset,
    preset_argv,
    reports,
)

from study.driver import SHARED_STORAGE_ENV
from trainables import runtime

ROOT = Path(__file__).resolve().parents[1]
STUDY_TIMEOUT_S = 480  # a generous bound for a loaded shared machine, not a timing assertion
TAIL_CHARS = 3000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimulatedCluster]:
    """The simulated autoscaling cluster, head only at first; all of it stopped at the end, pass or fail."""
    with autoscaling_cluster(tmp_path) as running:
        yield running


class Study:
    """A study driver subprocess against the cluster; killed at teardown if still running."""

    def __init__(self, argv: list[str], cluster: SimulatedCluster, log: Path, shared: Path) -> None:
        self.log = log
        # every simulated node runs on this machine, so this folder is truly the same on all of them
        env = {**cluster.env, SHARED_STORAGE_ENV: str(shared)}
        with open(log, "w") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def tail(self) -> str:
        return f"\n--- driver log, last {TAIL_CHARS} chars ---\n{self.log.read_text(errors='replace')[-TAIL_CHARS:]}"

    def finish(self, cluster: SimulatedCluster) -> int:
        deadline = time.monotonic() + STUDY_TIMEOUT_S
        while self.proc.poll() is None:
            cluster.poll()  # keep the node timeline current while the study runs
            assert time.monotonic() < deadline, f"study not done in {STUDY_TIMEOUT_S} s{self.tail()}"
            time.sleep(0.5)
        return self.proc.returncode


@pytest.fixture
def studies() -> Iterator:
    started: list[Study] = []

    def start(argv: list[str], cluster: SimulatedCluster, log: Path, shared: Path) -> Study:
        started.append(Study(argv, cluster, log, shared))
        return started[-1]

    yield start
    for study in started:
        if study.proc.poll() is None:
            study.proc.kill()
            study.proc.wait(30)


def _most_at_once(trials: list[list[dict]]) -> int:
    """The most of ``trials`` (each its list of reports) that ran at the same moment: a trial runs from
    its first report's time less that report's time_total_s until its last report."""
    edges = sorted(edge for rs in trials
                   for edge in ((rs[0]["timestamp"] - rs[0]["time_total_s"], 1), (rs[-1]["timestamp"], -1)))
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def _trial_lines(results: dict[str, list[dict]], start: float) -> list[str]:
    """One timeline line per report: seconds since ``start``, trial, epoch, node id tail, pid."""
    rows = [(r["timestamp"], trial, r["epoch_total"], r["node_id"][-5:], r["pid"])
            for trial, rs in results.items() for r in rs]
    return [f"{t - start:7.1f} s  trial {trial} epoch {epoch} on node ..{node} (pid {pid})"
            for t, trial, epoch, node, pid in sorted(rows)]


def _print_timeline(title: str, cluster: SimulatedCluster, results: dict[str, list[dict]]) -> None:
    start = cluster.events[0][0]
    lines = sorted(cluster.timeline() + _trial_lines(results, start), key=lambda line: float(line.split()[0]))
    print(f"\n=== timeline: {title} ===\n" + "\n".join(lines))


@pytest.mark.slow
def test_the_autoscaler_launches_gpu_workers_for_pending_trials_packs_two_per_gpu_and_scales_down(
        cluster, studies, tmp_path):
    declared = declared_node_types()
    gpu_type = next(name for name, spec in declared.workers.items() if spec["resources"].get("GPU"))
    assert declared.workers[gpu_type]["min_workers"] == 0 and cluster.gpu_workers() == [], (
        "the cluster starts with its head only, as cluster.yaml's does")
    gpus_per_worker = cluster.types.workers[gpu_type]["resources"]["GPU"]
    assert gpus_per_worker == declared.workers[gpu_type]["resources"]["GPU"]

    preset = fault_preset("packed", {"CompleteLabels": {}, "RandomWeights": {}}, epochs_pretrain=1,
                          epochs_finetune=2)
    preset["seeds"] = 2  # 4 trials of half a GPU: two GPU workers' worth
    output = tmp_path / "results"
    shared = tmp_path / "shared"
    argv = preset_argv(preset, output, "--storage", str(shared), "--gpus-per-trial", "0.5", "--cpus-per-trial", "1")
    study = studies(argv, cluster, tmp_path / "driver.log", shared)
    assert study.finish(cluster) == 0, study.tail()

    results = reports(shared, "packed")
    trials = pd.read_parquet(output / "packed" / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all(), trials[["trial_id", "status", "error"]]
    assert sorted(results) == sorted(trials["trial_id"]), study.tail()
    gpu_nodes = cluster.node_gpus()
    node_of = {trial: {r["node_id"] for r in rs} for trial, rs in results.items()}
    assert all(len(nodes) == 1 for nodes in node_of.values()), node_of
    used = [next(iter(nodes)) for nodes in node_of.values()]
    # every trial ran on a GPU worker the autoscaler launched, never on the GPU-less head
    assert all(gpu_nodes.get(node, 0) == gpus_per_worker for node in used), (used, gpu_nodes)
    # two trials shared a GPU at once, and never more than its two halves. (How many workers the
    # autoscaler launches is not asserted: 2 are needed, but a launch that fails on a loaded machine is
    # retried, and a late replacement may come up after all trials were placed.)
    workers = sorted(node for node, gpus in gpu_nodes.items() if gpus > 0)
    assert len(workers) <= cluster.types.max_workers, workers
    most = {node: _most_at_once([results[t] for t, n in node_of.items() if node in n]) for node in set(used)}
    assert max(most.values()) == 2 and all(1 <= m <= 2 for m in most.values()), most
    assert_every_epoch_once(output / "packed", trials, study.tail())

    # idle workers are terminated after the (scaled) idle timeout, the head stays
    cluster.wait_until(lambda: not cluster.gpu_workers(), "scale-down of the idle GPU workers")
    assert sorted(cluster.gpu_workers(alive=False)) == workers
    _print_timeline("autoscaling from zero, two trials per GPU", cluster, results)


EPOCHS = 42  # of the preempted trial, both phases


@pytest.mark.slow
def test_a_preempted_gpu_worker_costs_only_the_epochs_since_the_last_checkpoint(cluster, studies, tmp_path):
    # 42 epochs of ~0.5 s on an idle core: the trial must still be running when its second checkpoint
    # is seen and the node is lost (with 6, a reused worker finished the whole trial first).
    preset = fault_preset("preempted", {"CompleteLabels": {}}, epochs_pretrain=2, epochs_finetune=EPOCHS - 2)
    output, shared = tmp_path / "results", tmp_path / "shared"
    argv = preset_argv(preset, output, "--storage", str(shared), "--gpus-per-trial", "1", "--cpus-per-trial", "1")
    study = studies(argv, cluster, tmp_path / "driver.log", shared)

    # two epochs checkpointed in the shared storage: the worker's spot instance is reclaimed
    def second_checkpoint() -> bool:
        assert study.proc.poll() is None, f"the study ended before its second checkpoint{study.tail()}"
        return max(checkpoints(shared, "preempted").values(), default=-1) >= 1

    cluster.wait_until(second_checkpoint, "second checkpoint of the trial", STUDY_TIMEOUT_S)
    (lost,) = [node for node in nodes_running_trials() if node in cluster.gpu_workers()]
    lost_at = time.time()
    killed = cluster.preempt(lost)
    assert study.finish(cluster) == 0, study.tail()

    ((trial_id, results),) = reports(shared, "preempted").items()
    nodes = [r["node_id"] for r in results]
    assert nodes[0] == lost and nodes[-1] != lost, f"the trial resumed on another node: {nodes}{study.tail()}"
    # Not the head (the node that reported no GPU). The node watcher may not see the new worker: it is
    # a driver on one of the simulated raylets and can stop seeing nodes when that raylet is the one lost.
    heads = [node for node, gpus in cluster.node_gpus().items() if gpus == 0]
    assert heads and nodes[-1] not in heads, f"it resumed on a GPU worker, not the head {heads}"
    assert {r["pid"] for r in results if r["node_id"] == lost} <= set(killed)
    # Ray's reports: epochs 1..k on the lost node, each reported with its checkpoint, then k+1..EPOCHS on the
    # new node: the restart began at the last checkpoint, and the loss was the epoch in progress only
    # (or, in the window below, the last reported epoch as well)
    epochs = [(r["epoch_total"], r["node_id"][-5:]) for r in results]
    done_there = [r["epoch_total"] for r in results if r["node_id"] == lost]
    resumed = [r["epoch_total"] for r in results if r["node_id"] != lost]
    # At least epoch 1: the wait above sees the second checkpoint in the storage, which the worker writes
    # before its report reaches the driver; a node lost in between leaves Ray's log with epoch 1 only from
    # there (seen under load, 2026-12-01), and the restart from epoch 1's checkpoint reruns epoch 2.
    assert len(done_there) >= 1 and done_there == list(range(1, len(done_there) + 1)), epochs
    # Ray restores from the last checkpoint its driver registered. A checkpoint is in the storage before the
    # driver has registered it, and the node can die in between: then the last reported epoch runs again
    # (seen under load in CI). Anything older than that is a lost checkpoint.
    assert resumed[0] in (done_there[-1], done_there[-1] + 1), epochs
    assert resumed == list(range(resumed[0], EPOCHS + 1)), epochs
    trials = pd.read_parquet(output / "preempted" / "trials.parquet")
    assert trials["status"].tolist() == ["TERMINATED"] and trials["trial_id"].tolist() == [trial_id]
    assert_every_epoch_once(output / "preempted", trials, study.tail())
    print(f"\n(node ..{lost[-5:]} preempted at {lost_at - cluster.events[0][0]:.1f} s)")
    _print_timeline("a GPU worker lost mid-trial", cluster, {trial_id: results})


@pytest.mark.slow
def test_node_local_storage_is_refused_on_an_autoscaling_cluster_before_any_trial_starts(cluster, tmp_path):
    assert cluster.gpu_workers() == [] and len(cluster.poll()) == 1, "only the head node is up"
    local = tmp_path / "node-local"
    argv = [sys.executable, str(ROOT / "study" / "run.py"), "--preset", "quick", "--smoke",
            "--gpus-per-trial", "0.5", "--output", str(tmp_path / "results"), "--storage", str(local)]
    done = subprocess.run(argv, cwd=ROOT, env=dict(cluster.env), capture_output=True, text=True, check=False,
                          timeout=STUDY_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-TAIL_CHARS:]
    assert f"--storage {local} is a node-local path" in output and "autoscales" in output, output[-TAIL_CHARS:]
    assert "ray.head.default" in output, output[-TAIL_CHARS:]
    assert not local.exists() or not any(local.rglob("result.json")), "no trial may have started"
    assert cluster.gpu_workers() == [] and cluster.gpu_workers(alive=False) == [], "no worker was launched"


# --- select_device on logical GPUs ------------------------------------------------------------------


class _RayGaveGpu:
    def __init__(self, gpu_ids: list) -> None:
        self.gpu_ids = gpu_ids

    def is_initialized(self) -> bool:
        return True

    def get_gpu_ids(self) -> list:
        return self.gpu_ids


@pytest.mark.parametrize(("cuda", "expected"), [(False, "cpu"), (True, "cuda")])
def test_a_trial_given_a_logical_gpu_trains_on_the_cpu_and_says_so_once(monkeypatch, capsys, cuda, expected):
    import ray

    fake = _RayGaveGpu(["7"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(ray, "is_initialized", fake.is_initialized)
    monkeypatch.setattr(ray, "get_gpu_ids", fake.get_gpu_ids)
    runtime._say_logical_gpus_only.cache_clear()
    devices = [runtime.select_device() for _ in range(3)]
    assert devices == [torch.device(expected)] * 3
    said = capsys.readouterr().err.count("has no CUDA device (its GPUs are logical only): training on the CPU")
    assert said == (0 if cuda else 1), "once per worker on a logical-GPU node, never on a real GPU node"
    assert (runtime._say_logical_gpus_only.cache_info().currsize == 1) == (not cuda)


# --- the shared-storage rule, without a cluster ------------------------------------------------------


def _status(mapping: dict[str, str]) -> bytes:
    return json.dumps({"autoscaler_report": {"node_type_mapping": mapping}}).encode()


@pytest.mark.parametrize(("mapping", "expected"), [
    ({"ab12": "ray.head.default"}, ["ray.head.default"]),   # `ray up`: types from the cluster config
    ({"ab12": "node_ab12", "cd34": "node_cd34"}, []),       # `ray start` by hand / local Ray: read-only
])
def test_an_autoscaling_cluster_is_told_apart_by_the_node_types_its_autoscaler_reports(
        monkeypatch, mapping, expected):
    from ray._private import state
    from ray.experimental import internal_kv

    from study import driver

    monkeypatch.setattr(state.state, "get_cluster_config", lambda: None)
    monkeypatch.setattr(internal_kv, "_internal_kv_get", lambda key: _status(mapping))
    assert driver._autoscaled_node_types() == expected


def test_node_local_storage_passes_only_where_it_is_declared_shared(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import ray

    from study import driver
    from study.spec import StudyError

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {}}])
    monkeypatch.setattr(driver, "_autoscaled_node_types", lambda: ["ray.head.default", "ray.worker.gpu"])
    spec = SimpleNamespace(storage=str(tmp_path / "shared" / "study"), storage_is_remote=False, gpus_per_trial=0.5)
    monkeypatch.delenv(SHARED_STORAGE_ENV, raising=False)
    with pytest.raises(StudyError, match=r"node-local path.*autoscales \(node types ray.head.default, ray.worker"):
        driver.check_cluster(spec, started_local_ray=False)
    monkeypatch.setenv(SHARED_STORAGE_ENV, f"{tmp_path / 'elsewhere'}:{tmp_path / 'shared'}")
    driver.check_cluster(spec, started_local_ray=False)  # declared shared: accepted
    monkeypatch.setenv(SHARED_STORAGE_ENV, str(tmp_path / "shar"))  # a prefix of the name is not a parent
    with pytest.raises(StudyError, match=SHARED_STORAGE_ENV):
        driver.check_cluster(spec, started_local_ray=False)
    monkeypatch.setattr(driver, "_autoscaled_node_types", list)
    driver.check_cluster(spec, started_local_ray=False)  # one fixed machine: any folder will do
