"""The report command and the notebooks, run on hand-made study folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
from helpers.analysis_frames import pretrain_finetune_frames, pu_frames, write_boundaries, write_study
from nbclient import NotebookClient
from PIL import Image

from analysis import report
from analysis.load import load_study

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "analysis" / "notebooks"
QUICK = ("RandomWeights", "CompleteLabels", "HalfUnsegmented", "SigmoidalLoss", "HalfRandomLabels",
         "BinarizedLabels")


def quick_study(tmp_path: Path, conditions=QUICK) -> Path:
    frames = pretrain_finetune_frames(conditions, folds=(1, 2), seeds=(0, 1),
                                      statuses={("HalfUnsegmented", 2, 1): "ERROR"})
    return write_study(tmp_path / "quick", *frames)


def pu_study(tmp_path: Path) -> Path:
    variants = [(setup, fraction, loss) for setup in ("pu", "pn") for fraction in (0.5, 1.0)
                for loss in ("ce", "sigmoidal_neg")]
    trials, history, meta = pu_frames(variants, seeds=(0, 1), data="moons", preset="fig5")
    folder = write_study(tmp_path / "pu", trials, history, meta)
    write_boundaries(folder, trials)
    return folder


def test_available_sections_follow_preset_and_columns(tmp_path):
    assert report.available(load_study(quick_study(tmp_path))) == (
        "table1", "paired_differences", "figure2", "learning_curves")
    assert report.available(load_study(pu_study(tmp_path))) == (
        "table2", "figure4", "figure5", "paired_differences", "figure2", "learning_curves")
    fig3 = write_study(tmp_path / "fig3", *pretrain_finetune_frames(
        ["RandomWeights", "Superclasses", "RandomGroups4", "Exact"], folds=(1,), preset="fig3"))
    assert report.available(load_study(fig3)) == ("table1", "figure3", "learning_curves")
    table3 = write_study(tmp_path / "table3", *pretrain_finetune_frames(
        ["Complete/CrossEntropy", "50%Unseg./WeightedNeg."], folds=(1,), preset="table3"))
    assert report.available(load_study(table3)) == ("table1", "table3", "figure2", "learning_curves")


def test_report_md_tables_figures_and_too_few_cells(tmp_path, capsys):
    folder = quick_study(tmp_path)
    assert report.main([str(folder)]) == 0
    assert f"wrote {folder / 'report.md'}" in capsys.readouterr().out
    text = (folder / "report.md").read_text()
    for condition in QUICK:
        assert f"| {condition} |" in text
    assert "- table1: HalfUnsegmented / fold 2 (classes 6-10): 1 seeds, 5 values" in text
    assert "- trials: 24 (1 ERROR, 23 TERMINATED)" in text
    table1 = pd.read_csv(folder / "tables" / "table1.csv")
    assert len(table1) == len(QUICK) * 3  # two folds and the Average per condition
    paired = pd.read_csv(folder / "tables" / "paired_differences.csv").set_index("condition")
    assert paired.loc["HalfUnsegmented", "n_pairs"] == 3 and paired.loc["RandomWeights", "n_pairs"] == 4
    for name, size in (("learning_curves", (1000, 400)), ("figure2", (1000, 400))):
        assert f"(figures/{name}.png)" in text
        with Image.open(folder / "figures" / f"{name}.png") as image:
            assert image.size == size


def test_report_html_for_a_pu_study(tmp_path, capsys):
    folder = pu_study(tmp_path)
    assert report.main([str(folder), "--format", "html"]) == 0
    text = (folder / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for name in ("figure4", "figure5", "figure2", "learning_curves"):
        assert f'<img src="figures/{name}.png"' in text
        assert (folder / "figures" / f"{name}.png").stat().st_size > 0
    assert "<td>50%P+U</td><td>SigmoidalNeg.</td>" in text
    table2 = pd.read_csv(folder / "tables" / "table2.csv")
    assert list(zip(table2["annotation"], table2["loss"])) == [
        (annotation, loss) for annotation in ("P+N", "50%(P+N)", "100%P+U", "50%P+U")
        for loss in ("CrossEntropyU.", "SigmoidalNeg.")]


def test_bad_folder_is_one_line_and_exit_code_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path / "missing")],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: study folder '{tmp_path / 'missing'}' does not exist or is not a folder"]
    assert result.stdout == ""


def test_report_names_a_missing_file(tmp_path, capsys):
    folder = quick_study(tmp_path)
    (folder / "trials.parquet").unlink()
    assert report.main([str(folder), "--format", "md"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no trials.parquet" in err and "Traceback" not in err


def test_notebooks_are_committed_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [cell for cell in nb.cells if cell.cell_type == "code"]
        assert all(cell.outputs == [] and cell.execution_count is None for cell in code), path.name
        assert code[0].metadata.get("tags") == ["parameters"] and "STUDY_DIR = " in code[0].source
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == {"transferability.ipynb", "pu_learning.ipynb"}


def run_notebook(name: str, inject: str | None = None) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    if inject is not None:  # papermill-style: a cell after the parameters cell overrides them
        index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
        nb.cells.insert(index + 1, nbformat.v4.new_code_cell(inject))
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode, kind: str) -> list[str]:
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if kind in data:
                found.append(data[kind])
            elif kind == "text/plain" and output.get("output_type") == "stream":
                found.append(output["text"])
    return found


def test_transferability_notebook_runs_headless_from_the_environment(tmp_path, monkeypatch):
    folder = quick_study(tmp_path, QUICK + ("Superclasses",))
    monkeypatch.setenv("NOISY_TRANSFER_STUDY_DIR", str(folder))
    nb = run_notebook("transferability.ipynb")
    markdown = "\n".join(outputs(nb, "text/markdown"))
    # Average std: the mean of the fold stds (each < 0.001 here)
    assert "| Inexhaustive Segmentation | CompleteLabels | 0.31 ± 0.00 | 0.32 ± 0.00 | 0.32 ± 0.00 |" in markdown
    assert len(outputs(nb, "image/png")) == 2  # Figure 3 and the learning curves
    assert "HalfUnsegmented / fold 2 (classes 6-10): 1 seeds, 5 values" in "\n".join(outputs(nb, "text/plain"))


def test_pu_notebook_runs_headless_with_an_injected_parameter(tmp_path, monkeypatch):
    monkeypatch.delenv("NOISY_TRANSFER_STUDY_DIR", raising=False)
    nb = run_notebook("pu_learning.ipynb", inject=f"STUDY_DIR = {str(pu_study(tmp_path))!r}")
    assert len(outputs(nb, "image/png")) == 4  # Figures 2, 4, 5 and the learning curves
    assert any("SigmoidalNeg." in html for html in outputs(nb, "text/html"))
    assert any("excludes_0" in html and "pu_1.0_sigmoidal_neg" in html for html in outputs(nb, "text/html"))


def test_summary_text_shows_the_presets_table(tmp_path):
    text = report.summary_text(quick_study(tmp_path))
    # Average std: the mean of the fold stds (each < 0.001 here), not the spread between folds
    assert "| Inexhaustive Segmentation | CompleteLabels | 0.31 ± 0.00 | 0.32 ± 0.00 | 0.32 ± 0.00 |" in text
    assert "  HalfUnsegmented / fold 2 (classes 6-10): 1 seeds, 5 values" in text
    pu = report.summary_text(pu_study(tmp_path))
    assert pu.splitlines()[4].startswith("Figure 5: mean F1") and "| pu | sigmoidal_neg | 0.500 |" in pu
    empty = write_study(tmp_path / "empty", *(frame.iloc[:0] for frame in pretrain_finetune_frames(["x"])[:2]),
                        {"study": "empty", "preset": "quick"})
    assert report.summary_text(empty).endswith("no finished results to tabulate yet")
