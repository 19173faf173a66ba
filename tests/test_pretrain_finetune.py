"""The pretrain-then-finetune trainable end to end on the tiny synthetic benchmark: its reports, Ray Tune
wiring, exact resumption from any checkpoint, the pre-training cache, and its failure modes."""

from __future__ import annotations

import math
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.nan_loss import nan_after

import trainables.pretrain_finetune as pf
from trainables.checkpoint import Checkpoint
from trainables.config import PretrainFinetuneConfig
from trainables.pretrain_cache import PretrainCache
from trainables.pretrain_finetune import PRETRAIN_TEST_METRICS, REPORT_KEYS, run
from trainables.runtime import CONFIG_ERROR, CONFIG_ERROR_MESSAGE, STATE_FILE, load_state, save_state

SCORE_KEYS = ("pretrain/val_mean_iu", *PRETRAIN_TEST_METRICS, *pf.FINETUNE_TEST_METRICS)


class Interrupted(Exception):
    """Raised by a reporter to stop a run, as a killed trial would."""


class Collector:
    """A reporter that keeps every report and the checkpoint state it was handed; it raises Interrupted
    after the report of epoch ``stop_after`` (epoch_total), keeping that report's state to resume from.

    With a ``directory``, each state goes through ``save_state`` / ``load_state`` (``weights_only=True``)
    as Ray's checkpoints do; without, the state is kept as handed over (live tensors of a model that
    may train on, so only the last state of a run is a snapshot).
    """

    def __init__(self, stop_after: int | None = None, directory: Path | None = None) -> None:
        self.stop_after = stop_after
        self.directory = directory
        self.metrics: list[dict] = []
        self.states: list[dict | None] = []

    def __call__(self, metrics: dict, state: dict | None) -> None:
        self.metrics.append(dict(metrics))
        if state is not None and self.directory is not None:
            folder = self.directory / f"report-{len(self.metrics)}"
            folder.mkdir(parents=True)
            state = load_state(save_state(state, folder).parent)
        self.states.append(state)
        if metrics["epoch_total"] == self.stop_after:
            raise Interrupted

    @property
    def last_state(self) -> dict:
        return self.states[-1]


def same_metrics(a: dict, b: dict) -> bool:
    """Equal reports, NaN equal to NaN."""
    def equal(x, y):
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))

    return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def without_cache_hit(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "pretrain/cache_hit"}


@pytest.fixture
def count_epochs(monkeypatch):
    """Counts the epochs trained (calls of train_one_epoch), per phase, by the loader's dataset size."""
    calls: list[int] = []
    real = pf.train_one_epoch

    def counting(model, loader, *args, **kwargs):
        calls.append(len(loader.dataset))
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(pf, "train_one_epoch", counting)
    return calls


# --- reports --------------------------------------------------------------------------------------


def test_reports_have_the_documented_keys_and_values(tiny_cfg):
    cfg = tiny_cfg(epochs_pretrain=2, epochs_finetune=3, objective_last_k=2)
    report = Collector()
    last = run(cfg, report)

    metrics = report.metrics
    assert [m["phase"] for m in metrics] == ["pretrain"] * 2 + ["finetune"] * 3
    assert [m["epoch_total"] for m in metrics] == [1, 2, 3, 4, 5]
    assert [m["pretrain/epoch"] for m in metrics[:2]] == [1, 2]
    assert [m["finetune/epoch"] for m in metrics[2:]] == [1, 2, 3]
    assert set(metrics[0]) == set(REPORT_KEYS["pretrain"])
    assert set(metrics[1]) == set(REPORT_KEYS["pretrain"]) | set(PRETRAIN_TEST_METRICS)
    for m in metrics[2:]:
        assert set(m) == set(REPORT_KEYS["finetune"])
    assert same_metrics(last, metrics[-1])

    assert all(math.isnan(m["objective"]) for m in metrics[:2])
    # objective: the mean of the last 2 evaluations' VALIDATION mean IUs, never the test ones
    ious = [m["finetune/val_mean_iu"] for m in metrics[2:]]
    expected = [ious[0], np.mean(ious[:2]), np.mean(ious[1:3])]
    assert [m["finetune/test_mean_iu"] for m in metrics[2:]] != pytest.approx(ious)
    assert [m["objective"] for m in metrics[2:]] == pytest.approx(expected, rel=1e-12, abs=0)
    for m in metrics:
        assert m["pretrain/cache_hit"] == 0
        assert all(0.0 <= m[k] <= 1.0 for k in SCORE_KEYS if k in m)
        loss = m.get("pretrain/train_loss", m.get("finetune/train_loss"))
        assert math.isfinite(loss) and loss > 0

    # Every report carries a self-describing checkpoint of this config.
    assert all(s is not None and s["config"] == cfg.to_dict() for s in report.states)
    assert [(s["phase"], s["epoch"]) for s in report.states] == [
        ("pretrain", 1), ("pretrain", 2), ("finetune", 1), ("finetune", 2), ("finetune", 3)]
    final = report.last_state
    assert final["model"]["head.weight"].shape[0] == 6  # background + the fold's 5 held-out classes
    confusion = final["confusion"]
    assert confusion.shape == (6, 6) and confusion.sum() > 0
    assert set(final["samples"]) == {"images", "clean", "prediction"}
    assert set(final["pretrain_samples"]) == {"images", "clean", "prediction", "noisy"}
    # g keeps its shapes from pre-training into fine-tuning.
    features = {k: v.shape for k, v in report.states[1]["features"].items()}
    assert {k.removeprefix("features."): v.shape for k, v in final["model"].items()
            if k.startswith("features.")} == features


def test_eval_interval_scores_the_last_epoch_and_every_interval_back(tiny_cfg):
    # eval_interval=2 over 5 epochs: epochs 5, 3 and 1 are evaluated; 2 and 4 report NaN test scores.
    report = Collector()
    run(tiny_cfg(init="random", epochs_finetune=5, eval_interval=2, objective_last_k=2), report)
    for keys in (pf.FINETUNE_VAL_METRICS, pf.FINETUNE_TEST_METRICS):  # both splits on the same epochs
        scores = [[m[key] for key in keys] for m in report.metrics]
        assert [all(math.isnan(v) for v in row) for row in scores] == [False, True, False, True, False]
        assert all(math.isfinite(v) for row in scores[0::2] for v in row)
    first, third, fifth = (report.metrics[e]["finetune/val_mean_iu"] for e in (0, 2, 4))
    # The mean of the last 2 validation evaluations, never of repeated rows.
    assert [m["objective"] for m in report.metrics] == pytest.approx(
        [first, first, (first + third) / 2, (first + third) / 2, (third + fifth) / 2], rel=1e-12, abs=0)
    evals = report.last_state["evals"]
    assert [e["finetune/val_mean_iu"] for e in evals] == [first, third, fifth]
    assert [e["finetune/test_mean_iu"] for e in evals] == [report.metrics[e]["finetune/test_mean_iu"] for e in (0, 2, 4)]
    assert all(m["epoch_total"] == e for e, m in enumerate(report.metrics, start=1))


def test_random_init_does_no_pretraining(tiny_cfg, tmp_path, count_epochs):
    cache = tmp_path / "cache"
    report = Collector()
    run(tiny_cfg(init="random", epochs_finetune=2, pretrain_cache=str(cache)), report)
    assert [m["phase"] for m in report.metrics] == ["finetune", "finetune"]
    assert [m["epoch_total"] for m in report.metrics] == [1, 2]
    assert all(m["pretrain/cache_hit"] == 0 for m in report.metrics)
    assert len(count_epochs) == 2
    assert not cache.exists()
    assert report.last_state["pretrain_samples"] == {}


def test_label_transform_sets_the_pretraining_head_but_not_g(tiny_cfg):
    features = []
    for transform, extra, outputs in [("none", {}, 16), ("binarize", {}, 2),
                                      ("random_groups", {"num_groups": 4}, 5)]:
        report = Collector(stop_after=1)
        with pytest.raises(Interrupted):
            run(tiny_cfg(epochs_pretrain=2, label_transform=transform, **extra), report)
        model = report.last_state["model"]
        assert model["head.weight"].shape == (outputs, 8, 1, 1), transform
        assert model["head.bias"].shape == (outputs,), transform
        features.append({k: tuple(v.shape) for k, v in model.items() if k.startswith("features.")})
    assert features[0] == features[1] == features[2]
    # g of small_fcn at width 8, whatever the task: its first and last convolutions.
    assert features[0]["features.enc1.0.weight"] == (8, 3, 3, 3)
    assert features[0]["features.dec1.0.weight"] == (8, 24, 3, 3)


# --- resumption -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tiny_cfg, tmp_path_factory):
    cfg = tiny_cfg(epochs_pretrain=2, epochs_finetune=2)
    report = Collector(directory=tmp_path_factory.mktemp("uninterrupted"))
    last = run(cfg, report)
    return cfg, report, last


# Stops mid pre-training, at the phase boundary (the finished pre-training checkpoint) and mid
# fine-tuning; resumes from the state as handed over, and from its save_state/load_state round trip.
@pytest.mark.parametrize(("stop_after", "on_disk"), [(1, False), (2, False), (3, False), (1, True), (3, True)])
def test_resumed_run_equals_an_uninterrupted_one(uninterrupted, tmp_path, stop_after, on_disk):
    cfg, full, full_last = uninterrupted
    first = Collector(stop_after=stop_after, directory=tmp_path if on_disk else None)
    with pytest.raises(Interrupted):
        run(cfg, first)
    # Scramble torch's global generator: the resumed run must not depend on what ran before it.
    torch.manual_seed(12345)
    second = Collector()
    last = run(cfg, second, state=first.last_state)

    assert [m["epoch_total"] for m in second.metrics] == list(range(stop_after + 1, 5))
    reports = first.metrics + second.metrics
    assert len(reports) == len(full.metrics)
    assert all(same_metrics(a, b) for a, b in zip(reports, full.metrics))
    assert same_metrics(last, full_last)
    assert_same_weights(second.last_state["model"], full.last_state["model"])
    assert_same_weights(second.last_state["optimizer"]["state"][0], full.last_state["optimizer"]["state"][0])


def test_resume_refuses_a_checkpoint_of_another_config(uninterrupted, tiny_cfg):
    cfg, full, _ = uninterrupted
    with pytest.raises(ValueError, match="checkpoint was written by a different config"):
        run(tiny_cfg(epochs_pretrain=2, epochs_finetune=3), lambda m, s: None, state=full.states[0])


def test_state_round_trip_and_corrupt_file(tmp_path):
    state = {"phase": "finetune", "epoch": 3, "model": {"w": torch.arange(6.0).reshape(2, 3)},
             "rng": torch.get_rng_state(), "history": [{"pretrain/train_loss": 0.5}], "config": {"seed": 0}}
    path = save_state(state, tmp_path)
    assert path == tmp_path / STATE_FILE
    assert sorted(os.listdir(tmp_path)) == [STATE_FILE]  # the temp file was renamed into place
    loaded = load_state(tmp_path)
    assert loaded.keys() == state.keys()
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert torch.equal(loaded["rng"], state["rng"])
    assert (loaded["phase"], loaded["epoch"], loaded["history"], loaded["config"]) == (
        "finetune", 3, [{"pretrain/train_loss": 0.5}], {"seed": 0})

    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=re.escape(f"checkpoint file {path} is corrupt")):
        load_state(tmp_path)


def test_load_state_refuses_pickled_objects(tmp_path):
    # weights_only: a checkpoint that would run arbitrary code when unpickled is refused.
    save_state({"model": Path("/etc")}, tmp_path)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / STATE_FILE))):
        load_state(tmp_path)


def test_every_checkpoint_state_is_a_checkpoint_dict_that_round_trips(uninterrupted):
    _, full, _ = uninterrupted
    checkpoints = [Checkpoint.from_dict(state) for state in full.states]
    assert [c.kind for c in checkpoints] == ["pretrain", "pretrain finished", "finetune", "finetune"]
    assert all(c.to_dict().keys() == state.keys() for c, state in zip(checkpoints, full.states))
    assert checkpoints[1].model is None and checkpoints[1].features is not None  # g only, once pre-trained


def test_initial_features_is_complete_on_every_path(tiny_cfg, tmp_path):
    from trainables.data.sources import load_task_data

    cfg = tiny_cfg(epochs_pretrain=1, epochs_finetune=1, pretrain_cache=str(tmp_path / "cache"))
    data, cpu = load_task_data(cfg), torch.device("cpu")
    report = Collector()
    fresh = pf.initial_features(cfg, data, report, None, cpu)
    hit = pf.initial_features(cfg, data, report, None, cpu)
    finished = Checkpoint.from_dict(report.states[0])
    resumed = pf.initial_features(cfg, data, report, finished, cpu)
    random = pf.initial_features(tiny_cfg(init="random"), data, report, None, cpu)
    assert [m["pretrain/cache_hit"] for m in report.metrics] == [0, 1]  # trained once, then replayed
    assert [(i.source, i.cache_hit, i.pretrain_epochs) for i in (fresh, hit, resumed, random)] == [
        ("pretrained", False, 1), ("cache", True, 1), ("checkpoint", False, 1), ("random", False, 0)]
    for init in (fresh, hit, resumed):
        assert_same_weights(init.features, fresh.features)
        assert set(init.samples) == {"images", "clean", "prediction", "noisy"}
    assert (random.features, random.samples) == (None, {})

    # A fine-tuning checkpoint holds the whole model: nothing to transfer, the samples it kept.
    run(cfg, (tuned := Collector()))
    from_finetune = pf.initial_features(cfg, data, report, Checkpoint.from_dict(tuned.last_state), cpu)
    assert (from_finetune.source, from_finetune.features, from_finetune.cache_hit) == ("checkpoint", None, True)
    assert set(from_finetune.samples) == set(fresh.samples)


# --- the pre-training cache -----------------------------------------------------------------------


def test_pretrain_cache_is_reused_only_for_an_equal_pretraining(tiny_cfg, tmp_path, count_epochs):
    cache_dir = tmp_path / "cache"
    cfg = tiny_cfg(epochs_pretrain=2, epochs_finetune=1, pretrain_cache=str(cache_dir), condition="first")
    first = Collector()
    run(cfg, first)
    assert count_epochs == [45, 45, 10]  # 15 classes x 3 pre-training images, 5 x 2 fine-tuning images
    path = PretrainCache(cache_dir).path(cfg.pretrain_key())
    assert sorted(os.listdir(cache_dir)) == [path.name]
    assert PretrainCache(cache_dir).load(cfg.pretrain_key())["config"] == cfg.to_dict()

    # Another condition label, equal pre-training and fine-tuning: no pre-training, identical results.
    count_epochs.clear()
    second = Collector()
    run(tiny_cfg(epochs_pretrain=2, epochs_finetune=1, pretrain_cache=str(cache_dir), condition="second"), second)
    assert count_epochs == [10]
    assert all(m["pretrain/cache_hit"] == 1 for m in second.metrics)
    assert [m["epoch_total"] for m in second.metrics] == [1, 2, 3]
    assert second.states[:2] == [None, None]  # replayed curves carry no checkpoint
    assert all(same_metrics(without_cache_hit(a), without_cache_hit(b)) for a, b in zip(first.metrics, second.metrics))
    assert_same_weights(second.last_state["model"], first.last_state["model"])

    # One pre-training value differs: it trains again and gets its own entry.
    count_epochs.clear()
    third = Collector()
    noisy = tiny_cfg(epochs_pretrain=2, epochs_finetune=1, pretrain_cache=str(cache_dir), noise_unsegment=0.5)
    run(noisy, third)
    assert count_epochs == [45, 45, 10]
    assert all(m["pretrain/cache_hit"] == 0 for m in third.metrics)
    assert sorted(os.listdir(cache_dir)) == sorted([path.name, f"{noisy.pretrain_key()}.pt"])


def test_corrupt_cache_entry_is_reported_and_rebuilt(tiny_cfg, tmp_path, count_epochs):
    cache_dir = tmp_path / "cache"
    cfg = tiny_cfg(pretrain_cache=str(cache_dir))
    path = PretrainCache(cache_dir).path(cfg.pretrain_key())
    cache_dir.mkdir()
    path.write_bytes(b"not a checkpoint")
    report = Collector()
    with pytest.warns(UserWarning, match=re.escape(f"pre-training cache entry {path} is corrupt")):
        run(cfg, report)
    assert count_epochs == [45, 10]
    assert report.metrics[0]["pretrain/cache_hit"] == 0
    entry = PretrainCache(cache_dir).load(cfg.pretrain_key())
    assert_same_weights(entry["features"], report.states[0]["features"])


def test_cache_entry_missing_keys_is_corrupt(tmp_path):
    cache = PretrainCache(tmp_path)
    torch.save({"features": {}}, cache.path("k"))
    with pytest.warns(UserWarning, match=r"is corrupt \(missing keys, has \['features'\]\)"):
        assert cache.load("k") is None
    assert not cache.path("k").exists()


def test_concurrent_cache_writes_are_atomic(tmp_path):
    cache = PretrainCache(tmp_path / "cache")
    entries = [{"features": {"w": torch.full((64, 64), float(i))}, "history": [{"x": float(i)}], "samples": {}}
               for i in range(4)]
    seen: list[float] = []
    errors: list[BaseException] = []

    def write(entry):
        try:
            for _ in range(5):
                cache.save("key", entry, {"writer": entry["history"][0]["x"]})
        except BaseException as error:  # a thread's failure is surfaced by the assertion below
            errors.append(error)

    def read():
        try:
            for _ in range(20):
                if cache.path("key").exists():
                    # A reader sees a whole file or none: torch.load of a partial file would raise.
                    entry = torch.load(cache.path("key"), weights_only=True)
                    value = entry["features"]["w"]
                    assert torch.equal(value, torch.full((64, 64), value[0, 0].item()))
                    assert entry["config"] == {"writer": value[0, 0].item()}
                    seen.append(value[0, 0].item())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(e,)) for e in entries] + [threading.Thread(target=read)
                                                                              for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert os.listdir(cache.root) == ["key.pt"]  # no temp file left behind
    assert cache.load("key")["history"][0]["x"] in {0.0, 1.0, 2.0, 3.0}
    assert set(seen) <= {0.0, 1.0, 2.0, 3.0}


# --- failure modes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("bad", "message"), [
    ({"fodl": 2}, r"unknown config key 'fodl'; did you mean 'fold'\?"),
    ({"epochs_pretrain": 0}, r"epochs_pretrain must be an int >= 1, got 0"),
    ({"noise_false_segment": 0.5}, r"noise_false_segment=0.5 needs label_transform='target'"),
    ({"data": "cifar:/x"}, r"data must be 'synthetic' or 'voc:PATH' for segmentation"),
    ({"finetune_train_per_class": 0}, r"finetune_val_per_class=1 \+ finetune_train_per_class=10 exceeds "
                                      r"images_per_class=3"),
])
def test_invalid_config_fails_before_any_work(tmp_path, monkeypatch, bad, message):
    reports = []
    monkeypatch.setattr(pf, "tune_reporter", lambda metrics, state: reports.append(metrics))
    monkeypatch.setattr(pf, "checkpoint_state_from_tune", lambda: None)
    data_cache = tmp_path / "data"
    data_cache.mkdir()
    config = {"image_size": 32, "images_per_class": 3, "finetune_train_per_class": 2, "finetune_val_per_class": 1,
              "data_cache": str(data_cache),
              **bad}
    pf.pretrain_finetune(config)  # a refused config is the trial's result (never retried), not an exception
    assert [report[CONFIG_ERROR] for report in reports] == [1]
    assert re.search(message, reports[0][CONFIG_ERROR_MESSAGE])
    assert os.listdir(data_cache) == []  # no work started
    # The driver refuses the same dict before Ray starts, with the same message.
    with pytest.raises(ValueError, match=message):
        PretrainFinetuneConfig.from_dict(config)


def test_nan_loss_stops_the_run_naming_the_epoch(tiny_cfg, monkeypatch):
    # the real loss for the 3 batches of pre-training epoch 1, NaN from then on
    monkeypatch.setattr(pf, "make_loss", nan_after(pf.make_loss, calls=3))
    report = Collector()
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, batch 0"):
        run(tiny_cfg(epochs_pretrain=3), report)
    assert [m["epoch_total"] for m in report.metrics] == [1]  # the NaN epoch is never reported


# --- through Ray Tune -----------------------------------------------------------------------------


@pytest.mark.slow
def test_trial_through_ray_tune(ray_local, tiny_cfg, tmp_path):
    from ray import tune

    cfg = tiny_cfg(epochs_pretrain=2, epochs_finetune=2, num_threads=1)
    tuner = tune.Tuner(
        tune.with_resources(pf.pretrain_finetune, {"cpu": 1}),
        param_space=cfg.to_dict(),
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="tiny", verbose=0),
    )
    grid = tuner.fit()
    assert grid.num_errors == 0
    result = grid[0]
    assert result.metrics["done"]
    assert result.metrics["phase"] == "finetune"
    assert set(REPORT_KEYS["finetune"]) <= set(result.metrics)
    assert result.metrics["epoch_total"] == 4
    assert 0.0 <= result.metrics["objective"] <= 1.0

    assert result.checkpoint is not None
    with result.checkpoint.as_directory() as directory:
        state = load_state(directory)
    assert (state["phase"], state["epoch"], state["config"]) == ("finetune", 2, cfg.to_dict())

    # Both phases' curves reach the loggers, one row per epoch.
    frame = result.metrics_dataframe
    assert frame["phase"].tolist() == ["pretrain", "pretrain", "finetune", "finetune"]
    assert frame["epoch_total"].tolist() == [1, 2, 3, 4]
    assert frame["pretrain/val_mean_iu"].iloc[:2].notna().all()
    assert frame["finetune/test_mean_iu"].iloc[2:].notna().all()
    assert frame["objective"].iloc[:2].isna().all()
