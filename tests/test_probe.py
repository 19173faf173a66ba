"""The transfer probe during pre-training (trainables/probe.py) and the scheduler score it feeds."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_pretrain_finetune import Collector, Interrupted

import trainables.pretrain_finetune as pf
from trainables.config import PretrainFinetuneConfig
from trainables.data.base import SegmentationData
from trainables.data.loading import SegmentationDataset
from trainables.probe import FIRST_RUNG, RUNG_FACTOR, probe_epochs, rung_epochs
from trainables.pretrain_finetune import PROBE_METRICS, REPORT_KEYS, run

PROBED = {"transfer_probe": True, "epochs_pretrain": 6, "epochs_finetune": 2}  # clock 1..8: one probe, epoch 5
PROBE_EPOCH = 5


@pytest.mark.parametrize("max_t", [5, 8, 14, 15, 16, 35, 44, 45, 46, 115, 135, 136])
def test_rungs_are_exactly_rays_asha_rungs(max_t):
    from ray.tune.schedulers.async_hyperband import _Bracket

    bracket = _Bracket(min_t=FIRST_RUNG, max_t=max_t, reduction_factor=RUNG_FACTOR, s=0)
    assert rung_epochs(max_t) == tuple(sorted(milestone for milestone, _ in bracket._rungs))


def test_probe_epochs_are_the_rungs_inside_pretraining():
    assert probe_epochs(15, 20) == (5, 15)  # the synthetic default: rungs 5 and 15, both probes
    assert probe_epochs(6, 2) == (PROBE_EPOCH,)
    assert probe_epochs(4, 2) == ()  # its one rung, 5, is a fine-tuning epoch
    assert probe_epochs(100, 15) == (5, 15, 45)  # VOC
    assert probe_epochs(1, 1) == ()  # smoke size: no rung, no probe


@pytest.fixture(scope="module")
def probed(tiny_cfg):
    cfg = tiny_cfg(**PROBED)
    report = Collector()
    run(cfg, report)
    return cfg, report


def test_the_probe_reports_at_its_epochs_and_feeds_the_scheduler_score(probed):
    cfg, report = probed
    pretrain = [m for m in report.metrics if m["phase"] == "pretrain"]
    for m in pretrain:
        probe_keys = set(PROBE_METRICS) & set(m)
        assert probe_keys == (set(PROBE_METRICS) if m["pretrain/epoch"] == PROBE_EPOCH else set())
    probe = pretrain[PROBE_EPOCH - 1]
    assert 0.0 <= probe["probe/val_mean_iu"] <= 1.0 and probe["probe/seconds"] > 0
    assert probe["scheduler/score"] == probe["probe/val_mean_iu"]
    assert all(math.isnan(m["scheduler/score"]) for m in pretrain if m["pretrain/epoch"] != PROBE_EPOCH)
    # in fine-tuning the scheduler compares the latest validation mean IU, not objective's mean over k
    for m in report.metrics[cfg.epochs_pretrain:]:
        assert m["scheduler/score"] == m["finetune/val_mean_iu"]


def test_the_probe_is_deterministic_and_never_reads_the_test_split(probed, tiny_cfg, monkeypatch):
    cfg, report = probed
    load = pf.load_task_data

    def other_test_split(config):  # the fine-tuning test split replaced by other images
        data = load(config)
        return dataclasses.replace(data, finetune_test=SegmentationDataset(_images_of(data.finetune_train)))

    monkeypatch.setattr(pf, "load_task_data", other_test_split)
    again = Collector()
    run(cfg, again)
    first = [m.get("probe/val_mean_iu") for m in report.metrics]
    assert [m.get("probe/val_mean_iu") for m in again.metrics] == first
    assert any(a["finetune/test_mean_iu"] != b["finetune/test_mean_iu"]
               for a, b in zip(again.metrics[cfg.epochs_pretrain:], report.metrics[cfg.epochs_pretrain:]))


def _images_of(dataset: SegmentationDataset) -> SegmentationData:
    """The images and clean labels of ``dataset`` as a source split."""
    names = ("background", *(f"class{i}" for i in range(1, dataset.num_classes)))
    return SegmentationData(dataset.inputs.numpy(), dataset.clean_labels, dataset.instances, names)


@pytest.mark.parametrize("stop_after", [PROBE_EPOCH - 1, PROBE_EPOCH])
def test_a_resumed_trial_reports_the_probe_of_an_uninterrupted_one(probed, stop_after):
    cfg, full = probed
    first = Collector(stop_after=stop_after)
    with pytest.raises(Interrupted):
        run(cfg, first)
    torch.manual_seed(999)  # the resumed run must not depend on torch's global generator
    second = Collector()
    run(cfg, second, state=first.last_state)
    reports = first.metrics + second.metrics
    assert [m.get("probe/val_mean_iu") for m in reports] == [m.get("probe/val_mean_iu") for m in full.metrics]


def test_a_trial_with_the_probe_off_reports_no_probe_keys(tiny_cfg):
    report = Collector()
    run(tiny_cfg(**{**PROBED, "transfer_probe": False}), report)
    assert not any(set(PROBE_METRICS) & set(m) for m in report.metrics)
    for m in report.metrics:
        assert set(m) <= set(REPORT_KEYS[m["phase"]]) | set(pf.PRETRAIN_TEST_METRICS)


def test_the_probe_needs_a_pretraining():
    with pytest.raises(ValueError, match=r"transfer_probe=True needs init='pretrain'.*init='random'"):
        PretrainFinetuneConfig(transfer_probe=True, init="random")
