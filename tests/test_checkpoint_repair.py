"""study.checkpoint_repair on a real local pyarrow filesystem: which checkpoint replaces a deleted one."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs
import pytest

from study.checkpoint_repair import repair_trial_checkpoint, replacement_checkpoint
from study.spec import StudyError

FS = pyarrow.fs.LocalFileSystem()


def trial_folder(tmp_path: Path, contents: dict[int, str | None]) -> Path:
    """checkpoint_N folders holding state.pt = text, or left empty where text is None."""
    for index, text in contents.items():
        folder = tmp_path / f"checkpoint_{index:06d}"
        folder.mkdir()
        if text is not None:
            (folder / "state.pt").write_text(text)
    (tmp_path / "result.json").write_text("")  # a trial folder's other files are no checkpoints
    return tmp_path


def test_the_oldest_newer_non_empty_checkpoint_replaces_a_deleted_one(tmp_path):
    # 3 deleted by the killed driver; 2 half-deleted (empty) and older; 5 empty; 6 registered; 7 unregistered
    folder = trial_folder(tmp_path, {2: None, 5: None, 6: "epoch 7", 7: "epoch 8"})
    named = str(folder / "checkpoint_000003")
    assert replacement_checkpoint(FS, named) == str(folder / "checkpoint_000006")
    assert repair_trial_checkpoint(FS, named) == str(folder / "checkpoint_000006")
    assert (folder / "checkpoint_000003" / "state.pt").read_text() == "epoch 7"
    assert (folder / "checkpoint_000006" / "state.pt").read_text() == "epoch 7"  # the source stays
    assert repair_trial_checkpoint(FS, named) is None  # intact now: nothing to do


def test_an_empty_named_checkpoint_is_replaced_too(tmp_path):
    folder = trial_folder(tmp_path, {3: None, 4: "epoch 5"})  # a deletion cut short by the kill
    assert repair_trial_checkpoint(FS, str(folder / "checkpoint_000003")) == str(folder / "checkpoint_000004")
    assert (folder / "checkpoint_000003" / "state.pt").read_text() == "epoch 5"


def test_an_intact_checkpoint_is_left_alone(tmp_path):
    folder = trial_folder(tmp_path, {3: "epoch 4", 4: "epoch 5"})
    assert repair_trial_checkpoint(FS, str(folder / "checkpoint_000003")) is None
    assert (folder / "checkpoint_000003" / "state.pt").read_text() == "epoch 4"


def test_a_deleted_checkpoint_without_successor_is_an_error_naming_it_and_the_fix(tmp_path):
    folder = trial_folder(tmp_path, {1: "epoch 2"})  # only older ones: restoring those would skip nothing
    named = str(folder / "checkpoint_000003")
    with pytest.raises(StudyError, match=r"checkpoint_000003.*delete that trial's folder"):
        repair_trial_checkpoint(FS, named)
    with pytest.raises(ValueError, match="not a Ray checkpoint folder"):
        replacement_checkpoint(FS, str(folder / "result.json"))


class FakeTrial:
    def __init__(self, trial_id: str, status: str, checkpoint: object) -> None:
        self.trial_id, self.status, self.checkpoint = trial_id, status, checkpoint


def test_the_callback_repairs_unfinished_trials_once_per_driver_and_reports_each(tmp_path, capsys):
    from ray import tune

    from study.checkpoint_repair import RestorableCheckpoints

    (tmp_path / "a").mkdir()
    deleted = trial_folder(tmp_path / "a", {4: "epoch 5"})
    (tmp_path / "b").mkdir()
    lost = trial_folder(tmp_path / "b", {1: "epoch 2"})
    (tmp_path / "c").mkdir()
    finished = trial_folder(tmp_path / "c", {9: "epoch 10"})
    trials = [FakeTrial("a", "PENDING", tune.Checkpoint(str(deleted / "checkpoint_000003"))),
              FakeTrial("b", "ERROR", tune.Checkpoint(str(lost / "checkpoint_000003"))),
              FakeTrial("c", "TERMINATED", tune.Checkpoint(str(finished / "checkpoint_000008"))),
              FakeTrial("d", "PENDING", None)]
    callback = RestorableCheckpoints()
    callback.on_step_begin(0, trials)
    out = capsys.readouterr().out
    assert (deleted / "checkpoint_000003" / "state.pt").read_text() == "epoch 5"
    assert "trial a: Ray's experiment state names checkpoint_000003" in out and "checkpoint_000004" in out
    assert "trial b: " in out and "delete that trial's folder" in out  # reported, the study goes on
    assert not (finished / "checkpoint_000008").exists() and "trial c" not in out  # finished: not touched
    (deleted / "checkpoint_000003" / "state.pt").unlink()
    callback.on_step_begin(1, trials)  # once per driver: later steps are the running study's own
    assert not (deleted / "checkpoint_000003" / "state.pt").exists()
