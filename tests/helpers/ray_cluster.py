"""A real two-node Ray cluster on this machine, token authentication on, for tests.

``local_two_node_cluster(tmp_path)`` starts a head node and a second node with the ``ray`` CLI of this
interpreter's environment (``ray start --block``, one process per node, so each node has a pid to stop),
waits until both are alive, yields a ``LocalRayCluster`` and always stops both nodes, also when the body
raises. Each node gets 1 CPU and its own custom resource (``node_head`` or ``node_worker``), so a task
can be pinned to either node. With ``dashboard=True`` the head also runs Ray's dashboard on a free
loopback port, which serves Ray Jobs (``ray job submit``; needs ``ray[default]``), and the second node
gets a temp dir of its own, as on another machine: every node unpacks a job's ``--working-dir`` into
its session folder, and the second node's unpacking into a shared one replaced the folder that the
running job driver on the head had as its working directory.

It stays out of the way of any other Ray on the machine: every port is a free one, the Ray temp dir is a
fresh short ``/tmp/rt-*`` (Unix socket paths must stay under ~107 characters, which pytest's tmp_path
can exceed) and teardown never calls ``ray stop``, which would kill every Ray process of the machine.
It ends exactly the processes it started: both ``ray start`` processes, their descendants and any process
whose command line names its temp dir.

The token is a fresh random one in a 0600 file under ``tmp_path``; nodes and drivers find it through
``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` and ``~/.ray/auth_token`` is never touched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from tempfile import mkdtemp
from types import MappingProxyType

import psutil

HEAD_RESOURCE = "node_head"
WORKER_RESOURCE = "node_worker"
START_TIMEOUT_S = 180.0
STOP_GRACE_S = 20.0
# Just above the smallest object store Ray accepts (75 MiB): tests put little in it, and the default
# (30% of RAM per node) would claim shared memory twice over on a small CI runner.
OBJECT_STORE_BYTES = 80 * 1024**2
LOG_TAIL_LINES = 25

# Run by a driver subprocess: connect like the study driver does (plain ray.init(), address from
# RAY_ADDRESS) and print {custom resource: node id} once both nodes are alive, or what is alive at the
# deadline (argv[1], seconds).
_WAIT_FOR_NODES = """
import json, sys, time
import ray

ray.init(logging_level="ERROR")
wanted = sys.argv[2:]
deadline = time.monotonic() + float(sys.argv[1])
while True:
    found = {r: n["NodeID"] for n in ray.nodes() if n["Alive"] for r in wanted if r in n["Resources"]}
    if len(found) == len(wanted) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(found))
"""


@dataclass(frozen=True)
class LocalRayCluster:
    """A running local two-node cluster.

    Attributes:
        address: ``host:port`` of the head's GCS, the value RAY_ADDRESS must hold.
        env: full environment for a driver subprocess: this process's environment plus RAY_ADDRESS,
            RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (pass ``env=dict(cluster.env)``).
        head_node_id: Ray node id (hex) of the head, the node holding ``node_head``.
        worker_node_id: Ray node id (hex) of the second node, holding ``node_worker``.
        temp_dir: the Ray temp dir of the head, shared by both nodes (sessions, logs, sockets) unless
            ``worker_temp_dir`` is set.
        node_pids: pids of the head's and the worker's ``ray start --block`` process.
        dashboard_url: ``http://127.0.0.1:PORT`` of the head's dashboard (the Ray Jobs server), or None
            when the cluster was started without it.
        worker_temp_dir: the second node's own Ray temp dir (with the dashboard), else None.
    """

    address: str
    env: Mapping[str, str]
    head_node_id: str
    worker_node_id: str
    temp_dir: Path
    node_pids: tuple[int, int]
    dashboard_url: str | None = None
    worker_temp_dir: Path | None = None


def ray_cli() -> str:
    """Path of the ``ray`` CLI installed next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("ray")
    if beside.is_file():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise FileNotFoundError(f"no `ray` CLI next to {sys.executable} or on PATH: install ray[tune]")
    return found


_HANDED_OUT: set[int] = set()  # every port free_port gave this test session


def free_port() -> int:
    """A TCP port no process listens on right now (the OS picks it), and one this test session never
    handed out before: a port is free again once its probe closes, and the OS may offer it twice before
    Ray binds it (`ray start` refused its metrics-export port because the dashboard had been given it)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _node_args(temp_dir: Path, resource: str) -> list[str]:
    """`ray start` flags of either node; its agents' ports are free ones, not Ray's fixed defaults."""
    return [
        "--block",
        "--num-cpus=1",
        f"--resources={json.dumps({resource: 1})}",
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--disable-usage-stats",
    ]


def _head_args(temp_dir: Path, dashboard_port: int | None = None) -> list[str]:
    args = ["--head", f"--port={free_port()}"]
    if dashboard_port is None:
        args.append("--include-dashboard=false")
    else:
        args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
    # The Ray Client server starts only where grpc is installed, at 10001 unless told otherwise, and
    # `ray start` refuses the flag where grpc is missing.
    if importlib.util.find_spec("grpc") is not None:
        args.append(f"--ray-client-server-port={free_port()}")
    return args + _node_args(temp_dir, HEAD_RESOURCE)


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


def _tail_file(path: Path) -> str:
    return _tail(path.read_text(errors="replace"))


def _logs_report(temp_dir: Path, start_logs: list[Path]) -> str:
    """Tails of the `ray start` outputs and of the GCS and raylet logs, for a startup error message."""
    logs_dir = temp_dir / "session_latest" / "logs"
    paths = [*start_logs, logs_dir / "gcs_server.out", *sorted(logs_dir.glob("raylet*.out"))]
    paths = [path for path in paths if path.is_file()]
    return "\n".join(f"--- {path} (last {LOG_TAIL_LINES} lines)\n{_tail_file(path)}" for path in paths)


def _start_node(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([ray_cli(), "start", *args], env=dict(env), stdout=out, stderr=subprocess.STDOUT)


def _wait_for_address(head: subprocess.Popen, temp_dir: Path, deadline: float) -> str:
    """The head's GCS address, read from the file `ray start --head` writes into its temp dir once up."""
    address_file = temp_dir / "ray_current_cluster"
    while time.monotonic() < deadline:
        if address_file.is_file() and (address := address_file.read_text().strip()):
            return address
        if head.poll() is not None:
            raise RuntimeError(f"the Ray head exited with status {head.returncode} before it was up")
        time.sleep(0.2)
    raise RuntimeError(f"the Ray head wrote no {address_file.name} within {START_TIMEOUT_S} s")


def _wait_for_nodes(env: Mapping[str, str], deadline: float) -> dict[str, str]:
    """Node id of each custom resource, once both nodes are alive, as seen by a driver subprocess."""
    wanted = [HEAD_RESOURCE, WORKER_RESOURCE]
    remaining = max(deadline - time.monotonic(), 1.0)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _WAIT_FOR_NODES, str(remaining), *wanted],
            env=dict(env),
            capture_output=True,
            text=True,
            # the driver's own connect can take a while on a loaded machine: give it room past the deadline
            timeout=remaining + 60.0,
        )
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"the driver waiting for both nodes hung: {err}") from err
    lines = done.stdout.strip().splitlines()
    found = json.loads(lines[-1]) if done.returncode == 0 and lines else {}
    if set(found) != set(wanted):
        raise RuntimeError(
            f"nodes alive: {found}, wanted one with each of {wanted}; driver exit status "
            f"{done.returncode}, stderr tail:\n{_tail(done.stderr)}"
        )
    return found


def _processes_of(nodes: list[subprocess.Popen], temp_dirs: list[Path]) -> list[psutil.Process]:
    """Every live process this cluster started: the `ray start` processes, their descendants, and any
    process (reparented daemons included) whose command line names one of the cluster's temp dirs."""
    found: dict[int, psutil.Process] = {}
    for node in nodes:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(node.pid)
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc
    markers = [str(temp_dir) for temp_dir in temp_dirs]
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in proc.info["cmdline"] or () for marker in markers):
            found.setdefault(proc.pid, proc)
    return [proc for proc in found.values() if proc.pid != os.getpid()]


def _stop(nodes: list[subprocess.Popen], temp_dirs: list[Path]) -> None:
    """Stop the nodes (worker first), kill whatever of theirs survives; raise if anything still runs."""
    started = _processes_of(nodes, temp_dirs)
    for node in reversed(nodes):
        node.terminate()
        try:
            node.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            # `ray start --block` ignores SIGTERM while its C++ side waits on an unreachable GCS
            node.kill()
            node.wait(STOP_GRACE_S)
    survivors = [proc for proc in started + _processes_of(nodes, temp_dirs) if proc.is_running()]
    for proc in survivors:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _, alive = psutil.wait_procs(survivors, timeout=STOP_GRACE_S)
    if alive:
        raise RuntimeError(f"Ray processes still running after teardown: {[p.pid for p in alive]}")


def _wait_for_dashboard(url: str, env: Mapping[str, str], deadline: float) -> None:
    """Return once the dashboard's job server answers (its version route, with the cluster's token)."""
    import urllib.request

    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 200:
                    return
        except OSError as err:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard at {url} did not answer within {START_TIMEOUT_S} s: {err}")
        time.sleep(0.5)


def _write_token(path: Path) -> None:
    """A fresh token, as `ray get-auth-token --generate` makes one (256 random bits, hex), owner-only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))


@contextlib.contextmanager
def local_two_node_cluster(tmp_path: Path, dashboard: bool = False) -> Iterator[LocalRayCluster]:
    """Start a head and a second Ray node on this machine, token auth on; stop both on exit.

    Args:
        tmp_path: a directory for the token file, the `ray start` outputs and, after teardown, a copy
            of the cluster's logs (``ray_logs/``).
        dashboard: also run the dashboard (the Ray Jobs server) on the head, on a free loopback port.

    Yields:
        The running cluster: its address, a driver environment and both node ids.

    Raises:
        RuntimeError: a node did not come up within START_TIMEOUT_S (the message holds the tails of the
            Ray logs), or a process of the cluster survived teardown.
    """
    token_path = tmp_path / "auth_token"
    _write_token(token_path)
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    node_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    start_logs = [tmp_path / "ray_start_head.log", tmp_path / "ray_start_worker.log"]
    temp_dir = Path(mkdtemp(prefix="rt-", dir="/tmp"))
    worker_temp_dir = Path(mkdtemp(prefix="rt-", dir="/tmp")) if dashboard else None
    temp_dirs = [temp_dir] if worker_temp_dir is None else [temp_dir, worker_temp_dir]
    nodes: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            dashboard_port = free_port() if dashboard else None
            nodes.append(_start_node(_head_args(temp_dir, dashboard_port), node_env, start_logs[0]))
            address = _wait_for_address(nodes[0], temp_dir, deadline)
            worker_args = [f"--address={address}", *_node_args(temp_dirs[-1], WORKER_RESOURCE)]
            nodes.append(_start_node(worker_args, node_env, start_logs[1]))
            driver_env = {**node_env, "RAY_ADDRESS": address}
            node_ids = _wait_for_nodes(driver_env, deadline)
            dashboard_url = None if dashboard_port is None else f"http://127.0.0.1:{dashboard_port}"
            if dashboard_url is not None:
                _wait_for_dashboard(dashboard_url, driver_env, deadline)
        except RuntimeError as err:
            raise RuntimeError(f"{err}\n{_logs_report(temp_dir, start_logs)}") from err
        yield LocalRayCluster(
            address=address,
            env=MappingProxyType(driver_env),
            head_node_id=node_ids[HEAD_RESOURCE],
            worker_node_id=node_ids[WORKER_RESOURCE],
            temp_dir=temp_dir,
            node_pids=(nodes[0].pid, nodes[1].pid),
            dashboard_url=dashboard_url,
            worker_temp_dir=worker_temp_dir,
        )
    finally:
        try:
            _stop(nodes, temp_dirs)
        finally:
            for name, folder in zip(("ray_logs", "ray_logs_worker"), temp_dirs):
                logs_dir = folder / "session_latest" / "logs"
                if logs_dir.is_dir():
                    shutil.copytree(logs_dir, tmp_path / name, dirs_exist_ok=True)
                shutil.rmtree(folder)
