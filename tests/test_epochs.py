"""The shared epoch loop: which epochs run, which evaluations run on which epoch, what is reported."""

from __future__ import annotations

import pytest
import torch

from trainables.epochs import EpochResult, EpochTrainer, Evaluation, every, on_epochs, run_epochs, warmup_then


def test_every_is_due_on_the_last_epoch_and_every_interval_back():
    assert [epoch for epoch in range(1, 6) if every(2, 5)(epoch)] == [1, 3, 5]
    assert [epoch for epoch in range(1, 7) if every(4, 6)(epoch)] == [2, 6]
    assert [epoch for epoch in range(1, 4) if every(1, 3)(epoch)] == [1, 2, 3]
    assert [epoch for epoch in range(1, 9) if on_epochs(2, 8)(epoch)] == [2, 8]


def test_run_epochs_trains_evaluates_when_due_and_reports_each_record():
    trained: list[int] = []
    scored: list[tuple[str, int]] = []
    results: list[EpochResult] = []
    reports: list[tuple[dict, dict]] = []
    epoch_of_score = [0]

    def train(epoch):
        trained.append(epoch)
        epoch_of_score[0] = epoch
        return 10.0 * epoch

    def scorer(name):
        def score():
            scored.append((name, epoch_of_score[0]))
            return {"value": 100 * epoch_of_score[0]}
        return score

    evaluations = [Evaluation("test", every(2, 5), scorer("test")),
                   Evaluation("probe", on_epochs(4), scorer("probe"))]

    def record(result):
        results.append(result)
        return {"epoch": result.epoch}, {"state": result.epoch}

    last = run_epochs(train, evaluations, record, lambda m, s: reports.append((m, s)), done=1, epochs=5)
    assert trained == [2, 3, 4, 5]  # resumed after epoch 1
    assert scored == [("test", 3), ("probe", 4), ("test", 5)]  # after that epoch's training
    assert [(r.epoch, r.last, r.train_loss, sorted(r.scores)) for r in results] == [
        (2, False, 20.0, []), (3, False, 30.0, ["test"]), (4, False, 40.0, ["probe"]), (5, True, 50.0, ["test"])]
    assert results[1].scores["test"] == {"value": 300}
    assert reports == [({"epoch": e}, {"state": e}) for e in (2, 3, 4, 5)]
    assert last == {"epoch": 5}
    assert run_epochs(train, evaluations, record, lambda m, s: None, done=5, epochs=5) is None


def test_epoch_trainer_sets_the_epoch_uses_that_epochs_loss_and_steps_the_schedule():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    warmup, main = torch.nn.CrossEntropyLoss(), torch.nn.MSELoss()
    calls = []

    class Loader:
        epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

    def fit(model_, loader, loss_fn, optimizer_, *, device, autocast_dtype):
        calls.append((loader.epoch, loss_fn, device, autocast_dtype))
        optimizer_.step()  # as the real one does, before the trainer steps the schedule
        return {"train_loss": float(loader.epoch)}

    trainer = EpochTrainer(model, optimizer, scheduler, Loader(), warmup_then(warmup, main, 1),
                           torch.device("cpu"), None, fit=fit)
    assert [trainer(1), trainer(2)] == [1.0, 2.0]
    assert calls == [(1, warmup, torch.device("cpu"), None), (2, main, torch.device("cpu"), None)]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)  # stepped once per epoch
