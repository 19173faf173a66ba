"""study/stops.py: a trial the scheduler stopped is told from one that ran to its end by its last report."""

import pytest

from study.stops import STOPPED, ended_status, stopped_at

SEGMENTATION = {"epochs_pretrain": 15, "epochs_finetune": 20}


@pytest.mark.parametrize(("last", "config", "expected"), [
    ({"phase": "pretrain", "pretrain/epoch": 9}, SEGMENTATION, "pretrain:9"),
    ({"phase": "pretrain", "pretrain/epoch": 15}, SEGMENTATION, "pretrain:15"),  # pre-training is never the end
    ({"phase": "finetune", "finetune/epoch": 12}, SEGMENTATION, "finetune:12"),
    ({"phase": "finetune", "finetune/epoch": 20}, SEGMENTATION, ""),
    ({"phase": "train", "train/epoch": 3}, {"epochs": 12}, "train:3"),
    ({"phase": "train", "train/epoch": 12}, {"epochs": 12}, ""),
    ({}, SEGMENTATION, ""),  # nothing reported yet
    (None, SEGMENTATION, ""),
])
def test_stopped_at_names_the_phase_and_epoch_of_an_early_end(last, config, expected):
    assert stopped_at(last, config) == expected


def test_only_a_terminated_trial_that_stopped_early_is_stopped():
    early, done = {"phase": "finetune", "finetune/epoch": 5}, {"phase": "finetune", "finetune/epoch": 20}
    assert ended_status("TERMINATED", early, SEGMENTATION) == STOPPED
    assert ended_status("TERMINATED", done, SEGMENTATION) == "TERMINATED"
    assert ended_status("ERROR", early, SEGMENTATION) == "ERROR"  # an error stays an error
    assert ended_status("RUNNING", early, SEGMENTATION) == "RUNNING"
