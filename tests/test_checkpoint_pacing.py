"""runtime.tune_reporter writes checkpoints for at most CHECKPOINT_SHARE of the time: every epoch when a
write is cheap (the CPU studies), every few epochs when it is not (FCN-AlexNet at VOC size on a GPU); the
first and the final state always."""

from __future__ import annotations

import pytest

from trainables import runtime


class FakeRay:
    """A clock that epochs and writes advance, and a ray.tune.report that records what carried a checkpoint."""

    def __init__(self, write_s: float) -> None:
        self.now, self.write_s, self.checkpointed = 0.0, write_s, []

    def save_state(self, state, directory):
        self.now += self.write_s

    def report(self, metrics, checkpoint=None):
        self.now += 0.3  # waiting for the Tune controller: not a checkpoint cost
        self.checkpointed.append(checkpoint is not None)


@pytest.fixture
def fake(monkeypatch):
    def make(write_s: float) -> FakeRay:
        from ray import tune

        ray = FakeRay(write_s)
        monkeypatch.setattr(tune, "report", ray.report)
        monkeypatch.setattr(runtime, "save_state", ray.save_state)
        monkeypatch.setattr(runtime, "CHECKPOINT_PACER", runtime.CheckpointPacer(clock=lambda: ray.now))
        return ray

    return make


def run_epochs(ray: FakeRay, epochs: int, epoch_s: float) -> list[bool]:
    for epoch in range(1, epochs + 1):
        ray.now += epoch_s
        state = {"epoch": epoch, **({runtime.FINAL_KEY: 1} if epoch == epochs else {})}
        runtime.tune_reporter({"epoch": epoch}, state)
    return ray.checkpointed


def test_cheap_checkpoints_are_written_every_epoch(fake):
    # 2.6 ms per write against 0.45 s epochs (benchmarks/overhead.py on the synthetic data)
    assert run_epochs(fake(0.0026), 30, 0.45) == [True] * 30


def test_writes_below_the_floor_are_always_due_even_against_short_epochs(fake):
    # 30 ms per write (60 ms with Ray's copy, under ALWAYS_DUE_BELOW_S) against 0.05 s epochs: a share
    # rule alone would skip most, but one checkpoint per epoch is what a resume relies on for cheap models.
    assert run_epochs(fake(0.03), 20, 0.05) == [True] * 20


def test_costly_checkpoints_stay_within_the_share_and_the_final_one_is_kept(fake):
    ray = fake(0.5)  # 0.5 s per write (1 s with Ray's copy), 2 s epochs: one checkpoint per 20 s at most
    written = run_epochs(ray, 40, 2.0)
    # Epochs end 2.3 s apart (0.3 s in report); the next is due 20 s after a write ends, the last always.
    assert [i + 1 for i, w in enumerate(written) if w] == [1, 10, 19, 28, 37, 40]
    cost = runtime.COPIES * 0.5
    assert sum(written) <= 2 + ray.now * runtime.CHECKPOINT_SHARE / cost  # the share, plus first and final


def test_begin_trial_resets_the_pacer_for_the_next_trial_on_a_reused_worker(fake):
    ray = fake(0.5)
    run_epochs(ray, 3, 2.0)
    runtime.begin_trial(1)
    ray.checkpointed.clear()
    runtime.tune_reporter({"epoch": 1}, {"epoch": 1})
    assert ray.checkpointed == [True]  # a new trial's first state is always written
    runtime.tune_reporter({"epoch": 2}, None)  # no state: nothing to write
    assert ray.checkpointed == [True, False]


def test_reporting_outside_ray_starts_no_ray(fake):
    # tune_reporter adds the node id only inside a running Ray: asking Ray for it here would start a
    # local Ray in this process, and every later ray.init (conftest's ray_local) would then fail.
    import ray

    assert not ray.is_initialized()
    run_epochs(fake(0.0026), 2, 0.45)
    assert not ray.is_initialized()
