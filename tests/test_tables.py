"""Table builders and loaders on hand-made study folders with known numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from helpers.analysis_frames import (
    PU_METRICS,
    log_to_mlflow,
    pretrain_finetune_frames,
    pu_frames,
    write_study,
)
from scipy import stats as scipy_stats

from analysis import report, tables
from analysis.load import load_study, study_from_mlflow
from analysis.stats import excludes_zero, mean_ci, paired_differences, pu_paired_differences, pu_references, search_summary

EARLY = 100.0  # fine-tuning values before the last 5 epochs: counting any of them breaks every mean
SEED_VALUES = {(1, 0): 0.30, (1, 1): 0.34, (2, 0): 0.40, (2, 1): 0.40}


def known_value(condition: str, fold: int, seed: int, epoch: int) -> float:
    """Epochs 1-2 of 7 are EARLY; the last 5 are constant per (fold, seed), shifted per condition."""
    shift = {"RandomWeights": -0.1}.get(condition, 0.0)
    return EARLY if epoch <= 2 else SEED_VALUES[fold, seed] + shift


def make(tmp_path, conditions=("CompleteLabels",), name="study", **kwargs):
    kwargs.setdefault("value", known_value)
    return load_study(write_study(tmp_path / name, *pretrain_finetune_frames(conditions, **kwargs)))


# --- Table 1 --------------------------------------------------------------------------------------


def test_table1_pools_last_five_epochs_of_every_seed(tmp_path):
    frame = tables.table1(make(tmp_path)).set_index("column")
    fold1, fold2, average = (frame.loc[c] for c in ("fold 1 (classes 1-5)", "fold 2 (classes 6-10)", "Average"))
    # fold 1: five 0.30 and five 0.34 -> mean 0.32, each deviation 0.02, sample std over 10 values.
    assert fold1["mean"] == pytest.approx(0.32)
    assert fold1["std"] == pytest.approx(0.02 * math.sqrt(10 / 9))
    assert (fold1["n_values"], fold1["n_seeds"], fold1["too_few"]) == (10, 2, False)
    assert fold2["mean"] == pytest.approx(0.40) and fold2["std"] == pytest.approx(0.0)
    # Average: the mean of all 20 values, ± the mean of the two folds' stds (the thesis's Average) ...
    assert average["mean"] == pytest.approx(0.36)
    assert average["std"] == pytest.approx((0.02 * math.sqrt(10 / 9) + 0.0) / 2)
    # ... and the std of the pooled values: deviations -0.06 (x5), -0.02 (x5), +0.04 (x10) around 0.36.
    assert average["pooled_std"] == pytest.approx(math.sqrt((5 * 0.06**2 + 5 * 0.02**2 + 10 * 0.04**2) / 19))
    assert fold1["pooled_std"] == fold1["std"]
    assert average["n_values"] == 20 and pd.isna(average["fold"]) and not average["too_few"]
    assert list(frame["fold"].iloc[:2]) == [1, 2]


THESIS_COMPLETE = {1: 0.29, 2: 0.36, 3: 0.29, 4: 0.37}  # thesis Table 1, CompleteLabels, each ± 0.01
THESIS_HALF_SPREAD = 0.01 * math.sqrt(0.9)  # seed s at mean ± this for 5 epochs: sample std 0.01 over 10


def thesis_value(condition, fold, seed, epoch):
    return EARLY if epoch <= 2 else THESIS_COMPLETE[fold] + (1 if seed else -1) * THESIS_HALF_SPREAD


def test_table1_average_std_is_the_mean_of_the_fold_stds_as_in_the_thesis(tmp_path):
    """Thesis Table 1: 0.29±0.01, 0.36±0.01, 0.29±0.01, 0.37±0.01 -> Average 0.33±0.01 (not ±0.04)."""
    study = make(tmp_path, folds=(1, 2, 3, 4), value=thesis_value)
    frame = tables.table1(study)
    cells = frame[frame["column"] != tables.AVERAGE]
    np.testing.assert_allclose(cells["std"], 0.01, rtol=1e-9)
    average = frame[frame["column"] == tables.AVERAGE].iloc[0]
    assert average["mean"] == pytest.approx(0.3275) and average["std"] == pytest.approx(0.01)
    # pooled: per fold 10 values at m_f ± d around the grand mean 0.3275; 40 values, ddof 1
    squares = sum(10 * (m - 0.3275) ** 2 + 10 * THESIS_HALF_SPREAD**2 for m in THESIS_COMPLETE.values())
    assert average["pooled_std"] == pytest.approx(math.sqrt(squares / 39))
    assert round(average["pooled_std"], 2) == 0.04
    assert tables.table1_wide(frame).iloc[0]["Average"] == "0.33 ± 0.01"
    # the CSV the report writes keeps both stds
    from analysis.report import write_report

    write_report(study)
    csv = pd.read_csv(study.folder / "tables" / "table1.csv").set_index("column")
    assert csv.loc["Average", "std"] == pytest.approx(0.01)
    assert csv.loc["Average", "pooled_std"] == pytest.approx(math.sqrt(squares / 39))


def test_table1_keeps_the_thesis_row_order_and_groups(tmp_path):
    study = make(tmp_path, ("MyNewCondition", "FalseSegmentedHalf", "CompleteLabels", "RandomWeights",
                            "BinarizedLabels", "HalfUnsegmented"), folds=(1,), seeds=(0,))
    frame = tables.table1(study)
    rows = frame.drop_duplicates("condition")
    assert list(rows["condition"]) == ["RandomWeights", "CompleteLabels", "HalfUnsegmented", "BinarizedLabels",
                                       "FalseSegmentedHalf", "MyNewCondition"]
    assert list(rows["group"]) == ["Upper baseline & lower baseline", "Inexhaustive Segmentation",
                                   "Inexhaustive Segmentation", "Misclassification", "False Segmentation", "Other"]
    # One seed: every cell (and so every Average) has too few runs.
    assert frame["too_few"].all()
    assert frame.loc[frame["condition"] == "RandomWeights", "mean"].iloc[0] == pytest.approx(0.20)


def test_table1_missing_fold_is_nan_and_too_few(tmp_path):
    study = make(tmp_path, folds=(1, 2), meta={"folds": [1, 2, 3]})
    frame = tables.table1(study).set_index("column")
    missing = frame.loc["fold 3 (classes 11-15)"]
    assert math.isnan(missing["mean"]) and missing["n_values"] == 0 and missing["too_few"]
    assert frame.loc["Average", "too_few"]
    assert frame.loc["Average", "mean"] == pytest.approx(0.36)  # the folds that ran still pool
    assert "fold 3 (classes 11-15): 0 seeds, 0 values" in "\n".join(
        tables.too_few_cells(tables.table1(study), ["condition", "column"]))


def test_table1_ignores_unfinished_trials(tmp_path):
    def value(condition, fold, seed, epoch):
        return 9.0 if (fold, seed) == (2, 1) else known_value(condition, fold, seed, epoch)

    study = make(tmp_path, value=value, statuses={("CompleteLabels", 2, 1): "ERROR"})
    frame = tables.table1(study).set_index("column")
    fold2 = frame.loc["fold 2 (classes 6-10)"]
    assert (fold2["mean"], fold2["n_values"], fold2["n_seeds"], fold2["too_few"]) == (pytest.approx(0.40), 5, 1, True)
    assert frame.loc["Average", "too_few"] and frame.loc["Average", "n_values"] == 15


def test_table1_pools_the_last_five_evaluations_skipping_epochs_without_one(tmp_path):
    # Epoch 4 was not evaluated (NaN, eval_interval > 1): the last 5 evaluations are epochs 2, 3, 5, 6, 7,
    # so each trial's tail reaches back to one EARLY value (issue 16: no repeated or missing rows counted).
    def value(condition, fold, seed, epoch):
        return math.nan if epoch == 4 else known_value(condition, fold, seed, epoch)

    frame = tables.table1(make(tmp_path, value=value)).set_index("column")
    assert frame.loc["fold 1 (classes 1-5)", "n_values"] == 10
    expected = np.mean([EARLY, *[SEED_VALUES[1, 0]] * 4, EARLY, *[SEED_VALUES[1, 1]] * 4])
    assert frame.loc["fold 1 (classes 1-5)", "mean"] == pytest.approx(expected)


def test_render_table1_text(tmp_path):
    frame = tables.table1(make(tmp_path, ("CompleteLabels", "RandomWeights")))
    text = tables.render_table1(frame)
    lines = text.splitlines()
    assert lines[0] == "|  | Initial feature extractor | fold 1 (classes 1-5) | fold 2 (classes 6-10) | Average |"
    # Average std: the mean of the fold stds, (0.0211 + 0.00) / 2
    assert lines[2] == "| Upper baseline & lower baseline | RandomWeights | 0.22 ± 0.02 | 0.30 ± 0.00 | 0.26 ± 0.01 |"
    assert lines[3] == "| Inexhaustive Segmentation | CompleteLabels | 0.32 ± 0.02 | 0.40 ± 0.00 | 0.36 ± 0.01 |"
    assert tables.TOO_FEW_NOTE not in text
    html = tables.render_table1(frame, fmt="html")
    assert html.startswith("<table") and "<td>0.32 ± 0.02</td>" in html
    with pytest.raises(ValueError, match="fmt must be 'md' or 'html', got 'tex'"):
        tables.render_table1(frame, fmt="tex")


def test_render_marks_too_few_cells(tmp_path):
    frame = tables.table1(make(tmp_path, seeds=(0,)))
    text = tables.render_table1(frame)
    assert "| 0.30 ± 0.00* | 0.40 ± 0.00* | 0.35 ± 0.00* |" in text  # Average: mean of the fold stds and text.endswith(tables.TOO_FEW_NOTE)


def test_fold_names_voc_and_class_names(tmp_path):
    voc = make(tmp_path, name="voc", meta={"data": "voc:/data/voc"})
    assert tables.fold_names(voc, [1, 3]) == {1: "aeroplane, bicycle, bird, boat, bottle",
                                              3: "diningtable, dog, horse, motorbike, person"}
    names = ["background"] + [f"c{i}" for i in range(1, 21)]
    named = make(tmp_path, name="named", meta={"class_names": names})
    assert tables.fold_names(named, [2]) == {2: "c6, c7, c8, c9, c10"}


# --- Figure 3 -------------------------------------------------------------------------------------


def test_figure3_frame_categories_and_kinds(tmp_path):
    conditions = ("RandomWeights", "Binarized", "Superclasses", "RandomGroups4", "RandomGroups7",
                  "RandomGroups11", "Exact")
    frame = tables.figure3_frame(make(tmp_path, conditions, preset="fig3"))
    iu = frame[frame["metric"] == "finetune/test_mean_iu"].set_index("condition")
    # synthetic data: the superclasses are its 5 shape families
    assert iu["n_categories"].to_dict() == {"RandomWeights": 0, "Binarized": 1, "Superclasses": 5,
                                            "RandomGroups4": 4, "RandomGroups7": 7, "RandomGroups11": 11, "Exact": 15}
    assert set(iu.index[iu["kind"] == "random"]) == {"RandomGroups4", "RandomGroups7", "RandomGroups11"}
    assert iu.loc["Exact", "mean"] == pytest.approx(0.36)
    assert iu.loc["Exact", "std"] == pytest.approx(0.02 * math.sqrt(10 / 9) / 2)  # Table 1's Average std
    assert iu.loc["Exact", "pooled_std"] == pytest.approx(math.sqrt((5 * 0.06**2 + 5 * 0.02**2 + 10 * 0.04**2) / 19))
    acc = frame[frame["metric"] == "finetune/test_mean_acc"].set_index("condition")
    assert acc.loc["Exact", "mean"] == pytest.approx(0.46)  # the hand-made mean acc is mean IU + 0.1


def test_figure3_frame_voc_superclasses_fold_3_is_its_own_point(tmp_path):
    """VOC fold 3 holds out person: its Superclasses trials had 3 categories, the other folds' 4."""
    def value(condition, fold, seed, epoch):
        return {2: 0.40, 3: 0.30}[fold] + 0.01 * seed

    trials, history, meta = pretrain_finetune_frames(("Superclasses", "Exact"), folds=(2, 3), value=value,
                                                     preset="fig3", meta={"data": "voc:/data/voc"})
    trials["data"] = "voc:/data/voc"
    study = load_study(write_study(tmp_path / "voc", trials, history, meta))
    frame = tables.figure3_frame(study, metrics=("finetune/test_mean_iu",))
    points = {(row.condition, row.n_categories): row for row in frame.itertuples()}
    assert sorted(points) == [("Exact", 15.0), ("Superclasses", 3.0), ("Superclasses", 4.0)]
    assert points["Superclasses", 4.0].n_values == 10 and points["Superclasses", 3.0].n_values == 10
    assert points["Superclasses", 4.0].mean == pytest.approx(0.405)
    assert points["Superclasses", 3.0].mean == pytest.approx(0.305)
    assert points["Exact", 15.0].n_values == 20
    # a recorded pretrain_categories column (what the export writes) wins over the config
    trials["pretrain_categories"] = np.where(trials["condition"] == "Exact", 15.0, 2.0)
    study = load_study(write_study(tmp_path / "recorded", trials, history, meta))
    assert set(tables.figure3_frame(study)["n_categories"]) == {2.0, 15.0}


# --- Table 2 / Figure 5 ---------------------------------------------------------------------------


def pu_metrics(config, epoch):
    """Last epoch (6): f1 = 0.6 + 0.1 * seed for PU weighted_neg, else 0.5 + fraction/10; earlier: 0."""
    if epoch < 6:
        return dict.fromkeys(("test/acc", "test/mean_precision", "test/mean_recall", "test/mean_f1"), 0.0)
    f1 = 0.6 + 0.1 * config["seed"] if config["loss"] == "weighted_neg" else 0.5 + config["labelled_fraction"] / 10
    return {"test/acc": 0.9, "test/mean_precision": 0.8, "test/mean_recall": 0.7, "test/mean_f1": f1}


def test_table2_last_epoch_mean_over_seeds_in_thesis_order(tmp_path):
    variants = [("pu", 0.5, "sigmoidal_neg"), ("pu", 0.5, "weighted_neg"), ("pn", 0.5, "ce"), ("pu", 0.5, "ce"),
                ("pn", 1.0, "ce"), ("pu", 0.5, "bootstrap_neg")]
    study = load_study(write_study(tmp_path / "pu", *pu_frames(variants, seeds=(0, 1, 2), metrics=pu_metrics)))
    table = tables.table2(study)
    assert list(zip(table["annotation"], table["loss"])) == [
        ("P+N", "CrossEntropyU."), ("50%(P+N)", "CrossEntropyU."), ("50%P+U", "CrossEntropyU."),
        ("50%P+U", "WeightedNeg."), ("50%P+U", "SigmoidalNeg."), ("50%P+U", "BootstrapHard")]
    weighted = table.iloc[3]
    assert weighted["mean_f1"] == pytest.approx(0.7)  # seeds 0, 1, 2: 0.6, 0.7, 0.8
    assert weighted["mean_f1_std"] == pytest.approx(0.1)
    assert (weighted["acc"], weighted["mean_precision"], weighted["mean_recall"]) == pytest.approx((0.9, 0.8, 0.7))
    assert table.iloc[0]["mean_f1"] == pytest.approx(0.6) and table.iloc[0]["mean_f1_std"] == pytest.approx(0.0)
    assert (table["n_runs"] == 3).all() and not table["too_few"].any()


def test_figure5_frame_per_setup_fraction_and_loss(tmp_path):
    variants = [(setup, fraction, "ce") for setup in ("pu", "pn") for fraction in (0.25, 0.75)]
    study = load_study(write_study(tmp_path / "pu", *pu_frames(variants, seeds=(0,), metrics=pu_metrics)))
    frame = tables.figure5_frame(study)
    assert len(frame) == 4 and frame["too_few"].all()
    pu = frame[frame["setup"] == "pu"].set_index("labelled_fraction")["mean_f1"]
    assert pu.to_dict() == pytest.approx({0.25: 0.525, 0.75: 0.575})


def test_pu_annotation_labels_and_bad_setup():
    assert tables.pu_annotation("pn", 1.0) == "P+N"
    assert tables.pu_annotation("pn", 0.5) == "50%(P+N)"
    assert tables.pu_annotation("pu", 0.25) == "25%P+U"
    with pytest.raises(ValueError, match="setup must be 'pu' or 'pn', got 'np'"):
        tables.pu_annotation("np", 0.5)


def test_table2_on_a_segmentation_study_names_the_missing_columns(tmp_path):
    with pytest.raises(ValueError, match=r"needs the trial columns \['setup', 'labelled_fraction'\]"):
        tables.table2(make(tmp_path))


# --- Table 3 --------------------------------------------------------------------------------------


def test_table3_from_pretrain_test_metrics(tmp_path):
    conditions = ("50%Unseg./SigmoidalNeg.", "50%Unseg./WeightedNeg.", "Complete/CrossEntropy",
                  "50%Unseg./CrossEntropy")

    def pretrain_test(condition, fold, seed):
        iu = {"Complete/CrossEntropy": 0.75}.get(condition, 0.6) + 0.02 * seed
        return {"pretrain/test_mean_iu": iu, "pretrain/test_mean_acc": 0.8, "pretrain/test_pixel_acc": 0.9,
                "pretrain/test_fw_iu": 0.7}

    study = make(tmp_path, conditions, folds=(1,), preset="table3", pretrain_test=pretrain_test)
    table = tables.table3(study)
    assert list(zip(table["annotation"], table["loss"])) == [
        ("Complete", "CrossEntropy"), ("50%Unseg.", "CrossEntropy"), ("50%Unseg.", "WeightedNeg."),
        ("50%Unseg.", "SigmoidalNeg.")]
    assert table.iloc[0]["mean_iu"] == pytest.approx(0.76)  # seeds 0, 1: 0.75, 0.77
    assert table.iloc[0]["mean_iu_std"] == pytest.approx(0.02 * math.sqrt(0.5))
    assert table.iloc[1][["overall_acc", "mean_acc", "fw_iu"]].tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_table3_labels_from_config_and_no_pretraining(tmp_path):
    study = make(tmp_path, ("CompleteLabels", "HalfUnsegmented", "RandomWeights"), folds=(1,))
    table = tables.table3(study)
    # RandomWeights never pre-trains, so it reports no pretrain/test metrics and gives no row.
    assert list(zip(table["annotation"], table["loss"])) == [("Complete", "CrossEntropy"),
                                                             ("50%Unseg.", "CrossEntropy")]
    assert (table["n_runs"] == 2).all()


# --- paired differences ---------------------------------------------------------------------------


def test_paired_differences_known_confidence_interval(tmp_path):
    def value(condition, fold, seed, epoch):
        return 0.3 + (0.1 * (seed + 1) if condition == "HalfUnsegmented" else 0.0)

    study = make(tmp_path, ("CompleteLabels", "HalfUnsegmented", "NoFalseSegmented"), folds=(1,),
                 seeds=(0, 1, 2), value=value)
    frame = paired_differences(study)
    assert list(frame["condition"]) == ["HalfUnsegmented"]  # NoFalseSegmented has no reference condition
    row = frame.iloc[0]
    half = scipy_stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)  # differences 0.1, 0.2, 0.3: sd 0.1
    assert row["reference"] == "CompleteLabels" and row["n_pairs"] == 3 and not row["too_few"]
    assert (row["mean_difference"], row["ci_low"], row["ci_high"]) == pytest.approx((0.2, 0.2 - half, 0.2 + half))


def test_paired_differences_only_matching_pairs_and_too_few(tmp_path):
    study = make(tmp_path, ("CompleteLabels", "RandomWeights"), folds=(1,),
                 statuses={("CompleteLabels", 1, 1): "ERROR"})
    row = paired_differences(study).iloc[0]
    assert row["n_pairs"] == 1 and row["too_few"]
    assert row["mean_difference"] == pytest.approx(-0.1)
    assert math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])


def test_summary_text_prints_table1s_paired_differences_and_stars_those_excluding_0(tmp_path):
    def value(condition, fold, seed, epoch):  # HalfUnsegmented +0.10/0.11/0.12, RandomWeights -0.1/-0.2/-0.3
        return 0.5 + {"HalfUnsegmented": 0.1 + 0.01 * seed, "RandomWeights": -0.1 * (seed + 1)}.get(condition, 0.0)

    study = make(tmp_path, ("CompleteLabels", "HalfUnsegmented", "RandomWeights"), folds=(1,), seeds=(0, 1, 2),
                 value=value)
    lines = report.summary_text(study).splitlines()
    # t(0.975, 2) = 4.303: half widths 4.303 x 0.01 / sqrt(3) = 0.025 and 4.303 x 0.1 / sqrt(3) = 0.248
    one = make(tmp_path / "one", ("CompleteLabels", "HalfUnsegmented"), folds=(1,), seeds=(0,), value=value)
    assert "  HalfUnsegmented - CompleteLabels: +0.100 (1 pair: too few for an interval)" in report.summary_text(one)
    assert lines[-5:-3] == ["  HalfUnsegmented - CompleteLabels: +0.110 [+0.085, +0.135] (3 pairs) *",
                            "  RandomWeights - CompleteLabels: -0.200 [-0.448, +0.048] (3 pairs)"]


def _conditions(rows):
    return pd.DataFrame(rows, columns=["condition", "setup", "labelled_fraction", "loss"])


def test_pu_references_follow_table2_and_figure5s_claims():
    table2 = _conditions([("P+N", "pn", 1.0, "ce"), ("50%(P+N)", "pn", 0.5, "ce"), ("50%P+U/CE", "pu", 0.5, "ce"),
                          ("50%P+U/W", "pu", 0.5, "weighted_neg"), ("50%P+U/S", "pu", 0.5, "sigmoidal_neg")])
    assert pu_references(table2) == [
        ("P+N", "50%P+U/CE"), ("50%(P+N)", "50%P+U/CE"),  # the CE row on P+U is every row's reference...
        ("50%P+U/W", "50%P+U/CE"), ("50%P+U/W", "50%(P+N)"),  # ...a PU loss also meets P+N at its fraction
        ("50%P+U/S", "50%P+U/CE"), ("50%P+U/S", "50%(P+N)"), ("50%P+U/S", "50%P+U/W")]  # and the weighted loss
    # Figure 5: no CE on P+U; 0% has no P+N condition; fractions match by value, not by name.
    fig5 = _conditions([("10%(P+N)", "pn", 0.1, "ce"), ("0%P+U/W", "pu", 0.0, "weighted_neg"),
                        ("0%P+U/B", "pu", 0.0, "bootstrap_neg"), ("10%P+U/W", "pu", 0.1, "weighted_neg"),
                        ("10%P+U/B", "pu", 0.1, "bootstrap_neg"), ("25%P+U/B", "pu", 0.25, "bootstrap_neg")])
    assert pu_references(fig5) == [("0%P+U/B", "0%P+U/W"), ("10%P+U/W", "10%(P+N)"), ("10%P+U/B", "10%(P+N)"),
                                   ("10%P+U/B", "10%P+U/W")]
    # Two CE rows on P+U at other fractions: neither is "the" reference of a P+N row at a third fraction.
    two = _conditions([("P+N", "pn", 1.0, "ce"), ("a", "pu", 0.25, "ce"), ("b", "pu", 0.5, "ce")])
    assert pu_references(two) == []


def test_pu_paired_differences_known_interval_and_too_few(tmp_path):
    def metrics(config, epoch):  # the weighted loss beats CE by 0.30, 0.31, 0.32 at seeds 0, 1, 2
        gain = 0.3 + 0.01 * config["seed"] if config["loss"] == "weighted_neg" else 0.0
        return dict.fromkeys(PU_METRICS, 0.3 + gain + 0.01 * epoch)

    trials, history, meta = pu_frames([("pu", 0.5, "ce"), ("pu", 0.5, "weighted_neg")], seeds=(0, 1, 2),
                                      metrics=metrics)
    trials.loc[(trials["loss"] == "ce") & (trials["seed"] == 2), "status"] = "ERROR"
    study = load_study(write_study(tmp_path / "pu", trials, history, meta))
    row = pu_paired_differences(study).iloc[0]
    half = scipy_stats.t.ppf(0.975, 1) * math.sqrt(0.00005) / math.sqrt(2)  # seeds 0, 1 pair: 0.30, 0.31
    assert (row["condition"], row["reference"]) == ("pu_0.5_weighted_neg", "pu_0.5_ce")
    assert row["n_pairs"] == 2 and not row["too_few"]
    assert (row["mean_difference"], row["ci_low"], row["ci_high"]) == pytest.approx((0.305, 0.305 - half, 0.305 + half))
    assert 0.305 - half > 0 and excludes_zero(pu_paired_differences(study)).tolist() == [True]
    one = load_study(write_study(tmp_path / "one", *pu_frames([("pu", 0.5, "ce"), ("pu", 0.5, "sigmoidal_neg")],
                                                               seeds=(0,))))
    row = pu_paired_differences(one).iloc[0]
    assert row["too_few"] and math.isnan(row["ci_low"]) and not excludes_zero(pu_paired_differences(one)).any()
    with pytest.raises(ValueError, match=r"metric must be one of .*got 'f1'"):
        pu_paired_differences(study, "f1")


def test_mean_ci_edge_cases():
    assert mean_ci(np.array([0.5]))[0] == 0.5 and all(math.isnan(v) for v in mean_ci(np.array([0.5]))[1:])
    assert all(math.isnan(v) for v in mean_ci(np.array([])))
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 1.5"):
        paired_differences(None, confidence=1.5)


# --- search summary -------------------------------------------------------------------------------


def search_study(tmp_path, with_optuna: bool, stop_early: tuple[int, ...] = ()):
    """Four search trials (seeds 0..3). Validation objectives 0.2, 0.4, 0.1, 0.5; test scores fall with
    the seed (0.5 - 0.01 seed every epoch), so choosing by test would pick other trials than validation.
    ``stop_early``: seeds whose fine-tuning history ends at epoch 3 of 7 (stopped by the scheduler)."""
    trials, history, meta = pretrain_finetune_frames(["search"], folds=(1,), seeds=(0, 1, 2, 3), preset="search",
                                                     study="search-hand", value=lambda c, f, seed, e: 0.5 - 0.01 * seed)
    trials["noise_unsegment"] = [0.1, 0.15, 0.9, 0.5]
    trials["noise_misclassify"] = [0.0, 0.0, 0.0, 0.0]
    trials["loss"] = ["ce", "ce", "ce", "sigmoidal_neg"]
    trials["objective"] = [0.2, 0.4, 0.1, 0.5]
    history = history.drop(columns="objective")  # the trials frame holds the objective
    stopped = history["seed"].isin(stop_early) & (history["phase"] == "finetune") & (history["epoch"] > 3)
    history = history[~stopped]
    folder = write_study(tmp_path / "search", trials, history, meta)
    if with_optuna:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name="search-hand", storage=f"sqlite:///{folder / 'optuna.db'}",
                                    direction="maximize")
        for rate, objective in zip(trials["noise_unsegment"], trials["objective"]):
            study.enqueue_trial({"noise_unsegment": rate, "lr_pretrain": 0.001 * (1 + rate)})
            study.optimize(lambda t, value=objective: value + 0 * t.suggest_float("noise_unsegment", 0, 1)
                           + 0 * t.suggest_float("lr_pretrain", 1e-4, 1e-2), n_trials=1)
    return load_study(folder)


def test_search_summary_chooses_on_validation_and_reports_test(tmp_path):
    summary = search_summary(search_study(tmp_path, with_optuna=False), bins=5)
    # every trial: the validation objective it was chosen by and its test score, best validation first
    assert list(summary.trials["trial_id"]) == ["search_f1_s3", "search_f1_s1", "search_f1_s0", "search_f1_s2"]
    assert list(summary.trials["val_objective"]) == pytest.approx([0.5, 0.4, 0.2, 0.1])
    assert list(summary.trials["test_score"]) == pytest.approx([0.47, 0.49, 0.5, 0.48])
    unsegment = summary.by_noise[summary.by_noise["noise"] == "noise_unsegment"]
    ce_low = unsegment[(unsegment["loss"] == "ce") & (unsegment["rate"] == 0.1)].iloc[0]
    assert ce_low["bin"] == "[0.00, 0.20)" and ce_low["n_trials"] == 2 and not ce_low["too_few"]
    assert ce_low["mean"] == pytest.approx(0.495) and ce_low["val_mean"] == pytest.approx(0.3)  # mean: test
    assert ce_low["std"] == pytest.approx(0.01 / math.sqrt(2))
    best = summary.best[summary.best["noise"] == "noise_unsegment"].set_index(["rate", "loss"])
    # seed 1 wins [0, 0.2) on validation (0.4 > 0.2) though seed 0 has the better test score
    assert best.loc[(0.1, "ce"), "trial_id"] == "search_f1_s1"
    assert best.loc[(0.1, "ce"), "val_objective"] == pytest.approx(0.4)
    assert best.loc[(0.1, "ce"), "test_score"] == pytest.approx(0.49)
    assert best.loc[(0.5, "sigmoidal_neg"), "test_score"] == pytest.approx(0.47)
    assert summary.importances.empty and "no optuna.db" in summary.notes[0]


def test_search_summary_leaves_out_trials_the_scheduler_stopped(tmp_path):
    summary = search_summary(search_study(tmp_path, with_optuna=False, stop_early=(1,)), bins=5)
    assert "search_f1_s1" not in set(summary.trials["trial_id"]) | set(summary.best["trial_id"])
    assert len(summary.trials) == 3
    assert any("1 trial(s) stopped early by the scheduler are left out" in note for note in summary.notes)


def test_search_summary_reads_optuna_importances(tmp_path):
    summary = search_summary(search_study(tmp_path, with_optuna=True))
    assert set(summary.importances["param"]) == {"noise_unsegment", "lr_pretrain"}
    assert summary.importances["importance"].sum() == pytest.approx(1.0)
    assert summary.notes == ("parameter importances from 4 COMPLETE Optuna trial(s)",)


# --- loading --------------------------------------------------------------------------------------


def test_load_study_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="study folder .*nowhere.* does not exist"):
        load_study(tmp_path / "nowhere")
    folder = write_study(tmp_path / "s", *pretrain_finetune_frames(["CompleteLabels"], folds=(1,), seeds=(0,)))
    (folder / "history.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="has no history.parquet"):
        load_study(folder)


def test_load_study_rejects_frames_without_required_columns(tmp_path):
    trials, history, meta = pretrain_finetune_frames(["CompleteLabels"], folds=(1,), seeds=(0,))
    folder = write_study(tmp_path / "s", trials.drop(columns="status"), history, meta)
    with pytest.raises(ValueError, match=r"trials lacks the required columns \['status'\]"):
        load_study(folder)
    (folder / "study.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        load_study(folder)


def test_study_from_mlflow_gives_the_parquet_table1(tmp_path):
    trials, history, meta = pretrain_finetune_frames(["CompleteLabels", "RandomWeights"], value=known_value,
                                                     statuses={("RandomWeights", 2, 1): "ERROR"})
    parquet = load_study(write_study(tmp_path / "s", trials, history, meta))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_to_mlflow(trials, history, meta, uri, "noisy-transfer")
    mlflow_study = study_from_mlflow(uri, "noisy-transfer")
    assert mlflow_study.preset == "quick" and mlflow_study.trainable == "pretrain_finetune"
    pd.testing.assert_frame_equal(tables.table1(mlflow_study), tables.table1(parquet))
    # Phases and per-phase epochs come back from the steps (epoch_total) and epochs_pretrain.
    columns = ["trial_id", "phase", "epoch", "epoch_total", "finetune/test_mean_iu", "pretrain/test_mean_iu"]
    pd.testing.assert_frame_equal(mlflow_study.history[columns], parquet.history[columns], check_dtype=False)
    assert mlflow_study.trials["q"].isna().all() and mlflow_study.trials["fold"].dtype == np.int64
    with pytest.raises(ValueError, match="experiment_name 'other' is not an experiment"):
        study_from_mlflow(uri, "other")


def test_search_summary_counts_misclassification_only_where_it_acted(tmp_path):
    # Binarizing erases misclassification: a binarized trial's noise_misclassify (the default 0.0) is no
    # measurement of that axis, so it joins the unsegment tables only; curves and winners are per transform.
    study = search_study(tmp_path, with_optuna=False)
    trials = study.trials.assign(label_transform=["none", "binarize", "none", "none"],
                                 noise_misclassify=[0.05, 0.0, 0.95, 0.55])
    folder = write_study(tmp_path / "search2", trials, study.history, study.meta)
    summary = search_summary(load_study(folder), bins=5)
    misclassify = summary.by_noise[summary.by_noise["noise"] == "noise_misclassify"]
    assert misclassify["n_trials"].sum() == 3 and set(misclassify["label_transform"]) == {"none"}
    unsegment = summary.by_noise[summary.by_noise["noise"] == "noise_unsegment"]
    assert unsegment["n_trials"].sum() == 4
    low = unsegment[unsegment["rate"] == 0.1].set_index("label_transform")["n_trials"]
    assert low.to_dict() == {"binarize": 1, "none": 1}
    best = summary.best[summary.best["noise"] == "noise_unsegment"]
    assert len(best[best["rate"] == 0.1]) == 2  # one winner per transform
