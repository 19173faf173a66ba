"""How many trials a study runs at once: as many as the connected cluster can place, unless capped.

The arithmetic is :func:`concurrent_trials`, pure: a trial asks for ``cpus_per_trial`` CPUs and
``gpus_per_trial`` GPUs, so a cluster of C CPUs and G GPUs places ``floor(C / cpus_per_trial)`` trials,
and with GPUs per trial at most ``floor(G / gpus_per_trial)``. An autoscaling cluster counts at the
largest size its autoscaler may reach, where the autoscaler publishes it (autoscaler v2 / KubeRay: node
groups with their maximum counts); autoscaler v1 (``ray up``) publishes no maximum, so only the nodes
that are up count, and the printed line says how to raise it. Never fewer than 1, never more than the
study's trials; ``--max-concurrent N`` caps it. :func:`cluster_capacity` reads the connected Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Ray accounts resources in units of 1e-4 (fixed point), so 0.3 GPU fits exactly 3 times in 0.9 GPUs
# here as in Ray's scheduler, whatever float division would round to.
RESOURCE_UNITS = 10_000
UNLIMITED = -1  # a node group's max_count without limit (Ray's autoscaler protobuf)


@dataclass(frozen=True)
class NodeGroup:
    """A node type the autoscaler may launch: each node's ``cpus`` and ``gpus``, and at most
    ``max_count`` nodes of it (``UNLIMITED``: no limit)."""

    name: str
    cpus: float
    gpus: float
    max_count: int


@dataclass(frozen=True)
class Capacity:
    """What the connected cluster has: ``cpus`` / ``gpus`` on its nodes now; ``groups``, the node groups
    its autoscaler publishes with their maxima (empty for a fixed cluster); ``limits``, the autoscaler's
    cluster-wide caps ({"CPU": n, "GPU": m}, where set); ``unpublished``, whether the cluster autoscales
    without publishing its node groups (autoscaler v1, as ``ray up`` runs): nodes not up yet cannot be
    counted."""

    cpus: float
    gpus: float
    groups: tuple[NodeGroup, ...] = ()
    limits: tuple[tuple[str, float], ...] = ()
    unpublished: bool = False


@dataclass(frozen=True)
class Concurrency:
    """``trials`` run at once, and ``reason``, the arithmetic that gave it, in words."""

    trials: int
    reason: str

    @property
    def line(self) -> str:
        """The line a study prints when it starts."""
        return f"[noisy-transfer] {self.trials} trial{'s' if self.trials != 1 else ''} at once: {self.reason}"


def _slots(total: float, per_trial: float) -> float:
    """Trials of ``per_trial`` that fit in ``total`` (``inf`` for an unlimited total), in Ray's units."""
    if math.isinf(total):
        return math.inf
    return float(round(total * RESOURCE_UNITS) // round(per_trial * RESOURCE_UNITS))


def _plural(count: float, noun: str) -> str:
    return f"{count:g} {noun}{'' if count == 1 else 's'}"


def _largest(now: float, capacity: Capacity, resource: str) -> tuple[float, str]:
    """(the most of ``resource`` the cluster can have, how that was counted, in words)."""
    per_node = {"CPU": lambda g: g.cpus, "GPU": lambda g: g.gpus}[resource]
    groups = [g for g in capacity.groups if per_node(g) > 0 and g.max_count != 0]
    scaled = math.inf if any(g.max_count == UNLIMITED for g in groups) else sum(
        g.max_count * per_node(g) for g in groups)
    scaled = min(scaled, dict(capacity.limits).get(resource, math.inf))
    if not groups or scaled <= now:
        return now, _plural(now, resource)
    parts = ", ".join(f"{g.name} {'unlimited' if g.max_count == UNLIMITED else g.max_count} x {per_node(g):g}"
                      for g in groups)
    total = f"unlimited {resource}s" if math.isinf(scaled) else f"up to {_plural(scaled, resource)}"
    return scaled, f"{total} as the cluster autoscales ({parts})"


def concurrent_trials(capacity: Capacity, cpus_per_trial: float, gpus_per_trial: float, trials: int,
                      cap: int = 0) -> Concurrency:
    """How many of a study's ``trials`` run at once on ``capacity`` (see the module docstring).

    ``cpus_per_trial`` > 0 and ``gpus_per_trial`` >= 0 are what each trial asks Ray for; ``cap`` > 0 is
    ``--max-concurrent``. On an autoscaler that publishes no maxima the cap is taken as given: trials
    beyond the nodes that are up wait, and the autoscaler starts nodes for them.
    """
    if cpus_per_trial <= 0 or gpus_per_trial < 0 or trials < 1 or cap < 0:
        raise ValueError(f"need cpus_per_trial > 0, gpus_per_trial >= 0, trials >= 1, cap >= 0; got "
                         f"{cpus_per_trial}, {gpus_per_trial}, {trials}, {cap}")
    per_trial = {"CPU": cpus_per_trial, "GPU": gpus_per_trial}
    limits = []  # (trials that fit, resource, how counted), per resource a trial asks for
    for resource, now in (("CPU", capacity.cpus), ("GPU", capacity.gpus)):
        if per_trial[resource] > 0:
            total, words = _largest(now, capacity, resource)
            limits.append((_slots(total, per_trial[resource]), resource,
                           f"{words} / {per_trial[resource]:g} {resource} per trial"))
    slots, binding, reason = min(limits, key=lambda limit: limit[0])
    reason += "".join(f" ({resource}s allow {fit:g})" for fit, resource, _ in limits
                      if resource != binding and not math.isinf(fit))
    if capacity.unpublished:
        autoscales = "the cluster autoscales"
        if cap:
            return Concurrency(min(cap, trials), f"--max-concurrent {cap}; {autoscales} and places "
                                                 f"{max(1.0, slots):g} on the nodes up now")
        reason += (f"; {autoscales} but its autoscaler (v1, as ray up runs) publishes no maximum, so only the "
                   "nodes up now count: --max-concurrent N runs N at once as nodes join")
    count = max(1.0, slots)
    places = "any number" if math.isinf(count) else f"{count:g}"
    if cap and cap < min(count, trials):
        return Concurrency(cap, f"--max-concurrent {cap} (the cluster places {places}: {reason})")
    if trials < count:
        return Concurrency(trials, f"all {trials} trials of the study (the cluster places {places}: {reason})")
    return Concurrency(int(count), reason if slots >= 1 else f"at least one ({reason})")


def cluster_capacity() -> Capacity:
    """The connected Ray cluster's :class:`Capacity` (call after ``ray.init``)."""
    import ray

    resources = ray.cluster_resources()
    groups, limits = _published_groups()
    unpublished = False
    if not groups:  # autoscaler v1 publishes the types of the nodes up only (see _autoscaled_node_types)
        from study.driver import _autoscaled_node_types

        unpublished = bool(_autoscaled_node_types())
    return Capacity(float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0)), groups, limits,
                    unpublished)


def _published_groups() -> tuple[tuple[NodeGroup, ...], tuple[tuple[str, float], ...]]:
    """The autoscaler's node groups and cluster-wide caps, where it publishes them (autoscaler v2)."""
    from ray._private import state

    try:
        config = state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 (a private API: if it moved, count the nodes that are up)
        return (), ()
    if config is None:
        return (), ()
    groups = tuple(NodeGroup(g.name, float(g.resources.get("CPU", 0)), float(g.resources.get("GPU", 0)),
                             int(g.max_count)) for g in config.node_group_configs)
    limits = tuple((key, float(config.max_resources[key])) for key in ("CPU", "GPU") if key in config.max_resources)
    return groups, limits


def study_concurrency(spec: Any, trials: int) -> Concurrency:
    """How many of ``trials`` the study of ``spec`` (a StudySpec) runs at once on the connected cluster."""
    return concurrent_trials(cluster_capacity(), spec.cpus_per_trial, spec.gpus_per_trial, trials,
                             spec.max_concurrent)


def searcher_limit(spec: Any, trials: int) -> int:
    """The searcher's ConcurrencyLimiter bound for a search of ``trials``; prints why."""
    concurrency = study_concurrency(spec, trials)
    print(concurrency.line)
    return concurrency.trials


def grid_limit(spec: Any, trials: int) -> int | None:
    """Ray Tune's ``max_concurrent_trials`` for a grid of ``trials``: ``--max-concurrent`` or None (Ray
    then places as many as resources allow, which is the count printed)."""
    print(study_concurrency(spec, trials).line)
    return spec.max_concurrent or None
