"""Hand-made study folders in the export schema (trials.parquet, history.parquet, study.json), for the
analysis tests and the lead's.

Values come from caller-supplied functions, so a test knows every number a table should show:
``value(condition, fold, seed, epoch)`` is the fine-tuning test mean IU of that epoch (pretrain-finetune)
and ``metrics(trial, epoch)`` the PU test metrics. ``log_to_mlflow`` writes the same trials as MLflow
runs (parent + children), the way the study driver logs them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Config overrides per condition (beyond BASE_PRETRAIN_FINETUNE), as the study presets set them.
CONDITION_CONFIGS: dict[str, dict[str, Any]] = {
    "RandomWeights": {"init": "random"},
    "ImageNetModel": {"init": "imagenet"},
    "CompleteLabels": {},
    "HalfUnsegmented": {"noise_unsegment": 0.5},
    "SigmoidalLoss": {"noise_unsegment": 0.5, "label_transform": "binarize", "loss": "sigmoidal_neg",
                      "warmup_epochs": 1},
    "AllRandomLabels": {"noise_misclassify": 1.0},
    "HalfRandomLabels": {"noise_misclassify": 0.5},
    "BinarizedLabels": {"noise_misclassify": 1.0, "label_transform": "binarize"},
    "NoFalseSegmented": {"label_transform": "target"},
    "FalseSegmentedHalf": {"label_transform": "target", "noise_false_segment": 0.5},
    "Binarized": {"label_transform": "binarize"},
    "Superclasses": {"label_transform": "superclass"},
    "RandomGroups4": {"label_transform": "random_groups", "num_groups": 4},
    "RandomGroups7": {"label_transform": "random_groups", "num_groups": 7},
    "RandomGroups11": {"label_transform": "random_groups", "num_groups": 11},
    "Exact": {},
    "Complete/CrossEntropy": {"label_transform": "binarize"},
    "50%Unseg./CrossEntropy": {"label_transform": "binarize", "noise_unsegment": 0.5},
    "50%Unseg./WeightedNeg.": {"label_transform": "binarize", "noise_unsegment": 0.5, "loss": "weighted_neg",
                               "q": 0.5},
    "50%Unseg./SigmoidalNeg.": {"label_transform": "binarize", "noise_unsegment": 0.5, "loss": "sigmoidal_neg"},
}

BASE_PRETRAIN_FINETUNE: dict[str, Any] = {
    "data": "synthetic", "init": "pretrain", "model": "small_fcn", "width": 8, "noise_unsegment": 0.0,
    "noise_misclassify": 0.0, "noise_false_segment": 0.0, "noise_boundary": 0, "label_transform": "none",
    "num_groups": 0, "loss": "ce", "q": None, "beta": None, "gamma": None, "prior": None, "warmup_epochs": 0,
    "class_weighting": False, "lr_pretrain": 0.002, "lr_finetune": 0.002,
}
BASE_PU: dict[str, Any] = {
    "data": "moons", "setup": "pu", "labelled_fraction": 0.5, "loss": "ce", "q": None, "beta": None,
    "gamma": None, "prior": None, "warmup_epochs": 0, "class_weighting": False, "lr": 0.001,
}
PRETRAIN_TEST = {"pretrain/test_mean_iu": 0.6, "pretrain/test_mean_acc": 0.7, "pretrain/test_pixel_acc": 0.8,
                 "pretrain/test_fw_iu": 0.75}
PU_METRICS = ("test/acc", "test/mean_precision", "test/mean_recall", "test/mean_f1")

ValueFn = Callable[[str, int, int, int], float]


def default_value(condition: str, fold: int, seed: int, epoch: int) -> float:
    """A fine-tuning mean IU with a known structure: 0.3 + 0.01 fold + 0.001 seed + 0.0001 epoch."""
    return 0.3 + 0.01 * fold + 0.001 * seed + 0.0001 * epoch


def write_study(folder: Path, trials: pd.DataFrame, history: pd.DataFrame, meta: Mapping[str, Any]) -> Path:
    """Write the three files of a study folder; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    trials.to_parquet(folder / "trials.parquet", index=False)
    history.to_parquet(folder / "history.parquet", index=False)
    (folder / "study.json").write_text(json.dumps(dict(meta), indent=2))
    return folder


def _objective(values: list[float], last: int = 5) -> float:
    return float(np.mean(values[-last:])) if values else math.nan


def pretrain_finetune_frames(
    conditions: Sequence[str],
    folds: Sequence[int] = (1, 2),
    seeds: Sequence[int] = (0, 1),
    *,
    epochs_pretrain: int = 2,
    epochs_finetune: int = 7,
    value: ValueFn = default_value,
    preset: str = "quick",
    study: str = "hand",
    statuses: Mapping[tuple[str, int, int], str] | None = None,
    pretrain_test: Callable[[str, int, int], Mapping[str, float]] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(trials, history, meta) of a pretrain-finetune study with one trial per (condition, fold, seed).

    ``value`` gives finetune/test_mean_iu per fine-tuning epoch (finetune/test_mean_acc is value + 0.1);
    ``statuses`` overrides the TERMINATED status of chosen (condition, fold, seed) trials;
    ``pretrain_test`` gives the pretrain/test_* metrics of the last pre-training epoch (default
    PRETRAIN_TEST).
    """
    statuses = statuses or {}
    trial_rows, history_rows = [], []
    for condition in conditions:
        for fold in folds:
            for seed in seeds:
                config = {**BASE_PRETRAIN_FINETUNE, **CONDITION_CONFIGS.get(condition, {}), "condition": condition,
                          "fold": fold, "seed": seed, "epochs_pretrain": epochs_pretrain,
                          "epochs_finetune": epochs_finetune}
                trial_id = f"{condition}_f{fold}_s{seed}".replace("/", "-").replace("%", "pc").replace(".", "")
                common = {"study": study, "trial_id": trial_id, "condition": condition, "fold": fold, "seed": seed}
                pretrains = config["init"] == "pretrain"
                offset = epochs_pretrain if pretrains else 0
                for epoch in range(1, epochs_pretrain + 1 if pretrains else 1):
                    row = {**common, "phase": "pretrain", "epoch": epoch, "epoch_total": epoch,
                           "pretrain/train_loss": 1.0 / epoch, "pretrain/val_mean_iu": 0.1 * epoch,
                           "objective": math.nan}
                    if epoch == epochs_pretrain:
                        row.update(pretrain_test(condition, fold, seed) if pretrain_test else PRETRAIN_TEST)
                    history_rows.append(row)
                values = []
                for epoch in range(1, epochs_finetune + 1):
                    values.append(value(condition, fold, seed, epoch))
                    history_rows.append({**common, "phase": "finetune", "epoch": epoch, "epoch_total": offset + epoch,
                                         "finetune/train_loss": 1.0 / epoch, "finetune/test_mean_iu": values[-1],
                                         "finetune/test_mean_acc": values[-1] + 0.1, "objective": _objective(values)})
                trial_rows.append({"study": study, "preset": preset, "trial_id": trial_id, "mlflow_run_id": "",
                                   "status": statuses.get((condition, fold, seed), "TERMINATED"), "error": "",
                                   **config, "objective": _objective(values), "finetune/test_mean_iu": values[-1],
                                   "epoch_total": offset + epochs_finetune})
    meta = {"study": study, "preset": preset, "data": "synthetic", "trainable": "pretrain_finetune",
            "metric": "objective", "mode": "max", "folds": list(folds), "seeds": list(seeds),
            "conditions": list(conditions), "smoke": True, **(meta or {})}
    return pd.DataFrame(trial_rows), pd.DataFrame(history_rows), meta


def pu_frames(
    variants: Sequence[tuple[str, float, str]],
    seeds: Sequence[int] = (0, 1),
    *,
    epochs: int = 6,
    metrics: Callable[[Mapping[str, Any], int], Mapping[str, float]] | None = None,
    preset: str = "table2",
    data: str = "cifar:/data/cifar",
    study: str = "hand-pu",
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(trials, history, meta) of a PU-classification study with one trial per (setup, labelled
    fraction, loss) variant and seed; ``metrics(config, epoch)`` gives the test/* metrics (default:
    every metric = 0.5 + 0.1 * labelled_fraction + 0.01 * seed + 0.001 * epoch)."""
    def default(config: Mapping[str, Any], epoch: int) -> dict[str, float]:
        v = 0.5 + 0.1 * config["labelled_fraction"] + 0.01 * config["seed"] + 0.001 * epoch
        return dict.fromkeys(PU_METRICS, v)

    metrics = metrics or default
    trial_rows, history_rows = [], []
    for setup, fraction, loss in variants:
        for seed in seeds:
            condition = f"{setup}_{fraction}_{loss}"
            params = {"q": 0.5} if loss == "weighted_neg" else {"beta": 0.8} if loss == "bootstrap_neg" else {}
            config = {**BASE_PU, "condition": condition, "data": data, "setup": setup,
                      "labelled_fraction": fraction, "loss": loss, **params, "seed": seed, "epochs": epochs}
            trial_id = f"{condition}_s{seed}".replace(".", "")
            f1 = []
            for epoch in range(1, epochs + 1):
                values = dict(metrics(config, epoch))
                f1.append(values["test/mean_f1"])
                history_rows.append({"study": study, "trial_id": trial_id, "condition": condition, "seed": seed,
                                     "phase": "train", "epoch": epoch, "epoch_total": epoch, "train/loss": 1 / epoch,
                                     **values, "objective": _objective(f1)})
            trial_rows.append({"study": study, "preset": preset, "trial_id": trial_id, "mlflow_run_id": "",
                               "status": "TERMINATED", "error": "", **config, **values,
                               "objective": _objective(f1), "epoch_total": epochs})
    meta = {"study": study, "preset": preset, "data": data, "trainable": "pu_classification",
            "metric": "objective", "mode": "max", "seeds": list(seeds),
            "conditions": list(dict.fromkeys(row["condition"] for row in trial_rows)), "smoke": True}
    return pd.DataFrame(trial_rows), pd.DataFrame(history_rows), meta


def write_boundaries(folder: Path, trials: pd.DataFrame, grid: int = 20, points: int = 40) -> None:
    """artifacts/<trial_id>/boundary.npz for every trial: a grid over [-1.5, 2.5] x [-1, 1.5], P(positive)
    a logistic ramp, and moons-like points with observed and true labels."""
    xs, ys = np.linspace(-1.5, 2.5, grid), np.linspace(-1.0, 1.5, grid)
    xx, yy = np.meshgrid(xs, ys)
    angle = np.linspace(0, np.pi, points // 2)
    upper = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    lower = np.stack([1 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    coordinates = np.concatenate([upper, lower]).astype(np.float32)
    true_labels = np.repeat([1, 0], points // 2)
    labels = true_labels * (np.arange(points) % 2)  # half the positives unlabelled
    for trial_id in trials["trial_id"]:
        target = folder / "artifacts" / str(trial_id)
        target.mkdir(parents=True, exist_ok=True)
        np.savez(target / "boundary.npz", xx=xx, yy=yy, prob=1 / (1 + np.exp(-3 * (yy - 0.25))),
                 points=coordinates, labels=labels, true_labels=true_labels)


def log_to_mlflow(trials: pd.DataFrame, history: pd.DataFrame, meta: Mapping[str, Any], tracking_uri: str,
                  experiment_name: str) -> str:
    """Log a study as MLflow runs, the way study/tracking.py does: a parent run tagged preset/study and
    one child per trial (tags trial_id, condition, fold, seed and status in MLflow's words, FINISHED /
    FAILED; config columns as params; every finite history metric with step epoch_total). Returns the
    experiment id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.create_experiment(experiment_name)
    parent = client.create_run(experiment_id, tags={"preset": meta["preset"], "study": meta["study"]})
    not_params = {"study", "preset", "trial_id", "mlflow_run_id", "status", "error"}
    metric_columns = [c for c in history.columns
                      if c not in {"study", "trial_id", "condition", "fold", "seed", "phase", "epoch"}]
    params = [c for c in trials.columns if c not in not_params and c not in metric_columns]
    for _, trial in trials.iterrows():
        tags = {"mlflow.parentRunId": parent.info.run_id, "trial_id": trial["trial_id"],
                "condition": trial["condition"],
                "status": {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(trial["status"], trial["status"]),
                **{key: str(trial[key]) for key in ("fold", "seed") if key in trial.index}}
        run = client.create_run(experiment_id, tags=tags)
        rows = history[history["trial_id"] == trial["trial_id"]]
        logged = [Metric(column, float(row[column]), 0, int(row["epoch_total"]))
                  for _, row in rows.iterrows() for column in metric_columns if not pd.isna(row[column])]
        client.log_batch(run.info.run_id, metrics=logged,
                         params=[Param(key, str(None if pd.isna(trial[key]) else trial[key])) for key in params],
                         tags=[RunTag("error", str(trial["error"]))])
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)
    return experiment_id
