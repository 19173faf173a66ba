"""A notebook opened the usual way (Jupyter started in analysis/notebooks/) finds a study given relative
to the repository root: STUDY_DIR resolves against the root, not the kernel's working directory."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from helpers.analysis_frames import pretrain_finetune_frames, write_study
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "analysis" / "notebooks"


def test_the_notebook_run_from_its_own_folder_finds_a_study_relative_to_the_repository_root(tmp_path,
                                                                                             monkeypatch):
    folder = write_study(tmp_path / "quick", *pretrain_finetune_frames(
        ("RandomWeights", "CompleteLabels", "HalfUnsegmented"), folds=(1,), seeds=(0, 1)))
    relative = os.path.relpath(folder, ROOT)  # "../../tmp/.../quick": wrong from analysis/notebooks/
    assert (NOTEBOOKS / relative).resolve() != folder.resolve()
    monkeypatch.setenv("NOISY_TRANSFER_STUDY_DIR", relative)
    nb = nbformat.read(NOTEBOOKS / "transferability.ipynb", as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    printed = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "preset 'quick': 6 trials" in printed and "TERMINATED    6" in printed, printed[:2000]
