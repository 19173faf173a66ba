"""A real local two-node Ray cluster with token authentication, driven like the study driver is.

Drivers are subprocesses that connect with a plain ``ray.init()`` (address from RAY_ADDRESS), the way
``study/run.py`` reaches a cluster; the nodes come from ``tests/helpers/ray_cluster.py``. The module's cluster
fixture also checks, from outside, that teardown left no process and no temp dir behind.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from tempfile import mkdtemp

import psutil
import pytest
from helpers import ray_cluster
from helpers.ray_cluster import HEAD_RESOURCE, WORKER_RESOURCE, LocalRayCluster, local_two_node_cluster

pytestmark = pytest.mark.slow

DRIVER_TIMEOUT_S = 180
REFUSED = "Authentication token is missing or incorrect"

# Two tasks pinned to each node through its custom resource; prints the node id each one ran on.
_PINNED_TASKS = """
import json, sys
import ray

ray.init()
head_resource, worker_resource = sys.argv[1:3]

def node_id():
    return ray.get_runtime_context().get_node_id()

on_head = ray.remote(resources={head_resource: 1})(node_id)
on_worker = ray.remote(resources={worker_resource: 1})(node_id)
ran_on = {"head": ray.get([on_head.remote() for _ in range(2)]),
          "worker": ray.get([on_worker.remote() for _ in range(2)])}
print(json.dumps({"ran_on": ran_on, "resources": ray.cluster_resources()}))
"""


def _run_driver(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S
    )


def _cluster_processes(temp_dir: Path) -> list[int]:
    marker = str(temp_dir)
    return [
        proc.pid
        for proc in psutil.process_iter(["cmdline"])
        if any(marker in part for part in proc.info["cmdline"] or ())
    ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalRayCluster]:
    """One cluster for the module; on the way out, checks independently that teardown left nothing."""
    logs = tmp_path_factory.mktemp("ray_cluster")
    with local_two_node_cluster(logs) as running:
        yield running
        nodes = [psutil.Process(pid) for pid in running.node_pids]
        started = nodes + [child for node in nodes for child in node.children(recursive=True)]
        assert _cluster_processes(running.temp_dir), "the cluster's processes should name its temp dir"
    assert [proc.pid for proc in started if proc.is_running()] == []
    assert _cluster_processes(running.temp_dir) == []
    assert not running.temp_dir.exists()
    assert (logs / "ray_logs").is_dir()


def test_tasks_pinned_by_resource_run_on_two_distinct_nodes(cluster):
    done = _run_driver(_PINNED_TASKS, dict(cluster.env), HEAD_RESOURCE, WORKER_RESOURCE)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ran_on"] == {"head": [cluster.head_node_id] * 2, "worker": [cluster.worker_node_id] * 2}
    assert cluster.head_node_id != cluster.worker_node_id
    resources = report["resources"]
    assert (resources["CPU"], resources[HEAD_RESOURCE], resources[WORKER_RESOURCE]) == (2.0, 1.0, 1.0)


@pytest.mark.parametrize("credentials", ["no token", "wrong token"])
def test_driver_without_the_cluster_token_is_refused(cluster, credentials, tmp_path):
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    # An empty HOME: no ~/.ray/auth_token for Ray to fall back on.
    env["HOME"] = str(tmp_path)
    # Fail after ~3 one-second connection attempts instead of Ray's default ~20.
    env["RAY_gcs_server_port_wait_time_s"] = "3"
    if credentials == "wrong token":
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    done = _run_driver("import ray; ray.init(); print('CONNECTED')", env)
    assert done.returncode != 0
    assert "CONNECTED" not in done.stdout
    assert REFUSED in done.stderr


def test_a_head_that_fails_to_start_raises_with_its_log_and_leaves_nothing_running(tmp_path, monkeypatch):
    # Below Ray's minimum object store size: `ray start --head` exits after starting its GCS.
    monkeypatch.setattr(ray_cluster, "OBJECT_STORE_BYTES", 1)
    made: list[str] = []

    def recording_mkdtemp(**kwargs):
        made.append(mkdtemp(**kwargs))
        return made[-1]

    monkeypatch.setattr(ray_cluster, "mkdtemp", recording_mkdtemp)
    with pytest.raises(RuntimeError, match=r"(?s)Ray head exited with status 1 .*minimum allowed is"):
        with local_two_node_cluster(tmp_path):
            pytest.fail("the head should not have come up")
    assert len(made) == 1
    assert _cluster_processes(Path(made[0])) == []
    assert not Path(made[0]).exists()
