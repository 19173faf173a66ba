"""MLflow logging of a study: one experiment per study, one parent run, one nested child run per trial.

The driver is the only MLflow writer (workers never talk to the tracking server, so the server can
listen on the head's loopback). :class:`MLflowTrials` is a Ray Tune callback: it opens a child run when
a trial starts, logs every reported metric at step ``epoch_total``, and on completion logs the
artifacts from the trial's final checkpoint. Child runs are found again by their ``trial_id`` tag, so a
restored study never creates a second run for a trial, and steps already logged are never logged twice
(a retried trial re-reports the epochs after its last checkpoint).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from study.optuna_search import OPTUNA_NUMBER_TAG, OptunaLink
from study.faults import diverged, with_retries
from study.spec import Secrets
from study.stops import STOPPED, stopped_at
from trainables.checkpoint import Checkpoint
from trainables.runtime import DIVERGED, load_state

# Keys of a trial's report that are metrics (identical names in MLflow and parquet). Ray's own
# bookkeeping keys (time_this_iter_s, pid, ...) are left out.
NON_METRIC_KEYS = {"phase", "trial_id", "done", "config"}
_TAG_LIMIT = 5000  # MLflow's maximum tag value length
# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces, token usage).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def is_metric(key: str, value: Any) -> bool:
    """Whether a report entry is one of the trainables' metrics."""
    return (
        key not in NON_METRIC_KEYS
        and ("/" in key or key in ("objective", "epoch_total"))
        and isinstance(value, (int, float, np.number))
        and not isinstance(value, bool)
    )


def open_parent_run(client: MlflowClient, study: str, tags: Mapping[str, str], resume: bool,
                    artifact_location: str | None = None) -> tuple[str, str]:
    """(experiment_id, parent_run_id): the study's experiment and parent run, reused on resume.

    ``artifact_location``: where a new experiment keeps its artifacts (a ``file://`` URI inside the
    study folder for the study's own SQLite store; None lets a tracking server choose). The experiment
    is tagged as model development, so the MLflow UI opens it on its runs table, not on GenAI traces.
    """
    experiment = client.get_experiment_by_name(study)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        study, artifact_location=artifact_location)
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if resume:
        runs = client.search_runs([experiment_id], filter_string="tags.`noisy_transfer.role` = 'study'",
                                  max_results=1, order_by=["attributes.start_time DESC"])
        if runs:
            client.update_run(runs[0].info.run_id, status="RUNNING")
            return experiment_id, runs[0].info.run_id
    run = client.create_run(experiment_id, run_name=study,
                            tags={**tags, "noisy_transfer.role": "study", "study": study})
    return experiment_id, run.info.run_id


def close_parent_run(client: MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status)


def delete_orphan_runs(client: MlflowClient, experiment_id: str, parent_run_id: str,
                       trial_ids: set[str]) -> list[str]:
    """Delete the child runs of trials that Ray Tune's experiment state does not hold; return their ids.

    A driver killed after Ray started a trial but before Ray's next snapshot leaves a child run for a
    trial the resumed study never sees again (a search draws it anew under another trial id). Call
    this only with the trial ids of a completely written experiment state (after ``Tuner.fit``
    returned). The runs are deleted the MLflow way: hidden, restorable with ``mlflow runs restore``.
    """
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=50_000)
    orphans = [run.info.run_id for run in runs if run.data.tags.get("trial_id") not in trial_ids]
    for run_id in orphans:
        client.set_tag(run_id, "status", "ORPHANED")
        client.set_terminated(run_id, status="KILLED")
        client.delete_run(run_id)
    return orphans


class MLflowTrials(tune.Callback):
    """Ray Tune callback that mirrors every trial into a nested MLflow run (see module docstring)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, artifacts_dir: Path,
                 secrets: Secrets | None = None, source_tags: Mapping[str, str] | None = None,
                 optuna_link: OptunaLink | None = None) -> None:
        """``optuna_link`` (search studies): tags each child run with its Optuna trial number and writes
        the run id into that Optuna trial (study.optuna_search)."""
        self.optuna_link = optuna_link
        self.source_tags = dict(source_tags or {})  # mlflow.source.* and mlflow.user, as on the parent
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.artifacts_dir = Path(artifacts_dir)
        self.secrets = secrets or Secrets()
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._last_step: dict[str, int] = {}  # trial_id -> last epoch_total logged

    # The client is created lazily: Ray pickles callbacks with the experiment state.
    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    def run_id(self, trial: Any) -> str:
        """The child run of ``trial``, found by tag or created (with params and tags) on first use."""
        trial_id = trial.trial_id
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.trial_id = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=1,
        )
        if found:
            run = found[0]
            self._last_step[trial_id] = int(run.data.metrics.get("epoch_total", 0))
        else:
            config = trial.config
            tags = {
                **getattr(self, "source_tags", {}),  # absent from callbacks pickled by an older version
                "mlflow.parentRunId": self.parent_run_id,
                "trial_id": trial_id,
                "condition": str(config.get("condition", "")),
                "seed": str(config.get("seed", "")),
                "status": "RUNNING",
            }
            if "fold" in config:
                tags["fold"] = str(config["fold"])
            name = " ".join(f"{k}={tags[k]}" for k in ("condition", "fold", "seed") if k in tags)
            run = self.client.create_run(self.experiment_id, run_name=f"{trial_id} {name}", tags=tags)
            params = [Param(k, str(v)) for k, v in sorted(self.secrets.public(config).items())]
            for start in range(0, len(params), 100):  # MLflow's batch limit
                self.client.log_batch(run.info.run_id, params=params[start:start + 100])
            self._last_step[trial_id] = 0
        if OPTUNA_NUMBER_TAG not in run.data.tags:  # new, or created by a driver killed before it linked
            self._link_optuna(trial_id, run.info.run_id)
        self._runs[trial_id] = run.info.run_id
        return run.info.run_id

    def _link_optuna(self, trial_id: str, run_id: str) -> None:
        """Tag the run with its Optuna trial number; the Optuna trial gets the run id (search studies)."""
        link = getattr(self, "optuna_link", None)  # absent from callbacks pickled by an older version
        number = link.link_run(trial_id, run_id) if link is not None else None
        if number is not None:
            self.client.set_tag(run_id, OPTUNA_NUMBER_TAG, str(number))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, "status", "RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if diverged(result) is not None:
            return  # no epoch's numbers: on_trial_complete records the divergence
        run_id = self.run_id(trial)
        step = int(result.get("epoch_total", result.get("training_iteration", 0)))
        if step <= self._last_step.get(trial.trial_id, 0):
            return  # re-reported after a retry from an earlier checkpoint: logged already
        timestamp = int(result.get("timestamp", 0) * 1000)
        metrics = [
            Metric(key, float(value), timestamp, step)
            for key, value in result.items()
            if is_metric(key, value) and math.isfinite(float(value))
        ]
        if metrics:  # a locked SQLite store or a 5xx is retried, not raised into Ray's callback loop
            with_retries(lambda: self.client.log_batch(run_id, metrics=metrics), what=f"logging {trial.trial_id}'s "
                         f"metrics to MLflow", redact=self.secrets.redact)
        self._last_step[trial.trial_id] = step

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        message = diverged(trial.last_result)
        try:
            self._log_artifacts(run_id, trial)
        finally:
            if message is not None:
                self._log_divergence(run_id, trial, message)
            else:
                stop = stopped_at(trial.last_result, trial.config)  # the scheduler stopped it early
                tags = [RunTag("status", STOPPED), RunTag("stopped_at", stop)] if stop else [RunTag("status", "FINISHED")]
                self.client.log_batch(run_id, tags=tags)
                self.client.set_terminated(run_id, status="FINISHED")

    def _log_divergence(self, run_id: str, trial: Any, message: str) -> None:
        """A diverged trial ended its training cleanly, but failed: FAILED with the message in its
        ``error`` tag, as a crashed trial, and the metric ``diverged`` = 1 after its last logged epoch."""
        step = self._last_step.get(trial.trial_id, 0) + 1
        timestamp = int(float((trial.last_result or {}).get("timestamp", time.time())) * 1000)
        tags = [RunTag("status", "FAILED"), RunTag("error", self.secrets.redact(message)[-_TAG_LIMIT:])]
        self.client.log_batch(run_id, metrics=[Metric(DIVERGED, 1.0, timestamp, step)], tags=tags)
        self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        message = self.secrets.redact(_error_message(trial))
        self.client.log_batch(run_id, tags=[RunTag("status", "FAILED"), RunTag("error", message[-_TAG_LIMIT:])])
        self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))

    def _log_artifacts(self, run_id: str, trial: Any) -> None:
        """Config JSON, final confusion matrix, sample predictions / decision boundary, from the checkpoint."""
        folder = self.artifacts_dir / trial.trial_id
        folder.mkdir(parents=True, exist_ok=True)
        config = self.secrets.public(trial.config)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        checkpoint = trial.checkpoint
        if checkpoint is not None:
            with tempfile.TemporaryDirectory() as scratch:
                state = load_state(checkpoint.to_directory(scratch))
            write_state_artifacts(state, folder)
        self.client.log_artifacts(run_id, str(folder))


def write_state_artifacts(state: Mapping[str, Any], folder: Path) -> None:
    """The human-facing artifacts a final checkpoint state (a :class:`Checkpoint` dict) carries, written
    into ``folder``: confusion.json, samples.png / pretrain_samples.png, boundary.npz."""
    checkpoint = Checkpoint.from_dict(state)
    if checkpoint.confusion is not None:
        matrix = np.asarray(checkpoint.confusion).tolist()
        (folder / "confusion.json").write_text(json.dumps({"rows": "ground truth", "columns": "prediction",
                                                           "matrix": matrix}))
    from study.figures import render_samples

    # fine-tuning test predictions; noisy pre-training labels. The arrays go beside the PNGs for analysis
    # (Figure 6).
    for name, samples in (("samples", checkpoint.samples), ("pretrain_samples", checkpoint.pretrain_samples)):
        if samples:
            arrays = {k: np.asarray(v) for k, v in samples.items()}
            render_samples(arrays, folder / f"{name}.png")
            np.savez_compressed(folder / f"{name}.npz", **arrays)
    if checkpoint.boundary is not None:
        np.savez_compressed(folder / "boundary.npz", **{k: np.asarray(v) for k, v in checkpoint.boundary.items()})


def trial_error_text(trial: Any) -> str | None:
    """The text of a trial's error file, None when it has none (or it cannot be read).

    Ray writes the file into the driver's staging folder (``trial.error_file``) before it calls the
    callbacks, and copies it to the storage that ``trial.get_error()`` reads only at its next sync; so
    the staging copy comes first, or ``on_trial_error`` would find no message.
    """
    try:
        local = getattr(trial, "error_file", None)
        if local and Path(local).is_file():
            return Path(local).read_text()
        error = trial.get_error()
    except Exception:  # reading the error file must never break the study
        return None
    if error is None:
        return None
    return error if isinstance(error, str) else "".join(traceback.format_exception(error))


def _error_message(trial: Any) -> str:
    return trial_error_text(trial) or "trial failed; see the trial's error.txt"


def log_study_summary(client: MlflowClient, parent_run_id: str, trials: Any, metric: str, mode: str,
                      wall_s: float, study_dir: Path) -> None:
    """The parent run's summary at the study's end: best ``metric``, trials per status, wall time
    (seconds), and the study's files (report.md with its figures and tables, the parquet files,
    study.json) as artifacts."""
    metrics = {"study/wall_time_s": float(wall_s)}
    if trials is not None and len(trials):
        for status, count in trials["status"].value_counts().items():
            metrics[f"study/trials_{str(status).lower()}"] = float(count)
        done = trials.loc[trials["status"] == "TERMINATED"]
        values = done[metric].dropna() if metric in done else []
        if len(values):
            metrics[f"study/best_{metric}"] = float(values.max() if mode == "max" else values.min())
    client.log_batch(parent_run_id, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in metrics.items()])
    for name in ("report.md", "trials.parquet", "history.parquet", "study.json"):
        if (study_dir / name).is_file():
            client.log_artifact(parent_run_id, str(study_dir / name))
    for folder in ("figures", "tables"):
        if (study_dir / folder).is_dir():
            client.log_artifacts(parent_run_id, str(study_dir / folder), artifact_path=folder)
