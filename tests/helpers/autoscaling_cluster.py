"""An autoscaling GPU cluster in miniature, on this machine: the node types of ``cluster.yaml``, a real
Ray autoscaler, and "nodes" it launches and terminates itself (Ray's fake multi-node provider).

``autoscaling_cluster(tmp_path)`` reads the head and GPU-worker node types from ``cluster.yaml``
(``resources``, ``min_workers``, ``max_workers``), scales them to a 2-core machine (fewer CPUs, the same
GPU count as *logical* GPUs, fewer workers, an idle timeout of seconds) and starts a head node whose
autoscaler launches those workers when trials are pending and terminates them once idle.

Why not ``ray.cluster_utils.AutoscalingCluster`` itself: in Ray 2.60 its constructor reads
``fake_multi_node/example.yaml``, which the wheel does not ship (FileNotFoundError), and its
``start()``/``shutdown()`` run ``ray stop --force``, which kills every Ray process of the machine. This
helper does what ``start()`` does (``RAY_FAKE_CLUSTER=1``, ``AUTOSCALER_UPDATE_INTERVAL_S=1``,
``ray start --head --autoscaling-config=...``) with a full config of its own, and stops only its own
processes. The provider launches each worker as a ``ray._private.node.Node`` inside the autoscaler's
monitor process, so every worker process descends from the head's ``ray start`` and shares its temp dir.

Token authentication stays on: the head, its monitor, the workers it launches and every driver get
``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` of a fresh token file; nothing reads ~/.ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from tempfile import mkdtemp
from types import MappingProxyType
from typing import Any

import psutil
import yaml

from helpers.ray_cluster import (
    OBJECT_STORE_BYTES,
    START_TIMEOUT_S,
    _logs_report,
    _start_node,
    _stop,
    _wait_for_address,
    _write_token,
    free_port,
)

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
# Scaled to a 2-core machine: logical CPUs only (Ray does not enforce them), so a GPU worker keeps
# room for two 1-CPU trials sharing its GPU, and at most 3 workers run at once.
WORKER_CPUS = 2
HEAD_CPUS = 1
MOST_WORKERS = 3
IDLE_TIMEOUT_MINUTES = 0.25  # 15 s instead of cluster.yaml's 10 min
HEAD_ATTEMPTS = 3
HEARTBEAT_TIMEOUT_S = 20  # not less: a loaded machine delays healthy heartbeats too
# The monitor writes its first status once the raylets have reported load: until then a driver could
# not tell this cluster autoscales.
STATUS_KEY = "__autoscaling_status"

# Run by a driver subprocess for as long as the test needs it: one JSON line per change of the cluster's
# nodes, {"t": unix time, "nodes": {node id: {"alive", "type", "GPU", "CPU"}}}. The first line is
# printed once the autoscaler has published its status.
_WATCH = """
import json, sys, time
import ray
from ray.experimental.internal_kv import _internal_kv_get

ray.init(logging_level="ERROR", log_to_driver=False)
while not _internal_kv_get(sys.argv[1]):
    time.sleep(0.5)
last = None
while True:
    nodes = {n["NodeID"]: {"alive": n["Alive"], "type": n.get("Labels", {}).get("ray.io/node-group", ""),
                          "GPU": n["Resources"].get("GPU", 0), "CPU": n["Resources"].get("CPU", 0)}
             for n in ray.nodes()}
    if nodes != last:
        print("NODES", json.dumps({"t": time.time(), "nodes": nodes}), flush=True)
        last = nodes
    time.sleep(0.5)
"""


@dataclass(frozen=True)
class NodeTypes:
    """Node types as a cluster config declares them.

    Attributes:
        head: name of the head node type.
        workers: worker type name -> {"resources": {...}, "min_workers": int, "max_workers": int}.
        max_workers: the config's global cap on workers.
    """

    head: str
    workers: Mapping[str, Mapping[str, Any]]
    max_workers: int


def declared_node_types(path: Path = CLUSTER_YAML) -> NodeTypes:
    """The head and worker node types of a Ray cluster-launcher config (``cluster.yaml``)."""
    config = yaml.safe_load(path.read_text())
    head = config["head_node_type"]
    workers = {
        name: {"resources": dict(spec.get("resources", {})), "min_workers": int(spec.get("min_workers", 0)),
               "max_workers": int(spec.get("max_workers", config["max_workers"]))}
        for name, spec in config["available_node_types"].items() if name != head
    }
    return NodeTypes(head=head, workers=MappingProxyType(workers), max_workers=int(config["max_workers"]))


def scaled_node_types(declared: NodeTypes) -> NodeTypes:
    """The GPU worker types scaled to this machine: WORKER_CPUS logical CPUs, the declared GPUs (logical
    here), the declared min_workers, at most MOST_WORKERS workers, a small object store each."""
    workers = {}
    for name, spec in declared.workers.items():
        gpus = spec["resources"].get("GPU", 0)
        if gpus <= 0:
            continue
        workers[name] = {
            "resources": {"CPU": min(WORKER_CPUS, spec["resources"].get("CPU", WORKER_CPUS)), "GPU": gpus,
                          "object_store_memory": OBJECT_STORE_BYTES},
            "min_workers": spec["min_workers"],
            "max_workers": min(spec["max_workers"], MOST_WORKERS),
        }
    if not workers:
        raise ValueError(f"no node type with GPUs among {sorted(declared.workers)}: nothing to simulate")
    return NodeTypes(head=declared.head, workers=MappingProxyType(workers),
                     max_workers=min(declared.max_workers, MOST_WORKERS))


def fake_provider_config(types: NodeTypes, gcs_address: str, idle_timeout_minutes: float) -> dict[str, Any]:
    """A complete autoscaler config for Ray's fake multi-node provider (what example.yaml would fill)."""
    node_types = {name: {**spec, "node_config": {}} for name, spec in types.workers.items()}
    node_types[types.head] = {"resources": {}, "node_config": {}, "max_workers": 0}
    empty_lists = ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                   "setup_commands", "head_setup_commands", "worker_setup_commands",
                   "head_start_ray_commands", "worker_start_ray_commands")
    return {
        "cluster_name": "noisy-transfer-simulated",
        "max_workers": types.max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "auth": {},
        # gcs_address: without it the provider points its nodes at port 6379, which may be anyone's.
        # launch_multiple: without it the provider launches one node per request whatever the count
        # asked, and the autoscaler, short of nodes, launches more later (one too many, seen here).
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "launch_multiple": True,
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": node_types,
        "head_node_type": types.head,
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **{key: [] for key in empty_lists},
    }


@dataclass
class SimulatedCluster:
    """A running simulated autoscaling cluster.

    Attributes:
        address: ``host:port`` of the head's GCS, the value RAY_ADDRESS must hold.
        env: environment for a driver subprocess (RAY_ADDRESS and token auth set): ``dict(cluster.env)``.
        types: the scaled node types the autoscaler launches.
        temp_dir: the Ray temp dir of the head and of every worker it launches.
        head_pid: pid of the head's ``ray start --block`` process (every node descends from it).
        events: the node timeline so far, ``(unix time, {node id: state})`` per change (see :meth:`poll`).
    """

    address: str
    env: Mapping[str, str]
    types: NodeTypes
    temp_dir: Path
    head_pid: int
    watcher: subprocess.Popen
    events: list[tuple[float, dict[str, dict[str, Any]]]]
    _pending: str = ""

    def poll(self) -> dict[str, dict[str, Any]]:
        """Read the watcher's new lines into ``events``; the latest {node id: state}."""
        while True:
            try:
                chunk = os.read(self.watcher.stdout.fileno(), 1 << 16)  # non-blocking: see _start_watcher
            except BlockingIOError:
                break
            if not chunk:
                break
            self._pending += chunk.decode(errors="replace")
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.startswith("NODES "):
                record = json.loads(line.removeprefix("NODES "))
                self.events.append((record["t"], record["nodes"]))
        if self.watcher.poll() is not None and not self.events:
            raise RuntimeError(f"the node watcher exited with status {self.watcher.returncode}")
        return self.events[-1][1] if self.events else {}

    def gpu_workers(self, alive: bool = True) -> list[str]:
        """Ids of the nodes with GPUs (the workers the autoscaler launched), alive ones by default. A dead
        node reports no resources, so a node counts as a GPU worker if it ever reported a GPU."""
        latest = self.poll()
        gpus = self.node_gpus()
        return [node for node, state in latest.items() if gpus.get(node, 0) > 0 and state["alive"] == alive]

    def node_gpus(self) -> dict[str, float]:
        """GPUs each node reported while alive, for every node seen so far."""
        return {node: state["GPU"] for _, nodes in self.events for node, state in nodes.items() if state["alive"]}

    def wait_until(self, condition, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll the node timeline until ``condition()`` holds; RuntimeError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            self.poll()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {timeout_s} s; nodes: {self.poll()}")
            time.sleep(0.5)

    def preempt(self, node_id: str) -> list[int]:
        """SIGKILL every process of worker ``node_id`` (raylet, its trial workers, its agents) at once,
        as a reclaimed spot instance vanishes; returns their pids. The autoscaler is not told."""
        doomed = _processes_of_node(node_id)
        if not doomed:
            raise RuntimeError(f"no process of node {node_id} found: nothing was preempted")
        for proc in doomed:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(doomed, timeout=30)
        return [proc.pid for proc in doomed]

    def timeline(self) -> list[str]:
        """The node events as readable lines: seconds since the first event, node id tail, change."""
        lines, before, gpus = [], {}, self.node_gpus()
        start = self.events[0][0] if self.events else 0.0
        for stamp, nodes in self.events:
            for node, state in nodes.items():
                if before.get(node, {}).get("alive") != state["alive"]:
                    kind = f"GPU worker, {gpus.get(node, 0):g} GPU" if gpus.get(node, 0) else "head"
                    change = "up" if state["alive"] else "gone"
                    lines.append(f"{stamp - start:7.1f} s  node ..{node[-5:]} ({kind}) {change}")
            before = nodes
        return lines


def nodes_running_trials() -> list[str]:
    """Node ids of the raylets whose worker processes host a Ray Tune trial (titled ray::ImplicitFunc)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if not (cmdline and cmdline[0].startswith("ray::ImplicitFunc")):
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            raylet = proc.parent()
            flags = [a for a in (raylet.cmdline() if raylet else []) if a.startswith(("--node_id=", "--node-id="))]
            found += [flag.partition("=")[2] for flag in flags]
    return sorted(set(found))


def _processes_of_node(node_id: str) -> list[psutil.Process]:
    """Processes whose command line names ``node_id`` (raylet, agents), with their descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if any(node_id in part for part in proc.info["cmdline"] or ()):
            with contextlib.suppress(psutil.NoSuchProcess):
                for each in [proc, *proc.children(recursive=True)]:
                    found[each.pid] = each
    return list(found.values())


def _head_args(temp_dir: Path, port: int, config_path: Path) -> list[str]:
    # no --ray-client-server-port: `ray start` refuses it without ray[client] (see ray_cluster.py)
    return [
        "--head", "--block", f"--port={port}", f"--autoscaling-config={config_path}",
        f"--num-cpus={HEAD_CPUS}", "--num-gpus=0", f"--temp-dir={temp_dir}",
        f"--object-store-memory={OBJECT_STORE_BYTES}", "--include-dashboard=false",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats",
    ]


def _start_watcher(env: Mapping[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as err:  # the child keeps its own copy of the descriptor
        watcher = subprocess.Popen([sys.executable, "-c", _WATCH, STATUS_KEY], env=dict(env),
                                   stdout=subprocess.PIPE, stderr=err)
    os.set_blocking(watcher.stdout.fileno(), False)
    return watcher


def _start_head(tmp_path: Path, node_env: Mapping[str, str], config: Path, port: int, attempt: int,
                nodes: list[subprocess.Popen], temp_dir: Path) -> str:
    """Start the head (appended to ``nodes``); its GCS address once it is up."""
    start_log = tmp_path / f"ray_start_head.{attempt}.log"
    nodes.append(_start_node(_head_args(temp_dir, port, config), node_env, start_log))
    try:
        return _wait_for_address(nodes[-1], temp_dir, time.monotonic() + START_TIMEOUT_S)
    except RuntimeError as err:
        raise RuntimeError(f"{err}\n{_logs_report(temp_dir, [start_log])}") from err


def _keep_logs(temp_dir: Path, tmp_path: Path, attempt: int) -> None:
    logs_dir = temp_dir / "session_latest" / "logs"
    if logs_dir.is_dir():
        shutil.copytree(logs_dir, tmp_path / f"ray_logs.{attempt}", dirs_exist_ok=True, ignore_dangling_symlinks=True)
    shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def autoscaling_cluster(tmp_path: Path, idle_timeout_minutes: float = IDLE_TIMEOUT_MINUTES,
                        config_path: Path = CLUSTER_YAML) -> Iterator[SimulatedCluster]:
    """Start the simulated autoscaling cluster of ``config_path``'s node types; stop all of it on exit.

    Only the head starts here (its min_workers are 0, as in cluster.yaml); the autoscaler launches GPU
    workers for pending tasks and terminates them after ``idle_timeout_minutes`` idle. Yields once the
    autoscaler has published its first status. Teardown kills, by pid, the head, every worker node, the
    watcher and any process naming the temp dir, also when the body raises; never ``ray stop``.

    The head is started up to HEAD_ATTEMPTS times: Ray 2.60's raylet aborts when its dashboard agent has
    not written its port file within 15 s (``NodeManager::WaitForDashboardAgentPorts``, not configurable
    and not skipped by ``--include-dashboard=false``), which a heavily loaded 2-core machine can miss.
    """
    from ray._private import services

    token_path = tmp_path / "auth_token"
    _write_token(token_path)
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    node_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path),
                "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                # a worker silent this long is terminated and replaced (Ray's default: 30 s)
                "AUTOSCALER_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S)}
    types = scaled_node_types(declared_node_types(config_path))
    for attempt in range(1, HEAD_ATTEMPTS + 1):
        port = free_port()
        config = tmp_path / f"autoscaler.{attempt}.json"
        gcs_address = f"{services.get_node_ip_address()}:{port}"
        config.write_text(json.dumps(fake_provider_config(types, gcs_address, idle_timeout_minutes)))
        temp_dir = Path(mkdtemp(prefix="ra-", dir="/tmp"))
        nodes: list[subprocess.Popen] = []
        try:
            address = _start_head(tmp_path, node_env, config, port, attempt, nodes, temp_dir)
            break
        except RuntimeError:
            try:
                _stop(nodes, [temp_dir])
            finally:
                _keep_logs(temp_dir, tmp_path, attempt)
            if attempt == HEAD_ATTEMPTS:
                raise
    watcher = None
    try:
        driver_env = {k: v for k, v in node_env.items() if k != "RAY_FAKE_CLUSTER"}
        driver_env["RAY_ADDRESS"] = address
        watcher = _start_watcher(driver_env, tmp_path / "watcher.log")
        cluster = SimulatedCluster(address, MappingProxyType(driver_env), types, temp_dir, nodes[0].pid, watcher, [])
        try:
            cluster.wait_until(lambda: cluster.poll(), "autoscaler status")
        except RuntimeError as err:
            raise RuntimeError(f"{err}\n{_logs_report(temp_dir, [tmp_path / 'watcher.log'])}") from err
        yield cluster
    finally:
        try:
            if watcher is not None:
                watcher.kill()
                watcher.wait(30)
            _stop(nodes, [temp_dir])
        finally:
            _keep_logs(temp_dir, tmp_path, attempt)
