"""The thesis's figures (2-6), learning curves and the search's curves, as matplotlib Figures.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot, so no global figure
registry and no backend switch: PNGs are written by the Agg canvas). Every function returns the Figure
and, given ``path``, also writes it there as a PNG of exactly ``figsize * DPI`` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.load import Study
from analysis.stats import SEARCH_NOISE_PARAMS, search_summary
from analysis.tables import (
    FIGURE3_METRICS,
    PU_LOSS_NAMES,
    figure3_frame,
    figure5_frame,
    finished_trials,
    learning_curves_frame,
)
from trainables.labels import label_rgb

DPI = 100
LEGEND_INSIDE_MAX = 10  # conditions a learning-curve legend may hold inside its panel; more go beside it
LEGEND_ROWS = 25  # entries per legend column beside the panels
LEGEND_WIDTH = 2.8  # inches per legend column beside the panels
POSITIVE_COLOUR, NEGATIVE_COLOUR = "tab:red", "tab:blue"
FIGURE2_LOSSES = ("ce", "weighted_neg", "sigmoidal_neg")
FIGURE2_LABELS = {"ce": "logistic (negative)", "weighted_neg": "weighted negative (q={q})",
                  "sigmoidal_neg": "sigmoidal negative", "positive": "logistic (positive)"}
CURVE_METRICS = {"pretrain_finetune": ("pretrain/val_mean_iu", "finetune/test_mean_iu"),
                 "pu_classification": ("test/mean_f1",)}


def _legend(ax, **kwargs) -> None:
    """A legend only when something is labelled (an empty study draws empty axes, silently)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")
    return fig


# --- Figure 2 -------------------------------------------------------------------------------------


def _closed_forms(z: np.ndarray, q: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Element losses and d/dz of the two-class losses at logit ``z = z_1 - z_0``."""
    p1 = 1.0 / (1.0 + np.exp(-z))  # p(y = positive)
    softplus = np.logaddexp(0.0, z)  # -log p_0
    return {
        "ce": (softplus, p1),
        "weighted_neg": (q * softplus, q * p1),
        "sigmoidal_neg": (p1, p1 * (1.0 - p1)),
        "positive": (np.logaddexp(0.0, -z), p1 - 1.0),
    }


def _autograd_forms(z: np.ndarray, q: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The same through trainables.losses and torch autograd: logits ``(M, 2) = [0, z]``."""
    import torch

    from trainables.losses import make_loss

    forms = {}
    for name in (*FIGURE2_LOSSES, "positive"):
        logit = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        logits = torch.stack([torch.zeros_like(logit), logit], dim=1)
        params = {"q": q} if name == "weighted_neg" else {}
        loss = make_loss("ce" if name == "positive" else name, **params)
        target = torch.full((len(z),), 1 if name == "positive" else 0, dtype=torch.long)
        element = loss.element_loss(torch.log_softmax(logits, dim=1), target)
        (grad,) = torch.autograd.grad(element.sum(), logit)  # element i depends on z_i only
        forms[name] = (element.detach().numpy(), grad.numpy())
    return forms


def figure2_frame(z: Sequence[float] | np.ndarray | None = None, q: float = 0.5,
                  use_autograd: bool | None = None) -> pd.DataFrame:
    """Thesis Figure 2's curves: element loss and its derivative w.r.t. the logit ``z = z_1 - z_0`` of
    the negative-label losses (logistic, weighted negative with ``q``, sigmoidal negative) and of the
    logistic loss of a positive label, two-class case.

    ``use_autograd``: differentiate trainables.losses with torch (default when importable) or use the
    closed forms. Columns: loss, z, value, derivative (one row per loss and z).
    """
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q!r}")
    z = np.linspace(-6.0, 6.0, 241) if z is None else np.asarray(z, dtype=np.float64)
    if use_autograd is None:
        try:
            import trainables.losses  # noqa: F401  (imports torch)

            use_autograd = True
        except ImportError:
            use_autograd = False
    forms = _autograd_forms(z, q) if use_autograd else _closed_forms(z, q)
    return pd.concat([pd.DataFrame({"loss": name, "z": z, "value": value, "derivative": derivative})
                      for name, (value, derivative) in forms.items()], ignore_index=True)


def figure2(path: str | Path | None = None, q: float = 0.5, figsize: tuple[float, float] = (10, 4)) -> Figure:
    """Thesis Figure 2: losses (left) and their derivatives (right) against the logit z."""
    frame = figure2_frame(q=q)
    fig = Figure(figsize=figsize)
    loss_ax, grad_ax = fig.subplots(1, 2)
    for name, curve in frame.groupby("loss", sort=False):
        label = FIGURE2_LABELS[name].format(q=q)
        style = "--" if name == "positive" else "-"
        loss_ax.plot(curve["z"], curve["value"], style, label=label)
        grad_ax.plot(curve["z"], curve["derivative"], style, label=label)
    loss_ax.set(xlabel="logit z = z1 - z0", ylabel="loss", title="Element losses")
    grad_ax.set(xlabel="logit z = z1 - z0", ylabel="d loss / dz", title="Derivatives")
    grad_ax.axhline(0.0, color="grey", linewidth=0.5)
    _legend(loss_ax, fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


# --- Figure 3 -------------------------------------------------------------------------------------


def figure3(study: Study, path: str | Path | None = None, metrics: Sequence[str] = FIGURE3_METRICS,
            figsize: tuple[float, float] = (10, 4)) -> Figure:
    """Thesis Figure 3: fine-tuning score against the number of pre-training categories each trial had
    (:func:`analysis.tables.figure3_frame`); meaningful categorisations as a line with error bars,
    random categorisations (RC) as isolated error bars. Error bars: the mean of the folds' stds."""
    frame = figure3_frame(study, metrics)
    metrics = [m for m in metrics if frame.loc[frame["metric"] == m, "n_values"].sum() > 0] or list(metrics[:1])
    fig = Figure(figsize=figsize)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics):
        points = frame[(frame["metric"] == metric) & (frame["n_values"] > 0)]
        line = points[points["kind"] == "meaningful"].sort_values("n_categories")
        ax.errorbar(line["n_categories"], line["mean"], yerr=line["std"].fillna(0.0), marker="o", capsize=4,
                    label="meaningful")
        isolated = points[points["kind"] == "random"]
        ax.errorbar(isolated["n_categories"], isolated["mean"], yerr=isolated["std"].fillna(0.0), fmt="s",
                    capsize=4, color="tab:orange", label="random categorisation (RC)")
        ax.set(xlabel="number of pre-training categories", ylabel=metric.split("/")[-1].replace("test_", ""),
               xticks=sorted(set(points["n_categories"])), title=metric)
        _legend(ax, fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


# --- Figure 4 -------------------------------------------------------------------------------------


def boundary_paths(study: Study) -> dict[str, Path]:
    """condition -> artifacts/<trial_id>/boundary.npz of its first finished trial (lowest seed) that
    has one."""
    if study.folder is None:
        return {}
    found = {}
    for _, trial in finished_trials(study).sort_values("seed", kind="stable").iterrows():
        path = Path(study.folder) / "artifacts" / str(trial["trial_id"]) / "boundary.npz"
        if trial["condition"] not in found and path.is_file():
            found[trial["condition"]] = path
    return found


FIGURE4_ROWS = ("decision boundary", "normalised loss", "normalised |dloss/dz|")
FIGURE4_MARKER = 12.0  # marker area (pt^2) of the boundary row
FIGURE4_MAX_MARKER = 60.0  # marker area of the largest loss / derivative of its class


def figure4_marker_sizes(values: np.ndarray, labels: np.ndarray, max_size: float = FIGURE4_MAX_MARKER) -> np.ndarray:
    """Thesis Figure 4's per-class normalised marker sizes: ``max_size * |v| / max |v|`` over the points
    of the same observed class (labelled positive, ``labels > 0``, or labelled negative), so the largest
    loss (or derivative) of each class gets ``max_size``; a class whose values are all 0 gets size 0.
    ``values`` and ``labels`` are ``(N,)``; returns float ``(N,)``."""
    magnitude = np.abs(np.asarray(values, dtype=float))
    positive = np.asarray(labels) > 0
    sizes = np.zeros_like(magnitude)
    for members in (positive, ~positive):
        peak = magnitude[members].max() if members.any() else 0.0
        if peak > 0:
            sizes[members] = max_size * magnitude[members] / peak
    return sizes


def _figure4_points(ax, arrays, sizes: np.ndarray | None) -> None:
    """Red circles labelled positive, blue squares labelled negative (hollow where truly positive)."""
    points, labels, true_labels = arrays["points"], arrays["labels"], arrays["true_labels"]
    sizes = np.full(len(labels), FIGURE4_MARKER) if sizes is None else sizes
    positive = labels > 0
    hidden = ~positive & (true_labels > 0)
    negative = ~positive & ~hidden
    ax.scatter(*points[positive].T, marker="o", s=sizes[positive], color=POSITIVE_COLOUR, edgecolors="k",
               linewidths=0.3)
    ax.scatter(*points[negative].T, marker="s", s=sizes[negative], color=NEGATIVE_COLOUR, edgecolors="k",
               linewidths=0.3)
    ax.scatter(*points[hidden].T, marker="s", s=sizes[hidden], facecolors="none", edgecolors=NEGATIVE_COLOUR,
               linewidths=0.8)


def figure4(study: Study, path: str | Path | None = None, panel_size: float = 3.5) -> Figure:
    """Thesis Figure 4: per condition (loss, one column) the moons classifier's P(positive) (red high,
    blue low, white at the decision boundary) with the training points, red circles labelled positive
    and blue squares labelled negative (hollow where the true label is positive). Row 1: the decision
    boundary; row 2: marker size = the point's loss, normalised per class; row 3: marker size = the
    loss's derivative w.r.t. the output, normalised per class (:func:`figure4_marker_sizes`). Rows 2-3
    need ``loss`` and ``dloss`` in boundary.npz; without them only row 1 is drawn."""
    paths = boundary_paths(study)
    if not paths:
        raise ValueError(f"no finished trial of study {study.name!r} has artifacts/<trial_id>/boundary.npz")
    loaded = {condition: dict(np.load(npz)) for condition, npz in paths.items()}
    rows = 3 if all({"loss", "dloss"} <= set(arrays) for arrays in loaded.values()) else 1
    fig = Figure(figsize=(panel_size * len(loaded), panel_size * rows))
    axes = np.asarray(fig.subplots(rows, len(loaded), squeeze=False))
    for column, (condition, arrays) in enumerate(loaded.items()):
        for row in range(rows):
            ax = axes[row, column]
            ax.pcolormesh(arrays["xx"], arrays["yy"], arrays["prob"], cmap="bwr", vmin=0.0, vmax=1.0,
                          shading="auto")
            sizes = None if row == 0 else figure4_marker_sizes(arrays["loss" if row == 1 else "dloss"],
                                                              arrays["labels"])
            _figure4_points(ax, arrays, sizes)
            ax.set(title=str(condition) if row == 0 else "", xticks=[], yticks=[])
            if column == 0:
                ax.set_ylabel(FIGURE4_ROWS[row])
    fig.tight_layout()
    return _save(fig, path)


# --- Figure 5 -------------------------------------------------------------------------------------


def figure5(study: Study, path: str | Path | None = None, figsize: tuple[float, float] = (6, 4)) -> Figure:
    """Thesis Figure 5: mean F1 against the labelled fraction, per loss; PU solid, PN dashed."""
    frame = figure5_frame(study)
    fig = Figure(figsize=figsize)
    ax = fig.subplots()
    colours = {loss: f"C{i}" for i, loss in enumerate(pd.unique(frame["loss"]))}
    for (setup, loss), curve in frame.groupby(["setup", "loss"], sort=False):
        ax.errorbar(100 * curve["labelled_fraction"], curve["mean_f1"], yerr=curve["mean_f1_std"].fillna(0.0),
                    linestyle="-" if setup == "pu" else "--", marker="o", capsize=3, color=colours[loss],
                    label=f"{PU_LOSS_NAMES.get(loss, loss)} ({'P+U' if setup == 'pu' else 'P+N'})")
    ax.set(xlabel="labelled positives (%)", ylabel="mean F1", title="F1 against labelled fraction")
    _legend(ax, fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


# --- Figure 6 -------------------------------------------------------------------------------------

# Figure 6's prediction columns, in the thesis's order: per column the condition of a table3 study,
# then its table1 counterpart (SigmoidalLoss and table3's CE are binarized; table1's HalfUnsegmented
# is CE on the exact classes, the closest table1 has).
FIGURE6_COLUMNS = (("50%Unseg./SigmoidalNeg.", "SigmoidalLoss"), ("50%Unseg./CrossEntropy", "HalfUnsegmented"),
                   ("Complete/CrossEntropy", "CompleteLabels"))
SAMPLES_FILE = "samples.npz"  # written by study.tracking.write_state_artifacts from the final checkpoint


def figure6_trials(study: Study) -> pd.DataFrame:
    """The trials Figure 6 draws: for the first fold where at least two of :data:`FIGURE6_COLUMNS` have a
    finished trial with ``artifacts/<trial_id>/samples.npz``, each column's first such trial (lowest
    seed). Columns: condition, trial_id, fold, seed, path; empty when no fold qualifies."""
    columns = ["condition", "trial_id", "fold", "seed", "path"]
    if study.folder is None:
        return pd.DataFrame(columns=columns)
    trials = finished_trials(study).sort_values(["fold", "seed"], kind="stable")
    rows = []
    for _, trial in trials.iterrows():
        path = Path(study.folder) / "artifacts" / str(trial["trial_id"]) / SAMPLES_FILE
        if path.is_file():
            rows.append({**{k: trial[k] for k in columns[:4]}, "path": path})
    found = pd.DataFrame(rows, columns=columns)
    for _, in_fold in found.groupby("fold", sort=True):
        chosen = []
        for candidates in FIGURE6_COLUMNS:
            match = in_fold[in_fold["condition"].isin(candidates)]
            if len(match):  # a table3 condition before its table1 counterpart, then the lowest seed
                order = match["condition"].map(list(candidates).index)
                chosen.append(match.loc[order.sort_values(kind="stable").index[0]])
        if len(chosen) >= 2:
            return pd.DataFrame(chosen, columns=columns).reset_index(drop=True)
    return pd.DataFrame(columns=columns)


def label_colours(label: np.ndarray) -> np.ndarray:
    """A label map ``(H, W)`` as RGB floats in [0, 1] ``(H, W, 3)``: the colours of the MLflow sample
    figures (``trainables.labels.label_rgb``: background black, ignore (255) white, class k tab20's k-1)."""
    return label_rgb(label) / 255.0


def figure6(study: Study, path: str | Path | None = None, max_images: int = 4, panel_size: float = 2.0) -> Figure:
    """Thesis Figure 6: the same test images side by side (rows), with columns image, ground truth and the
    predictions of the SigmoidalLoss, cross-entropy (both 50% unsegmented) and CompleteLabels models
    (:func:`figure6_trials`). The trials keep the fine-tuning test split's first images, so the
    predictions are those of the fine-tuned models transferred from each pre-training."""
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise ValueError(f"max_images must be an integer >= 1, got {max_images!r}")
    chosen = figure6_trials(study)
    if chosen.empty:
        raise ValueError(f"study {study.name!r} has no fold where two of {[c[0] for c in FIGURE6_COLUMNS]} "
                         f"(or {[c[1] for c in FIGURE6_COLUMNS]}) have a finished trial with artifacts/<trial_id>/"
                         f"{SAMPLES_FILE}")
    samples = []
    for trial in chosen.itertuples():
        with np.load(trial.path) as arrays:
            samples.append({key: arrays[key] for key in ("images", "clean", "prediction")})
    first = samples[0]
    for trial, other in zip(chosen.itertuples(), samples):
        if not (np.array_equal(other["images"], first["images"]) and np.array_equal(other["clean"], first["clean"])):
            raise ValueError(f"trial {trial.trial_id} kept other test images than {chosen['trial_id'].iloc[0]} "
                             f"(fold {trial.fold}): Figure 6 needs the same images in every column")
    rows = min(max_images, len(first["images"]))
    titles = ["image", "ground truth", *chosen["condition"]]
    fig = Figure(figsize=(panel_size * len(titles), panel_size * rows))
    axes = np.asarray(fig.subplots(rows, len(titles), squeeze=False))
    for row in range(rows):
        axes[row, 0].imshow(np.transpose(first["images"][row], (1, 2, 0)))
        panels = [first["clean"][row], *(sample["prediction"][row] for sample in samples)]
        for col, label in enumerate(panels, start=1):
            axes[row, col].imshow(label_colours(label), interpolation="nearest")
        for col, title in enumerate(titles):
            axes[row, col].set(xticks=[], yticks=[], title=title if row == 0 else "")
    fig.suptitle(f"fold {chosen['fold'].iloc[0]}, seed {chosen['seed'].iloc[0]}: fine-tuning test images")
    fig.tight_layout()
    return _save(fig, path)


# --- learning curves and search curves ------------------------------------------------------------


def learning_curves(study: Study, path: str | Path | None = None, metrics: Sequence[str] | None = None,
                    panel_size: tuple[float, float] = (5, 4)) -> Figure:
    """Mean (line) ± std (band) of each metric per condition, one panel per metric (default:
    validation/test mean IU for pretrain-finetune, test mean F1 for PU).

    A metric that one phase reports is drawn against that phase's epoch, so a RandomWeights run (no
    pre-training) and a transferred one start fine-tuning at the same x; a metric of both phases is
    drawn against ``epoch_total``."""
    metrics = list(metrics or CURVE_METRICS.get(study.trainable, ()))
    metrics = [m for m in metrics if m in study.history.columns] or metrics[:1]
    xs = {m: "epoch" if len(_phases_reporting(study, m)) == 1 else "epoch_total" for m in metrics}
    frames = {m: learning_curves_frame(study, m, x=xs[m]) for m in metrics}
    # Many conditions (fig5's 23): 20 distinct colours, then dashed; the legend beside the last panel,
    # where it hides no curve.
    count = max((frame["condition"].nunique() for frame in frames.values()), default=0)
    beside = count > LEGEND_INSIDE_MAX
    width = panel_size[0] * max(len(metrics), 1) + (LEGEND_WIDTH * (1 + (count - 1) // LEGEND_ROWS) if beside else 0)
    fig = Figure(figsize=(width, panel_size[1] if not beside else max(panel_size[1], 0.16 * min(count, LEGEND_ROWS))))
    axes = np.atleast_1d(fig.subplots(1, max(len(metrics), 1)))
    for ax, metric in zip(axes, metrics):
        x, frame = xs[metric], frames[metric]
        for i, (condition, curve) in enumerate(frame.groupby("condition", sort=False)):
            colour, style = _curve_style(i, count)
            # Phases are drawn apart so no line joins the last pre-training and first fine-tuning epoch.
            for j, (_, part) in enumerate(curve.groupby("phase", sort=False)):
                ax.plot(part[x], part["mean"], color=colour, linestyle=style, label=None if j else condition)
                band = part["std"].fillna(0.0)
                ax.fill_between(part[x], part["mean"] - band, part["mean"] + band, color=colour, alpha=0.2)
        phases = _phases_reporting(study, metric)
        xlabel = f"{phases[0]} epoch" if x == "epoch" else "epoch (pre-training + fine-tuning)"
        ax.set(xlabel=xlabel, ylabel=metric, title=metric)
        if not beside:
            _legend(ax, fontsize="x-small")
    if beside:
        _legend(axes[-1], fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                ncol=1 + (count - 1) // LEGEND_ROWS)
    fig.tight_layout()
    return _save(fig, path)


def _curve_style(index: int, count: int) -> tuple[str, str]:
    """(colour, line style) of the ``index``-th of ``count`` curves: matplotlib's 10 default colours up to
    10 curves; beyond, tab20's 20, then the same 20 dashed, so no two curves look alike up to 40."""
    if count <= 10:
        return f"C{index}", "-"
    return matplotlib.colormaps["tab20"](index % 20), ("-", "--")[index // 20 % 2]


def _phases_reporting(study: Study, metric: str) -> list[str]:
    """The phases whose history rows carry ``metric``, in order of appearance."""
    if metric not in study.history.columns:
        return []
    return list(dict.fromkeys(study.history.loc[study.history[metric].notna(), "phase"]))


def search_curves(study: Study, path: str | Path | None = None, panel_size: tuple[float, float] = (5, 4)) -> Figure:
    """The search's test score (mean of the last 5 fine-tuning test mean IUs) against each (binned) noise
    rate, one line per loss and label transform, std over the bin's complete trials as error bars."""
    by_noise = search_summary(study).by_noise
    noises = [n for n in SEARCH_NOISE_PARAMS if n in set(by_noise["noise"])] or list(SEARCH_NOISE_PARAMS[:1])
    fig = Figure(figsize=(panel_size[0] * len(noises), panel_size[1]))
    axes = np.atleast_1d(fig.subplots(1, len(noises)))
    for ax, noise in zip(axes, noises):
        choices = [c for c in ("loss", "label_transform") if c in by_noise.columns]
        for key, curve in by_noise[by_noise["noise"] == noise].groupby(choices, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            label = str(key[0]) + (f" ({key[1]})" if len(key) > 1 else "")  # loss (label transform)
            ax.errorbar(curve["rate"], curve["mean"], yerr=curve["std"].fillna(0.0), marker="o", capsize=3,
                        label=label)
        ax.set(xlabel=f"{noise} (bin centre)", ylabel="test mean IU (last 5)", xlim=(-0.05, 1.05), title=noise)
        _legend(ax, fontsize="small")
    fig.tight_layout()
    return _save(fig, path)
