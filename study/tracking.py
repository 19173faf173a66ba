"""MLflow logging of a study: one experiment per study, one parent run, one nested child run per trial.

The driver is the only MLflow writer (workers never talk to the tracking server, so the server can
listen on the head's loopback). :class:`MLflowTrials` is a Ray Tune callback: it opens a child run when
a trial starts, logs every reported metric at step ``epoch_total``, and on completion logs the
artifacts from the trial's final checkpoint. Child runs are found again by their ``trial_id`` tag, so a
restored study never creates a second run for a trial, and steps already logged are never logged twice
(a retried trial re-reports the epochs after its last checkpoint).

Every write goes through a :class:`TrackingWriter`: while the tracking server is down, the study keeps
running and the writes wait, in order, in the study folder's outbox (:mod:`study.replay`) until the
server is back, the study ends, ``--resume`` or ``python -m study.replay STUDY_DIR``.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune

from study.faults import failure, is_transient, with_retries
from study.optuna_search import OptunaLink
from study.replay import OUTBOX_FILE, Outbox, Replayer, drain, fail_fast_http
from study.spec import Secrets
from study.stops import STOPPED, stopped_at
from trainables.checkpoint import Checkpoint
from trainables.runtime import load_state

# Keys of a trial's report that are metrics (identical names in MLflow and parquet). Ray's own
# bookkeeping keys (time_this_iter_s, pid, ...) are left out.
NON_METRIC_KEYS = {"phase", "trial_id", "done", "config"}
_TAG_LIMIT = 5000  # MLflow's maximum tag value length
# What the experiment is, the MLflow way. MLflow 3.17.2's UI does not read it: its URL's workflowType
# (README, "Running a study"; the link study.driver.print_summary prints) picks runs table or GenAI pages.
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
    is tagged as model development (MLflow's tag for it; 3.17.2's UI picks its pages by the URL instead).
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


RETRY_EVERY_S = 10.0  # while the tracking server is down, the queue is tried again at most this often


class TrackingWriter:
    """Every MLflow write of a study, in order: straight to the tracking server while it answers (transient
    errors retried, :func:`study.faults.with_retries`), else into the study's :class:`~study.replay.Outbox`.
    While the outbox holds anything, every write joins its end, and the queue is tried again on a write
    at most every ``retry_every_s`` seconds (one attempt: a dead server costs no wait); so the study runs
    on at full speed, and MLflow receives the writes in their order once the server is back."""

    def __init__(self, tracking_uri: str, outbox: Path, link: Callable[[str, str], int | None] | None = None,
                 redact: Callable[[str], str] = str, retry_every_s: float = RETRY_EVERY_S,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        """``link``: :func:`optuna_linker`'s callable (search studies); ``redact`` keeps credentials out of
        printed errors; ``clock`` (seconds) and ``sleep`` are injectable for tests."""
        self.tracking_uri, self.outbox = tracking_uri, Outbox(outbox)
        self.link, self.redact, self.retry_every_s, self.clock = link, redact, retry_every_s, clock
        self.sleep = sleep
        self._client: MlflowClient | None = None
        self._replayer: Replayer | None = None
        self._next_try = 0.0  # clock value before which the queue is not tried again

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_replayer": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            fail_fast_http()
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def replayer(self) -> Replayer:
        if self._replayer is None or self._replayer.client is not self.client:
            self._replayer = Replayer(self.client, self.outbox, self.link)
        return self._replayer

    def submit(self, op: dict[str, Any]) -> None:
        """Write ``op`` now, or queue it (see class docstring). A permanent error (a 4xx) is raised."""
        if self.outbox.pending():
            self.outbox.put(op)
            self.flush()
            return
        try:
            with_retries(lambda: self.replayer.apply(op, replayed=False), redact=self.redact, sleep=self.sleep,
                         what=f"MLflow {op['op']} of {op.get('trial_id', 'the study')}")
        except Exception as error:
            if not is_transient(error):
                raise
            self.outbox.put(op)
            self._next_try = self.clock() + self.retry_every_s
            print(f"[noisy-transfer] the MLflow tracking server is unreachable ({self.redact(str(error).splitlines()[0][:200])}): "
                  f"the study carries on; what cannot be logged is queued in {self.outbox.path} and logged, in "
                  f"order, once the server answers (tried every {self.retry_every_s:g} s)", flush=True)

    def flush(self, force: bool = False) -> int:
        """Log the queue if it is time to try (``force``: now, each item with retries); the items left."""
        if not self.outbox.pending() or (not force and self.clock() < self._next_try):
            return self.outbox.pending()
        call = (lambda f: with_retries(f, what="replaying the queue to MLflow", redact=self.redact, sleep=self.sleep)
                ) if force else (lambda f: f())
        try:
            applied = drain(self.outbox, self.replayer, call)
            print(f"[noisy-transfer] the MLflow tracking server answers again: logged {applied} queued item(s)",
                  flush=True)
        except Exception as error:
            if not is_transient(error):
                raise
            self._next_try = self.clock() + self.retry_every_s
        return self.outbox.pending()

    def last_step(self, trial_id: str) -> int:
        """The latest ``epoch_total`` the trial's run held when found (0: new, or not reached yet)."""
        return self.replayer.last_step.get(trial_id, 0)

    def known_run(self, trial_id: str) -> str | None:
        return self.replayer.runs.get(trial_id) or self.outbox.runs().get(trial_id)


class MLflowTrials(tune.Callback):
    """Ray Tune callback that mirrors every trial into a nested MLflow run (see module docstring)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, artifacts_dir: Path,
                 secrets: Secrets | None = None, source_tags: Mapping[str, str] | None = None,
                 optuna_link: OptunaLink | None = None, outbox: Path | None = None) -> None:
        """``optuna_link`` (search studies): tags each child run with its Optuna trial number and writes
        the run id into that Optuna trial (study.optuna_search). ``outbox``: the queue of writes the
        tracking server could not take (default: ``mlflow_outbox.db`` beside ``artifacts_dir``)."""
        self.source_tags = dict(source_tags or {})  # mlflow.source.* and mlflow.user, as on the parent
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.artifacts_dir = Path(artifacts_dir)
        self.secrets = secrets or Secrets()
        self.writer = TrackingWriter(tracking_uri, outbox or self.artifacts_dir.parent / OUTBOX_FILE,
                                     optuna_link.link_run if optuna_link is not None else None, self.secrets.redact)
        self._started: set[str] = set()  # trials whose start this driver submitted
        self._last_step: dict[str, int] = {}  # trial_id -> last epoch_total logged

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "writer" not in state:  # a callback pickled by a version without the outbox
            link = state.get("optuna_link")
            self.writer = TrackingWriter(self.tracking_uri, self.artifacts_dir.parent / OUTBOX_FILE,
                                         link.link_run if link is not None else None, self.secrets.redact)
            self._started = set()

    @property
    def client(self) -> MlflowClient:
        return self.writer.client

    def _op(self, kind: str, trial: Any, **fields: Any) -> dict[str, Any]:
        return {"op": kind, "trial_id": trial.trial_id, "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id, **fields}

    def _start(self, trial: Any) -> None:
        """Submit the trial's start (its run found by tag or created with params and tags) once per driver."""
        trial_id = trial.trial_id
        if trial_id in self._started:
            return
        config = trial.config
        tags = {
            **self.source_tags,
            "mlflow.parentRunId": self.parent_run_id,
            "trial_id": trial_id,
            "condition": str(config.get("condition", "")),
            "seed": str(config.get("seed", "")),
            "status": "RUNNING",
        }
        if "fold" in config:
            tags["fold"] = str(config["fold"])
        name = " ".join(f"{k}={tags[k]}" for k in ("condition", "fold", "seed") if k in tags)
        params = {k: str(v) for k, v in self.secrets.public(config).items()}
        self.writer.submit(self._op("start", trial, run_name=f"{trial_id} {name}", tags=tags, params=params))
        self._started.add(trial_id)
        self._last_step[trial_id] = max(self._last_step.get(trial_id, 0), self.writer.last_step(trial_id))

    def run_id(self, trial: Any) -> str | None:
        """The child run of ``trial`` (started first if need be); None while the server has not created it."""
        self._start(trial)
        return self.writer.known_run(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started.discard(trial.trial_id)  # a restored or retried trial runs again: status RUNNING
        self._start(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if failure(result) is not None:
            return  # no epoch's numbers: on_trial_complete records the failure
        self._start(trial)
        step = int(result.get("epoch_total", result.get("training_iteration", 0)))
        if step <= self._last_step.get(trial.trial_id, 0):
            return  # re-reported after a retry from an earlier checkpoint: logged already
        timestamp = int(result.get("timestamp", 0) * 1000)
        rows = [[key, float(value), timestamp, step] for key, value in result.items()
                if is_metric(key, value) and math.isfinite(float(value))]
        if rows:
            self.writer.submit(self._op("metrics", trial, metrics=rows))
        self._last_step[trial.trial_id] = step

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)
        found = failure(trial.last_result)
        try:
            self.writer.submit(self._op("artifacts", trial, folder=str(self._write_artifacts(trial))))
        finally:
            if found is not None:
                self._log_failure(trial, *found)
            else:
                stop = stopped_at(trial.last_result, trial.config)  # the scheduler stopped it early
                tags = {"status": STOPPED, "stopped_at": stop} if stop else {"status": "FINISHED"}
                self.writer.submit(self._op("end", trial, tags=tags, status="FINISHED"))

    def _log_failure(self, trial: Any, kind: str, message: str) -> None:
        """A trial that ended its training cleanly on a deterministic failure (a divergence, a config error)
        failed all the same: FAILED with the message in its ``error`` tag, as a crashed trial, and the
        metric ``kind`` (``diverged``, ``config_error``) = 1 after its last logged epoch."""
        step = self._last_step.get(trial.trial_id, 0) + 1
        timestamp = int(float((trial.last_result or {}).get("timestamp", time.time())) * 1000)
        tags = {"status": "FAILED", "error": self.secrets.redact(message)[-_TAG_LIMIT:]}
        self.writer.submit(self._op("end", trial, tags=tags, metrics=[[kind, 1.0, timestamp, step]],
                                    status=RunStatus.to_string(RunStatus.FAILED)))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)
        message = self.secrets.redact(_error_message(trial))
        self.writer.submit(self._op("end", trial, tags={"status": "FAILED", "error": message[-_TAG_LIMIT:]},
                                    status=RunStatus.to_string(RunStatus.FAILED)))

    def _write_artifacts(self, trial: Any) -> Path:
        """Config JSON, final confusion matrix, sample predictions / decision boundary, from the checkpoint,
        into the trial's artifacts folder (returned), which the ``artifacts`` operation uploads."""
        folder = self.artifacts_dir / trial.trial_id
        folder.mkdir(parents=True, exist_ok=True)
        config = self.secrets.public(trial.config)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        checkpoint = trial.checkpoint
        if checkpoint is not None:
            with tempfile.TemporaryDirectory() as scratch:
                state = load_state(checkpoint.to_directory(scratch))
            write_state_artifacts(state, folder)
        return folder


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


def study_summary_op(parent_run_id: str, trials: Any, metric: str, mode: str, wall_s: float, study_dir: Path,
                     status: str) -> dict[str, Any]:
    """The ``parent`` operation (:class:`~study.replay.Replayer`) that ends the study's run: its summary
    metrics (best ``metric``, trials per status, wall time in seconds), the study's files (report.md with
    its figures and tables, the parquet files, study.json) as artifacts, and its terminal ``status``."""
    metrics = {"study/wall_time_s": float(wall_s)}
    if trials is not None and len(trials):
        for name, count in trials["status"].value_counts().items():
            metrics[f"study/trials_{str(name).lower()}"] = float(count)
        done = trials.loc[trials["status"] == "TERMINATED"]
        values = done[metric].dropna() if metric in done else []
        if len(values):
            metrics[f"study/best_{metric}"] = float(values.max() if mode == "max" else values.min())
    now = int(time.time() * 1000)
    files = [[str(study_dir / name), None] for name in ("report.md", "trials.parquet", "history.parquet", "study.json")
             if (study_dir / name).is_file()]
    folders = [[str(study_dir / name), name] for name in ("figures", "tables") if (study_dir / name).is_dir()]
    return {"op": "parent", "run_id": parent_run_id, "metrics": [[k, v, now, 0] for k, v in metrics.items()],
            "files": files, "folders": folders, "status": status}
