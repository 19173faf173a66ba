"""Trials at once: as many as the cluster can place (CPUs, GPUs, an autoscaler's published maximum), at
least 1, at most the study's trials, capped by --max-concurrent; and the count a real local Ray gives."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from study.resources import (
    UNLIMITED,
    Capacity,
    NodeGroup,
    cluster_capacity,
    concurrent_trials,
    grid_limit,
    searcher_limit,
)

# cluster.yaml's shape: a CPU head (8 CPUs, m5.2xlarge) and up to 8 one-GPU, four-CPU workers
HEAD = NodeGroup("ray.head.default", cpus=8, gpus=0, max_count=1)
GPU_WORKERS = NodeGroup("ray.worker.gpu", cpus=4, gpus=1, max_count=8)


@pytest.mark.parametrize(("cpus", "gpus", "cpus_per_trial", "gpus_per_trial", "expected"), [
    (8, 0, 1, 0, 8),        # CPUs only
    (8, 0, 3, 0, 2),        # floor(8 / 3)
    (8, 0, 0.5, 0, 16),     # half a CPU per trial
    (16, 8, 1, 1, 8),       # GPUs bind: 8 GPUs / 1
    (16, 8, 4, 1, 4),       # CPUs bind: 16 / 4 before 8 GPUs
    (16, 8, 1, 0.5, 16),    # two trials per GPU
    (16, 8, 1, 0.25, 16),   # 32 GPU slots, but 16 CPUs
    (64, 0.9, 1, 0.3, 3),   # 0.9 / 0.3 is 3 in Ray's fixed-point units, not 2.9999...
    (64, 1, 1, 0.3, 3),     # floor(1 / 0.3)
    (2, 0, 4, 0, 1),        # nothing fits: still one (it waits for resources)
    (8, 0, 1, 1, 1),        # no GPU anywhere: one, never zero
])
def test_slots_are_the_trials_the_resources_place(cpus, gpus, cpus_per_trial, gpus_per_trial, expected):
    assert concurrent_trials(Capacity(cpus, gpus), cpus_per_trial, gpus_per_trial, trials=100).trials == expected


def test_the_line_says_how_many_and_why():
    assert concurrent_trials(Capacity(8, 0), 1, 0, 32).line == \
        "[noisy-transfer] 8 trials at once: 8 CPUs / 1 CPU per trial"
    assert concurrent_trials(Capacity(16, 4), 1, 1, 32).line == \
        "[noisy-transfer] 4 trials at once: 4 GPUs / 1 GPU per trial (CPUs allow 16)"
    assert concurrent_trials(Capacity(8, 0), 1, 1, 32).line == \
        "[noisy-transfer] 1 trial at once: at least one (0 GPUs / 1 GPU per trial (CPUs allow 8))"


def test_a_cap_limits_and_never_raises_the_count_on_a_known_cluster():
    capped = concurrent_trials(Capacity(8, 0), 1, 0, 32, cap=3)
    assert capped.trials == 3 and capped.reason == "--max-concurrent 3 (the cluster places 8: 8 CPUs / 1 CPU per trial)"
    assert concurrent_trials(Capacity(8, 0), 1, 0, 32, cap=20).trials == 8  # the cluster places 8 only
    assert concurrent_trials(Capacity(8, 0), 1, 0, 32, cap=8).trials == 8


def test_never_more_than_the_study_has_trials():
    few = concurrent_trials(Capacity(64, 0), 1, 0, trials=4)
    assert few.trials == 4 and few.reason.startswith("all 4 trials of the study (the cluster places 64:")


def test_an_autoscaling_cluster_counts_at_its_published_maximum():
    # cluster.yaml with its head only: 0 GPUs now, up to 8 one-GPU workers
    head_only = Capacity(cpus=8, gpus=0, groups=(HEAD, GPU_WORKERS))
    one_gpu = concurrent_trials(head_only, 1, 1, trials=32)
    assert one_gpu.trials == 8
    assert one_gpu.reason == ("up to 8 GPUs as the cluster autoscales (ray.worker.gpu 8 x 1) / 1 GPU per trial "
                              "(CPUs allow 40)")
    assert concurrent_trials(head_only, 1, 0.5, trials=32).trials == 16  # two per GPU: 8 / 0.5
    assert concurrent_trials(head_only, 3, 0.5, trials=32).trials == 13  # CPUs bind: (8 + 8 x 4) // 3
    # CPU trials use the head's CPUs and the workers' alike: 8 + 8 x 4
    assert concurrent_trials(head_only, 1, 0, trials=100).trials == 40
    # workers already up do not count twice: the maximum already includes them
    assert concurrent_trials(Capacity(8 + 3 * 4, 3, (HEAD, GPU_WORKERS)), 1, 1, trials=32).trials == 8


def test_an_autoscaler_limit_and_an_unlimited_group():
    limited = Capacity(cpus=8, gpus=0, groups=(HEAD, GPU_WORKERS), limits=(("GPU", 5.0),))
    assert concurrent_trials(limited, 1, 1, trials=32).trials == 5
    unlimited = Capacity(cpus=8, gpus=0, groups=(HEAD, NodeGroup("gpu", 4, 2, UNLIMITED)))
    assert concurrent_trials(unlimited, 1, 1, trials=32).trials == 32  # the study's trials bound it
    assert concurrent_trials(unlimited, 1, 1, trials=32, cap=6).trials == 6
    # a group of max_count 0 never starts a node
    assert concurrent_trials(Capacity(8, 0, (HEAD, NodeGroup("gpu", 4, 1, 0))), 1, 1, trials=32).trials == 1


def test_an_autoscaler_without_published_maxima_counts_the_nodes_up_and_takes_the_cap_as_given():
    v1 = Capacity(cpus=8, gpus=0, unpublished=True)
    default = concurrent_trials(v1, 1, 1, trials=32)
    assert default.trials == 1 and "--max-concurrent N runs N at once as nodes join" in default.reason
    capped = concurrent_trials(v1, 1, 1, trials=32, cap=8)
    assert capped.reason == "--max-concurrent 8; the cluster autoscales and places 1 on the nodes up now"
    assert capped.trials == 8


@pytest.mark.parametrize(("cpus_per_trial", "gpus_per_trial", "trials", "cap"),
                         [(0, 0, 1, 0), (1, -1, 1, 0), (1, 0, 0, 0), (1, 0, 1, -1)])
def test_bad_requests_are_refused(cpus_per_trial, gpus_per_trial, trials, cap):
    with pytest.raises(ValueError, match="need cpus_per_trial > 0"):
        concurrent_trials(Capacity(8, 0), cpus_per_trial, gpus_per_trial, trials, cap)


def _spec(cpus_per_trial: float, gpus_per_trial: float = 0.0, max_concurrent: int = 0) -> SimpleNamespace:
    return SimpleNamespace(cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                           max_concurrent=max_concurrent)


def test_the_default_on_a_real_local_ray_is_what_its_cpus_hold(ray_local, capsys):
    import ray

    capacity = cluster_capacity()
    assert capacity.cpus == 2.0  # ray_local starts Ray with num_cpus=2
    assert capacity.groups == () and not capacity.unpublished  # a local Ray does not autoscale
    assert capacity.gpus == ray.cluster_resources().get("GPU", 0.0)
    assert searcher_limit(_spec(1.0), trials=32) == 2
    assert searcher_limit(_spec(0.5), trials=32) == 4
    assert searcher_limit(_spec(1.5), trials=32) == 1
    assert searcher_limit(_spec(0.5, max_concurrent=3), trials=32) == 3
    assert grid_limit(_spec(1.0), trials=32) is None  # Ray places grid trials as resources allow
    assert grid_limit(_spec(1.0, max_concurrent=3), trials=32) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["[noisy-transfer] 2 trials at once: 2 CPUs / 1 CPU per trial",
                         "[noisy-transfer] 4 trials at once: 2 CPUs / 0.5 CPU per trial"]


def test_an_autoscaler_v2_cluster_config_is_read_into_node_groups(monkeypatch):
    """The protobuf Ray's autoscaler v2 / KubeRay publishes (ray._private.state's get_cluster_config),
    built here as Ray builds it, read into the capacity the arithmetic counts."""
    import ray
    from ray._private import state
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name="head", resources={"CPU": 8}, min_count=1, max_count=1),
        autoscaler_pb2.NodeGroupConfig(name="gpu", resources={"CPU": 4, "GPU": 2}, max_count=6),
    ], max_resources={"GPU": 10})
    monkeypatch.setattr(state.state, "get_cluster_config", lambda: config)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "memory": 1e9})
    capacity = cluster_capacity()
    assert capacity == Capacity(8.0, 0.0, (NodeGroup("head", 8.0, 0.0, 1), NodeGroup("gpu", 4.0, 2.0, 6)),
                                (("GPU", 10.0),))
    assert concurrent_trials(capacity, 1, 1, trials=32).trials == 10  # 6 x 2 GPUs, capped at 10
    assert concurrent_trials(capacity, 1, 0, trials=64).trials == 32  # 8 + 6 x 4 CPUs


@pytest.mark.slow
def test_a_head_only_ray_up_cluster_counts_its_head_and_says_the_cap_is_needed(tmp_path):
    """cluster.yaml's node types under a real autoscaler v1 (Ray's fake multi-node provider), head only:
    the driver sees the head's CPUs, no GPUs, and an autoscaler that publishes no maximum."""
    import subprocess
    import sys

    from helpers.autoscaling_cluster import HEAD_CPUS, autoscaling_cluster

    script = ("import ray\nray.init(logging_level='ERROR', log_to_driver=False)\n"
              "from study.resources import cluster_capacity, concurrent_trials\n"
              "capacity = cluster_capacity()\nprint(repr(capacity))\n"
              "print(concurrent_trials(capacity, 1, 1, 32).line)\nprint(concurrent_trials(capacity, 1, 1, 32, 6).line)\n")
    root = str(Path(__file__).resolve().parents[1])
    with autoscaling_cluster(tmp_path) as cluster:
        env = {**cluster.env, "PYTHONPATH": root}
        done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    capacity, default, capped = done.stdout.strip().splitlines()[-3:]
    assert capacity == f"Capacity(cpus={float(HEAD_CPUS)}, gpus=0.0, groups=(), limits=(), unpublished=True)"
    assert default.startswith("[noisy-transfer] 1 trial at once: at least one (0 GPUs / 1 GPU per trial")
    assert "--max-concurrent N runs N at once as nodes join" in default
    assert capped == ("[noisy-transfer] 6 trials at once: --max-concurrent 6; the cluster autoscales and places 1 "
                      "on the nodes up now")
