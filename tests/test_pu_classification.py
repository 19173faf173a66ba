"""The PU classification trainable (thesis 5.2): reports, objective, warmup, resume, moons boundary, Ray."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainables.config import PUClassificationConfig
from trainables.data.base import ClassificationData
from trainables.pu_classification import REPORT_KEYS, keep_fraction_per_class, pu_classification, run
import trainables.pu_classification as pu
from trainables.runtime import CONFIG_ERROR, CONFIG_ERROR_MESSAGE, load_state, save_state

SCORES = tuple(f"{split}/{name}" for split in ("val", "test") for name in ("acc", "mean_precision", "mean_recall", "mean_f1"))


class Preempted(Exception):
    """What the interrupting reporter raises, standing in for a killed trial."""


class Recorder:
    """A reporter that keeps every report and state, and raises after epoch ``stop_after`` if given."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.metrics: list[dict] = []
        self.states: list[dict] = []
        self.stop_after = stop_after

    def __call__(self, metrics: dict, state: dict | None) -> None:
        self.metrics.append(metrics)
        self.states.append(state)
        if metrics["train/epoch"] == self.stop_after:
            raise Preempted(f"stopped after epoch {self.stop_after}")


def synthetic(data_cache: Path, **overrides) -> PUClassificationConfig:
    """A tiny synthetic config; ``data_cache`` is conftest's session cache, so each split is drawn once."""
    # 1 image per class: 20 training and 20 test images of 32x32, three batches per epoch.
    values = {"data": "synthetic", "images_per_class": 1, "epochs": 2, "batch_size": 8, "lr": 1e-3,
              "data_cache": str(data_cache), "num_threads": 1, **overrides}
    return PUClassificationConfig(**values)


def moons(**overrides) -> PUClassificationConfig:
    values = {"data": "moons", "points_per_class": 40, "epochs": 4, "batch_size": 16, "lr": 1e-2,
              "num_threads": 1, **overrides}
    return PUClassificationConfig(**values)


def check_reports(reports: list[dict], cfg: PUClassificationConfig) -> None:
    """Exact keys, epochs 1..E, scores in [0, 1], objective = mean of the last k validation mean F1s."""
    assert [tuple(m) for m in reports] == [REPORT_KEYS] * cfg.epochs
    assert [m["train/epoch"] for m in reports] == list(range(1, cfg.epochs + 1))
    assert [m["epoch_total"] for m in reports] == list(range(1, cfg.epochs + 1))
    assert {m["phase"] for m in reports} == {"train"}
    f1 = [m["val/mean_f1"] for m in reports]
    for i, m in enumerate(reports):
        assert all(0.0 <= m[key] <= 1.0 for key in SCORES), m
        assert np.isfinite(m["train/loss"]) and m["train/loss"] >= 0.0
        assert m["objective"] == float(np.mean(f1[max(0, i + 1 - cfg.objective_last_k) : i + 1]))


def test_synthetic_run_reports_documented_metrics(data_cache):
    cfg = synthetic(data_cache, objective_last_k=1)
    reporter = Recorder()
    final = run(cfg, reporter)
    check_reports(reporter.metrics, cfg)
    assert final == reporter.metrics[-1]
    final_state = reporter.states[-1]
    confusion = final_state["confusion"]
    # 11 classes (negative + 10 positives); every one of the 20 test images is counted once.
    assert confusion.shape == (11, 11) and int(confusion.sum()) == 20
    assert float(confusion.diagonal().sum()) / 20 == pytest.approx(final["test/acc"])
    assert "boundary" not in final_state
    assert all("confusion" not in state for state in reporter.states[:-1])


def test_moons_run_objective_and_boundary():
    cfg = moons(objective_last_k=2, labelled_fraction=0.5)
    reporter = Recorder()
    run(cfg, reporter)
    check_reports(reporter.metrics, cfg)
    boundary = reporter.states[-1]["boundary"]
    assert set(boundary) == {"xx", "yy", "prob", "points", "labels", "true_labels", "loss", "dloss"}
    assert boundary["xx"].shape == boundary["yy"].shape == boundary["prob"].shape == (200, 200)
    assert ((boundary["prob"] >= 0) & (boundary["prob"] <= 1)).all()
    points = boundary["points"]
    assert points.shape == (80, 2)
    # The grid covers every training point with room to spare.
    assert boundary["xx"].min() < points[:, 0].min() and boundary["xx"].max() > points[:, 0].max()
    assert boundary["yy"].min() < points[:, 1].min() and boundary["yy"].max() > points[:, 1].max()
    # PU labels: half of the 40 positives keep label 1, the rest is observed as 0.
    assert int(boundary["true_labels"].sum()) == 40 and int(boundary["labels"].sum()) == 20
    assert ((boundary["labels"] == 1) <= (boundary["true_labels"] == 1)).all()


def test_moons_pn_setup_keeps_a_fraction_of_both_classes():
    reporter = Recorder()
    run(moons(setup="pn", labelled_fraction=0.25, epochs=1), reporter)
    boundary = reporter.states[-1]["boundary"]
    assert torch.equal(boundary["labels"], boundary["true_labels"])
    assert int((boundary["labels"] == 1).sum()) == int((boundary["labels"] == 0).sum()) == 10


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=40), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_keep_fraction_per_class_quota_and_order(labels, fraction, seed):
    true_labels = np.asarray(labels, dtype=np.int64)
    inputs = np.arange(len(labels), dtype=np.float32)[:, None].repeat(2, axis=1)  # row i holds i
    data = ClassificationData(inputs, np.zeros_like(true_labels), true_labels, ("n", "a", "b", "c"))
    kept = keep_fraction_per_class(data, fraction, np.random.default_rng(seed))
    index = kept.inputs[:, 0].astype(np.int64)
    assert (np.diff(index) > 0).all()  # a subset, in the original order
    np.testing.assert_array_equal(kept.true_labels, true_labels[index])
    np.testing.assert_array_equal(kept.labels, kept.true_labels)
    for cls in range(4):
        count = int((true_labels == cls).sum())
        assert int((kept.true_labels == cls).sum()) == int(np.floor(fraction * count + 0.5))


def test_keep_fraction_per_class_rejects_a_bad_fraction():
    data = ClassificationData(np.zeros((2, 2), np.float32), np.zeros(2, np.int64), np.zeros(2, np.int64), ("n",))
    with pytest.raises(ValueError, match=r"fraction must be a number in \[0, 1\], got 1.5"):
        keep_fraction_per_class(data, 1.5, np.random.default_rng(0))


@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])
def test_resume_from_a_saved_checkpoint_ends_like_an_uninterrupted_run(data_cache, tmp_path, lr_schedule):
    cfg = synthetic(data_cache, epochs=3, loss="bootstrap_neg", beta=0.8, warmup_epochs=1, lr_schedule=lr_schedule)
    uninterrupted = Recorder()
    final = run(cfg, uninterrupted)

    interrupted = Recorder(stop_after=2)
    with pytest.raises(Preempted, match="stopped after epoch 2"):
        run(cfg, interrupted)
    assert interrupted.metrics == uninterrupted.metrics[:2]
    # Through the file format Ray uses (torch.save, then torch.load with weights_only=True).
    save_state(interrupted.states[-1], tmp_path)
    resumed = Recorder()
    assert run(cfg, resumed, state=load_state(tmp_path)) == final
    assert resumed.metrics == uninterrupted.metrics[2:]
    assert torch.equal(resumed.states[-1]["confusion"], uninterrupted.states[-1]["confusion"])

    finished = Recorder()  # a run restored from its final state has nothing left to do
    assert run(cfg, finished, state=uninterrupted.states[-1]) == final
    assert finished.metrics == []


def test_cosine_schedule_decays_the_lr_epoch_by_epoch_to_zero():
    cfg = moons(epochs=4, lr=1e-2, lr_schedule="cosine")
    reporter = Recorder()
    run(cfg, reporter)
    # After epoch e the next epoch's lr is lr * (1 + cos(pi * e / E)) / 2 (CosineAnnealingLR, eta_min 0).
    lrs = [state["optimizer"]["param_groups"][0]["lr"] for state in reporter.states]
    assert lrs == pytest.approx([1e-2 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(1, 5)], abs=1e-12)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert reporter.states[-1]["scheduler"]["last_epoch"] == 4  # checkpointed, so a resume continues it
    constant = Recorder()
    run(moons(epochs=2, lr=1e-2), constant)
    assert [state["optimizer"]["param_groups"][0]["lr"] for state in constant.states] == [1e-2, 1e-2]
    assert constant.states[-1].get("scheduler") is None  # nothing to restore on resume


def test_resume_refuses_a_state_from_another_config():
    reporter = Recorder()
    run(moons(epochs=1), reporter)
    with pytest.raises(ValueError, match="different config"):
        run(moons(epochs=1, seed=1), Recorder(), state=reporter.states[-1])


def test_warmup_epochs_train_with_class_weighted_cross_entropy_first():
    half_unlabelled = {"labelled_fraction": 0.5, "epochs": 2}  # observed labels 20 positive, 60 negative
    weighted_ce = Recorder()
    run(moons(loss="ce", class_weighting=True, **half_unlabelled), weighted_ce)
    warmed_up = Recorder()
    run(moons(loss="sigmoidal_neg", warmup_epochs=1, **half_unlabelled), warmed_up)
    unweighted_ce = Recorder()
    run(moons(loss="ce", **half_unlabelled), unweighted_ce)

    first = [r.metrics[0]["train/loss"] for r in (weighted_ce, warmed_up, unweighted_ce)]
    assert first[1] == first[0]  # epoch 1: the warmup is class-weighted cross-entropy...
    assert first[2] != first[0]  # ...which differs from plain cross-entropy
    # Epoch 2 starts from the same model in both runs, so only the switch to the sigmoidal loss differs.
    assert warmed_up.metrics[1]["train/loss"] != weighted_ce.metrics[1]["train/loss"]


def test_empty_training_split_fails_before_training():
    reporter = Recorder()
    with pytest.raises(ValueError, match=r"labelled_fraction=0.0 is empty"):
        run(moons(setup="pn", labelled_fraction=0.0), reporter)
    assert reporter.metrics == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss": "ce", "beta": 0.5}, "beta=0.5 is only used by loss 'bootstrap_neg'"),
        ({"data": "voc:/x"}, "data must be 'synthetic', 'moons' or 'cifar:PATH'"),
        ({"setup": "pn", "loss": "sigmoidal_neg"}, "setup='pn' has clean labels"),
        ({"epochs": 0}, r"epochs must be an int >= 1, got 0"),
        ({"warmup_epochs": 5, "epochs": 2}, "warmup_epochs=5 exceeds epochs=2"),
        ({"lossx": "ce"}, "unknown config key 'lossx'; did you mean 'loss'"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of"),
    ],
)
def test_invalid_config_fails_before_any_training(overrides, message, monkeypatch):
    config = {"data": "moons", "points_per_class": 8, **overrides}
    with pytest.raises(ValueError, match=message):  # what the driver runs before Ray starts
        PUClassificationConfig.from_dict(config)
    reports = []
    monkeypatch.setattr(pu, "tune_reporter", lambda metrics, state: reports.append((metrics, state)))
    monkeypatch.setattr(pu, "run", lambda *args, **kwargs: pytest.fail("a refused config must not train"))
    pu_classification(config)  # inside a trial: one report saying why, a result Ray never retries
    assert [(metrics[CONFIG_ERROR], state) for metrics, state in reports] == [(1, None)]
    assert re.search(message, reports[0][0][CONFIG_ERROR_MESSAGE])


@pytest.mark.slow
def test_tuner_runs_the_trainable_and_checkpoints(ray_local, tmp_path):  # ray_local: conftest's session Ray
    from ray import tune

    config = moons(epochs=2).to_dict()
    tuner = tune.Tuner(
        tune.with_resources(pu_classification, {"cpu": 1}),
        param_space=config,
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="t"),
    )
    results = tuner.fit()
    assert not results.errors
    result = results[0]
    assert set(REPORT_KEYS) <= set(result.metrics)
    assert result.metrics["train/epoch"] == 2 and result.metrics["phase"] == "train"
    assert result.checkpoint is not None
    with result.checkpoint.as_directory() as directory:
        state = load_state(directory)
    assert state["epoch"] == 2 and state["config"] == config
    assert {"confusion", "boundary"} <= set(state)
