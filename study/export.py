"""Export a study's trials to parquet: ``trials.parquet`` (one row per trial) and ``history.parquet``
(one row per trial, phase and epoch). The schema is documented in README ("Results").

Both are rebuilt from Ray Tune's experiment state on every export, so an export after a crash, a Ctrl-C
or a resume is complete and has each trial exactly once; a retried trial's re-reported epochs are
deduplicated (last report wins).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from study.faults import failure
from study.spec import Secrets
from study.stops import ended_status, stopped_at
from study.tracking import is_metric, trial_error_text
from trainables.labels import pretrain_categories
from trainables.runtime import CONFIG_ERROR, DIVERGED, REPORTS, load_state

PHASE_EPOCH_KEYS = ("pretrain/epoch", "finetune/epoch", "train/epoch")
TRIAL_COLUMNS = ("study", "preset", "trial_id", "mlflow_run_id", "status", "stopped_at", "error", DIVERGED,
                 "start_time", "end_time", "wall_s", "node")
# of trials.parquet / history.parquet; 2 added start_time, end_time, wall_s, node; 3 added diverged, the
# STOPPED status and stopped_at (a trial the scheduler stopped early, study.stops)
SCHEMA_VERSION = "3"
HISTORY_COLUMNS = ("study", "trial_id", "condition", "fold", "seed", "phase", "epoch", "epoch_total")


def trial_frames(trials: Iterable[Any], dataframes: Mapping[str, pd.DataFrame], *, study: str, preset: str,
                 run_ids: Mapping[str, str], config_keys: Iterable[str],
                 secrets: Secrets | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, history) frames from Ray Tune trials and their result dataframes (keyed by trial id).

    ``config_keys`` are the trainable's config fields, each exported as a column under its own name;
    ``secrets`` keeps credentials out of the config columns and error messages.
    """
    secrets = secrets or Secrets()
    config_keys = [k for k in config_keys if k not in secrets.names]
    trial_rows, histories = [], []
    for trial in trials:
        last = dict(trial.last_result or {})
        row: dict[str, Any] = {
            "study": study,
            "preset": preset,
            "trial_id": trial.trial_id,
            "mlflow_run_id": run_ids.get(trial.trial_id, ""),
            **trial_status(trial, secrets),
        }
        row.update(trial_timing(last))
        row.update(secrets.public({key: trial.config.get(key) for key in config_keys}))
        if "label_transform" in trial.config:  # a pretrain-finetune trial: Figure 3's x axis, per trial
            row["pretrain_categories"] = trial_pretrain_categories(trial.config)
        row.update({key: float(value) for key, value in last.items() if is_metric(key, value)})
        trial_rows.append(row)
        frame = dataframes.get(trial.trial_id)
        if frame is not None and len(frame):
            histories.append(_history(frame, trial, study))
    trials_frame = pd.DataFrame(trial_rows)
    for column in TRIAL_COLUMNS:
        if column not in trials_frame:
            trials_frame[column] = pd.Series(dtype=str)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(columns=list(HISTORY_COLUMNS))
    return _tidy(trials_frame), history


def trial_status(trial: Any, secrets: Secrets) -> dict[str, Any]:
    """``status``, ``stopped_at``, ``error`` and ``diverged`` of a trial's row. A diverged trial ended its
    training cleanly (Ray: TERMINATED) but failed: ``status`` ERROR, ``error`` the divergence message,
    ``diverged`` 1 (0 for every other trial). A trial whose config its trainable refused likewise:
    ``status`` ERROR, ``error`` "invalid trial config: ...". A trial the scheduler stopped early is ``STOPPED`` with
    ``stopped_at`` saying where (:mod:`study.stops`)."""
    found = failure(trial.last_result)
    if found is not None:
        kind, message = found
        return {"status": "ERROR", "stopped_at": "", "error": secrets.redact(message)[:1000],
                DIVERGED: int(kind == DIVERGED)}
    status, last = str(trial.status), trial.last_result or {}
    return {"status": ended_status(status, last, trial.config),
            "stopped_at": stopped_at(last, trial.config) if status == "TERMINATED" else "",
            "error": secrets.redact(_error_line(trial)) if status == "ERROR" else "", DIVERGED: 0}


def trial_pretrain_categories(config: Mapping[str, Any]) -> float:
    """The foreground categories of a pretrain-finetune trial's pre-training task
    (:func:`trainables.labels.pretrain_categories`; 0 without pre-training, NaN for ImageNet weights)."""
    count = pretrain_categories(config.get("label_transform", "none"), int(config["fold"]),
                                str(config.get("data", "synthetic")).partition(":")[0],
                                int(config.get("num_groups") or 0), config.get("init", "pretrain"))
    return math.nan if count is None else float(count)


def lacks_reports(frame: pd.DataFrame | None) -> bool:
    """Whether Ray's log of a trial (its result dataframe) lacks reports: it is empty, or its
    ``epoch_total`` values are not every epoch from 1 to the last (a failure report holds none)."""
    if frame is None or not len(frame) or "epoch_total" not in frame:
        return True
    epochs = set(pd.to_numeric(frame["epoch_total"], errors="coerce").dropna().astype(int))
    return not epochs or epochs != set(range(1, max(epochs) + 1))


def fill_from_checkpoint(frame: pd.DataFrame | None, reports: list[Mapping[str, Any]]) -> pd.DataFrame:
    """Ray's log ``frame`` of a trial with the reports its checkpoint holds (:data:`REPORTS`) put before
    it: an epoch that only the checkpoint holds comes from there, one that both hold from Ray's log
    (:func:`_history` keeps an epoch's last row)."""
    stored = pd.DataFrame([dict(report) for report in reports])
    if frame is None or not len(frame):
        return stored
    return pd.concat([stored, frame], ignore_index=True)


def checkpoint_reports(checkpoint: Any) -> list[dict[str, Any]]:
    """The reports a trial's Ray Tune ``checkpoint`` carries ([] for one written without them), read from
    wherever the study's storage keeps it (a folder, or a bucket: downloaded to a temporary folder)."""
    with checkpoint.as_directory() as directory:
        return list(load_state(directory).get(REPORTS) or [])


def completed_dataframes(trials: Iterable[Any], dataframes: Mapping[str, pd.DataFrame],
                         reports_of: Any = checkpoint_reports) -> dict[str, pd.DataFrame]:
    """``dataframes`` (trial id -> Ray's log of the trial) with every gap that the trial's latest
    checkpoint can fill filled from it (:func:`fill_from_checkpoint`); ``reports_of(checkpoint)`` reads a
    checkpoint's reports. Ray's log misses reports when the driver died between a worker's checkpoint
    upload and the driver's next sync of the log (``trainables.runtime.carrying_reports``)."""
    completed = dict(dataframes)
    for trial in trials:
        frame = completed.get(trial.trial_id)
        checkpoint = getattr(trial, "checkpoint", None)
        if checkpoint is None or not lacks_reports(frame):
            continue
        try:
            reports = reports_of(checkpoint)
        except Exception as error:  # an unreadable checkpoint leaves the log as it is, and says so
            print(f"[noisy-transfer] trial {trial.trial_id}: Ray's log lacks epochs and its checkpoint "
                  f"could not be read to fill them ({error})")
            continue
        if reports:
            completed[trial.trial_id] = fill_from_checkpoint(frame, reports)
    return completed


def _history(frame: pd.DataFrame, trial: Any, study: str) -> pd.DataFrame:
    """One trial's reports as history rows: per-phase epoch unified in ``epoch``, metrics kept as is."""
    for flag in (DIVERGED, CONFIG_ERROR):  # a failed trial's last report holds no epoch, only the failure
        if flag in frame:
            frame = frame.loc[frame[flag] != 1]
    metric_columns = [c for c in frame.columns if c not in PHASE_EPOCH_KEYS and not c.startswith("config/")
                      and ("/" in c or c == "objective")]
    epoch = pd.Series(np.nan, index=frame.index)
    for key in PHASE_EPOCH_KEYS:
        if key in frame:
            epoch = epoch.fillna(frame[key])
    history = pd.DataFrame({
        "study": study,
        "trial_id": trial.trial_id,
        "condition": trial.config.get("condition", ""),
        "fold": trial.config.get("fold", np.nan),
        "seed": trial.config.get("seed"),
        "phase": frame.get("phase", pd.Series("", index=frame.index)).astype(str),
        "epoch": epoch.astype("Int64"),
        "epoch_total": frame["epoch_total"].astype("Int64") if "epoch_total" in frame else epoch.astype("Int64"),
    })
    for column in metric_columns:
        history[column] = pd.to_numeric(frame[column], errors="coerce")
    # A retried trial re-reports the epochs after its last checkpoint: keep the last report of each.
    history = history.drop_duplicates(subset=["trial_id", "epoch_total"], keep="last")
    return history.sort_values("epoch_total").reset_index(drop=True)


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: config values that mix None and numbers become floats."""
    for column in frame.columns:
        values = frame[column]
        if values.dtype == object and values.map(lambda v: v is None or isinstance(v, (int, float))).all():
            frame[column] = pd.to_numeric(values, errors="coerce")
        elif values.dtype == object:
            frame[column] = values.map(lambda v: "" if v is None else str(v))
    return frame.sort_values(["trial_id"]).reset_index(drop=True) if len(frame) else frame


def trial_timing(last: Mapping[str, Any]) -> dict[str, Any]:
    """When and where a trial ran, from its last report: ``start_time``/``end_time`` (UTC timestamps),
    ``wall_s`` (seconds of training, summed over restarts: Ray's ``time_total_s``) and ``node`` (the
    IP of the node that ran its last report). Missing values for a trial that never reported."""
    end, wall = last.get("timestamp"), last.get("time_total_s")
    if not isinstance(end, (int, float)) or not isinstance(wall, (int, float)):
        return {"start_time": pd.NaT, "end_time": pd.NaT, "wall_s": np.nan, "node": str(last.get("node_ip", ""))}
    return {"start_time": pd.Timestamp(end - wall, unit="s", tz="UTC"), "end_time": pd.Timestamp(end, unit="s", tz="UTC"),
            "wall_s": float(wall), "node": str(last.get("node_ip", ""))}


def write_parquet(frame: pd.DataFrame, path: Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write atomically (temp file then rename): a reader never sees half a file. ``metadata`` goes into
    the pyarrow schema's key-value metadata (``pyarrow.parquet.read_schema(path).metadata``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    extra = {f"noisy_transfer.{key}".encode(): str(value).encode() for key, value in (metadata or {}).items()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def _error_line(trial: Any) -> str:
    """A trial's exception (:func:`exception_text` of its error file), at most 1000 characters."""
    return exception_text(trial_error_text(trial) or "")[:1000] or "error (see the trial's error.txt)"


def exception_text(error: str) -> str:
    """The final exception of a traceback ``error`` (Ray's error.txt): from its ``Type: message`` line to
    the end, so a message of several lines is kept whole; the last line when there is no traceback; "" for
    none. The exception starts at the last unindented line that follows an indented one (a frame)."""
    lines = [line.rstrip() for line in error.strip().splitlines() if line.strip()]
    for i in range(len(lines) - 1, 0, -1):
        if not lines[i][0].isspace() and lines[i - 1][0].isspace():
            return "\n".join(lines[i:])
    return lines[-1] if lines else ""

