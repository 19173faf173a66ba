"""cluster.yaml: accepted by Ray's own cluster-launcher validation, and safe to launch.

The validation is the one `ray up` runs before it contacts AWS: ``prepare_config`` (fill in the AWS
defaults, merge setup commands) then ``validate_config`` (check against ``ray-schema.json``).
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
PROJECT_MOUNT = "/home/ray/noisy-transfer"
LOCAL_TOKEN_FILE = "~/.ray/auth_token"
LOOPBACK = ("127.0.0.1", "localhost")

# Shapes of credentials that must never be written into the file.
SECRET_PATTERNS = {
    "AWS access key id": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key name": r"(?i)aws_secret_access_key|aws_session_token",
    "AWS secret key value": r"(?<![\w/+])[A-Za-z0-9/+]{40}(?![\w/+=])",
    "hex token (a Ray token is 64 hex digits)": r"\b[0-9a-fA-F]{32,}\b",
    "literal Ray token": r"RAY_AUTH_TOKEN\s*[=:]",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
}


def _config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _launcher_config(config: dict) -> dict:
    """What `ray up` checks before contacting the cloud; raises as `ray up` would."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _project_pins() -> tuple[str, str]:
    """(Ray version pinned in pyproject.toml, Docker python tag such as ``py311``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_pins = [m for d in project["dependencies"] if (m := re.fullmatch(r"ray(?:\[[\w,]+\])?==(\S+)", d))]
    python = re.fullmatch(r">=\s*3\.(\d+)", project["requires-python"])
    assert len(ray_pins) == 1 and python, (project["dependencies"], project["requires-python"])
    return ray_pins[0].group(1), f"py3{python.group(1)}"


def _docker_env(options: list[str]) -> dict[str, str]:
    """Environment variables set by `docker run` options such as ``-e NAME=value``."""
    words = shlex.split(" ".join(options))
    pairs = [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("-e", "--env")]
    return dict(pair.split("=", 1) for pair in pairs)


def _secrets_in(text: str) -> list[str]:
    return [name for name, pattern in SECRET_PATTERNS.items() if re.search(pattern, text)]


def test_ray_launcher_validation_accepts_cluster_yaml():
    prepared = _launcher_config(_config())
    nodes = prepared["available_node_types"]
    head = nodes[prepared["head_node_type"]]
    workers = [node for name, node in nodes.items() if name != prepared["head_node_type"]]
    assert prepared["provider"]["type"] == "aws"
    assert "InstanceMarketOptions" not in head["node_config"], "the head must be on-demand"
    assert head["max_workers"] == 0
    assert len(workers) == 1
    assert workers[0]["min_workers"] == 0
    assert 0 < workers[0]["max_workers"] <= prepared["max_workers"]
    assert workers[0]["resources"]["GPU"] >= 1


@pytest.mark.parametrize(
    ("break_it", "error", "message"),
    [
        (lambda c: c.update(bogus_key=1), jsonschema.ValidationError, r"'bogus_key' was unexpected"),
        (lambda c: c.update(max_workers="many"), jsonschema.ValidationError, r"'many' is not of type 'integer'"),
        (lambda c: c.update(head_node_type="ray.head.missing"), ValueError, r"must be one of `available_node_types`"),
        (
            lambda c: c["available_node_types"]["ray.worker.gpu"].update(min_workers=c["max_workers"] + 1),
            ValueError,
            r"smaller than the sum of `min_workers`",
        ),
    ],
    ids=["unknown top-level key", "max_workers not an integer", "unknown head node type", "min above max"],
)
def test_ray_launcher_validation_rejects_a_broken_copy(break_it, error, message):
    broken = _config()
    break_it(broken)
    with pytest.raises(error, match=message):
        _launcher_config(broken)


def test_docker_images_pin_the_project_ray_and_python_versions():
    ray_version, python_tag = _project_pins()
    docker = _config()["docker"]
    head_image = docker.get("head_image", docker.get("image"))
    worker_image = docker.get("worker_image", docker.get("image"))
    image_tag = rf"rayproject/ray:{re.escape(ray_version)}-{python_tag}-(cpu|gpu|cu\d+)"
    for image in {head_image, worker_image, docker.get("image", head_image)}:
        assert re.fullmatch(image_tag, image), image
    assert re.fullmatch(image_tag, worker_image).group(1) != "cpu", "workers run the trials on GPUs"


def test_mlflow_server_runs_on_the_head_bound_to_loopback_only():
    config = _config()
    text = CLUSTER_YAML.read_text()
    head_commands = config["head_setup_commands"] + config["head_start_ray_commands"]
    servers = [command for command in head_commands if "mlflow server" in command]
    assert len(servers) == 1
    server = servers[0]
    assert re.search(r"--host\s+127\.0\.0\.1\s", server) and re.search(r"--port\s+5000\b", server)
    assert re.search(r"\bnohup mlflow server\b", server), "must outlive the setup shell"
    database = re.search(r"--backend-store-uri\s+sqlite:///(/\S+)/[^/\s]+\.db\b", server)
    assert database, "MLflow's backend must be an SQLite file on the head"
    mounted = [o.split(":")[1] for o in config["docker"]["head_run_options"] if o.startswith("-v ")]
    assert database.group(1) in mounted, "the database must live on the head's disk, outside the container"
    worker_commands = config["setup_commands"] + config["worker_setup_commands"] + config["worker_start_ray_commands"]
    assert not any("mlflow" in command for command in worker_commands)
    assert "0.0.0.0" not in text
    hosts = re.findall(r"--(?:dashboard-)?host[=\s]+(\S+)", text)
    assert hosts and set(hosts) <= set(LOOPBACK), hosts


def test_token_auth_is_on_for_head_and_workers_without_the_token_in_the_file():
    config = _config()
    docker = config["docker"]
    for role in ("head", "worker"):
        env = _docker_env(docker.get("run_options", []) + docker.get(f"{role}_run_options", []))
        assert env.get("RAY_AUTH_MODE") == "token", role
        assert "RAY_AUTH_TOKEN" not in env, role
        token_path = env["RAY_AUTH_TOKEN_PATH"]
        assert config["file_mounts"][token_path] == LOCAL_TOKEN_FILE, role
    assert "RAY_AUTH_MODE=disabled" not in CLUSTER_YAML.read_text()


def test_cluster_yaml_holds_no_secret_looking_literal():
    assert _secrets_in(CLUSTER_YAML.read_text()) == []


@pytest.mark.parametrize(
    "planted",
    [
        "AKIAIOSFODNN7EXAMPLE",  # AWS's documented example key id
        "aws_secret_access_key: x",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # AWS's documented example secret key
        "RAY_AUTH_TOKEN=abc",
        "token: " + "0123456789abcdef" * 4,
        "-----BEGIN RSA PRIVATE KEY-----",
    ],
)
def test_secret_scan_catches_a_planted_secret(planted):
    assert _secrets_in(CLUSTER_YAML.read_text() + f"\n# {planted}\n")


def test_setup_installs_this_project_on_every_node():
    config = _config()
    prepared = _launcher_config(config)
    assert config["file_mounts"][PROJECT_MOUNT] == "."
    assert ".gitignore" in config["rsync_filter"], "the upload must skip .venv, results and other ignored files"
    install = re.compile(rf"\bpip install\b.*\s-e\s+{re.escape(PROJECT_MOUNT)}\b")
    for role in ("head", "worker"):
        assert any(install.search(command) for command in prepared[f"{role}_setup_commands"]), role
