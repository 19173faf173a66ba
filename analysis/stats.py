"""Beyond the thesis: paired differences with confidence intervals, and the search preset's summary.

The study draws label noise from ``(seed, noise config)``, so two conditions with the same (fold, seed)
see the same images and the same corrupted objects: the difference of their scores is a paired
sample, and its confidence interval is far tighter than comparing two unpaired means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from analysis.load import Study
from analysis.tables import (MIN_SEEDS, STD_DDOF, TABLE1_METRIC, TABLE2_METRICS, finetune_tail, finished_trials,
                             pu_trials, trial_last_values)

# Condition -> the condition it is compared with (schema.md, Table 1).
REFERENCES: dict[str, str] = {
    **dict.fromkeys(("HalfUnsegmented", "SigmoidalLoss", "AllRandomLabels", "HalfRandomLabels",
                     "BinarizedLabels", "RandomWeights", "ImageNetModel"), "CompleteLabels"),
    "FalseSegmentedHalf": "NoFalseSegmented",
}
CONFIDENCE = 0.95
SEARCH_NOISE_PARAMS = ("noise_unsegment", "noise_misclassify")  # the scientific axes, with the loss
SEARCH_NUISANCE_PARAMS = ("q", "beta", "gamma", "prior", "warmup_epochs", "lr_pretrain")
SEARCH_BINS = 5


def trial_scores(study: Study, metric: str = TABLE1_METRIC) -> pd.DataFrame:
    """Each finished trial's score: the mean of ``metric`` over its last 5 fine-tuning epochs (the
    objective; the same values Table 1 pools). Columns: trial_id, condition, fold, seed, score."""
    tail = finetune_tail(study, metric)
    keys = [column for column in ("condition", "fold", "seed") if column in tail.columns]
    return tail.groupby(["trial_id", *keys], as_index=False)["value"].mean().rename(columns={"value": "score"})


def mean_ci(differences: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of a Student-t confidence interval of the mean; NaN bounds with n < 2."""
    differences = np.asarray(differences, dtype=float)
    n = len(differences)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(differences.mean())
    if n < 2:
        return mean, math.nan, math.nan
    half = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * differences.std(ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_differences(study: Study, references: Mapping[str, str] = REFERENCES,
                       metric: str = TABLE1_METRIC, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """For every condition with a reference condition in the study: score(condition) -
    score(reference) over the (fold, seed) pairs both finished, with the mean difference and its
    Student-t confidence interval.

    Columns: condition, reference, mean_difference, ci_low, ci_high, n_pairs, too_few (fewer than 2
    pairs: the interval is NaN then).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    scores = trial_scores(study, metric)
    pair_keys = [key for key in ("fold", "seed") if key in scores.columns]
    conditions = [c for c in pd.unique(study.trials["condition"]) if c in references]
    present = set(study.trials["condition"])
    rows = []
    for condition in conditions:
        reference = references[condition]
        if reference not in present:
            continue
        pairs = scores[scores["condition"] == condition].merge(
            scores[scores["condition"] == reference], on=pair_keys, suffixes=("", "_reference"))
        mean, low, high = mean_ci((pairs["score"] - pairs["score_reference"]).to_numpy(), confidence)
        rows.append({"condition": condition, "reference": reference, "mean_difference": mean,
                     "ci_low": low, "ci_high": high, "n_pairs": len(pairs), "too_few": len(pairs) < MIN_SEEDS})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS).astype({"n_pairs": int, "too_few": bool})


PAIRED_COLUMNS = ["condition", "reference", "mean_difference", "ci_low", "ci_high", "n_pairs", "too_few"]


def pu_references(conditions: pd.DataFrame) -> list[tuple[str, str]]:
    """The (condition, reference) pairs a PU study's claims rest on (thesis 5.2, Table 2 and Figure 5).

    ``conditions``: one row per condition with columns condition, setup, labelled_fraction, loss. In
    study order, each condition is compared with
    - the P+U cross-entropy condition at its labelled fraction, or the study's only one (Table 2: what
      each annotation or loss gains over CE on P+U);
    - for a P+U condition, the P+N cross-entropy condition at its fraction (Figure 5: reliable negatives
      beat every PU loss at every fraction);
    - for a P+U negative-aware loss other than the weighted one, the weighted loss at its fraction
      (Figure 5: the three losses do not differ significantly).
    """
    rows = list(conditions[["condition", "setup", "labelled_fraction", "loss"]].itertuples(index=False))

    def find(setup: str, fraction: float | None, loss: str) -> list[str]:
        return [r.condition for r in rows if r.setup == setup and r.loss == loss
                and (fraction is None or math.isclose(r.labelled_fraction, fraction))]

    all_pu_ce = find("pu", None, "ce")
    pairs: list[tuple[str, str]] = []
    for row in rows:
        references = find("pu", row.labelled_fraction, "ce") or (all_pu_ce if len(all_pu_ce) == 1 else [])
        if row.setup == "pu":
            references += find("pn", row.labelled_fraction, "ce")
            if row.loss not in ("ce", "weighted_neg"):
                references += find("pu", row.labelled_fraction, "weighted_neg")[:1]
        # A pair is compared once, in the direction it is first met (50%(P+N) - 50%P+U/CE, not both).
        pairs += [(row.condition, reference) for reference in dict.fromkeys(references)
                  if reference != row.condition and (reference, row.condition) not in pairs]
    return pairs


def pu_paired_differences(study: Study, metric: str = "mean_f1",
                          confidence: float = CONFIDENCE) -> pd.DataFrame:
    """A PU study's paired differences: ``metric`` (a Table 2 column: acc, mean_precision, mean_recall,
    mean_f1) at each trial's last epoch, condition minus reference (:func:`pu_references`) over the seeds
    both finished, with the mean difference and its Student-t interval. The same columns as
    :func:`paired_differences`."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    trials = pu_trials(study)
    if metric not in TABLE2_METRICS:
        raise ValueError(f"metric must be one of {sorted(TABLE2_METRICS)}, got {metric!r}")
    rows = []
    for condition, reference in pu_references(trials.drop_duplicates("condition")):
        pairs = trials[trials["condition"] == condition].merge(
            trials[trials["condition"] == reference], on="seed", suffixes=("", "_reference"))
        mean, low, high = mean_ci((pairs[metric] - pairs[f"{metric}_reference"]).to_numpy(), confidence)
        rows.append({"condition": condition, "reference": reference, "mean_difference": mean,
                     "ci_low": low, "ci_high": high, "n_pairs": len(pairs), "too_few": len(pairs) < MIN_SEEDS})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS).astype({"n_pairs": int, "too_few": bool})


def excludes_zero(frame: pd.DataFrame) -> pd.Series:
    """Per row of a paired-differences frame: does its confidence interval exclude 0? (False where the
    interval is NaN: too few pairs to say.)"""
    return (frame["ci_low"] > 0) | (frame["ci_high"] < 0)


@dataclass(frozen=True, eq=False)
class SearchSummary:
    """The search preset's results: settings chosen by validation, reported on test (thesis 4 and 5.1).

    trials: every finished trial that ran to its last fine-tuning epoch, best validation objective
    first: trial_id, its scientific and nuisance settings, ``val_objective`` (the ``objective`` it was
    chosen by: mean of its last 5 fine-tuning validation mean IUs) and ``test_score`` (the mean of its
    last 5 fine-tuning test mean IUs, what Table 1 pools).
    by_noise: per noise parameter, binned rate, label transform and loss (columns noise, bin, rate (bin
    centre), label_transform, loss, val_mean, mean, std, n_trials, too_few): ``mean`` and ``std`` are of
    ``test_score``; bins are [low, high) and the last one includes 1. A trial counts for a noise
    parameter only where that parameter acts (:func:`acts`).
    best: per noise parameter, bin, label transform and loss, the trial with the best validation
    objective, with its settings, ``val_objective`` and ``test_score``.
    importances: Optuna's parameter importances (param, importance), empty when unavailable.
    notes: what was left out and why.
    """

    trials: pd.DataFrame
    by_noise: pd.DataFrame
    best: pd.DataFrame
    importances: pd.DataFrame
    notes: tuple[str, ...] = field(default=())


SEARCH_SCORES = ("val_objective", "test_score")


def search_trials(study: Study) -> tuple[pd.DataFrame, int]:
    """(trials, stopped): the finished trials that ran every fine-tuning epoch, with ``val_objective``
    and ``test_score`` columns, best validation objective first; and how many finished trials the
    scheduler stopped early (left out: their scores cover fewer epochs than the others')."""
    trials = finished_trials(study)
    last = study.history[study.history["phase"] == "finetune"].groupby("trial_id")["epoch"].max()
    reached = trials["trial_id"].map(last)
    complete = reached >= trials["epochs_finetune"] if "epochs_finetune" in trials.columns else reached.notna()
    # The reported objective (validation), else the same last-5 mean recomputed from the history.
    val = trial_last_values(study, ["objective"])["objective"]
    if "finetune/val_mean_iu" in study.history.columns:
        val = val.fillna(trial_scores(study, "finetune/val_mean_iu").set_index("trial_id")["score"])
    test = trial_scores(study, TABLE1_METRIC).set_index("trial_id")["score"]
    kept = trials[complete].assign(val_objective=lambda t: t["trial_id"].map(val),
                                   test_score=lambda t: t["trial_id"].map(test))
    kept = kept.dropna(subset=["val_objective"]).sort_values("val_objective", ascending=False, kind="stable")
    settings = [c for c in ("label_transform", *SEARCH_NOISE_PARAMS, "loss", *SEARCH_NUISANCE_PARAMS) if c in kept]
    # STOPPED: the status study.stops gives such trials; older exports left them TERMINATED
    stopped = int((study.trials["status"] == "STOPPED").sum() + (~complete).sum())
    return kept[["trial_id", *settings, *SEARCH_SCORES]].reset_index(drop=True), stopped


def acts(noise: str, trial: Mapping[str, object]) -> bool:
    """Whether noise parameter ``noise`` acted in ``trial``: binarizing erases misclassification (it only
    permutes classes 1..15), so the search draws it only without a transform and a binarized trial's
    ``noise_misclassify`` (the config default) is no measurement of that axis."""
    return not (noise == "noise_misclassify" and trial.get("label_transform") == "binarize")


def search_summary(study: Study, bins: int = SEARCH_BINS) -> SearchSummary:
    """Summarise a search study: every complete trial's validation objective and test score, the test
    score against each noise rate per loss (``bins`` equal bins of [0, 1]), the best settings per noise
    level and loss (chosen by validation, reported on test), and Optuna's parameter importances."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    trials, stopped = search_trials(study)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = np.round((edges[:-1] + edges[1:]) / 2, 10)  # 0.1, not 0.1000000001, as a table key
    labels = [f"[{low:.2f}, {high:.2f}{']' if high == 1.0 else ')'}" for low, high in zip(edges[:-1], edges[1:])]
    settings = [c for c in trials.columns if c not in ("trial_id", *SEARCH_SCORES)]
    # The label transform is a scientific choice of the search: curves and winners are per transform.
    choices = [c for c in ("label_transform", "loss") if c in trials.columns]
    by_noise, best = [], []
    for noise in (p for p in SEARCH_NOISE_PARAMS if p in trials.columns):
        acting = trials[[acts(noise, row) for row in trials.to_dict("records")]]
        index = np.clip(np.searchsorted(edges, acting[noise].to_numpy(dtype=float), side="right") - 1, 0, bins - 1)
        binned = acting.assign(noise=noise, bin=np.asarray(labels)[index], rate=centres[index])
        grouped = binned.groupby(["noise", "bin", "rate", *choices])
        frame = grouped.agg(val_mean=("val_objective", "mean"), mean=("test_score", "mean"),
                            std=("test_score", lambda v: v.std(ddof=STD_DDOF)),
                            n_trials=("test_score", "count")).reset_index()
        by_noise.append(frame.assign(too_few=frame["n_trials"] < MIN_SEEDS))
        winners = binned.loc[binned.groupby(["bin", *choices])["val_objective"].idxmax()]  # chosen by validation
        best.append(winners[["noise", "bin", "rate", *choices, "trial_id", *SEARCH_SCORES,
                             *(c for c in settings if c not in choices)]])
    notes = [] if len(trials) and by_noise else [
        f"no complete trials with an objective and a noise rate ({', '.join(SEARCH_NOISE_PARAMS)})"]
    if stopped:
        notes.append(f"{stopped} trial(s) stopped early by the scheduler are left out of these tables "
                     "(their scores cover fewer fine-tuning epochs)")
    importances, importance_note = optuna_importances(study)
    by_noise_columns = ["noise", "bin", "rate", *choices, "val_mean", "mean", "std", "n_trials", "too_few"]
    return SearchSummary(
        trials=trials,
        by_noise=(pd.concat(by_noise, ignore_index=True) if by_noise else pd.DataFrame(columns=by_noise_columns))
        .sort_values(["noise", "rate", *choices], kind="stable").reset_index(drop=True),
        best=pd.concat(best, ignore_index=True).sort_values(["noise", "rate", *choices]).reset_index(drop=True) if best
        else pd.DataFrame(columns=["noise", "bin", "rate", "trial_id", *SEARCH_SCORES]),
        importances=importances,
        notes=tuple(notes + ([importance_note] if importance_note else [])),
    )


def optuna_importances(study: Study) -> tuple[pd.DataFrame, str]:
    """(frame of param, importance; note) from the Optuna study in ``<folder>/optuna.db`` named like the
    study, computed from its COMPLETE trials only: a trial the scheduler stopped (PRUNED) scored a
    truncated run, a FAIL none. The note says how many trials went in and how many were left out by
    state; the frame is empty, and the note says why, without the database or with < 2 complete trials."""
    empty = pd.DataFrame(columns=["param", "importance"])
    path = Path(study.folder) / "optuna.db" if study.folder is not None else None
    if path is None or not path.is_file():
        return empty, "no optuna.db in the study folder: no parameter importances"
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        optuna_study = optuna.load_study(study_name=study.name, storage=f"sqlite:///{path.resolve()}")
    except KeyError:
        return empty, f"optuna.db has no study named {study.name!r}: no parameter importances"
    states = pd.Series([t.state.name for t in optuna_study.get_trials(deepcopy=False)], dtype=object)
    counts = states.value_counts()
    complete = int(counts.get("COMPLETE", 0))
    left_out = ", ".join(f"{int(counts[name])} {name}" for name in sorted(counts.index) if name != "COMPLETE")
    counted = f"{complete} COMPLETE Optuna trial(s)" + (f"; left out: {left_out}" if left_out else "")
    if complete < 2:
        return empty, f"no parameter importances: they need >= 2 COMPLETE trials, optuna.db has {counted}"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:  # get_param_importances reads COMPLETE trials only
        importances = optuna.importance.get_param_importances(optuna_study, evaluator=evaluator)
    except (ValueError, RuntimeError) as error:  # e.g. every trial has the same parameters
        return empty, f"parameter importances unavailable ({counted}): {error}"
    frame = pd.DataFrame({"param": list(importances), "importance": list(importances.values())})
    return frame, f"parameter importances from {counted}"
