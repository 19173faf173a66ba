"""``python -m analysis.report RESULTS_DIR [--format md|html]``: every table and figure a study supports.

Writes ``report.md`` (or ``report.html``) into the study folder, with the tables as CSV under
``tables/`` and the figures as PNG under ``figures/``, and prints where. Which sections appear
depends on the study's trainable, preset and columns (:func:`available`), so a partly finished study
gets what its trials support, and the report lists every cell with too few runs.
"""

from __future__ import annotations

import argparse
import html
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import plots, stats, tables
from analysis.load import Study, load_study

FORMATS = ("md", "html")
TABLES_DIR, FIGURES_DIR = "tables", "figures"


@dataclass(frozen=True, eq=False)
class Section:
    """One part of the report: a table (``frame`` is written as CSV, ``shown`` is displayed; default
    ``frame``), a figure, or both, with notes printed above them."""

    key: str
    title: str
    frame: pd.DataFrame | None = None
    shown: pd.DataFrame | None = None
    figure: Figure | None = None
    notes: tuple[str, ...] = field(default=())


def _has_values(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(frame[column].notna().any())


def available(study: Study) -> tuple[str, ...]:
    """The section keys the study supports, in report order: for pretrain-finetune studies
    ``"table1"``, ``"figure3"``, ``"table3"``, ``"paired_differences"``, ``"search"``, ``"figure6"`` (with
    sample predictions in the artifacts); for PU studies
    ``"table2"``, ``"figure4"``, ``"figure5"``, ``"paired_differences"``; then ``"figure2"`` and ``"learning_curves"``."""
    trials, history = study.trials, study.history
    keys = []
    if study.trainable == "pretrain_finetune":
        searching = study.preset == "search"
        if not searching and _has_values(history, tables.TABLE1_METRIC):
            keys.append("table1")
        transforms = set(trials.get("label_transform", pd.Series(dtype=object)))
        if study.preset == "fig3" or transforms & {"superclass", "random_groups"}:
            keys.append("figure3")
        # Every pre-training reports its test split; Table 3 is the study of annotation x loss.
        annotated = any("/" in str(c) for c in trials["condition"])
        if _has_values(history, tables.TABLE3_METRICS["mean_iu"]) and (study.preset == "table3" or annotated):
            keys.append("table3")
        conditions = set(trials["condition"])
        if not searching and any(c in conditions and r in conditions for c, r in stats.REFERENCES.items()):
            keys.append("paired_differences")
        if searching:
            keys.append("search")
        if not plots.figure6_trials(study).empty:
            keys.append("figure6")
    elif {"setup", "labelled_fraction", "loss"} <= set(trials.columns):
        keys.append("table2")
        if plots.boundary_paths(study):
            keys.append("figure4")
        if trials["labelled_fraction"].nunique() > 1:
            keys.append("figure5")
        conditions = trials.drop_duplicates("condition")
        if stats.pu_references(conditions):
            keys.append("paired_differences")
    # Figure 2 illustrates the modified negative losses: shown when the study uses one of them.
    if "loss" in trials.columns and set(trials["loss"]) & (set(plots.FIGURE2_LOSSES) - {"ce"}):
        keys.append("figure2")
    if len(history):
        keys.append("learning_curves")
    return tuple(keys)


def _table1(study: Study) -> list[Section]:
    frame = tables.table1(study)
    notes = ["Cells: mean ± std of finetune/test_mean_iu over the last 5 fine-tuning epochs of every "
             "finished seed; Average: the mean over all folds' values ± the mean of the folds' stds (the "
             "thesis's convention; tables/table1.csv also has pooled_std, the std of the values pooled over folds)."]
    return [Section("table1", "Table 1: fine-tuning mean IU per fold", frame, tables.table1_wide(frame), None,
                    tuple(notes + ([tables.TOO_FEW_NOTE] if frame["too_few"].any() else [])))]


def _figure3(study: Study) -> list[Section]:
    return [Section("figure3", "Figure 3: fine-tuning score against the number of pre-training categories",
                    tables.figure3_frame(study), figure=plots.figure3(study))]


def _table2(study: Study) -> list[Section]:
    return [Section("table2", "Table 2: PU classification, last epoch (mean and std over seeds)",
                    tables.table2(study), notes=tuple(_collapse_notes(study)))]


def _collapse_notes(study: Study) -> list[str]:
    """A PU study's collapsed trials (predictions covering fewer than half of the classes), never hidden."""
    lines = tables.collapse_lines(study)
    return [f"COLLAPSED: {line}" for line in lines]


def _figure4(study: Study) -> list[Section]:
    return [Section("figure4", "Figure 4: decision boundaries per loss", figure=plots.figure4(study))]


def _figure5(study: Study) -> list[Section]:
    return [Section("figure5", "Figure 5: mean F1 against the labelled fraction, PU and PN",
                    tables.figure5_frame(study), figure=plots.figure5(study), notes=tuple(_collapse_notes(study)))]


def _table3(study: Study) -> list[Section]:
    return [Section("table3", "Table 3: pre-training segmentation on the clean test split",
                    tables.table3(study))]


def _figure6(study: Study) -> list[Section]:
    chosen = plots.figure6_trials(study)
    note = ("Predictions of the fine-tuned models on the same fine-tuning test images; each column's "
            "pre-training is its condition (the thesis shows the binary pre-trained models' predictions).")
    return [Section("figure6", "Figure 6: the same test images, predictions per condition",
                    chosen.drop(columns=["path"]), figure=plots.figure6(study), notes=(note,))]


def _paired(study: Study) -> list[Section]:
    if study.trainable == "pretrain_finetune":
        note = ("Score: mean of the last 5 fine-tuning test mean IUs per trial; difference to the reference "
                "condition over matching (fold, seed) pairs, 95% Student-t interval.")
        frame = stats.paired_differences(study)
    else:
        note = ("Score: test mean F1 at each trial's last epoch; condition minus reference over matching seeds, "
                "95% Student-t interval. References: P+U with cross-entropy (what a loss or annotation gains), "
                "P+N with cross-entropy at the same labelled fraction (do reliable negatives beat the PU loss?), "
                "the weighted loss at the same fraction (do the PU losses differ?).")
        frame = stats.pu_paired_differences(study)
    frame = frame.assign(excludes_0=stats.excludes_zero(frame))
    return [Section("paired_differences", "Paired differences to the reference condition", frame, notes=(note,))]


def _search(study: Study) -> list[Section]:
    summary = stats.search_summary(study)
    chosen = ("val_objective: the objective the search chose by (mean of the last 5 fine-tuning "
              "validation mean IUs); test_score: the mean of the last 5 fine-tuning test mean IUs, "
              "what is reported.")
    return [
        Section("search_best", "Search: best settings per noise level and loss (chosen on validation, "
                "reported on test)", summary.best, notes=(chosen,)),
        Section("search_by_noise", "Search: test score against noise rate per loss", summary.by_noise,
                figure=plots.search_curves(study), notes=summary.notes),
        Section("search_trials", "Search: every complete trial, best validation objective first",
                summary.trials),
        Section("search_importances", "Search: Optuna parameter importances", summary.importances),
    ]


def _figure2(study: Study) -> list[Section]:
    return [Section("figure2", "Figure 2: negative-label losses and their derivatives", figure=plots.figure2())]


def _learning_curves(study: Study) -> list[Section]:
    return [Section("learning_curves", "Learning curves per condition", figure=plots.learning_curves(study))]


BUILDERS = {"table1": _table1, "figure3": _figure3, "table2": _table2, "figure4": _figure4,
            "figure5": _figure5, "table3": _table3, "paired_differences": _paired, "search": _search,
            "figure2": _figure2, "learning_curves": _learning_curves, "figure6": _figure6}
_TOO_FEW_LABELS = {"table1": ("condition", "column"), "figure3": ("condition", "metric"),
                   "table2": ("annotation", "loss"), "figure5": ("setup", "labelled_fraction", "loss"),
                   "table3": ("annotation", "loss"), "search_by_noise": ("noise", "bin", "loss"),
                   "paired_differences": ("condition", "reference")}


def build_sections(study: Study) -> list[Section]:
    """Every section :func:`available` names, built (tables computed, figures drawn)."""
    return [section for key in available(study) for section in BUILDERS[key](study)]


def too_few_lines(sections: Sequence[Section]) -> list[str]:
    """Every too-few cell of the sections' frames, prefixed with the section key."""
    return [f"{section.key}: {line}" for section in sections if section.key in _TOO_FEW_LABELS
            for line in tables.too_few_cells(section.frame, _TOO_FEW_LABELS[section.key])]


def _summary_lines(study: Study) -> list[str]:
    counts = Counter(study.trials["status"])
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    data = study.meta.get("data", "unknown")
    return [f"preset: {study.preset or 'unknown'}; trainable: {study.trainable}; data: {data}",
            f"trials: {len(study.trials)} ({statuses or 'none'}); only TERMINATED trials count in tables"]


# The table that summarises each preset in a terminal; other presets get Table 1 or Table 2.
_PRESET_SUMMARY = {"fig3": "figure3", "table3": "table3", "fig5": "figure5", "search": "search"}
_SUMMARY_TABLES = {
    "table1": ("Table 1: fine-tuning mean IU per fold", tables.table1),
    "figure3": ("Figure 3: fine-tuning score against the number of categories", tables.figure3_frame),
    "table3": ("Table 3: pre-training segmentation on the clean test split", tables.table3),
    "table2": ("Table 2: PU classification, last epoch", tables.table2),
    "figure5": ("Figure 5: mean F1 against the labelled fraction", tables.figure5_frame),
    "search": ("Search: best settings per noise level and loss (chosen on validation, reported on test)",
               lambda study: stats.search_summary(study).best),
}


def summary_text(study: Study | str | Path) -> str:
    """The study's main table as text for a terminal (the preset's table: Figure 3's points for fig3,
    Table 3, Figure 5's points, the search's best settings; else Table 1 or Table 2), with the trial
    counts and the cells with too few runs."""
    if not isinstance(study, Study):
        study = load_study(study)
    keys = available(study)
    preferred = _PRESET_SUMMARY.get(study.preset)
    key = preferred if preferred in keys else next((k for k in ("table1", "table2") if k in keys), None)
    lines = [f"study {study.name}", *_summary_lines(study), ""]
    if key is None:
        return "\n".join(lines + ["no finished results to tabulate yet"])
    title, builder = _SUMMARY_TABLES[key]
    frame = builder(study)
    shown = tables.table1_wide(frame) if key == "table1" else frame
    lines += [title, tables.render_frame(shown, "md") if len(shown) else "(no rows)"]
    if key in ("table2", "figure5"):
        lines += ["", "collapsed models (predictions cover fewer than half of the classes):"] + (
            [f"  {line}" for line in tables.collapse_lines(study)] or ["  none"])
        lines += ["", "paired differences in test mean F1, condition - reference over the seeds, 95% CI "
                  "(* : excludes 0):"] + ([f"  {line}" for line in paired_lines(stats.pu_paired_differences(study))]
                                           or ["  none"])
    if key == "table1" and "paired_differences" in keys:
        lines += ["", "paired differences in fine-tuning test mean IU (last 5 epochs), condition - reference "
                  "over the (fold, seed) pairs, 95% CI (* : excludes 0):"] + [
            f"  {line}" for line in paired_lines(stats.paired_differences(study))]
    if key in _TOO_FEW_LABELS:
        lines += ["", "cells with too few runs:"] + (
            [f"  {line}" for line in tables.too_few_cells(frame, _TOO_FEW_LABELS[key])] or ["  none"])
    return "\n".join(lines)


def paired_lines(frame: pd.DataFrame) -> list[str]:
    """One line per paired difference: ``condition - reference: +0.304 [+0.112, +0.495] (3 pairs) *``,
    the star marking an interval that excludes 0; ``... +0.005 (1 pair: too few for an interval)``."""
    lines = []
    for row, mark in zip(frame.itertuples(index=False), stats.excludes_zero(frame)):
        head = f"{row.condition} - {row.reference}: {row.mean_difference:+.3f}"
        if row.too_few or pd.isna(row.ci_low):
            lines.append(f"{head} ({row.n_pairs} pair{'' if row.n_pairs == 1 else 's'}: too few for an interval)")
        else:
            lines.append(f"{head} [{row.ci_low:+.3f}, {row.ci_high:+.3f}] ({row.n_pairs} pairs){' *' if mark else ''}")
    return lines


def write_report(study: Study | str | Path, fmt: str = "md") -> Path:
    """Build every supported section of a study (or the study in a folder) and write report.md /
    report.html, tables/<key>.csv and figures/<key>.png into its folder; return the report's path."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if not isinstance(study, Study):
        study = load_study(study)
    if study.folder is None:
        raise ValueError("study has no folder to write the report into (an MLflow study): export it first")
    folder = Path(study.folder)
    sections = build_sections(study)
    for section in sections:
        if section.frame is not None:
            (folder / TABLES_DIR).mkdir(exist_ok=True)
            section.frame.to_csv(folder / TABLES_DIR / f"{section.key}.csv", index=False)
        if section.figure is not None:
            (folder / FIGURES_DIR).mkdir(exist_ok=True)
            section.figure.savefig(folder / FIGURES_DIR / f"{section.key}.png", dpi=plots.DPI)
    render = _render_html if fmt == "html" else _render_md
    path = folder / f"report.{fmt}"
    path.write_text(render(study, sections, too_few_lines(sections)))
    return path


def _shown(section: Section) -> pd.DataFrame | None:
    shown = section.shown if section.shown is not None else section.frame
    return shown if shown is not None and len(shown.columns) and len(shown) else None


def _render_md(study: Study, sections: Sequence[Section], too_few: Sequence[str]) -> str:
    parts = [f"# Study {study.name}", "", *[f"- {line}" for line in _summary_lines(study)], ""]
    parts += ["## Cells with too few runs", ""] + ([f"- {line}" for line in too_few] or ["- none"]) + [""]
    for section in sections:
        parts += [f"## {section.title}", ""] + [f"{note}  " for note in section.notes]
        if section.notes:
            parts.append("")
        if (shown := _shown(section)) is not None:
            parts += [tables.render_frame(shown, "md"), ""]
        elif section.frame is not None:
            parts += ["(no rows)", ""]
        if section.figure is not None:
            parts += [f"![{section.title}]({FIGURES_DIR}/{section.key}.png)", ""]
        if section.frame is not None:
            parts += [f"CSV: [{TABLES_DIR}/{section.key}.csv]({TABLES_DIR}/{section.key}.csv)", ""]
    return "\n".join(parts)


def _render_html(study: Study, sections: Sequence[Section], too_few: Sequence[str]) -> str:
    def items(lines: Sequence[str]) -> str:
        return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"

    title = html.escape(f"Study {study.name}")
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>",
             "<style>body{font-family:sans-serif;max-width:75em;margin:auto} table{border-collapse:collapse}"
             " td,th{border:1px solid #ccc;padding:2px 6px} img{max-width:100%}</style></head><body>",
             f"<h1>{title}</h1>", items(_summary_lines(study)),
             "<h2>Cells with too few runs</h2>", items(list(too_few) or ["none"])]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(note)}</p>" for note in section.notes]
        if (shown := _shown(section)) is not None:
            parts.append(tables.render_frame(shown, "html"))
        elif section.frame is not None:
            parts.append("<p>(no rows)</p>")
        if section.figure is not None:
            parts.append(f'<p><img src="{FIGURES_DIR}/{section.key}.png" alt="{html.escape(section.title)}"></p>')
        if section.frame is not None:
            parts.append(f'<p>CSV: <a href="{TABLES_DIR}/{section.key}.csv">{section.key}.csv</a></p>')
    return "\n".join(parts + ["</body></html>"])


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 for a folder that is not a readable study)."""
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", metavar="RESULTS_DIR",
                        help="a study folder (trials.parquet, history.parquet, study.json)")
    parser.add_argument("--format", choices=FORMATS, default="md", help="report format (default: md)")
    args = parser.parse_args(argv)
    try:
        study = load_study(args.results_dir)
    except (OSError, ValueError) as error:  # missing files, bad JSON, unreadable parquet, wrong columns
        print("error: " + " ".join(str(error).split()), file=sys.stderr)  # one line, whatever the message
        return 2
    path = write_report(study, args.format)
    folder = path.parent
    print(f"wrote {path}")
    for sub in (TABLES_DIR, FIGURES_DIR):
        if (folder / sub).is_dir():
            print(f"wrote {folder / sub}/ ({len(list((folder / sub).iterdir()))} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
