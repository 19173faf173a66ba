"""The one table of losses and their parameters: the config, make_loss and the search read it, agree
with it at every interval end, and it imports without torch."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from search_spaces import PRESETS
from search_spaces.search import space
from trainables.config import PretrainFinetuneConfig, PUClassificationConfig
from trainables.loss_table import (
    LOSS_NAMES,
    LOSSES,
    PARAMETERS,
    losses_using,
    parameter_names,
)
from trainables.losses import LOSS_PARAMS, make_loss

ROOT = Path(__file__).resolve().parents[1]
# parameter -> (values inside its interval, values outside it), the ends included.
ENDS = {
    "q": ([1e-12, 0.5, 1.0], [0.0, -0.1, 1.0 + 1e-12]),
    "beta": ([0.0, 0.5, 1.0], [-1e-12, 1.0 + 1e-12]),
    "gamma": ([0.0, 2.0, 1e300], [-1e-12, math.inf]),
    "prior": ([1e-12, 0.5, 1.0 - 1e-12], [0.0, 1.0]),
}


def test_the_table_holds_each_loss_once_with_at_most_one_parameter():
    assert LOSS_NAMES == ("ce", "weighted_neg", "sigmoidal_neg", "bootstrap_neg", "focal", "nnpu")
    assert {name: parameter_names(name) for name in LOSS_NAMES} == {
        "ce": (), "weighted_neg": ("q",), "sigmoidal_neg": (), "bootstrap_neg": ("beta",), "focal": ("gamma",),
        "nnpu": ("prior",)}
    assert set(PARAMETERS) == set(ENDS)
    assert [losses_using(p) for p in ("q", "beta", "gamma", "prior")] == [
        ("weighted_neg",), ("bootstrap_neg",), ("focal",), ("nnpu",)]


def test_every_reader_takes_its_losses_from_the_table():
    assert LOSS_PARAMS == {name: parameter_names(name) for name in LOSS_NAMES}
    for config in (PretrainFinetuneConfig, PUClassificationConfig):
        loss_field = config.__dataclass_fields__["loss"]
        assert loss_field.metadata["choices"] == LOSS_NAMES
        assert set(PARAMETERS) <= set(config.__dataclass_fields__)  # one config field per parameter


@pytest.mark.parametrize("parameter", sorted(ENDS))
def test_config_make_loss_and_table_agree_at_every_interval_end(parameter):
    loss = losses_using(parameter)[0]
    row = PARAMETERS[parameter]
    inside, outside = ENDS[parameter]
    for value in inside:
        assert row.contains(value)
        assert getattr(make_loss(loss, **{parameter: value}), parameter) == value
        assert getattr(PretrainFinetuneConfig(loss=loss, **{parameter: value}), parameter) == value
    for value in outside:
        assert not row.contains(value)
        with pytest.raises(ValueError, match=rf"{parameter} must be a number in {re.escape(row.interval)}"):
            make_loss(loss, **{parameter: value})
        with pytest.raises(ValueError, match=rf"{parameter} must satisfy {re.escape(row.inequality)}"):
            PretrainFinetuneConfig(loss=loss, **{parameter: value})
    assert not row.contains(math.nan)
    with pytest.raises(ValueError, match=rf"{parameter} must be a number in .*, got nan"):
        make_loss(loss, **{parameter: math.nan})


def test_the_interval_texts():
    assert [PARAMETERS[p].inequality for p in ("q", "beta", "gamma", "prior")] == [
        "0 < q <= 1", "0 <= beta <= 1", "0 <= gamma < inf", "0 < prior < 1"]
    assert [PARAMETERS[p].interval for p in ("q", "beta", "gamma", "prior")] == [
        "(0.0, 1.0]", "[0.0, 1.0]", "[0.0, inf)", "(0.0, 1.0)"]
    assert not PARAMETERS["q"].contains(True)  # a bool is no number here


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_the_search_draws_exactly_the_loss_parameter_of_the_table_inside_its_range(loss):
    constants = PRESETS["search"].trial_configs("synthetic")[0]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        study.enqueue_trial({"loss": loss})
        trial = study.ask()
        space(trial, constants)
        drawn = set(trial.params) - {"noise_unsegment", "noise_misclassify", "label_transform", "loss",
                                     "warmup_epochs", "lr_pretrain"}
        assert drawn == set(parameter_names(loss))
        if LOSSES[loss] is not None:
            low, high = LOSSES[loss].searched
            assert low <= trial.params[LOSSES[loss].name] <= high
        study.tell(trial, 0.0)


def test_every_search_range_lies_inside_its_interval():
    for row in PARAMETERS.values():
        low, high = row.searched
        assert low < high and row.contains(low) and row.contains(high), row


def test_the_table_imports_without_torch():
    script = "import sys, trainables.loss_table; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]

