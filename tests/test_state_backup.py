"""study.state_backup: a complete copy of Ray's last snapshot replaces state files a kill cut short."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest

from study.spec import StudyError
from study.state_backup import (
    BACKUP_DIR,
    COMPLETE,
    StateBackup,
    filesystem_and_path,
    newest_complete_generation,
    newest_generation,
    prepare_slots,
    readable,
    restore_unreadable_state,
    write_generation,
)

SESSION = "2026-12-01_14-10-11"
# What Ray writes: JSON from TuneFunctionEncoder, cloudpickled searcher/callback states
EXPERIMENT_STATE = json.dumps({"trial_data": [["{\"trial_id\": \"e155d3c6\"}", "{}"]],
                               "runner_data": {"_iteration": 41}, "stats": {"start_time": 1.5}}).encode()
SEARCHER_STATE = pickle.dumps({"_ot_trials": {"e155d3c6": 3}, "_points_to_evaluate": [], "values": [0.5] * 50})
CALLBACK_STATE = pickle.dumps({"MLflowTrials:1": {"runs": {"e155d3c6": "fc2e47bb"}}}, protocol=2)


def snapshot(iteration: int) -> dict[str, bytes]:
    state = json.loads(EXPERIMENT_STATE)
    state["runner_data"]["_iteration"] = iteration
    return {f"experiment_state-{SESSION}.json": json.dumps(state).encode(),
            f"searcher-state-{SESSION}.pkl": SEARCHER_STATE,
            f"search_gen_state-{SESSION}.json": SEARCHER_STATE,
            f"callback-states-{SESSION}.pkl": CALLBACK_STATE}


def put(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.mark.parametrize("name, data", [("experiment_state-x.json", EXPERIMENT_STATE),
                                        ("searcher-state-x.pkl", SEARCHER_STATE),
                                        ("callback-states-x.pkl", CALLBACK_STATE),
                                        ("search_gen_state-x.json", SEARCHER_STATE)])  # a pickle, as Ray's is
def test_a_state_file_reads_whole_and_never_cut_short(name, data):
    assert readable(name, data)
    cut = [n for n in range(len(data)) if readable(name, data[:n])]
    assert cut == [], f"{name} read as whole when cut to {cut[:5]} of {len(data)} bytes"


def test_an_intact_state_is_left_untouched(tmp_path):
    fs, experiment = pyarrow.fs.LocalFileSystem(), str(tmp_path)
    put(tmp_path, snapshot(7))
    prepare_slots(fs, experiment)
    write_generation(fs, experiment, 1, snapshot(3))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert restore_unreadable_state(fs, experiment) is None
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_a_cut_short_state_is_replaced_by_the_newest_complete_generation(tmp_path):
    fs, experiment = pyarrow.fs.LocalFileSystem(), str(tmp_path)
    prepare_slots(fs, experiment)
    for generation, iteration in ((1, 3), (2, 5)):
        write_generation(fs, experiment, generation, snapshot(iteration))
    assert newest_generation(fs, experiment) == 2
    # The killed copy: the experiment state empty, the searcher state half written, and a file of a
    # later session that the backup never held (Ray's other files must come from one snapshot)
    put(tmp_path, {**snapshot(6), f"experiment_state-{SESSION}.json": b"",
                   f"searcher-state-{SESSION}.pkl": SEARCHER_STATE[:40],
                   "callback-states-2026-12-02_00-00-00.pkl": CALLBACK_STATE[:10]})
    (tmp_path / "tuner.pkl").write_bytes(b"not Ray's state, never touched")
    line = restore_unreadable_state(fs, experiment)
    assert line is not None and f"generation 2 in {BACKUP_DIR}" in line
    assert f"experiment_state-{SESSION}.json" in line and "callback-states-2026-12-02_00-00-00.pkl" in line
    state = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != "tuner.pkl"}
    assert state == snapshot(5)
    assert (tmp_path / "tuner.pkl").read_bytes() == b"not Ray's state, never touched"
    assert restore_unreadable_state(fs, experiment) is None, "once restored, the state reads"


def test_a_generation_cut_short_leaves_the_one_before_it_whole(tmp_path):
    fs, experiment = pyarrow.fs.LocalFileSystem(), str(tmp_path)
    prepare_slots(fs, experiment)
    for generation in (1, 2, 3):
        write_generation(fs, experiment, generation, snapshot(generation))
    assert newest_complete_generation(fs, experiment) == (3, snapshot(3))
    # A kill while generation 4 overwrites generation 2's slot: its COMPLETE is gone, a file half written
    (tmp_path / BACKUP_DIR / "a" / COMPLETE).unlink()
    (tmp_path / BACKUP_DIR / "a" / f"searcher-state-{SESSION}.pkl").write_bytes(SEARCHER_STATE[:7])
    assert newest_complete_generation(fs, experiment) == (3, snapshot(3))
    # A COMPLETE naming a size its file lacks, or a file that is gone, is not trusted either
    write_generation(fs, experiment, 4, snapshot(4))
    (tmp_path / BACKUP_DIR / "a" / f"experiment_state-{SESSION}.json").write_bytes(b"{}")
    (tmp_path / BACKUP_DIR / "b" / f"callback-states-{SESSION}.pkl").unlink()
    assert newest_complete_generation(fs, experiment) is None
    assert newest_generation(fs, experiment) == 4, "numbering goes on past a broken generation"


def test_no_complete_copy_is_a_clear_error_that_changes_nothing(tmp_path):
    fs, experiment = pyarrow.fs.LocalFileSystem(), str(tmp_path)
    put(tmp_path, {**snapshot(6), f"experiment_state-{SESSION}.json": b'{"trial_data": [['})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(StudyError, match=rf"experiment_state-{SESSION}\.json .*cut short.*another --name"):
        restore_unreadable_state(fs, experiment)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_the_scheme_needs_no_rename_and_works_on_a_non_local_filesystem():
    fs = pyarrow.fs._MockFileSystem()  # an in-memory filesystem, as object storage has no rename
    fs.create_dir("bucket/study")
    prepare_slots(fs, "bucket/study")
    write_generation(fs, "bucket/study", 1, snapshot(3))
    for name, data in {**snapshot(4), f"experiment_state-{SESSION}.json": b""}.items():
        with fs.open_output_stream(f"bucket/study/{name}") as stream:
            stream.write(data)
    assert restore_unreadable_state(fs, "bucket/study") is not None
    with fs.open_input_stream(f"bucket/study/experiment_state-{SESSION}.json") as stream:
        assert stream.readall() == snapshot(3)[f"experiment_state-{SESSION}.json"]


def test_the_callback_backs_up_each_new_snapshot_once_and_never_a_broken_one(tmp_path):
    staging, experiment = tmp_path / "staging", tmp_path / "experiment"
    experiment.mkdir()
    fs = pyarrow.fs.LocalFileSystem()
    trial = SimpleNamespace(storage=SimpleNamespace(experiment_driver_staging_path=str(staging),
                                                    storage_filesystem=fs, experiment_fs_path=str(experiment)))
    callback = StateBackup()
    callback.on_step_end(iteration=0, trials=[trial])  # no snapshot staged yet
    assert newest_generation(fs, str(experiment)) == 0
    put(staging, snapshot(1))
    callback.on_step_end(iteration=1, trials=[trial])
    callback.on_step_end(iteration=2, trials=[trial])  # the same snapshot: no second copy
    assert newest_generation(fs, str(experiment)) == 1
    put(staging, {**snapshot(2), f"searcher-state-{SESSION}.pkl": SEARCHER_STATE[:-3]})  # a save that failed
    callback.on_step_end(iteration=3, trials=[trial])
    assert newest_generation(fs, str(experiment)) == 1
    put(staging, snapshot(3))
    callback.on_step_end(iteration=4, trials=[trial])
    assert newest_complete_generation(fs, str(experiment)) == (2, snapshot(3))
    resumed = pickle.loads(pickle.dumps(callback))  # a resumed driver: it goes on from generation 2
    assert (resumed.written, resumed.generation) == ((), None)
    put(staging, snapshot(4))
    resumed.on_step_end(iteration=0, trials=[trial])
    assert newest_complete_generation(fs, str(experiment)) == (3, snapshot(4))


def test_storage_uris_and_paths_resolve_to_pyarrow_filesystems(tmp_path):
    fs, path = filesystem_and_path(f"file://{tmp_path}/ray/study")
    assert isinstance(fs, pyarrow.fs.LocalFileSystem) and path == f"{tmp_path}/ray/study"
    fs, path = filesystem_and_path("s3://bucket/ray/study?endpoint_override=127.0.0.1:9&scheme=http")
    assert fs.type_name == "s3" and path == "bucket/ray/study"
