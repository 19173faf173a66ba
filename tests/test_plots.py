"""Figures: the curves behind Figure 2, and PNGs of the expected size for every figure."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.analysis_frames import pretrain_finetune_frames, pu_frames, write_boundaries, write_study
from PIL import Image

from analysis import plots
from analysis.load import load_study


def png_size(path) -> tuple[int, int]:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_figure2_sigmoidal_derivative_vanishes_for_confident_positives():
    frame = plots.figure2_frame(z=[-20.0, 0.0, 20.0], q=0.5)
    derivative = frame.pivot(index="z", columns="loss", values="derivative")
    value = frame.pivot(index="z", columns="loss", values="value")
    # Negative label, confident positive prediction (z = 20): the sigmoidal loss saturates at 1 ...
    assert value.loc[20.0, "sigmoidal_neg"] == pytest.approx(1.0)
    assert abs(derivative.loc[20.0, "sigmoidal_neg"]) < 1e-8
    # ... while the logistic loss keeps pushing with slope 1 and the weighted one with slope q.
    assert derivative.loc[20.0, "ce"] == pytest.approx(1.0)
    assert derivative.loc[20.0, "weighted_neg"] == pytest.approx(0.5)
    assert derivative.loc[0.0, "sigmoidal_neg"] == pytest.approx(0.25)
    assert value.loc[0.0, "ce"] == pytest.approx(np.log(2.0))
    assert derivative.loc[-20.0, "positive"] == pytest.approx(-1.0)


def test_figure2_autograd_matches_closed_forms():
    z = np.linspace(-8.0, 8.0, 33)
    autograd = plots.figure2_frame(z, q=0.3, use_autograd=True)
    closed = plots.figure2_frame(z, q=0.3, use_autograd=False)
    assert list(autograd["loss"]) == list(closed["loss"])
    np.testing.assert_allclose(autograd["value"], closed["value"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(autograd["derivative"], closed["derivative"], rtol=1e-10, atol=1e-12)


def test_figure2_png_and_bad_q(tmp_path):
    plots.figure2(tmp_path / "figure2.png", figsize=(8, 3))
    assert png_size(tmp_path / "figure2.png") == (800, 300)
    with pytest.raises(ValueError, match="q must be in \\(0, 1\\], got 0"):
        plots.figure2_frame(q=0)


def test_figure3_line_for_meaningful_points_and_isolated_random_ones(tmp_path):
    conditions = ("RandomWeights", "Binarized", "Superclasses", "RandomGroups4", "RandomGroups7", "Exact")
    study = load_study(write_study(tmp_path / "fig3", *pretrain_finetune_frames(conditions, folds=(1,), preset="fig3")))
    fig = plots.figure3(study, tmp_path / "figure3.png", figsize=(8, 4))
    assert png_size(tmp_path / "figure3.png") == (800, 400)
    ax = fig.axes[0]
    line, isolated = ax.lines[0], ax.lines[-1]
    # synthetic data: Superclasses are its 5 shape families
    assert list(line.get_xdata()) == [0, 1, 5, 15] and line.get_linestyle() == "-"
    assert sorted(isolated.get_xdata()) == [4, 7] and isolated.get_linestyle() == "None"
    assert list(ax.get_xticks()) == [0, 1, 4, 5, 7, 15]


def test_figure4_one_panel_per_condition(tmp_path):
    trials, history, meta = pu_frames([("pu", 0.5, "ce"), ("pu", 0.5, "sigmoidal_neg")], seeds=(0,), data="moons",
                                      preset="fig4")
    folder = write_study(tmp_path / "fig4", trials, history, meta)
    with pytest.raises(ValueError, match="no finished trial of study 'hand-pu' has artifacts"):
        plots.figure4(load_study(folder))
    write_boundaries(folder, trials)
    fig = plots.figure4(load_study(folder), tmp_path / "figure4.png", panel_size=3)
    assert png_size(tmp_path / "figure4.png") == (600, 300)
    assert [ax.get_title() for ax in fig.axes] == ["pu_0.5_ce", "pu_0.5_sigmoidal_neg"]


def test_figure5_and_learning_curves_pngs(tmp_path):
    variants = [(setup, fraction, loss) for setup in ("pu", "pn") for fraction in (0.25, 0.5)
                for loss in ("ce", "weighted_neg")]
    study = load_study(write_study(tmp_path / "fig5", *pu_frames(variants, seeds=(0,), preset="fig5")))
    fig = plots.figure5(study, tmp_path / "figure5.png")
    assert png_size(tmp_path / "figure5.png") == (600, 400)
    styles = {bars.get_label(): bars.lines[0].get_linestyle() for bars in fig.axes[0].containers}
    assert styles == {"CrossEntropyU. (P+U)": "-", "WeightedNeg. (P+U)": "-",
                      "CrossEntropyU. (P+N)": "--", "WeightedNeg. (P+N)": "--"}
    assert list(fig.axes[0].containers[0].lines[0].get_xdata()) == [25, 50]
    plots.learning_curves(study, tmp_path / "curves.png")
    assert png_size(tmp_path / "curves.png") == (500, 400)


def test_learning_curves_one_panel_per_metric(tmp_path):
    study = load_study(write_study(tmp_path / "s", *pretrain_finetune_frames(["CompleteLabels", "RandomWeights"])))
    fig = plots.learning_curves(study, tmp_path / "curves.png")
    assert png_size(tmp_path / "curves.png") == (1000, 400)
    assert [ax.get_title() for ax in fig.axes] == ["pretrain/val_mean_iu", "finetune/test_mean_iu"]
    # RandomWeights has no pre-training, so the validation panel shows CompleteLabels only.
    assert [line.get_label() for line in fig.axes[0].lines] == ["CompleteLabels"]
    # Fine-tuning curves share the fine-tuning clock, whether or not a pre-training came first.
    finetune = {line.get_label(): list(line.get_xdata()) for line in fig.axes[1].lines}
    assert finetune["CompleteLabels"] == finetune["RandomWeights"] == list(range(1, 8))
    assert fig.axes[1].get_xlabel() == "finetune epoch"


def test_search_curves_png(tmp_path):
    trials, history, meta = pretrain_finetune_frames(["search"], folds=(1,), seeds=(0, 1, 2), preset="search")
    trials["noise_unsegment"] = [0.1, 0.5, 0.9]
    fig = plots.search_curves(load_study(write_study(tmp_path / "search", trials, history, meta)),
                              tmp_path / "search.png")
    assert png_size(tmp_path / "search.png") == (1000, 400)
    assert [ax.get_title() for ax in fig.axes] == ["noise_unsegment", "noise_misclassify"]
    assert list(fig.axes[0].containers[0].lines[0].get_xdata()) == [0.1, 0.5, 0.9]


def write_samples(folder, trials, images, predictions):
    """artifacts/<trial_id>/samples.npz per trial: the given images, ground truth = image channel 0 % 3,
    and ``predictions[condition]`` as the prediction."""
    clean = images[:, 0] % 3
    for trial in trials.itertuples():
        target = folder / "artifacts" / trial.trial_id
        target.mkdir(parents=True, exist_ok=True)
        np.savez(target / "samples.npz", images=images, clean=clean, prediction=predictions[trial.condition])


def test_figure6_same_images_side_by_side_in_the_thesis_order(tmp_path):
    conditions = ("Complete/CrossEntropy", "50%Unseg./CrossEntropy", "50%Unseg./SigmoidalNeg.")
    trials, history, meta = pretrain_finetune_frames(conditions, folds=(1, 2), seeds=(0, 1), preset="table3")
    folder = write_study(tmp_path / "t3", trials, history, meta)
    g = np.random.default_rng(0)
    images = g.integers(0, 256, size=(3, 3, 8, 8), dtype=np.uint8)
    predictions = {c: np.full((3, 8, 8), i, dtype=np.uint8) for i, c in enumerate(conditions)}
    write_samples(folder, trials, images, predictions)
    study = load_study(folder)
    chosen = plots.figure6_trials(study)
    assert list(chosen["condition"]) == ["50%Unseg./SigmoidalNeg.", "50%Unseg./CrossEntropy", "Complete/CrossEntropy"]
    assert set(chosen["fold"]) == {1} and set(chosen["seed"]) == {0}
    fig = plots.figure6(study, tmp_path / "figure6.png", max_images=2, panel_size=1.5)
    assert png_size(tmp_path / "figure6.png") == (750, 300)  # 5 columns x 2 rows of 1.5 inches
    axes = np.asarray(fig.axes).reshape(2, 5)
    assert [ax.get_title() for ax in axes[0]] == ["image", "ground truth", *chosen["condition"]]
    np.testing.assert_array_equal(axes[1, 0].images[0].get_array(), np.transpose(images[1], (1, 2, 0)))
    np.testing.assert_array_equal(axes[1, 1].images[0].get_array(), plots.label_colours(images[1, 0] % 3))
    for col, condition in enumerate(chosen["condition"], start=2):  # each column its own model's prediction
        np.testing.assert_array_equal(axes[0, col].images[0].get_array(), plots.label_colours(predictions[condition][0]))
    # background black, ignore white, class 1 tab20 blue, class 21 wraps to it: the MLflow figures' colours
    from study.figures import PALETTE

    colours = plots.label_colours(np.array([[0, 255, 1, 21, 2]]))
    np.testing.assert_allclose(colours[0], np.array([[0, 0, 0], [255, 255, 255], PALETTE[0], PALETTE[0], PALETTE[1]]) / 255)


def test_figure6_refuses_other_images_and_a_study_without_samples(tmp_path):
    conditions = ("CompleteLabels", "SigmoidalLoss")  # a table1 study works too
    trials, history, meta = pretrain_finetune_frames(conditions, folds=(1,), seeds=(0,), preset="table1")
    folder = write_study(tmp_path / "t1", trials, history, meta)
    with pytest.raises(ValueError, match="has no fold where two of"):
        plots.figure6(load_study(folder))
    images = np.zeros((2, 3, 4, 4), dtype=np.uint8)
    write_samples(folder, trials, images, dict.fromkeys(conditions, np.zeros((2, 4, 4), dtype=np.uint8)))
    assert list(plots.figure6_trials(load_study(folder))["condition"]) == ["SigmoidalLoss", "CompleteLabels"]
    other = folder / "artifacts" / trials["trial_id"].iloc[0] / "samples.npz"
    np.savez(other, images=images + 1, clean=images[:, 0], prediction=images[:, 0])
    with pytest.raises(ValueError, match="kept other test images"):
        plots.figure6(load_study(folder))
    with pytest.raises(ValueError, match="max_images must be an integer >= 1, got 0"):
        plots.figure6(load_study(folder), max_images=0)


def test_learning_curves_of_many_conditions_look_apart_and_keep_the_legend_off_the_curves(tmp_path):
    """Figure 5's 23 conditions: no two curves share a colour and line style (matplotlib's 10 default colours
    would repeat), and the legend sits beside the panel, which grows by its width."""
    variants = [("pu", fraction, loss) for fraction in (0.1, 0.25, 0.5, 0.75, 1.0)
                for loss in ("ce", "weighted_neg", "sigmoidal_neg")]
    study = load_study(write_study(tmp_path / "many", *pu_frames(variants, seeds=(0,), preset="fig5")))
    fig = plots.learning_curves(study, tmp_path / "curves.png")
    styles = [(line.get_color(), line.get_linestyle()) for line in fig.axes[0].lines]
    assert len(styles) == 15 and len(set(styles)) == 15
    legend = fig.axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == [line.get_label() for line in fig.axes[0].lines]
    assert legend.get_bbox_to_anchor().transformed(fig.axes[0].transAxes.inverted()).x0 > 1.0
    assert png_size(tmp_path / "curves.png")[0] == 500 + 280
