"""A real noisy-transfer study against a real two-node Ray cluster on this machine.

``study/run.py`` runs as a subprocess that reaches the cluster the way a user's driver does (RAY_ADDRESS
and the cluster's auth token in its environment); ``tmp_path`` stands in for the shared storage, since
both nodes run on this machine. The test then proves trials ran on both nodes, and that the parquet
export and the MLflow store hold every trial exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from helpers.ray_cluster import LocalRayCluster, local_two_node_cluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STUDY = "table1-smoke"  # the folder name `--preset table1 --smoke` gives its study
STUDY_TIMEOUT_S = 400
LOOKUP_TIMEOUT_S = 120
TAIL_CHARS = 3000

# Run by a driver subprocess connected to the cluster: prints the node id of every actor whose pid is
# one of argv[1:], as [pid, node id] pairs, and each node's IP. The trial actors are dead by now; the GCS
# actor table still holds them. The public `ray.util.state.list_actors` / `list_workers` would do, but
# they query the dashboard, which the test cluster does not start.
_NODES_OF_PIDS = """
import json, sys
import ray
from ray._private import state

ray.init(logging_level="ERROR")
pids = {int(pid) for pid in sys.argv[1:]}
pairs = {(a["Pid"], a["Address"]["NodeID"]) for a in state.actors().values() if a["Pid"] in pids}
ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
print(json.dumps({"pairs": sorted(pairs), "ips": ips}))
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalRayCluster]:
    """A head and a second node, 1 CPU each; both stopped when the test ends, pass or fail."""
    with local_two_node_cluster(tmp_path) as running:
        yield running


def _tail(done: subprocess.CompletedProcess) -> str:
    return f"stdout tail:\n{done.stdout[-TAIL_CHARS:]}\nstderr tail:\n{done.stderr[-TAIL_CHARS:]}"


def _trial_reports(trials_root: Path) -> dict[str, list[dict]]:
    """Every report of every trial, keyed by trial folder name, from Ray Tune's result.json lines."""
    return {
        path.parent.name: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for path in sorted(trials_root.glob("*/result.json"))
    }


def test_a_study_on_a_two_node_cluster_runs_trials_on_both_nodes_and_records_each_once(cluster, tmp_path):
    shared = tmp_path / "shared"
    argv = [sys.executable, str(ROOT / "study" / "run.py"), "--preset", "table1", "--smoke",
            "--cpus-per-trial", "1", "--output", str(tmp_path / "results"), "--storage", str(shared)]
    done = subprocess.run(argv, env=dict(cluster.env), capture_output=True, text=True, timeout=STUDY_TIMEOUT_S)
    assert done.returncode == 0, _tail(done)

    reports = _trial_reports(shared / STUDY)
    assert reports and all(reports.values()), f"every trial folder should hold reports: {sorted(reports)}"
    rows = [row for trial in reports.values() for row in trial]
    # each trial is one actor, so one process: a retried trial would show a second pid
    trial_pids = {name: {row["pid"] for row in trial} for name, trial in reports.items()}
    assert all(len(pids) == 1 for pids in trial_pids.values()), trial_pids
    pids = sorted({pid for pids in trial_pids.values() for pid in pids})

    lookup = subprocess.run([sys.executable, "-c", _NODES_OF_PIDS, *map(str, pids)], env=dict(cluster.env),
                            capture_output=True, text=True, timeout=LOOKUP_TIMEOUT_S)
    assert lookup.returncode == 0, _tail(lookup)
    found = json.loads(lookup.stdout.strip().splitlines()[-1])
    node_of: dict[int, set[str]] = {}
    for pid, node_id in found["pairs"]:
        node_of.setdefault(pid, set()).add(node_id)
    assert sorted(node_of) == pids, f"every trial pid should be a Ray actor's: {found['pairs']}"
    assert all(len(nodes) == 1 for nodes in node_of.values()), node_of
    assert set().union(*node_of.values()) == {cluster.head_node_id, cluster.worker_node_id}
    # node_ip alone could not tell the nodes apart: both run on this machine, at the one IP
    node_ips = {found["ips"][cluster.head_node_id], found["ips"][cluster.worker_node_id]}
    assert {row["node_ip"] for row in rows} == node_ips and len(node_ips) == 1

    study_dir = tmp_path / "results" / STUDY
    trials = pd.read_parquet(study_dir / "trials.parquet")
    trial_ids = {row["trial_id"] for row in rows}
    assert trials["trial_id"].is_unique and set(trials["trial_id"]) == trial_ids
    assert len(trials) == len(reports)
    assert (trials["status"] == "TERMINATED").all(), trials[["trial_id", "status", "error"]]

    meta = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    runs = client.search_runs([meta["experiment_id"]], max_results=1000)
    parents = [run for run in runs if run.data.tags.get("noisy_transfer.role") == "study"]
    assert [run.info.run_id for run in parents] == [meta["parent_run_id"]]
    assert parents[0].info.status == "FINISHED"
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == meta["parent_run_id"]]
    assert sorted(run.data.tags["trial_id"] for run in children) == sorted(trial_ids)
    assert set(trials["mlflow_run_id"]) == {run.info.run_id for run in children}
    assert all(run.info.status == "FINISHED" for run in children)
