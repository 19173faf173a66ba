"""Read a study's results: the exported folder (parquet + study.json) or its MLflow experiment.

Both routes give the same :class:`Study`: ``trials`` (one row per trial: config columns, status and the
last reported value of every metric), ``history`` (one row per trial x phase x epoch) and ``meta`` (the
contents of study.json). The schema is the contract in the study driver's export; analysis never
touches Ray.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

TRIALS_FILE = "trials.parquet"
HISTORY_FILE = "history.parquet"
META_FILE = "study.json"
REQUIRED_TRIAL_COLUMNS = ("trial_id", "status", "condition")
REQUIRED_HISTORY_COLUMNS = ("trial_id", "phase", "epoch", "epoch_total")
# MLflow run status (and the driver's status tag) -> the Ray Tune trial status the parquet export writes.
_MLFLOW_STATUS = {"FINISHED": "TERMINATED", "FAILED": "ERROR", "KILLED": "ERROR", "STOPPED": "STOPPED",
                  "RUNNING": "RUNNING", "SCHEDULED": "PENDING"}


@dataclass(frozen=True, eq=False)
class Study:
    """One study's results.

    trials: one row per trial (see the schema: ``trial_id``, ``status``, ``condition``, config columns,
    last metric values). history: one row per (trial, phase, epoch), sorted by trial and
    ``epoch_total``. meta: study.json as a dict. folder: the study folder (None for an MLflow study).
    """

    trials: pd.DataFrame
    history: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None

    def __post_init__(self) -> None:
        for name, frame, required in (("trials", self.trials, REQUIRED_TRIAL_COLUMNS),
                                      ("history", self.history, REQUIRED_HISTORY_COLUMNS)):
            if not isinstance(frame, pd.DataFrame):
                raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
            missing = [column for column in required if column not in frame.columns]
            if missing and frame.empty:  # a study before its first report may export column-less frames
                object.__setattr__(self, name, frame.reindex(columns=[*frame.columns, *missing]))
            elif missing:
                raise ValueError(f"{name} lacks the required columns {missing} (has {list(frame.columns)})")

    @property
    def preset(self) -> str:
        """The study preset (``"table1"``, ``"quick"``, ``"search"``, ...), ``""`` when unknown."""
        return str(self.meta.get("preset", ""))

    @property
    def trainable(self) -> str:
        """``"pretrain_finetune"`` or ``"pu_classification"``, inferred from the columns if study.json lacks it."""
        if self.meta.get("trainable"):
            return str(self.meta["trainable"])
        return "pu_classification" if "setup" in self.trials.columns else "pretrain_finetune"

    @property
    def name(self) -> str:
        """The study name (study.json ``study``, else the folder's name)."""
        return str(self.meta.get("study", self.folder.name if self.folder else ""))


def load_study(folder: str | Path) -> Study:
    """Read ``folder``/trials.parquet, history.parquet and study.json into a :class:`Study`.

    A missing folder or file is a FileNotFoundError naming it; a file without the schema's required
    columns is a ValueError naming them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"study folder {str(folder)!r} does not exist or is not a folder")
    paths = {name: folder / name for name in (TRIALS_FILE, HISTORY_FILE, META_FILE)}
    for name, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"study folder {str(folder)!r} has no {name} (expected {path})")
    meta = json.loads(paths[META_FILE].read_text())
    if not isinstance(meta, dict):
        raise ValueError(f"{paths[META_FILE]} must hold a JSON object, got {type(meta).__name__}")
    trials = pd.read_parquet(paths[TRIALS_FILE])
    history = pd.read_parquet(paths[HISTORY_FILE])
    return Study(trials=trials, history=_sorted_history(history), meta=meta, folder=folder)


def _sorted_history(history: pd.DataFrame) -> pd.DataFrame:
    if history.empty or not {"trial_id", "epoch_total"} <= set(history.columns):
        return history.reset_index(drop=True)  # Study's validation names what is missing
    return history.sort_values(["trial_id", "epoch_total"], kind="stable").reset_index(drop=True)


def study_from_mlflow(tracking_uri: str, experiment_name: str, study: str | None = None) -> Study:
    """Build the same :class:`Study` as :func:`load_study` from an MLflow experiment.

    Trials are the experiment's child runs (runs with the tag ``mlflow.parentRunId``) of one parent
    run; ``study`` selects the parent by its ``study`` tag and is needed only when the experiment
    holds several. Params become config columns (numbers parsed back, ``"None"`` -> missing), tags
    ``trial_id``/``condition``/``fold``/``seed``/``status`` fill their columns, and every metric's
    history becomes history rows keyed by its step, which is ``epoch_total``.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ValueError(f"experiment_name {experiment_name!r} is not an experiment in {tracking_uri!r}")
    runs = _all_runs(client, experiment.experiment_id)
    parents = {run.info.run_id: run for run in runs if "mlflow.parentRunId" not in run.data.tags}
    if study is not None:
        parents = {rid: run for rid, run in parents.items() if run.data.tags.get("study") == study}
    with_children = {run.data.tags["mlflow.parentRunId"] for run in runs if "mlflow.parentRunId" in run.data.tags}
    candidates = [rid for rid in parents if rid in with_children]
    if len(candidates) != 1:
        names = sorted(parents[rid].data.tags.get("study", rid) for rid in candidates)
        raise ValueError(
            f"experiment {experiment_name!r} must hold exactly one study with trials"
            f"{'' if study is None else f' named {study!r}'}; found {len(candidates)}: {names}"
            + ("; pass study=NAME to choose" if len(candidates) > 1 else "")
        )
    parent = parents[candidates[0]]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    meta = {
        **{key: _parse_value(value) for key, value in parent.data.params.items()},
        **{key: value for key, value in parent.data.tags.items() if not key.startswith("mlflow.")},
        "tracking_uri": tracking_uri,
        "experiment_id": experiment.experiment_id,
        "parent_run_id": parent.info.run_id,
    }
    trials = _mlflow_trials(children, meta)
    meta.setdefault("trainable", "pretrain_finetune" if "epochs_pretrain" in trials.columns else "pu_classification")
    history = _mlflow_history(client, children, trials, meta["trainable"])
    return Study(trials=trials, history=_sorted_history(history), meta=meta, folder=None)


def _all_runs(client: Any, experiment_id: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _parse_value(text: str) -> Any:
    """An MLflow param string back to the value it was logged from (``str(value)``): int, float, bool,
    None, a list/dict literal, or the string itself."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        try:
            return float(text)  # "nan", "inf", which literal_eval rejects
        except ValueError:
            return text
    return text if isinstance(value, (str, bytes, complex, set)) else value


def _column(values: list[Any]) -> pd.Series:
    """A column of parsed params: numeric when every present value is a number (None -> NaN)."""
    present = [v for v in values if v is not None]
    if present and len(present) == len(values) and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype=bool)
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if len(present) == len(values) and all(isinstance(v, int) for v in present):
            return pd.Series(values, dtype="int64")
        return pd.Series([math.nan if v is None else v for v in values], dtype="float64")
    return pd.Series(values, dtype=object)


def _mlflow_trials(children: list[Any], meta: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for run in children:
        tags = run.data.tags
        params = {key: _parse_value(value) for key, value in run.data.params.items()}
        tagged = {key: _parse_value(tags[key]) for key in ("condition", "fold", "seed") if key in tags}
        rows.append({
            "study": meta.get("study", ""),
            "preset": meta.get("preset", ""),
            "trial_id": tags.get("trial_id", run.info.run_id),
            "mlflow_run_id": run.info.run_id,
            # The driver's status tag (RUNNING/FINISHED/FAILED) or the run's, in Ray Tune's words.
            "status": _MLFLOW_STATUS.get(tags.get("status", run.info.status), tags.get("status", run.info.status)),
            "error": tags.get("error", ""),
            **params,
            **tagged,
            **run.data.metrics,
        })
    frame = pd.DataFrame(rows)
    if "condition" in frame.columns:
        frame["condition"] = frame["condition"].astype(str)
    for column in frame.columns:
        if frame[column].dtype == object and column not in ("condition", "status", "error", "trial_id"):
            frame[column] = _column(frame[column].tolist())
    return frame.sort_values("trial_id", kind="stable").reset_index(drop=True)


def _phase_of(step: int, trial: pd.Series, trainable: str) -> tuple[str, int]:
    """(phase, 1-based epoch within the phase) of an MLflow step (= ``epoch_total``)."""
    if trainable == "pu_classification":
        return "train", step
    if trial.get("init", "pretrain") == "pretrain":
        epochs_pretrain = int(trial["epochs_pretrain"])
        if step <= epochs_pretrain:
            return "pretrain", step
        return "finetune", step - epochs_pretrain
    return "finetune", step


def _mlflow_history(client: Any, children: list[Any], trials: pd.DataFrame, trainable: str) -> pd.DataFrame:
    keys = [key for key in ("condition", "fold", "seed") if key in trials.columns]
    runs = {run.info.run_id: run for run in children}
    frames = []
    for _, trial in trials.iterrows():
        run = runs[trial["mlflow_run_id"]]
        steps: dict[int, dict[str, float]] = {}
        for key in run.data.metrics:
            if key == "epoch_total":  # the step itself
                continue
            for metric in client.get_metric_history(run.info.run_id, key):
                steps.setdefault(int(metric.step), {})[key] = metric.value
        rows = []
        for step in sorted(steps):
            phase, epoch = _phase_of(step, trial, trainable)
            rows.append({"study": trial["study"], "trial_id": trial["trial_id"],
                         **{key: trial[key] for key in keys},
                         "phase": phase, "epoch": epoch, "epoch_total": step, **steps[step]})
        frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True)
