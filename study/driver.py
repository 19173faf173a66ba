"""Run a study: Ray Tune trials (grid or Optuna search), MLflow logging, parquet export, the table.

``run_study(spec)`` is what ``python study/run.py`` calls once the command line has been validated.
Everything a trial needs is validated before Ray starts; what a trial measured is exported even on
Ctrl-C, and ``--resume`` continues a stopped or crashed study from its folder.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from search_spaces import Preset
from search_spaces.base import TRAINABLE_CONFIGS
from study.checkpoint_repair import RestorableCheckpoints
from study.export import SCHEMA_VERSION, completed_dataframes, trial_frames, write_parquet
from study.grid import ResumableGrid
from study.lock import StudyLock
from study.optuna_resume import ResumableOptunaSearch
from study.optuna_search import OptunaLink, optuna_storage_url
from study.progress import StudyProgress, quiet_libraries, ray_console
from study.relocate import artifact_location, relocate
from study.resources import grid_limit, searcher_limit
from study.spec import Secrets, StudyError, StudySpec
from study.sqlite_store import seed_sqlite_store, template_dir
from study.state_backup import StateBackup, filesystem_and_path, restore_unreadable_state
from study.faults import is_transient, with_retries
from study.replay import OUTBOX_FILE, Outbox, fail_fast_http, replay, unlogged_message
from study.tracking import MLflowTrials, TrackingWriter, delete_orphan_runs, open_parent_run, study_summary_op

TRAINABLES = {
    "pretrain_finetune": "trainables.pretrain_finetune:pretrain_finetune",
    "pu_classification": "trainables.pu_classification:pu_classification",
}
# Ray Tune writes its experiment state (which trials exist, their status and latest checkpoint) every
# ~10 s, and at once after a trial has checkpointed num_to_keep times. Keeping 1 checkpoint makes that
# every checkpoint, i.e. every epoch: a driver killed mid-study then loses at most the epochs in
# progress; with 2, a resumed study re-ran trials from scratch and finished trials' last epochs.
# Ray deletes the previous checkpoint when it registers a new one, before that snapshot reaches the
# storage: a driver killed in between leaves a snapshot naming a deleted checkpoint, which
# study.checkpoint_repair replaces on --resume (2 kept with a snapshot per controller step closes that
# window but keeps a snapshot copy in flight nearly always, and a kill mid-copy truncates Ray's state files).
CHECKPOINTS_TO_KEEP = 1
SHARED_STORAGE_ENV = "NOISY_TRANSFER_SHARED_STORAGE"  # os.pathsep-separated folders shared by every node


def trainable_function(name: str) -> Any:
    module, _, attribute = TRAINABLES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def grid_param_space(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """A Ray param space whose grid is the list of resolved trial configs itself: trial i gets
    ``configs[i]``, flat (one column per key in MLflow and parquet), nothing recomputed inside Ray.

    Ray's variant generator treats a ``grid_search`` at the top of the param space like one anywhere
    else: each of its values becomes a whole trial config.
    """
    from ray import tune

    return tune.grid_search([dict(config) for config in configs])


def make_sampler(name: str) -> Any:
    """The seeded Optuna sampler ``--sampler name`` selects.

    TPE models the parameters jointly (``multivariate``) and per group of parameters that occur together
    (``group``: the search space is conditional, e.g. q exists only for the weighted loss), and treats
    running trials as if they had scored badly (``constant_liar``), so the trials drawn while others run
    spread out instead of repeating the same point. ``group`` is experimental in Optuna 5.0; its warning
    is silenced here, where the choice is made.
    """
    import warnings

    import optuna

    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=0, scramble=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, constant_liar=True)


def scheduler_max_t(preset: Preset, constants: dict[str, Any]) -> int:
    """The scheduler's last clock value: pre-training plus fine-tuning epochs on the ``epoch_total``
    clock, else the fine-tuning epochs (PU trainables: their epochs)."""
    if preset.time_attr == "epoch_total":
        return int(constants["epochs_pretrain"]) + int(constants["epochs_finetune"])
    return int(constants.get("epochs_finetune", constants.get("epochs", 1)))


def make_searcher(spec: StudySpec, preset: Preset, constants: dict[str, Any], study_dir: Path) -> Any:
    """Optuna (seeded, persisted in the study folder) behind a ConcurrencyLimiter; Optuna is told PRUNED
    for the trials the scheduler stops, FAIL for errors (study.optuna_search)."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    storage = optuna.storages.RDBStorage(optuna_storage_url(study_dir))
    searcher = ResumableOptunaSearch(
        space=partial(preset.optuna_space, constants=constants),
        metric=preset.metric,
        mode=preset.mode,
        sampler=make_sampler(spec.sampler),
        storage=storage,
        study_name=spec.name,
        time_attr=preset.time_attr,
        max_t=scheduler_max_t(preset, constants),
        intermediate_metric=preset.scheduler_metric or preset.metric,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=searcher_limit(spec, spec.search_samples))


def make_scheduler(preset: Preset, constants: dict[str, Any]) -> Any:
    """ASHA for search presets (one early-stopping mechanism, not two), comparing
    ``preset.scheduler_metric`` on ``preset.time_attr``'s clock at the rungs of
    :func:`trainables.probe.rung_epochs` (grace period ``FIRST_RUNG``, reduction factor ``RUNG_FACTOR``):
    with the transfer probe on, the rungs inside pre-training are exactly the probe epochs."""
    from ray.tune.schedulers import ASHAScheduler

    from trainables.probe import FIRST_RUNG, RUNG_FACTOR

    max_t = scheduler_max_t(preset, constants)
    # On the fine-tuning clock alone (no probe), the first rung is a quarter of the way in.
    grace = min(FIRST_RUNG, max_t) if preset.time_attr == "epoch_total" else max(1, max_t // 4)
    return ASHAScheduler(time_attr=preset.time_attr, metric=preset.scheduler_metric or preset.metric,
                         mode=preset.mode, max_t=max_t, grace_period=grace, reduction_factor=RUNG_FACTOR)


def check_cluster(spec: StudySpec, started_local_ray: bool) -> None:
    """Refuse what cannot work on the connected cluster, before any trial starts."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    hosts = {n.get("NodeManagerAddress") for n in nodes}
    autoscaled = _autoscaled_node_types()
    # SHARED_STORAGE_ENV: folders the operator vouches are mounted alike on every node (a file system
    # /proc/mounts does not reveal, or a simulated cluster whose nodes all run on one machine)
    declared = [p for p in os.environ.get(SHARED_STORAGE_ENV, "").split(os.pathsep) if p]
    shared = spec.storage_is_remote or _on_network_filesystem(spec.storage) or any(
        Path(spec.storage).resolve().is_relative_to(Path(p).resolve()) for p in declared)
    if (len(hosts) > 1 or autoscaled) and not shared:
        span = (f"spans {len(hosts)} machines" if len(hosts) > 1 else
                f"autoscales (node types {', '.join(autoscaled)}): its workers run on other machines")
        raise StudyError(
            f"--storage {spec.storage} is a node-local path, but the Ray cluster {span}: "
            "trials on other nodes could not write or restore checkpoints. Use shared storage: "
            f"--storage s3://BUCKET/PREFIX or a path on NFS/EFS mounted on every node (or list a folder "
            f"that is mounted on every node in {SHARED_STORAGE_ENV})."
        )
    most_gpus = max((n.get("Resources", {}).get("GPU", 0.0) for n in nodes), default=0.0)
    # On a cluster, GPU workers may not exist yet (the autoscaler starts them for pending trials);
    # only a Ray this driver started itself has a fixed, known set of GPUs.
    if spec.gpus_per_trial > most_gpus and started_local_ray:
        raise StudyError(f"--gpus-per-trial {spec.gpus_per_trial} exceeds the GPUs of every node "
                         f"(the most is {most_gpus:g})")


def _autoscaled_node_types() -> list[str]:
    """Node types an autoscaler may launch on the connected cluster (empty for a fixed cluster).

    Ray 2.60's autoscaler (v1, what `ray up` runs) publishes no max_workers to drivers; it publishes its
    status in the GCS key-value store, whose node-type mapping names each node by its type from the
    cluster config (``ray.head.default``). A cluster without a config (``ray start`` by hand, a local
    Ray) has the read-only autoscaler, which names each node ``node_<id>``. Autoscaler v2 / KubeRay
    publish the node groups with their max counts instead.
    """
    from ray._private import ray_constants, state
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        config = state.state.get_cluster_config()
        if config is not None:
            return sorted(g.name for g in config.node_group_configs if g.max_count != 0)
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        mapping = (json.loads(raw).get("autoscaler_report") or {}).get("node_type_mapping") or {} if raw else {}
    except Exception:  # private APIs: if they moved, fall back to counting live hosts
        return []
    return sorted({kind for node, kind in mapping.items() if kind != f"node_{node}"})


def check_local_gpus(gpus_per_trial: float) -> None:
    """Refuse ``--gpus-per-trial`` above this machine's GPUs before a local Ray is even started."""
    if gpus_per_trial <= 0:
        return
    import torch

    available = torch.cuda.device_count()  # honours CUDA_VISIBLE_DEVICES, as Ray's detection does
    if gpus_per_trial > available:
        raise StudyError(f"--gpus-per-trial {gpus_per_trial:g} exceeds the GPUs of this machine ({available}); "
                         "no trial could ever start. Use --gpus-per-trial 0 here, or run on a cluster with GPU "
                         "nodes (ray up cluster.yaml)")


def _existing_cluster() -> str | None:
    """The address of a running cluster ``ray.init()`` would connect to (RAY_ADDRESS, ``ray start``)."""
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        return address
    if address == "local":
        return None
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(None)
    except Exception:  # a private helper: if it moved, assume a local start (the GPU check then applies)
        return None


def _on_network_filesystem(path: str) -> bool:
    """Whether ``path`` lies on an NFS/EFS/Lustre/FUSE mount (read from /proc/mounts)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    best, best_type = "", ""
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and (path == parts[1] or path.startswith(parts[1].rstrip("/") + "/")) and len(parts[1]) > len(best):
            best, best_type = parts[1], parts[2]
    return best_type.startswith(("nfs", "efs", "lustre", "fuse", "ceph", "gluster"))


def parent_tags(spec: StudySpec, secrets: Secrets) -> dict[str, str]:
    """The parent run's tags: what ran, from which commit, with which versions (credentials redacted)."""
    versions = {}
    for package in ("noisy-transfer", "torch", "ray", "optuna", "mlflow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        **source_tags(),
        "preset": spec.preset,
        "data": secrets.redact(spec.data),
        "smoke": str(spec.smoke),
        "git_commit": _git_commit(),
        "command": secrets.redact(" ".join(shlex.quote(a) for a in sys.argv)),
        "versions": json.dumps(versions),
    }


def source_tags() -> dict[str, str]:
    """MLflow's own source tags (the runs table's Source, Version and User columns), on every run."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return {"mlflow.source.name": "study/run.py", "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": _git_commit(), "mlflow.user": user}


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class OpenStudy:
    """A study whose folder is locked, whose Ray is connected and whose MLflow parent run is open."""

    spec: StudySpec
    configs: list[dict[str, Any]]
    secrets: Secrets
    client: Any  # MlflowClient
    experiment_id: str
    parent_run_id: str
    started_at: float  # time.time() when the study (this session of it) opened, seconds

    @property
    def preset(self) -> Preset:
        return self.spec.preset_obj

    @property
    def config_cls(self) -> type:
        return TRAINABLE_CONFIGS[self.preset.trainable]

    @property
    def experiment_path(self) -> str:
        """Ray Tune's experiment folder (or URI) of this study."""
        return self.spec.experiment_path

    @property
    def expected_trials(self) -> int:
        """How many trials a complete study has: the searcher's samples, or the grid's configs."""
        if self.preset.is_search:
            return self.spec.num_samples or (4 if self.spec.smoke else self.preset.num_samples)
        return len(self.configs)


@dataclass(frozen=True)
class StudyOutcome:
    """How a study run ended: ``status`` FINISHED (every trial ended), KILLED (interrupted) or FAILED
    (the driver itself failed); ``errored``: trials that ended in error; ``unlogged``: MLflow writes left
    in the study's outbox because the tracking server could not be reached (study.replay)."""

    study_dir: Path
    status: str
    errored: int
    unlogged: int = 0


def run_study(spec: StudySpec) -> StudyOutcome:
    """Run (or resume) the study described by ``spec``; how it ended (``study/run.py`` maps it to an
    exit code)."""
    import mlflow  # noqa: F401  (imported early so a broken install fails before Ray starts)
    import ray

    started_local_ray = not ray.is_initialized() and _existing_cluster() is None
    if started_local_ray:
        check_local_gpus(spec.gpus_per_trial)
    # The lock comes first: a second driver on a live study is told who owns it, not to --resume.
    with StudyLock(spec.study_dir):
        study = open_study(spec, started_local_ray)
        outcome = StudyOutcome(spec.study_dir, "FAILED", 0)
        try:
            build_tuner(study).fit()
            outcome = StudyOutcome(spec.study_dir, "FINISHED", 0)
        except KeyboardInterrupt:
            outcome = StudyOutcome(spec.study_dir, "KILLED", 0)
        finally:
            outcome = finish_study(study, outcome)
        print_summary(spec.study_dir)
    return outcome


def open_study(spec: StudySpec, started_local_ray: bool) -> OpenStudy:
    """Check the folder, connect Ray, check the cluster, open the MLflow parent run, write study.json."""
    import ray
    from mlflow.tracking import MlflowClient

    study_dir = spec.study_dir
    if not spec.resume and (study_dir / "study.json").exists():
        raise StudyError(f"study folder {study_dir} already holds a study; continue it with --resume, "
                         "or choose another --name")
    if spec.resume and not (study_dir / "study.json").exists():
        raise StudyError(f"--resume: no study in {study_dir} to resume (it has no study.json)")
    if spec.resume:
        refuse_a_moved_study(study_dir)
    configs = spec.trial_configs()
    secrets = Secrets.from_environment()
    quiet_libraries(spec.progress)
    local_store = spec.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in spec.tracking_uri
    if not local_store:
        reach_tracking_server(spec.tracking_uri, secrets)
    ray.init(ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=ray_console(spec.progress)["log_to_driver"])
    check_cluster(spec, started_local_ray)
    if spec.resume and (study_dir / "mlflow.db").is_file():
        relocate(study_dir)  # the folder may have moved since the study started
    if spec.resume and Outbox(study_dir / OUTBOX_FILE).pending():  # what a previous session could not log
        replay(study_dir, spec.tracking_uri, lock=False)  # goes first, in its order; run_study holds the lock
    # a new SQLite store: a copy of a migrated empty one, not MLflow's migrations (seconds; study.sqlite_store)
    seed_sqlite_store(spec.tracking_uri, template_dir(spec.output))
    client = MlflowClient(spec.tracking_uri)
    experiment_id, parent_run_id = open_parent_run(client, spec.name, parent_tags(spec, secrets), spec.resume,
                                                   artifact_location(study_dir) if local_store else None)
    fail_fast_http()  # from here on a dead tracking server is queued for, not waited on (study.tracking)
    study = OpenStudy(spec, configs, secrets, client, experiment_id, parent_run_id, time.time())
    (study_dir / "study.json").write_text(json.dumps(study_meta(study), indent=2))
    return study


def refuse_a_moved_study(study_dir: Path) -> None:
    """Refuse (StudyError, exit code 2) to resume a study from another folder than the one it started in
    (study.json's ``started_in``; studies written before it was recorded are not checked).

    Why: Ray Tune restores a study's callbacks and searcher from its experiment state (``tuner.pkl``) with
    the paths they were built with, so a resumed moved study would log to the old folder's MLflow store,
    outbox and optuna.db (or fail where they are gone). Reading, reporting and serving a moved study work
    from anywhere (``python -m study.relocate``)."""
    started_in = json.loads((study_dir / "study.json").read_text()).get("started_in")
    here = Path(study_dir).resolve()
    if started_in and Path(started_in) != here:
        raise StudyError(f"--resume: this study was started in {started_in} and has moved to {here}; Ray Tune "
                         "restores its MLflow callback and searcher with the paths it started with, so it resumes "
                         f"only from there: move the folder back to {started_in} and resume it there (its results, "
                         f"report and MLflow runs work from anywhere after python -m study.relocate {here})")


def reach_tracking_server(tracking_uri: str, secrets: Secrets) -> None:
    """Refuse to start (StudyError, exit code 2) when the MLflow tracking server at ``tracking_uri`` does
    not answer, after the short retries of :func:`study.faults.with_retries` (a server still starting).

    Why here, before Ray starts: MLflow's own HTTP retries would wait minutes and then end in a
    traceback. Once the study runs, a server that goes away is queued for instead (study.replay)."""
    from mlflow.tracking import MlflowClient

    fail_fast_http()
    try:
        with_retries(lambda: MlflowClient(tracking_uri).search_experiments(max_results=1),
                     what="reaching the MLflow tracking server", redact=secrets.redact)
    except Exception as error:
        if not is_transient(error):
            raise
        reason = secrets.redact(str(error).strip().splitlines()[0])[:300] if str(error).strip() else type(error).__name__
        raise StudyError(f"the MLflow tracking server {secrets.redact(tracking_uri)} does not answer ({reason}); "
                         "start it (README, \"Running on a cluster\") or pass another --tracking-uri, then run the "
                         "same command again: nothing has run yet") from error


def study_meta(study: OpenStudy) -> dict[str, Any]:
    """The contents of study.json: what the study is and where its runs are (credentials redacted)."""
    spec, preset, configs, secrets = study.spec, study.preset, study.configs, study.secrets
    return {
        "study": spec.name, "preset": preset.name, "data": spec.data, "trainable": preset.trainable,
        "metric": preset.metric, "mode": preset.mode, "tracking_uri": secrets.redact(spec.tracking_uri),
        "experiment_id": study.experiment_id, "parent_run_id": study.parent_run_id,
        "storage": secrets.redact(spec.storage), "started_in": str(spec.study_dir.resolve()),
        "smoke": spec.smoke, "conditions": list(dict.fromkeys(c["condition"] for c in configs)),
        "folds": sorted({c["fold"] for c in configs if "fold" in c}),
        "seeds": sorted({c["seed"] for c in configs}),
    }


def build_tuner(study: OpenStudy) -> Any:
    """The Tuner of ``study``: restored from Ray's experiment state on --resume, else new."""
    from ray import tune

    spec = study.spec
    trainable = tune.with_resources(trainable_function(study.preset.trainable),
                                    {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})
    param_space, tune_config = search_setup(study)
    # A snapshot per epoch is the point of CHECKPOINTS_TO_KEEP = 1, not a bottleneck worth a warning (set
    # here, not in run_config: a restored Tuner takes its RunConfig from Ray's state and never calls it).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if spec.resume and tune.Tuner.can_restore(study.experiment_path):
        restored = restore_unreadable_state(*filesystem_and_path(study.experiment_path))  # study.state_backup
        if restored:
            print(restored, flush=True)
        return tune.Tuner.restore(study.experiment_path, trainable=trainable, resume_errored=True,
                                  param_space=param_space)
    if spec.resume:
        print(f"[noisy-transfer] no Ray Tune state at {study.experiment_path} yet; starting its trials afresh")
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=run_config(study))


def search_setup(study: OpenStudy) -> tuple[dict[str, Any], Any]:
    """(param_space, TuneConfig): Optuna + ASHA over constants for a search preset, else the grid."""
    from ray import tune

    spec, preset = study.spec, study.preset
    if preset.is_search:
        param_space = study.config_cls.from_dict(study.configs[0]).to_dict()
        search = {"search_alg": make_searcher(spec, preset, param_space, spec.study_dir),
                  "scheduler": make_scheduler(preset, param_space), "num_samples": study.expected_trials}
    else:
        param_space = grid_param_space(study.configs)
        # Ray's own generator can hang or lose trials on --resume (study.grid)
        search = {"search_alg": ResumableGrid(max_concurrent=grid_limit(spec, len(study.configs)) or 0)}
    # A search's scheduler and searcher carry their own metrics (the scheduler compares rung scores, the
    # searcher the objective); Ray refuses a TuneConfig metric beside a scheduler's own.
    metric = {} if preset.is_search else {"metric": preset.metric, "mode": preset.mode}
    tune_config = tune.TuneConfig(**metric, **search)
    tune_config.reuse_actors = True  # a worker runs trial after trial (runtime.begin_trial resets it)
    return param_space, tune_config


def run_config(study: OpenStudy) -> Any:
    """Where Ray Tune keeps the experiment, its callbacks, checkpoints kept and retries."""
    from ray import tune

    spec = study.spec
    # A search's child runs and Optuna trials name each other (study.optuna_search)
    link = OptunaLink(optuna_storage_url(spec.study_dir), spec.name) if study.preset.is_search else None
    mlflow_trials = MLflowTrials(spec.tracking_uri, study.experiment_id, study.parent_run_id,
                                 spec.study_dir / "artifacts", study.secrets, source_tags(), optuna_link=link,
                                 outbox=spec.study_dir / OUTBOX_FILE)
    progress = StudyProgress(study.expected_trials, spec.progress, study.preset.metric, study.preset.mode)
    return tune.RunConfig(
        name=spec.name,
        storage_path=spec.storage,
        # RestorableCheckpoints: a resumed trial's checkpoint exists before any trial starts; StateBackup:
        # a complete copy of Ray's last snapshot, for when a kill cuts its copy to the storage short
        callbacks=[RestorableCheckpoints(), StateBackup(), mlflow_trials, progress],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
        # crashes only: a diverged trial returns (trainables.runtime.ending_on_divergence), never retried
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        verbose=ray_console(spec.progress)["verbose"],
    )


def finish_study(study: OpenStudy, outcome: StudyOutcome) -> StudyOutcome:
    """Export what ran, tell an incomplete study how to continue, close the parent run.

    Ray Tune turns Ctrl-C into a graceful stop and returns normally: trials it never started, or left
    unfinished, tell that the study is incomplete, so an outcome FINISHED then becomes KILLED.
    """
    status = outcome.status
    trials = export_study(study.spec, study.experiment_path, study.client, study.experiment_id,
                          study.parent_run_id, study.config_cls, study.secrets,
                          state_complete=status == "FINISHED")
    ended = 0 if trials is None else int(trials["status"].isin(["TERMINATED", "STOPPED", "ERROR"]).sum())
    errored = 0 if trials is None else int((trials["status"] == "ERROR").sum())
    if status == "FINISHED" and ended < study.expected_trials:
        status = "KILLED"
    if status == "KILLED":
        print("\n[noisy-transfer] interrupted: exported what finished; continue with --resume "
              "(same arguments plus --resume)")
    if errored:
        print(f"[noisy-transfer] {errored} trial(s) ended in error: see the error column of "
              f"{study.spec.study_dir / 'trials.parquet'} and the FAILED lines above")
    writer = TrackingWriter(study.spec.tracking_uri, study.spec.study_dir / OUTBOX_FILE, redact=study.secrets.redact)
    summarize_in_parent_run(study, trials, status, writer)
    unlogged = writer.flush(force=True)  # with retries: the last chance before the study ends
    if unlogged or writer.outbox.dropped():
        print(unlogged_message(study.spec.study_dir, unlogged, writer.outbox.dropped(),
                               study.secrets.redact(study.spec.tracking_uri)))
    return StudyOutcome(study.spec.study_dir, status, errored, unlogged)


def summarize_in_parent_run(study: OpenStudy, trials: pd.DataFrame | None, status: str,
                            writer: TrackingWriter) -> None:
    """Write report.md (tables and figures); log it, the parquet files and summary metrics to the parent
    run and close it with ``status`` (queued while the tracking server is down). Neither may lose the
    study's results: a failure is printed, not raised."""
    study_dir = study.spec.study_dir
    try:
        from analysis.report import write_report

        if trials is not None and len(trials):
            write_report(study_dir)
    except Exception as error:  # the report is a convenience; the parquet files are the result
        print(f"[noisy-transfer] report.md not written: {error}")
    try:
        writer.submit(study_summary_op(study.parent_run_id, trials, study.preset.metric, study.preset.mode,
                                       time.time() - study.started_at, study_dir, status))
    except Exception as error:  # an unreachable tracking server must not hide the exported results
        print(f"[noisy-transfer] the study's summary was not logged to MLflow: {error}")


def export_study(spec: StudySpec, experiment_path: str, client: Any, experiment_id: str, parent_run_id: str,
                 config_cls: type, secrets: Secrets, state_complete: bool = False) -> pd.DataFrame | None:
    """Write trials.parquet and history.parquet from Ray Tune's experiment state; return the trials.

    ``state_complete``: ``Tuner.fit`` returned, so Ray's experiment state holds every trial; MLflow
    child runs of trials it does not hold (left by a killed driver) are then deleted.
    """
    from dataclasses import fields

    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(experiment_path)
    except Exception as error:  # nothing ran yet: no state to export
        print(f"[noisy-transfer] nothing to export yet ({error})")
        return None
    try:
        run_ids = mlflow_run_ids(client, experiment_id, parent_run_id,
                                 {t.trial_id for t in analysis.trials} if state_complete else None)
    except Exception as error:  # the tracking server is down: the parquet files are written all the same
        if not is_transient(error):
            raise
        run_ids = TrackingWriter(spec.tracking_uri, spec.study_dir / OUTBOX_FILE).outbox.runs()
        print("[noisy-transfer] MLflow unreachable while exporting: mlflow_run_id is filled in for the runs "
              "this driver created only")
    # Ray's log of a trial lacks the epochs before its checkpoint when a driver died before syncing them
    dataframes = completed_dataframes(analysis.trials, analysis.trial_dataframes)
    trials, history = trial_frames(
        analysis.trials, dataframes, study=spec.name, preset=spec.preset, run_ids=run_ids,
        config_keys=[f.name for f in fields(config_cls)], secrets=secrets,
    )
    metadata = parquet_metadata(spec)
    write_parquet(trials, spec.study_dir / "trials.parquet", metadata)
    write_parquet(history, spec.study_dir / "history.parquet", metadata)
    print(f"[noisy-transfer] wrote {spec.study_dir / 'trials.parquet'} ({len(trials)} trials) and "
          f"{spec.study_dir / 'history.parquet'} ({len(history)} rows)")
    return trials


def mlflow_run_ids(client: Any, experiment_id: str, parent_run_id: str, ray_trials: set[str] | None) -> dict[str, str]:
    """Trial id -> child run id; with ``ray_trials`` (a complete experiment state), child runs of trials it
    does not hold (left by a killed driver) are deleted first."""
    if ray_trials is not None:
        orphans = delete_orphan_runs(client, experiment_id, parent_run_id, ray_trials)
        if orphans:
            print(f"[noisy-transfer] deleted {len(orphans)} MLflow run(s) of trials a killed driver had started "
                  f"and Ray Tune never recorded (they ran again under new ids): {', '.join(orphans)}")
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=50_000)
    return {run.data.tags.get("trial_id", ""): run.info.run_id for run in runs}


def parquet_metadata(spec: StudySpec) -> dict[str, str]:
    """What every exported parquet file says about itself (its pyarrow schema metadata)."""
    try:
        version = metadata.version("noisy-transfer")
    except metadata.PackageNotFoundError:
        version = "not installed"
    return {"schema_version": SCHEMA_VERSION, "project_version": version, "git_commit": _git_commit(),
            "preset": spec.preset, "study": spec.name}


def print_summary(study_dir: Path) -> None:
    """The preset's table in the terminal, and where everything is."""
    try:
        from analysis.report import summary_text

        print(summary_text(study_dir))
    except Exception as error:  # the table is a convenience; the parquet files are the result
        trials = pd.read_parquet(study_dir / "trials.parquet") if (study_dir / "trials.parquet").exists() else None
        if trials is not None and "objective" in trials:
            print(trials.groupby("condition")["objective"].agg(["mean", "std", "count"]).to_string())
        print(f"[noisy-transfer] (table unavailable: {error})")
    meta = json.loads((study_dir / "study.json").read_text())
    print(f"[noisy-transfer] results: {study_dir}\n"
          f"[noisy-transfer] compare runs: mlflow ui --backend-store-uri {meta['tracking_uri']}, then open "
          f"http://127.0.0.1:5000/#/experiments/{meta['experiment_id']}/runs?workflowType=machine_learning\n"
          f"[noisy-transfer] report: python -m analysis.report {study_dir}")
