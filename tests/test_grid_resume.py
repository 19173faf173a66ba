"""study.grid: a resumed grid whose generator state disagrees with the experiment state still runs every
trial once and ends, where Ray's own generator hangs, reruns or loses trials.

The states are Ray's: the generator's from its own ``save_to_dir``, the experiment state written as
``TuneController.save_to_dir`` writes it (``get_json_state`` of real Trial objects). A kill between the
uploads of the two files leaves them from different snapshots (study.grid's docstring).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray import tune
from ray.tune.search import BasicVariantGenerator
from ray.tune.utils.serialization import TuneFunctionEncoder

from study.grid import FINISHED, ResumableGrid, restored_statuses

SESSION = "2026-12-01_12-00-00"


def trainable(config: dict) -> None:
    """Never run: the generator only needs a registered trainable to build Trial objects."""


def grid(kind: type, max_concurrent: int, values: int = 3) -> BasicVariantGenerator:
    search = kind(max_concurrent=max_concurrent)
    search.add_configurations({"grid": {"run": trainable, "config": {"x": tune.grid_search(list(range(values)))}}})
    return search


def save_experiment_state(folder: Path, trials: list, statuses: dict[str, str]) -> None:
    """Ray's experiment state of ``trials`` with ``statuses`` (trial_id -> status), as the controller
    writes it in ``save_to_dir``."""
    for trial in trials:
        trial.set_status(statuses[trial.trial_id])
    state = {"trial_data": [trial.get_json_state() for trial in trials], "runner_data": {}, "stats": {}}
    (folder / f"experiment_state-{SESSION}.json").write_text(json.dumps(state, cls=TuneFunctionEncoder))


def restored(kind: type, folder: Path, max_concurrent: int) -> BasicVariantGenerator:
    """A new driver's generator of ``kind``, restored from ``folder`` as ``TuneController.resume`` does."""
    search = kind(max_concurrent=max_concurrent)
    assert search.has_checkpoint(str(folder))
    search.restore_from_dir(str(folder))
    return search


def drain(search: BasicVariantGenerator, limit: int = 10) -> list[str]:
    """The ids the generator hands out when each trial ends as soon as it starts, until it has none."""
    handed = []
    while len(handed) < limit and (trial := search.next_trial()) is not None:
        handed.append(trial.config["x"])
        search.on_trial_complete(trial.trial_id)
    return handed


def save_stale_states(folder: Path, bound: int) -> list:
    """The CI hang: the generator (bound ``bound``) saved while trial 0 ran, the experiment state a
    snapshot later, when trial 0 had ended and trial 1 was running. Returns those two trials."""
    search = grid(ResumableGrid, max_concurrent=bound)
    first = search.next_trial()
    search.save_to_dir(str(folder), SESSION)
    search.on_trial_complete(first.trial_id)
    second = search.next_trial()
    save_experiment_state(folder, [first, second], {first.trial_id: FINISHED, second.trial_id: "RUNNING"})
    return [first, second]


@pytest.fixture
def stale(tmp_path: Path) -> tuple[Path, list]:
    """``save_stale_states`` with ``--max-concurrent 1``: (folder, [trial 0, trial 1])."""
    return tmp_path, save_stale_states(tmp_path, bound=1)


def test_a_fresh_grid_hands_out_what_rays_generator_does() -> None:
    ours, rays = grid(ResumableGrid, 2, values=5), grid(BasicVariantGenerator, 2, values=5)
    running: list[tuple[str, str]] = []
    for _ in range(12):
        a, b = ours.next_trial(), rays.next_trial()
        assert (a and (a.trial_id[6:], a.config, a.experiment_tag)) == (b and (b.trial_id[6:], b.config, b.experiment_tag))
        if a is not None:
            running.append((a.trial_id, b.trial_id))
        elif running:  # the bound of 2 is reached, or the grid is done: end the oldest
            done_a, done_b = running.pop(0)
            ours.on_trial_complete(done_a)
            rays.on_trial_complete(done_b)
        else:
            break
    assert ours.is_finished() and rays.is_finished() and not running


def test_experiment_state_is_read_as_ray_restores_it(stale) -> None:
    folder, (first, second) = stale
    # an older session's file is not the one restored
    (folder / "experiment_state-2026-11-30_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    assert restored_statuses(folder) == {first.trial_id: FINISHED, second.trial_id: "RUNNING"}
    assert restored_statuses(folder / "missing") == {}


def test_a_generator_older_than_the_experiment_state_ends_after_the_running_trial(stale) -> None:
    folder, (first, second) = stale
    search = restored(ResumableGrid, folder, max_concurrent=1)
    assert search._live_trials == {second.trial_id}
    assert search.next_trial() is None, "the bound of 1 is held by the restored running trial"
    search.on_trial_complete(second.trial_id)  # Ray reports the requeued trial's end
    third = search.next_trial()
    assert third.config == {"x": 2} and third.trial_id == second.trial_id[:-5] + "00002"
    search.on_trial_complete(third.trial_id)
    assert search.next_trial() is None and search.is_finished()


def test_rays_generator_waits_forever_in_the_same_state(stale) -> None:
    """Why study.grid exists: if this fails, Ray reconciles by itself and study.grid may go."""
    folder, (_, second) = stale
    search = restored(BasicVariantGenerator, folder, max_concurrent=1)
    search.on_trial_complete(second.trial_id)
    assert [search.next_trial() for _ in range(3)] == [None] * 3 and not search.is_finished()


def test_without_a_bound_no_restored_trial_is_handed_out_again(tmp_path: Path) -> None:
    save_stale_states(tmp_path, bound=0)
    assert drain(restored(ResumableGrid, tmp_path, max_concurrent=0)) == [2]
    # Ray's generator hands out trial 1 a second time beside the restored one
    assert drain(restored(BasicVariantGenerator, tmp_path, max_concurrent=0)) == [1, 2]


def test_a_generator_newer_than_the_experiment_state_loses_no_trial(tmp_path: Path) -> None:
    # The generator saved after handing out trials 0 and 1; the experiment state is from before trial 1.
    search = grid(ResumableGrid, max_concurrent=2)
    first = search.next_trial()
    assert search.next_trial().config == {"x": 1}
    search.save_to_dir(str(tmp_path), SESSION)
    save_experiment_state(tmp_path, [first], {first.trial_id: "RUNNING"})

    resumed = restored(ResumableGrid, tmp_path, max_concurrent=2)
    assert resumed._live_trials == {first.trial_id}
    assert drain(resumed) == [1, 2]
    resumed.on_trial_complete(first.trial_id)
    assert resumed.next_trial() is None and resumed.is_finished()
    # Ray's generator never hands out trial 1 again (it counts it as running) and ends without it
    rays = restored(BasicVariantGenerator, tmp_path, max_concurrent=2)
    assert rays.next_trial() is None
    rays.on_trial_complete(first.trial_id)
    assert drain(rays) == [2] and rays.is_finished()


def test_an_errored_trial_counts_as_running_until_ray_reports_its_retry(tmp_path: Path) -> None:
    search = grid(ResumableGrid, max_concurrent=1, values=2)
    first = search.next_trial()
    search.save_to_dir(str(tmp_path), SESSION)
    save_experiment_state(tmp_path, [first], {first.trial_id: "ERROR"})
    resumed = restored(ResumableGrid, tmp_path, max_concurrent=1)
    assert resumed.next_trial() is None
    resumed.on_trial_complete(first.trial_id)
    assert drain(resumed) == [1] and resumed.is_finished()


def test_the_reconciled_state_survives_the_next_snapshot(stale, tmp_path_factory) -> None:
    folder, (_, second) = stale
    search = restored(ResumableGrid, folder, max_concurrent=1)
    again = tmp_path_factory.mktemp("again")
    search.save_to_dir(str(again), "2026-12-01_13-00-00")
    (again / f"experiment_state-{SESSION}.json").write_text((folder / f"experiment_state-{SESSION}.json").read_text())
    resumed = restored(ResumableGrid, again, max_concurrent=1)
    resumed.on_trial_complete(second.trial_id)
    assert drain(resumed) == [2] and resumed.is_finished()
