"""Ray Tune's experiment state survives a driver killed while copying it to the storage.

Why this exists (Ray 2.60, ``ray/tune/execution``): ``TuneController.save_to_dir`` writes each snapshot
(``experiment_state-*.json`` and the searcher's and callbacks' state files) to a local staging folder;
a background thread then copies that folder to the storage over the previous copy, in place
(``_ExperimentCheckpointManager.sync_up_experiment_state`` -> ``pyarrow.fs.copy_files``). A driver killed
during that copy leaves a state file empty or cut short. ``--resume`` then fails to read it, and Ray does
not stop: it logs "Failed to restore the run state", "restarts the experiment", and every trial it had
is forgotten (seen in CI: an empty experiment_state file, a resumed search that ran 1 of 5 trials).

The fix keeps a second, complete copy beside Ray's. :class:`StateBackup` (a callback) runs after each
controller step, which is after ``TuneController.checkpoint``, so the staging folder holds a whole
snapshot. When that snapshot is new, it writes every state file as the next generation into one of two
slots, ``.state-backup/a`` and ``.state-backup/b``, in turn: the slot's ``COMPLETE`` is deleted first and
written last, so the other slot always holds the generation before, whole. Before ``--resume``,
:func:`restore_unreadable_state` checks Ray's state files. If one of them is unreadable, it puts the
newest complete generation in their place. That snapshot is
the one the killed copy was writing, or the one before it, so it is no older than the last copy that
finished. Ray lists only the experiment folder's own files (``_list_at_fs_path`` is not recursive), so it
never sees the backup folder. Every write is a whole-file write through pyarrow, so the scheme needs no
rename and works the same on a local disk and on S3, in about as many requests per snapshot as Ray's
own copy.
"""

from __future__ import annotations

import json
import pickletools
import re
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray import tune

from study.spec import StudyError

# The files Ray restores from (TuneController, Searcher, SearchGenerator, BasicVariantGenerator, CallbackList)
STATE_FILE = re.compile(
    r"(experiment_state|searcher-state|search_gen_state|basic-variant-state|callback-states)-.+\.(json|pkl)")
BACKUP_DIR = ".state-backup"
SLOTS = ("a", "b")  # generation n is written into SLOTS[n % 2]: the other slot keeps generation n - 1
COMPLETE = "COMPLETE"  # written last into a slot: {"generation": n, "files": {file name: size in bytes}}


def readable(name: str, data: bytes) -> bool:
    """Whether ``data``, the bytes of Ray's state file ``name``, is whole: a pickle whose opcodes run to
    its STOP, or JSON that parses. Nothing is unpickled, so no code runs. A pickle is told by its PROTO
    opcode (protocol 2 and up), not by the name: Ray's ``search_gen_state-*.json`` is a pickle."""
    if not data:
        return False
    if not data.startswith(b"\x80") and not name.endswith(".pkl"):
        try:
            json.loads(data)
        except ValueError:
            return False
        return True
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception:  # a pickle cut short: ValueError, or whatever its broken opcode argument raises
        return False
    return True


def filesystem_and_path(uri_or_path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """pyarrow's filesystem of a storage URI (``s3://bucket/p?endpoint_override=...``) or local path,
    and the path on it."""
    if "://" in uri_or_path and not uri_or_path.startswith("file://"):
        return pyarrow.fs.FileSystem.from_uri(uri_or_path)
    return pyarrow.fs.LocalFileSystem(), str(Path(uri_or_path.removeprefix("file://")).resolve())


def _read(fs: pyarrow.fs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.readall()


def _write(fs: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def _files(fs: pyarrow.fs.FileSystem, folder: str) -> dict[str, str]:
    """{name: path} of the plain files directly in ``folder`` (none when it does not exist)."""
    selector = pyarrow.fs.FileSelector(folder, allow_not_found=True)
    return {info.base_name: info.path for info in fs.get_file_info(selector) if info.type == pyarrow.fs.FileType.File}


def ray_state_files(fs: pyarrow.fs.FileSystem, experiment: str) -> dict[str, str]:
    """{name: path} of Ray's state files in the experiment folder ``experiment``."""
    return {name: path for name, path in _files(fs, experiment).items() if STATE_FILE.fullmatch(name)}


def _slot_dir(experiment: str, slot: str) -> str:
    return f"{experiment}/{BACKUP_DIR}/{slot}"


def prepare_slots(fs: pyarrow.fs.FileSystem, experiment: str) -> None:
    """Create the backup folders of ``experiment`` (object storage needs none; a local disk does)."""
    for slot in SLOTS:
        fs.create_dir(_slot_dir(experiment, slot), recursive=True)


def _complete(fs: pyarrow.fs.FileSystem, experiment: str, slot: str) -> dict[str, Any] | None:
    """A slot's ``COMPLETE`` ({"generation": n, "files": {name: size}}), or None where it is absent or
    does not read."""
    try:
        complete = json.loads(_read(fs, f"{_slot_dir(experiment, slot)}/{COMPLETE}"))
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(complete, dict) or not isinstance(complete.get("files"), dict):
        return None
    return complete


def newest_generation(fs: pyarrow.fs.FileSystem, experiment: str) -> int:
    """The number of the newest backup generation whose ``COMPLETE`` was written; 0 when there is none."""
    found = [c["generation"] for slot in SLOTS if (c := _complete(fs, experiment, slot)) is not None]
    return max(found, default=0)


def write_generation(fs: pyarrow.fs.FileSystem, experiment: str, generation: int, files: dict[str, bytes]) -> None:
    """Write ``files`` ({Ray state file name: bytes}) as backup ``generation`` of ``experiment``, into the
    slot the generation before it does not use: that slot's ``COMPLETE`` goes first, the files follow, and
    the new ``COMPLETE`` comes last. Whole-file writes only: a handful of requests on object storage."""
    folder = _slot_dir(experiment, SLOTS[generation % 2])
    try:
        fs.delete_file(f"{folder}/{COMPLETE}")
    except FileNotFoundError:
        pass
    for name, data in files.items():
        _write(fs, f"{folder}/{name}", data)
    complete = {"generation": generation, "files": {name: len(data) for name, data in files.items()}}
    _write(fs, f"{folder}/{COMPLETE}", json.dumps(complete).encode())


def newest_complete_generation(fs: pyarrow.fs.FileSystem, experiment: str) -> tuple[int, dict[str, bytes]] | None:
    """(generation, {name: bytes}) of the newest backup whose files are all there, of the sizes its
    ``COMPLETE`` lists, and readable; None when there is none."""
    candidates = sorted(((c["generation"], slot, c["files"]) for slot in SLOTS
                         if (c := _complete(fs, experiment, slot)) is not None), reverse=True)
    for generation, slot, sizes in candidates:
        folder = _slot_dir(experiment, slot)
        try:
            files = {name: _read(fs, f"{folder}/{name}") for name in sizes}
        except FileNotFoundError:
            continue
        if sizes and all(len(files[name]) == size and readable(name, files[name]) for name, size in sizes.items()):
            return generation, files
    return None


def restore_unreadable_state(fs: pyarrow.fs.FileSystem, experiment: str) -> str | None:
    """Where one of Ray's state files in ``experiment`` is unreadable, put the newest complete backup
    generation in place of Ray's state files and return a line that says so; None (nothing touched) when
    every file reads. A StudyError, before anything is changed, when no complete generation exists.

    The backup's files are written first and Ray's other state files removed after, so a kill in between
    leaves files that the next ``--resume`` finds unreadable or replaces again."""
    present = ray_state_files(fs, experiment)
    unreadable = sorted(name for name, path in present.items() if not readable(name, _read(fs, path)))
    if not unreadable:
        return None
    backup = newest_complete_generation(fs, experiment)
    if backup is None:
        raise StudyError(
            f"--resume: Ray Tune's state file(s) {', '.join(unreadable)} in {experiment} are empty or cut short "
            "(a driver killed while copying them to the storage) and the study holds no complete copy of them "
            f"in {BACKUP_DIR}; Ray would forget every trial. Delete those files to resume from an older session's "
            "state where one is left, or run the study again under another --name")
    generation, files = backup
    for name, data in files.items():
        _write(fs, f"{experiment}/{name}", data)
    for name in sorted(set(present) - set(files)):
        fs.delete_file(present[name])
    return (f"[noisy-transfer] Ray Tune's state file(s) {', '.join(unreadable)} were cut short by the killed "
            f"driver (a copy to the storage in flight); resuming from the complete copy of its last snapshot "
            f"(generation {generation} in {BACKUP_DIR})")


class StateBackup(tune.Callback):
    """After each controller step whose snapshot is new, write it as the next backup generation
    (:func:`write_generation`) beside Ray's state files on the storage. Stateless across pickling."""

    def __init__(self) -> None:
        self.written: tuple[tuple[str, int, int], ...] = ()  # (name, mtime ns, size) of the last backed-up files
        self.generation: int | None = None  # the last one written; None until this driver has looked

    def __getstate__(self) -> dict[str, Any]:
        return {"written": (), "generation": None}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not trials:
            return
        storage = trials[0].storage
        staging = Path(storage.experiment_driver_staging_path)
        paths = sorted(p for p in staging.glob("*") if STATE_FILE.fullmatch(p.name) and p.is_file())
        stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
        if not paths or stamp == self.written:
            return
        files = {p.name: p.read_bytes() for p in paths}
        if not all(readable(name, data) for name, data in files.items()):  # a save that failed midway
            return
        fs, experiment = storage.storage_filesystem, storage.experiment_fs_path
        if self.generation is None:  # once per driver: a resumed study goes on from its newest generation
            prepare_slots(fs, experiment)
            self.generation = newest_generation(fs, experiment)
        self.generation += 1
        write_generation(fs, experiment, self.generation, files)
        self.written = stamp
