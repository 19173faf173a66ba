"""A resumed trial restores from a checkpoint that exists, even when Ray's snapshot names a deleted one.

Why this exists (Ray 2.60, ``ray/tune/execution``): with ``CheckpointConfig(num_to_keep=1)`` the driver
registers a trial's new checkpoint and deletes the previous one at once
(``_CheckpointManager.register_checkpoint``), but writes the experiment state that ``--resume`` reads
(``Tuner.restore``) only afterwards, at the end of the controller's step, and copies it to the storage in
a background thread (``_ExperimentCheckpointManager.sync_up_experiment_state``). A driver killed in between
leaves a snapshot that names the deleted checkpoint, and the resumed trial fails in
``Trainable.restore`` ("Could not recover from checkpoint as it does not exist on storage anymore")
before any code of ours runs, on every retry. Keeping 2 checkpoints does not close that window by itself
(Ray then forces a snapshot every 2 checkpoints only, so the snapshot can lag by 2); with a snapshot at
every controller step as well (TUNE_GLOBAL_CHECKPOINT_S=0) it does, but then a snapshot copy is in flight
nearly always, and a kill mid-copy leaves Ray's state files truncated ("pickle data was truncated" on
--resume), because the copy overwrites them in place.

The repair: before the resumed driver starts any trial, a trial whose named checkpoint is gone (or was
left empty by a deletion cut short) gets the oldest checkpoint of its folder that is newer than the named
one copied to the named path. That one is the checkpoint whose registration deleted the named one: its
epoch's result reached the callbacks (MLflow) before the registration, so no epoch is lost, whereas a
newer folder may hold a checkpoint the driver never saw (its epochs were never logged). Ray's
result.json (history.parquet's source) is copied with the snapshot, so it lacks the epochs between the
two checkpoints: MLflow alone has them, which the console line says. The copy keeps
Ray's bookkeeping as it is (the resumed trial writes its next checkpoint at the next index), so only
public APIs are used: a callback's ``on_step_begin``, ``Trial.checkpoint`` and pyarrow's filesystem.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow.fs
from ray import tune

from study.spec import StudyError

CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")  # Ray's checkpoint folder name: checkpoint_000042


def _is_empty_or_missing(fs: pyarrow.fs.FileSystem, path: str) -> bool:
    info = fs.get_file_info(path)
    if info.type == pyarrow.fs.FileType.NotFound:
        return True
    return info.type == pyarrow.fs.FileType.Directory and not fs.get_file_info(pyarrow.fs.FileSelector(path))


def replacement_checkpoint(fs: pyarrow.fs.FileSystem, named: str) -> str | None:
    """The path of the oldest non-empty ``checkpoint_N`` folder beside ``named`` whose N is larger than
    ``named``'s, or None if there is none (``named``: a Ray checkpoint folder path on ``fs``)."""
    parent, _, name = named.rstrip("/").rpartition("/")
    match = CHECKPOINT_DIR.match(name)
    if match is None:
        raise ValueError(f"{named!r} is not a Ray checkpoint folder (checkpoint_NNNNNN)")
    newer = []
    for info in fs.get_file_info(pyarrow.fs.FileSelector(parent)):
        found = CHECKPOINT_DIR.match(info.base_name)
        if found and info.type == pyarrow.fs.FileType.Directory and int(found[1]) > int(match[1]):
            newer.append((int(found[1]), info.path))
    for _, path in sorted(newer):
        if not _is_empty_or_missing(fs, path):
            return path
    return None


def repair_trial_checkpoint(fs: pyarrow.fs.FileSystem, named: str) -> str | None:
    """If the checkpoint folder ``named`` is missing or empty, copy the one that replaced it there and
    return the source's path; None when ``named`` is intact. A StudyError when nothing can replace it."""
    if not _is_empty_or_missing(fs, named):
        return None
    source = replacement_checkpoint(fs, named)
    if source is None:
        raise StudyError(
            f"Ray's experiment state restores a trial from {named}, which no longer exists, and its folder "
            "holds no newer checkpoint to take its place; delete that trial's folder to run it afresh")
    fs.create_dir(named, recursive=True)
    pyarrow.fs.copy_files(source, named, source_filesystem=fs, destination_filesystem=fs)
    return source


def _trial_checkpoint(trial: Any) -> Any:
    """``trial.checkpoint`` (a ``ray.tune.Checkpoint`` or None), or a StudyError naming the Ray version."""
    try:
        return trial.checkpoint
    except AttributeError as error:
        import ray

        raise StudyError(
            f"Ray {ray.__version__}'s Trial no longer has the `checkpoint` property that study/checkpoint_repair.py "
            f"reads (written for Ray 2.60): {error}") from error


class RestorableCheckpoints(tune.Callback):
    """Before the first trial of a (resumed) run starts, repair every unfinished trial's checkpoint
    (:func:`repair_trial_checkpoint`), saying which ones on the console. Stateless across pickling: Ray
    keeps the callbacks in its experiment state, and each driver checks once."""

    def __init__(self) -> None:
        self.checked = False

    def __getstate__(self) -> dict[str, Any]:
        return {"checked": False}

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.checked:
            return
        self.checked = True
        for trial in trials:
            checkpoint = _trial_checkpoint(trial)
            if checkpoint is None or trial.status == "TERMINATED":
                continue
            try:
                source = repair_trial_checkpoint(checkpoint.filesystem, checkpoint.path)
            except StudyError as error:  # that trial then fails in Ray; the others need not stop
                print(f"[noisy-transfer] trial {trial.trial_id}: {error}", flush=True)
                continue
            if source is not None:
                print(f"[noisy-transfer] trial {trial.trial_id}: Ray's experiment state names "
                      f"{checkpoint.path.rpartition('/')[2]}, deleted by the killed driver; restoring from "
                      f"its successor {source.rpartition('/')[2]} (copied there); MLflow has every epoch, "
                      "history.parquet lacks those between the two", flush=True)
