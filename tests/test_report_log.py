"""Every checkpoint carries the trial's reports so far, and the export fills gaps in Ray's log from it.

Ray's log of a trial (result.json) is written and synced by the driver; a checkpoint is uploaded by the
worker. A driver killed in between leaves a checkpoint without the log before it (seen with S3 storage);
``trainables.runtime.carrying_reports`` and ``study.export.completed_dataframes`` keep history.parquet
whole. The end-to-end cases are in tests/test_faults.py and tests/test_s3_storage.py (driver kills).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from study.export import completed_dataframes, fill_from_checkpoint, lacks_reports, trial_frames
from trainables.checkpoint import Checkpoint
from trainables.pretrain_finetune import run
from trainables.runtime import REPORTS, carrying_reports, load_state, save_state


def same(a: dict, b: dict) -> bool:
    """Equal reports, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a)


class Saved:
    """A reporter that sends each checkpoint state through save_state / load_state (weights_only, as
    Ray's checkpoints are read back) and keeps every report and loaded state."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.metrics, self.states = directory, [], []

    def __call__(self, metrics: dict, state: dict | None) -> None:
        self.metrics.append(dict(metrics))
        if state is not None:
            folder = self.directory / str(len(self.metrics))
            folder.mkdir(parents=True)
            save_state(state, folder)
            state = load_state(folder)
        self.states.append(state)


def test_each_checkpoint_carries_every_report_so_far_including_those_before_a_resume():
    handed: list[tuple[dict, dict | None]] = []
    report = carrying_reports(lambda metrics, state: handed.append((metrics, state)), None)
    original = {"epoch": 2}
    for epoch, state in [(1, None), (2, original), (3, None), (4, {"epoch": 4})]:
        report({"epoch_total": epoch}, state)
    assert [state for _, state in handed][::2] == [None, None]  # a report without a checkpoint stays so
    assert handed[1][1] == {"epoch": 2, REPORTS: [{"epoch_total": 1}, {"epoch_total": 2}]}
    assert handed[3][1][REPORTS] == [{"epoch_total": e} for e in (1, 2, 3, 4)]
    assert original == {"epoch": 2}, "the trainable's own state dict is not changed"
    # Resumed from the epoch-2 checkpoint: its reports come first, then the new ones, none twice.
    resumed: list[dict] = []
    report = carrying_reports(lambda metrics, state: resumed.append(state), handed[1][1])
    report({"epoch_total": 3}, {"epoch": 3})
    assert resumed[0][REPORTS] == [{"epoch_total": e} for e in (1, 2, 3)]


def test_a_real_trial_checkpoint_holds_its_reports_and_a_resumed_trial_ends_with_all_of_them(tiny_cfg, tmp_path):
    cfg = tiny_cfg(epochs_pretrain=2, epochs_finetune=2)
    uninterrupted = Saved(tmp_path / "a")
    run(cfg, carrying_reports(uninterrupted, None))
    assert [m["epoch_total"] for m in uninterrupted.metrics] == [1, 2, 3, 4]
    for count, state in enumerate(uninterrupted.states, start=1):
        assert state is not None and Checkpoint.from_dict(state).reports is not None
        assert len(state[REPORTS]) == count and all(map(same, state[REPORTS], uninterrupted.metrics[:count]))

    # Resume from the first fine-tuning checkpoint (epoch_total 3), read back from disk.
    state = uninterrupted.states[2]
    resumed = Saved(tmp_path / "b")
    run(cfg, carrying_reports(resumed, state), state=state)
    assert [m["epoch_total"] for m in resumed.metrics] == [4]
    final = resumed.states[-1][REPORTS]
    assert [m["epoch_total"] for m in final] == [1, 2, 3, 4]
    assert all(map(same, final, uninterrupted.metrics))


def frame(epochs: list[int], loss: float) -> pd.DataFrame:
    """Ray's log of a fine-tuning trial: one row per epoch."""
    return pd.DataFrame({"phase": "finetune", "finetune/epoch": epochs, "epoch_total": epochs,
                         "finetune/train_loss": [loss] * len(epochs), "objective": [0.5] * len(epochs),
                         "pid": 7})


@pytest.mark.parametrize("epochs, lacks", [([1, 2, 3], False), ([3, 1, 2], False), ([2, 3], True),
                                           ([1, 3], True), ([], True)])
def test_lacks_reports_means_an_epoch_from_1_to_the_last_is_missing(epochs, lacks):
    assert lacks_reports(frame(epochs, 0.1)) is lacks
    assert lacks_reports(None)


def fake_trial(trial_id: str, checkpoint: object | None) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"condition": "c", "fold": 0, "seed": 0}, status="TERMINATED",
                           checkpoint=checkpoint, last_result={"objective": 0.5}, error_file=None,
                           path=None, storage=None)


def test_the_export_fills_the_epochs_only_the_checkpoint_holds_and_keeps_rays_rows_for_the_rest(capsys):
    stored = [dict(row) for row in frame([1, 2, 3], 9.0).drop(columns="pid").to_dict("records")]
    read: list[str] = []

    def reports_of(checkpoint: str) -> list[dict]:
        read.append(checkpoint)
        if checkpoint == "broken":
            raise ValueError("checkpoint file x/state.pt is corrupt")
        return stored

    trials = [fake_trial("gap", "ckpt-gap"), fake_trial("whole", "ckpt-whole"),
              fake_trial("broken", "broken"), fake_trial("none", None)]
    logs = {"gap": frame([3, 4, 5], 1.0), "whole": frame([1, 2], 1.0), "broken": frame([4], 1.0),
            "none": frame([2], 1.0)}
    completed = completed_dataframes(trials, logs, reports_of)
    assert read == ["ckpt-gap", "broken"], "a whole log or a trial without a checkpoint reads nothing"
    assert completed["whole"] is logs["whole"] and completed["broken"] is logs["broken"]
    assert "trial broken: Ray's log lacks epochs" in capsys.readouterr().out

    _, history = trial_frames(trials, completed, study="s", preset="quick", run_ids={}, config_keys=[])
    gap = history.loc[history["trial_id"] == "gap"]
    assert gap["epoch_total"].tolist() == [1, 2, 3, 4, 5]
    # Epochs 1-2 only the checkpoint holds; epoch 3 both: Ray's row wins (its loss 1.0, not 9.0).
    assert gap["finetune/train_loss"].tolist() == [9.0, 9.0, 1.0, 1.0, 1.0]
    assert gap["epoch"].tolist() == [1, 2, 3, 4, 5]


def test_filling_an_empty_log_gives_the_checkpoints_reports():
    stored = [{"epoch_total": 1, "objective": 0.1}, {"epoch_total": 2, "objective": 0.2}]
    assert fill_from_checkpoint(None, stored)["objective"].tolist() == [0.1, 0.2]
    assert fill_from_checkpoint(frame([], 0.0), stored)["epoch_total"].tolist() == [1, 2]
