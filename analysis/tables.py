"""The thesis's tables (section 5) as tidy DataFrames, and their rendering as text tables.

Every builder returns one row per cell with ``mean``, ``std`` (sample std, ddof=1; NaN with fewer than
2 values), how many values and seeds fed it, and ``too_few`` (fewer than 2 seeds, or a missing fold),
so a partly finished study still gives a table that says which cells to distrust. Only finished
trials (status ``TERMINATED``) count: the last epochs of a running or failed trial are not its final
ones.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import Study
from trainables.data.base import fold_classes
from trainables.labels import VOC_CLASSES, pretrain_categories

FINISHED = "TERMINATED"
LAST_EPOCHS = 5  # thesis 5.1: "computed over the last five snapshots for all repetitions"
STD_DDOF = 1
MIN_SEEDS = 2
AVERAGE = "Average"
TABLE1_METRIC = "finetune/test_mean_iu"

TABLE1_GROUPS = (
    ("Upper baseline & lower baseline", ("ImageNetModel", "RandomWeights")),
    ("Inexhaustive Segmentation", ("CompleteLabels", "HalfUnsegmented", "SigmoidalLoss")),
    ("Misclassification", ("AllRandomLabels", "HalfRandomLabels", "BinarizedLabels")),
    ("False Segmentation", ("NoFalseSegmented", "FalseSegmentedHalf")),
)
OTHER_GROUP = "Other"
FIGURE3_METRICS = ("finetune/test_mean_iu", "finetune/test_mean_acc")

TABLE2_METRICS = {"acc": "test/acc", "mean_precision": "test/mean_precision",
                  "mean_recall": "test/mean_recall", "mean_f1": "test/mean_f1"}
PU_LOSS_NAMES = {"ce": "CrossEntropyU.", "weighted_neg": "WeightedNeg.", "sigmoidal_neg": "SigmoidalNeg.",
                 "bootstrap_neg": "BootstrapHard", "focal": "Focal", "nnpu": "nnPU"}

TABLE3_METRICS = {"overall_acc": "pretrain/test_pixel_acc", "mean_acc": "pretrain/test_mean_acc",
                  "fw_iu": "pretrain/test_fw_iu", "mean_iu": "pretrain/test_mean_iu"}
SEGMENTATION_LOSS_NAMES = {"ce": "CrossEntropy", "weighted_neg": "WeightedNeg.", "sigmoidal_neg": "SigmoidalNeg.",
                           "bootstrap_neg": "BootstrapNeg.", "focal": "Focal", "nnpu": "nnPU"}
LOSS_ORDER = tuple(PU_LOSS_NAMES)
_SEGMENTATION_LOSS_KEYS = {name: loss for loss, name in SEGMENTATION_LOSS_NAMES.items()}


# --- shared helpers -------------------------------------------------------------------------------


def finished_trials(study: Study) -> pd.DataFrame:
    """The trials with status ``TERMINATED``."""
    return study.trials[study.trials["status"] == FINISHED]


def expected_values(study: Study, key: str) -> list:
    """The values of ``key`` ("folds", "seeds", "conditions") the study was meant to run: study.json's
    list when present, else those of its trials (in order of appearance; folds and seeds sorted)."""
    column = {"folds": "fold", "seeds": "seed", "conditions": "condition"}[key]
    if study.meta.get(key):
        return list(study.meta[key])
    if column not in study.trials.columns:
        return []
    values = list(pd.unique(study.trials[column].dropna()))
    return values if key == "conditions" else sorted(values)


def finetune_tail(study: Study, metric: str = TABLE1_METRIC, last: int = LAST_EPOCHS) -> pd.DataFrame:
    """The values thesis 5.1 averages: ``metric`` on the last ``last`` evaluated fine-tuning epochs of
    every finished trial (history rows; NaNs, epochs not evaluated under ``eval_interval`` > 1, are
    dropped before the last ``last`` are taken, so the tail holds ``last`` evaluations).

    Returns columns trial_id, condition, fold, seed, epoch, value (one row per kept epoch).
    """
    keys = [column for column in ("condition", "fold", "seed") if column in study.trials.columns]
    rows = study.history[study.history["phase"] == "finetune"]
    if metric not in rows.columns:
        return pd.DataFrame(columns=["trial_id", *keys, "epoch", "value"])
    rows = rows[["trial_id", "epoch", metric]].rename(columns={metric: "value"})
    rows = rows.merge(finished_trials(study)[["trial_id", *keys]], on="trial_id")
    rows = rows.dropna(subset=["value"])
    tail = rows.sort_values(["trial_id", "epoch"], kind="stable").groupby("trial_id").tail(last)
    return tail[["trial_id", *keys, "epoch", "value"]].reset_index(drop=True)


def trial_last_values(study: Study, metrics: Sequence[str]) -> pd.DataFrame:
    """Per trial (index trial_id), the last non-NaN value of each metric in its history (by
    ``epoch_total``); a metric the history lacks comes from the trials frame's last reported value."""
    in_history = [metric for metric in metrics if metric in study.history.columns]
    history = study.history.sort_values("epoch_total", kind="stable")
    last = history.groupby("trial_id")[in_history].last() if in_history else pd.DataFrame()
    result = pd.DataFrame(index=pd.Index(study.trials["trial_id"], name="trial_id"))
    for metric in metrics:
        if metric in in_history:
            result[metric] = last[metric].reindex(result.index)
        elif metric in study.trials.columns:
            result[metric] = study.trials.set_index("trial_id")[metric]
        else:
            result[metric] = math.nan
    return result


def _summary(values: pd.Series, seeds: pd.Series) -> dict[str, float | int]:
    n = int(values.count())
    std = float(values.std(ddof=STD_DDOF)) if n > STD_DDOF else math.nan
    return {
        "mean": float(values.mean()) if n else math.nan,
        "std": std,
        "pooled_std": std,
        "n_values": n,
        "n_seeds": int(seeds[values.notna()].nunique()),
    }


def _average(values: pd.Series, seeds: pd.Series, cells: Sequence[Mapping[str, object]]) -> dict[str, float | int]:
    """An Average over folds the thesis's way: the mean of all ``values`` (every fold's last-5 values
    pooled), ``std`` the mean of the fold ``cells``' stds (thesis Table 1: CompleteLabels 0.29±0.01,
    0.36±0.01, 0.29±0.01, 0.37±0.01 -> 0.33±0.01; folds without a std left out, NaN if none has one),
    and ``pooled_std`` the sample std of the pooled values (which also counts the spread between
    fold means)."""
    summary = _summary(values, seeds)
    stds = [float(cell["std"]) for cell in cells if not math.isnan(float(cell["std"]))]
    summary["std"] = float(np.mean(stds)) if stds else math.nan
    return summary


def ordered_conditions(conditions: Iterable[str]) -> list[tuple[str, str]]:
    """(group, condition) pairs in the thesis's Table 1 order; unknown conditions last, as given."""
    conditions = list(dict.fromkeys(conditions))
    ordered = [(group, c) for group, members in TABLE1_GROUPS for c in members if c in conditions]
    known = {c for _, c in ordered}
    return ordered + [(OTHER_GROUP, c) for c in conditions if c not in known]


def fold_names(study: Study, folds: Iterable[int]) -> dict[int, str]:
    """Column header per fold: its 5 fine-tuning class names (study.json ``class_names`` with 20
    source names, or 21 with background first; VOC names for ``voc`` data), else
    ``"fold f (classes a-b)"``."""
    names = study.meta.get("class_names")
    if names is not None and len(names) == len(VOC_CLASSES) + 1:
        names = names[1:]
    if names is not None and len(names) != len(VOC_CLASSES):  # not the 20 source classes: unusable
        names = None
    if names is None and str(study.meta.get("data", "")).startswith("voc"):
        names = VOC_CLASSES
    headers = {}
    for fold in folds:
        _, finetune = fold_classes(int(fold))
        if names is not None:
            headers[int(fold)] = ", ".join(str(names[c - 1]) for c in finetune)
        else:
            headers[int(fold)] = f"fold {fold} (classes {finetune[0]}-{finetune[-1]})"
    return headers


# --- Table 1 / Figure 3 ---------------------------------------------------------------------------


def table1(study: Study, metric: str = TABLE1_METRIC) -> pd.DataFrame:
    """Thesis Table 1 as a tidy frame: one row per (condition, fold) cell plus one ``Average`` row per
    condition: the mean of the values of all folds, ± the mean of the folds' stds (the thesis's
    Average; see :func:`_average`).

    Columns: group, condition, fold (Int64; <NA> on Average rows), column (the header: fold name or
    "Average"), mean, std, pooled_std (the sample std of the values pooled over folds on Average rows;
    equal to std on fold rows), n_values, n_seeds, too_few. A cell is too_few with fewer than 2 seeds;
    an Average is too_few when any of its folds is. Missing cells have mean NaN and n_values 0.
    """
    tail = finetune_tail(study, metric)
    folds = [int(f) for f in expected_values(study, "folds")]
    headers = fold_names(study, folds)
    by_cell = {key: group for key, group in tail.groupby(["condition", "fold"])}
    by_condition = {key: group for key, group in tail.groupby("condition")}
    empty = tail.iloc[:0]
    rows = []
    for group, condition in ordered_conditions(expected_values(study, "conditions")):
        cells = []
        for fold in folds:
            values = by_cell.get((condition, fold), empty)
            summary = _summary(values["value"], values["seed"])
            cells.append({"group": group, "condition": condition, "fold": fold, "column": headers[fold],
                          **summary, "too_few": summary["n_seeds"] < MIN_SEEDS})
        pooled = by_condition.get(condition, empty)
        pooled = pooled[pooled["fold"].isin(folds)]
        rows += cells
        rows.append({"group": group, "condition": condition, "fold": pd.NA, "column": AVERAGE,
                     **_average(pooled["value"], pooled["seed"], cells),
                     "too_few": any(cell["too_few"] for cell in cells) or not cells})
    frame = pd.DataFrame(rows, columns=["group", "condition", "fold", "column", "mean", "std", "pooled_std",
                                        "n_values", "n_seeds", "too_few"])
    return frame.astype({"fold": "Int64", "n_values": int, "n_seeds": int, "too_few": bool})


def n_categories(trials: pd.DataFrame) -> pd.Series:
    """Number of pre-training categories per trial (thesis Figure 3's x axis): the ``pretrain_categories``
    the export recorded, else the same count from the trial's config
    (:func:`trainables.labels.pretrain_categories`: 0 for random init, 15 exact, 1 binarized or one
    target, VOC superclasses 4 or 3 (fold 3 holds out person), 5 synthetic shape families, num_groups
    for random groups); NaN for ImageNet init. Indexed like ``trials``."""
    recorded = trials["pretrain_categories"] if "pretrain_categories" in trials.columns else None
    counts = []
    for index, trial in trials.iterrows():
        if recorded is not None and pd.notna(recorded[index]):
            counts.append(float(recorded[index]))
            continue
        groups = trial.get("num_groups", 0)
        data_kind = str(trial.get("data", "synthetic")).partition(":")[0]
        count = pretrain_categories(trial.get("label_transform", "none"), int(trial["fold"]), data_kind,
                                    0 if pd.isna(groups) else int(groups), trial.get("init", "pretrain"))
        counts.append(math.nan if count is None else float(count))
    return pd.Series(counts, index=trials.index, dtype=float)


def figure3_frame(study: Study, metrics: Sequence[str] = FIGURE3_METRICS) -> pd.DataFrame:
    """Thesis Figure 3's points: per condition, number of pre-training categories and metric, Table 1's
    Average over the folds whose trials had that many categories (mean of their values ± the mean of
    their stds, pooled_std as in :func:`table1`). A condition whose count differs between folds (VOC
    superclasses: 3 in fold 3, 4 elsewhere) gives one point per count.

    Columns: condition, n_categories, kind ("random" for random categorisations, "meaningful" for the
    line: random weights, binarized, superclasses, exact), metric, mean, std, pooled_std, n_values,
    n_seeds, too_few (a fold with fewer than 2 seeds). Trials without a count (ImageNet init) are left out.
    """
    trials = finished_trials(study)
    trials = trials.assign(n_categories=n_categories(trials),
                           kind=np.where(trials["label_transform"] == "random_groups", "random", "meaningful"))
    counted = trials.dropna(subset=["n_categories"])[["trial_id", "n_categories", "kind"]]
    rows = []
    for metric in metrics:
        tail = finetune_tail(study, metric).merge(counted, on="trial_id")
        for (condition, count, kind), points in tail.groupby(["condition", "n_categories", "kind"], sort=False):
            cells = [_summary(values["value"], values["seed"]) for _, values in points.groupby("fold")]
            rows.append({"condition": condition, "n_categories": count, "kind": kind, "metric": metric,
                         **_average(points["value"], points["seed"], cells),
                         "too_few": any(cell["n_seeds"] < MIN_SEEDS for cell in cells)})
    columns = ["condition", "n_categories", "kind", "metric", "mean", "std", "pooled_std", "n_values", "n_seeds",
               "too_few"]
    frame = pd.DataFrame(rows, columns=columns).astype({"n_categories": float, "too_few": bool})
    return frame.sort_values(["metric", "n_categories", "kind"], kind="stable").reset_index(drop=True)


def learning_curves_frame(study: Study, metric: str, x: str = "epoch_total") -> pd.DataFrame:
    """Mean ± std of ``metric`` per condition, phase and ``x`` over all trials that reported it (running
    ones included: a curve shows progress). ``x`` is ``epoch_total`` (both phases on one clock) or
    ``epoch`` (the epoch within the phase). Columns: condition, phase, ``x``, mean, std, n_trials."""
    if x not in ("epoch_total", "epoch"):
        raise ValueError(f"x must be 'epoch_total' or 'epoch', got {x!r}")
    columns = ["condition", "phase", x, "mean", "std", "n_trials"]
    if metric not in study.history.columns:
        return pd.DataFrame(columns=columns)
    rows = study.history[["trial_id", "phase", x, metric]].dropna(subset=[metric])
    rows = rows.merge(study.trials[["trial_id", "condition"]], on="trial_id")
    grouped = rows.groupby(["condition", "phase", x], sort=True)[metric]
    frame = grouped.agg(mean="mean", std=lambda v: v.std(ddof=STD_DDOF), n_trials="count").reset_index()
    return frame[columns]


# --- Table 2 / Figure 5 (PU classification) -------------------------------------------------------


def pu_annotation(setup: str, labelled_fraction: float) -> str:
    """Table 2's annotation: ``P+N``, ``50%(P+N)`` or ``50%P+U``."""
    percent = round(100 * labelled_fraction)
    if setup == "pn":
        return "P+N" if percent == 100 else f"{percent}%(P+N)"
    if setup == "pu":
        return f"{percent}%P+U"
    raise ValueError(f"setup must be 'pu' or 'pn', got {setup!r}")


def pu_trials(study: Study) -> pd.DataFrame:
    """Finished PU-classification trials with their last metric values and Table 2 labels.

    Columns: trial_id, condition, seed, setup, labelled_fraction, loss, annotation, loss_name, and
    Table 2's metrics (acc, mean_precision, mean_recall, mean_f1) from the trial's last epoch.
    """
    required = ["setup", "labelled_fraction", "loss"]
    missing = [column for column in required if column not in study.trials.columns]
    if missing:
        raise ValueError(f"a PU table needs the trial columns {missing}; this study has none "
                         f"(trainable {study.trainable!r})")
    trials = finished_trials(study)
    values = trial_last_values(study, list(TABLE2_METRICS.values())).rename(
        columns={metric: name for name, metric in TABLE2_METRICS.items()})
    frame = trials[["trial_id", "condition", "seed", *required]].merge(values, left_on="trial_id", right_index=True)
    frame["annotation"] = [pu_annotation(s, f) for s, f in zip(frame["setup"], frame["labelled_fraction"])]
    # A preset's "annotation/loss" condition names its loss column (table2's reweighted sigmoidal ablation
    # shares loss and annotation with the plain sigmoidal row); other conditions get the loss's name.
    named = frame["condition"].astype(str).str.partition("/")[2]
    frame["loss_name"] = named.where(named != "", frame["loss"].map(lambda loss: PU_LOSS_NAMES.get(loss, loss)))
    return frame.reset_index(drop=True)


def read_confusion(study: Study, trial_id: str) -> np.ndarray | None:
    """The final test confusion matrix ``(C, C)`` (rows truth, columns prediction) of a trial, from
    ``artifacts/<trial_id>/confusion.json``; None when the study has no folder or the trial no file."""
    if study.folder is None:
        return None
    path = Path(study.folder) / "artifacts" / str(trial_id) / "confusion.json"
    if not path.is_file():
        return None
    return np.asarray(json.loads(path.read_text())["matrix"], dtype=np.int64)


def collapse_of(confusion: np.ndarray) -> dict[str, object]:
    """Whether a classifier collapsed, from its confusion matrix (rows truth, columns prediction): its
    predictions cover fewer than half of the classes (a single class included).

    Returns ``n_predicted`` (classes predicted at least once), ``collapsed`` (bool) and ``collapsed_to``:
    the classes it predicts, most predicted first, ``"0 (negative)"`` for class 0, e.g. ``"0 (negative)"``
    or ``"3, 0 (negative)"`` ("" when not collapsed).
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.shape[0] < 2:
        raise ValueError(f"confusion must be a square (C, C) matrix with C >= 2, got shape {confusion.shape}")
    predicted = confusion.sum(axis=0)
    n_predicted = int((predicted > 0).sum())
    collapsed = n_predicted <= 1 or n_predicted < confusion.shape[0] / 2
    order = [int(c) for c in np.argsort(-predicted, kind="stable") if predicted[c] > 0]
    names = ", ".join("0 (negative)" if c == 0 else str(c) for c in order)
    return {"n_predicted": n_predicted, "collapsed": bool(collapsed), "collapsed_to": names if collapsed else ""}


def collapsed_trials(study: Study) -> pd.DataFrame:
    """Per finished PU trial with a confusion.json: condition, seed and :func:`collapse_of`'s columns.

    Columns: trial_id, condition, seed, n_predicted, collapsed, collapsed_to.
    """
    rows = []
    for _, trial in finished_trials(study).iterrows():
        confusion = read_confusion(study, trial["trial_id"])
        if confusion is not None:
            rows.append({"trial_id": trial["trial_id"], "condition": trial["condition"], "seed": trial["seed"],
                         **collapse_of(confusion)})
    columns = ["trial_id", "condition", "seed", "n_predicted", "collapsed", "collapsed_to"]
    return pd.DataFrame(rows, columns=columns)


def collapse_lines(study: Study) -> list[str]:
    """One line per collapsed trial, e.g. ``"50%P+U/CrossEntropyU. seed 1: collapsed to 0 (negative)
    (1 of 11 classes predicted)"``."""
    frame = collapsed_trials(study)
    classes = {t: read_confusion(study, t).shape[0] for t in frame.loc[frame["collapsed"], "trial_id"]}
    return [f"{row.condition} seed {row.seed}: collapsed to {row.collapsed_to} ({row.n_predicted} of "
            f"{classes[row.trial_id]} classes predicted)" for row in frame[frame["collapsed"]].itertuples()]


def _collapse_column(frame: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Add ``collapsed`` to a per-trial frame: ``"seed 1 -> 0 (negative)"`` when that trial collapsed."""
    flags = collapsed_trials(study).set_index("trial_id")
    text = [f"seed {seed} -> {flags.at[t, 'collapsed_to']}" if t in flags.index and flags.at[t, "collapsed"] else ""
            for t, seed in zip(frame["trial_id"], frame["seed"])]
    return frame.assign(collapsed=text)


def _annotation_key(setup: str, labelled_fraction: float) -> tuple:
    # Thesis order: the full P+N baseline, then subsampled P+N, then P+U, larger fractions first.
    return (setup == "pu", -labelled_fraction)


def _loss_key(loss: str) -> int:
    return LOSS_ORDER.index(loss) if loss in LOSS_ORDER else len(LOSS_ORDER)


def _aggregate(frame: pd.DataFrame, by: list[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and std (``<metric>_std``) of ``metrics`` over the rows of each ``by`` group, with
    n_runs, n_seeds and too_few (fewer than 2 seeds); rows without any metric (a trial that never
    reported them, e.g. no pre-training) are left out."""
    frame = frame.dropna(subset=list(metrics), how="all")
    grouped = frame.groupby(by, sort=False, dropna=False)
    result = grouped[list(metrics)].mean()
    for metric in metrics:
        result[f"{metric}_std"] = grouped[metric].std(ddof=STD_DDOF)
    result["n_runs"] = grouped.size()
    result["n_seeds"] = grouped["seed"].nunique()
    result["too_few"] = result["n_seeds"] < MIN_SEEDS
    columns = [c for metric in metrics for c in (metric, f"{metric}_std")] + ["n_runs", "n_seeds", "too_few"]
    return result[columns].reset_index()


def table2(study: Study) -> pd.DataFrame:
    """Thesis Table 2: accuracy, mean precision, mean recall and mean F1 (last epoch of each finished
    trial, mean over seeds, std in ``<metric>_std``) per annotation and loss, in the thesis's order.

    Columns: annotation, loss, acc, acc_std, mean_precision, ..., mean_f1_std, n_runs, n_seeds, too_few,
    collapsed (per collapsed seed ``"seed S -> classes it predicts"``, see :func:`collapse_of`; "" if none).
    """
    frame = pu_trials(study)
    frame["order"] = [(_annotation_key(s, f), _loss_key(loss))
                      for s, f, loss in zip(frame["setup"], frame["labelled_fraction"], frame["loss"])]
    frame = _collapse_column(frame.sort_values("order", kind="stable"), study)
    table = _aggregate(frame, ["annotation", "loss_name"], list(TABLE2_METRICS))
    # A collapsed model's mean scores look plausible (precision 0.5 of an all-negative model): say so.
    collapsed = frame.groupby(["annotation", "loss_name"], sort=False)["collapsed"].agg(
        lambda texts: "; ".join(text for text in texts if text))
    table["collapsed"] = [collapsed[(a, l)] for a, l in zip(table["annotation"], table["loss_name"])]
    return table.rename(columns={"loss_name": "loss"})


def figure5_frame(study: Study) -> pd.DataFrame:
    """Thesis Figure 5's points: mean ± std of the last mean F1 per (setup, labelled_fraction, loss).

    Columns: setup, labelled_fraction, loss, mean_f1, mean_f1_std, n_runs, n_seeds, too_few.
    """
    frame = pu_trials(study).sort_values(["setup", "loss", "labelled_fraction"], kind="stable")
    return _aggregate(frame, ["setup", "loss", "labelled_fraction"], ["mean_f1"])


# --- Table 3 (pre-training segmentation with inexhaustive labels) ---------------------------------


def table3_labels(trials: pd.DataFrame) -> pd.DataFrame:
    """Table 3's (annotation, loss) per trial: the condition's parts before/after ``"/"``; for other
    conditions, ``Complete`` or ``50%Unseg.`` from noise_unsegment and the loss's display name."""
    parts = trials["condition"].astype(str).str.split("/", n=1, expand=True).reindex(columns=[0, 1])
    rate = trials["noise_unsegment"] if "noise_unsegment" in trials.columns else pd.Series(0.0, index=trials.index)
    derived_annotation = [("Complete" if not r else f"{round(100 * r)}%Unseg.") for r in rate.fillna(0.0)]
    loss = trials["loss"] if "loss" in trials.columns else pd.Series("ce", index=trials.index)
    derived_loss = loss.map(lambda name: SEGMENTATION_LOSS_NAMES.get(name, name))
    has_slash = parts[1].notna()
    return pd.DataFrame({"annotation": parts[0].where(has_slash, derived_annotation),
                         "loss": parts[1].where(has_slash, derived_loss)}, index=trials.index)


def table3(study: Study) -> pd.DataFrame:
    """Thesis Table 3: overall accuracy, mean accuracy, f.w. IU and mean IU of the pre-training task's
    test split (the ``pretrain/test_*`` metrics of the last pre-training epoch), mean over the finished
    trials of each annotation and loss (folds and seeds pooled), std in ``<metric>_std``.

    Columns: annotation, loss, overall_acc, overall_acc_std, mean_acc, ..., mean_iu_std, n_runs,
    n_seeds, too_few.
    """
    trials = finished_trials(study)
    values = trial_last_values(study, list(TABLE3_METRICS.values())).rename(
        columns={metric: name for name, metric in TABLE3_METRICS.items()})
    frame = pd.concat([trials[["trial_id", "condition", "seed"]], table3_labels(trials)], axis=1)
    frame = frame.merge(values, left_on="trial_id", right_index=True)
    # Thesis order: the Complete row first, then by annotation and the losses' order.
    frame["order"] = [(annotation != "Complete", annotation, _loss_key(loss)) for annotation, loss
                      in zip(frame["annotation"], frame["loss"].map(_SEGMENTATION_LOSS_KEYS))]
    frame = frame.sort_values("order", kind="stable")
    return _aggregate(frame, ["annotation", "loss"], list(TABLE3_METRICS))


# --- rendering ------------------------------------------------------------------------------------


def format_cell(mean: float, std: float, too_few: bool = False, digits: int = 2) -> str:
    """``"0.33 ± 0.01"``; ``"0.33"`` without a std, ``"n/a"`` without a mean; ``"*"`` marks too few runs."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        text = "n/a"
    elif std is None or (isinstance(std, float) and math.isnan(std)):
        text = f"{mean:.{digits}f}"
    else:
        text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    return text + ("*" if too_few else "")


TOO_FEW_NOTE = "Cells marked * have too few runs: fewer than 2 seeds, or (Average) a fold with too few."


def table1_wide(frame: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Table 1's tidy frame as the thesis lays it out: one row per condition (group shown on its
    first row), one column per fold header and ``Average``, cells ``"mean ± std"``."""
    cells = frame.assign(text=[format_cell(m, s, t, digits) for m, s, t in
                               zip(frame["mean"], frame["std"], frame["too_few"])])
    columns = list(dict.fromkeys(cells["column"]))
    wide = cells.pivot(index="condition", columns="column", values="text")
    conditions = list(dict.fromkeys(cells["condition"]))
    wide = wide.reindex(index=conditions, columns=columns).reset_index()
    groups = cells.drop_duplicates("condition").set_index("condition")["group"].reindex(conditions)
    wide.insert(0, "group", groups.where(~groups.duplicated(), "").to_numpy())
    return wide.rename(columns={"group": "", "condition": "Initial feature extractor"})


def render_table1(frame: pd.DataFrame, fmt: str = "md", digits: int = 2) -> str:
    """Table 1 (the frame of :func:`table1`) as a markdown or HTML table, too-few cells starred."""
    # A blank line ends a markdown table; a line right after it would be read as one more row.
    return render_frame(table1_wide(frame, digits), fmt) + ("\n\n" + TOO_FEW_NOTE if frame["too_few"].any() else "")


def render_frame(frame: pd.DataFrame, fmt: str = "md", digits: int = 3) -> str:
    """Any frame as a markdown pipe table (``fmt="md"``) or an HTML table (``"html"``); floats are
    printed with ``digits`` decimals, NaN as ``n/a``."""
    if fmt not in ("md", "html"):
        raise ValueError(f"fmt must be 'md' or 'html', got {fmt!r}")

    def text(value: object) -> str:
        if isinstance(value, (float, np.floating)):
            return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
        return "" if value is None or value is pd.NA else str(value)

    header = [str(column) for column in frame.columns]
    body = [[text(value) for value in row] for row in frame.itertuples(index=False)]
    if fmt == "md":
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

        return "\n".join([line(header), line(["---"] * len(header)), *map(line, body)])
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in body)
    return f'<table class="table">\n<thead><tr>{head}</tr></thead>\n<tbody>{rows}</tbody>\n</table>'


def too_few_cells(frame: pd.DataFrame, label_columns: Sequence[str]) -> list[str]:
    """One line per too-few row of a builder's frame with its counts, e.g.
    ``"CompleteLabels / fold 2 (classes 6-10): 1 seeds, 5 values"``."""
    counts = [c for c in ("n_seeds", "n_values", "n_runs", "n_trials", "n_pairs") if c in frame.columns]
    return [" / ".join(str(row[column]) for column in label_columns) + ": "
            + ", ".join(f"{int(row[count])} {count[2:]}" for count in counts)
            for _, row in frame[frame["too_few"]].iterrows()]
