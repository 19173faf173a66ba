"""The search space: every axis it draws acts on the trial, and validate_search refuses one that does not.

The noise check runs on real synthetic data here (the smoke-size training split that a trial loads), not
on the tiny probe sample validate_search uses, so the two agree independently.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest

from search_spaces import PRESETS, validate_search
from search_spaces.base import noise_probe_source
from search_spaces.search import LABEL_TRANSFORMS, NOISE_RANGE
from trainables.config import PretrainFinetuneConfig
from trainables.data.sources import load_source, load_task_data, noisy_pretrain_labels
from trainables.loss_table import LOSS_NAMES, LOSSES

SEARCH = PRESETS["search"]
DRAWS = 60


def _draws(constants: dict, count: int, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    """``count`` draws of the search space from Optuna's random sampler."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(count):
        trial = study.ask()
        SEARCH.optuna_space(trial, constants)
        study.tell(trial, 0.0)
    return study.trials


@pytest.fixture(scope="module")
def constants(tiny_cfg) -> dict:
    """The search's smoke constants with the session's data cache (so the synthetic split is drawn once)."""
    return {**SEARCH.trial_configs("synthetic", smoke=True)[0], "data_cache": tiny_cfg().data_cache}


def _moved(value: float) -> float:
    """Another noise rate in the search's range, 0.45 away."""
    return value + 0.45 if value + 0.45 <= NOISE_RANGE[1] else value - 0.45


def test_every_noise_parameter_drawn_changes_the_noisy_labels_of_the_real_training_split(constants):
    source, _ = load_source(PretrainFinetuneConfig.from_dict(constants), "train")
    checked = 0
    for trial in _draws(constants, DRAWS):
        values = {**constants, **trial.params}
        labels = noisy_pretrain_labels(PretrainFinetuneConfig.from_dict(values), source)
        for name in (n for n in trial.params if n.startswith("noise_")):
            moved = PretrainFinetuneConfig.from_dict({**values, name: _moved(values[name])})
            assert not np.array_equal(noisy_pretrain_labels(moved, source), labels), (name, trial.params)
            checked += 1
    assert checked >= DRAWS  # noise_unsegment in every draw, noise_misclassify in about half


def test_noisy_pretrain_labels_are_the_pretraining_training_labels_a_trial_loads(tiny_cfg):
    cfg = tiny_cfg(noise_unsegment=0.4, noise_misclassify=0.5, seed=2, fold=3)
    source, _ = load_source(cfg, "train")
    assert np.array_equal(noisy_pretrain_labels(cfg, source), load_task_data(cfg).pretrain_train.labels)
    binary = tiny_cfg(noise_unsegment=0.4, label_transform="binarize", seed=2)
    assert np.array_equal(noisy_pretrain_labels(binary, source), load_task_data(binary).pretrain_train.labels)


def test_misclassification_is_drawn_exactly_where_labels_keep_their_classes(constants):
    trials = _draws(constants, DRAWS)
    for trial in trials:
        assert ("noise_misclassify" in trial.params) == (trial.params["label_transform"] == "none"), trial.params
        parameter = LOSSES[trial.params["loss"]]  # a loss's own parameter only with that loss
        loss_parameters = {n for n in trial.params if n in ("q", "beta", "gamma", "prior")}
        assert loss_parameters == ({parameter.name} if parameter else set()), trial.params
    assert {t.params["label_transform"] for t in trials} == set(LABEL_TRANSFORMS)
    assert {t.params["loss"] for t in trials} == set(LOSS_NAMES)


def test_binarize_erases_misclassification_on_the_probe_sample(constants):
    """Why the space draws noise_misclassify only with label_transform='none'."""
    probe = noise_probe_source()
    maps = {(transform, rate): noisy_pretrain_labels(PretrainFinetuneConfig.from_dict(
        {**constants, "label_transform": transform, "noise_misclassify": rate}), probe)
        for transform in LABEL_TRANSFORMS for rate in (0.0, 0.9)}
    assert np.array_equal(maps["binarize", 0.0], maps["binarize", 0.9])
    assert not np.array_equal(maps["none", 0.0], maps["none", 0.9])


@pytest.mark.parametrize("smoke", [True, False])
def test_the_search_preset_validates_and_searches_every_axis(smoke):
    searched = validate_search(SEARCH, SEARCH.trial_configs("synthetic", smoke=smoke)[0])
    assert set(searched) == {"noise_unsegment", "label_transform", "noise_misclassify", "loss", "q", "beta",
                             "gamma", "prior", "warmup_epochs", "lr_pretrain"}


def _inert_space(trial, constants) -> None:
    """The space the search had before: misclassification drawn although the labels are binarized."""
    trial.suggest_float("noise_unsegment", 0.0, 0.9)
    trial.suggest_float("noise_misclassify", 0.0, 0.9)
    trial.suggest_categorical("loss", ("ce", "sigmoidal_neg"))


def test_a_space_with_an_inert_noise_axis_fails_naming_it_and_the_fix():
    preset = dataclasses.replace(SEARCH, base={"label_transform": "binarize"}, optuna_space=_inert_space)
    with pytest.raises(ValueError, match=r"search preset search: noise_misclassify cannot change the noisy "
                                         r"pre-training labels where noise_unsegment=.*loss='.*label_transform="
                                         r"'binarize'.*Suggest noise_misclassify only where it acts"):
        validate_search(preset, preset.trial_configs("synthetic", smoke=True)[0])
    # the same space on the 15 classes is fine: misclassification acts there
    unbinarized = dataclasses.replace(preset, base={})
    assert "noise_misclassify" in validate_search(unbinarized, unbinarized.trial_configs("synthetic", smoke=True)[0])


def test_an_inert_branch_of_a_define_by_run_space_fails_too():
    """Only some draws are inert: misclassification also drawn with binarize, on a categorical branch."""

    def space(trial, constants) -> None:
        trial.suggest_categorical("label_transform", LABEL_TRANSFORMS)
        trial.suggest_float("noise_misclassify", 0.0, 0.9)

    preset = dataclasses.replace(SEARCH, optuna_space=space)
    with pytest.raises(ValueError, match=r"noise_misclassify cannot change .* label_transform='binarize'"):
        validate_search(preset, preset.trial_configs("synthetic", smoke=True)[0])


def test_the_probe_sample_holds_several_objects_of_every_pretraining_class_of_every_fold():
    probe = noise_probe_source()
    objects = [(image, int(probe.labels[image][probe.instances[image] == instance][0]))
               for image in range(len(probe)) for instance in np.unique(probe.instances[image]) if instance]
    classes = [cls for _, cls in objects]
    assert sorted(set(classes)) == list(range(1, 21)) and min(np.bincount(classes)[1:]) == 2


def test_a_noise_parameter_with_one_value_is_refused_and_an_integer_noise_is_checked_too():
    def fixed(trial, constants) -> None:
        trial.suggest_float("noise_unsegment", 0.5, 0.5)

    preset = dataclasses.replace(SEARCH, optuna_space=fixed)
    with pytest.raises(ValueError, match=r"holds one value only \(0.5\): nothing to search"):
        validate_search(preset, preset.trial_configs("synthetic", smoke=True)[0])

    def boundary(trial, constants) -> None:  # dilation/erosion radius, an integer noise
        trial.suggest_int("noise_boundary", 0, 3)

    preset = dataclasses.replace(SEARCH, optuna_space=boundary)
    assert validate_search(preset, preset.trial_configs("synthetic", smoke=True)[0]) == ("noise_boundary",)
