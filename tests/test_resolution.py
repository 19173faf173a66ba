"""Config resolution: a built config holds concrete values, the dataclass defaults are what the synthetic
presets run, every preset's trial configs are complete and resolved, and the test fixtures' tiny
config is the presets' smoke size."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import TINY

from search_spaces import PRESETS
from search_spaces.base import SEGMENTATION_SMOKE, TRAINABLE_CONFIGS, smoke_config
from search_spaces.table2 import RECIPES
from trainables.config import PretrainFinetuneConfig as PF
from trainables.config import PUClassificationConfig as PU
from trainables.data.sources import load_source
from trainables.data.synthetic import SyntheticConfig, load_synthetic_segmentation, study_split_config

SIZES = ("image_size", "images_per_class", "finetune_train_per_class")
DATA = {"synthetic": "synthetic", "voc": "voc:/data/voc", "cifar": "cifar:/data/cifar", "moons": "moons"}


def test_sizes_left_at_zero_hold_the_benchmarks_values_once_built():
    built = PF()
    assert tuple(getattr(built, key) for key in SIZES) == (64, 60, 10)
    assert PF(image_size=0, images_per_class=0, finetune_train_per_class=0) == built
    assert PF(image_size=64, images_per_class=60, finetune_train_per_class=10).pretrain_key() == built.pretrain_key()
    assert PF(images_per_class=30).finetune_train_per_class == 10 and PF(image_size=32).images_per_class == 60
    assert PF.from_dict(built.to_dict()) == built
    assert PU().images_per_class == 60 and PU(images_per_class=4).images_per_class == 4


def test_sources_that_do_not_read_a_size_keep_it():
    voc = PF(data="voc:/data/voc")
    assert tuple(getattr(voc, key) for key in SIZES) == (0, 0, 0)  # VOC: 128 px, every image, no cap
    assert PU(data="moons").images_per_class == 0 and PU(data="cifar:/c").max_per_source == 0


def test_a_resolved_config_draws_the_benchmark_a_zero_drew():
    # Before resolution, 0 sizes drew SyntheticConfig() itself; explicit ones capped val/test at train.
    assert study_split_config(64, 60) == SyntheticConfig()
    assert study_split_config(32, 3) == SyntheticConfig(image_size=32, images_per_class=3, val_per_class=3,
                                                        test_per_class=3)
    assert study_split_config(32, 20) == SyntheticConfig(image_size=32, images_per_class=20, test_per_class=20)
    assert study_split_config(32, 20, "textured") == SyntheticConfig(image_size=32, images_per_class=20,
                                                                     test_per_class=20, clutter="textured")


def test_a_trials_clutter_reaches_the_data_it_loads(tmp_path):
    # The fragments are drawn from their own stream: same labels, other background pixels.
    sizes = {"image_size": 32, "images_per_class": 4, "finetune_train_per_class": 2, "finetune_val_per_class": 1,
             "data_cache": str(tmp_path)}
    flat, _ = load_source(PF(**sizes), "val")
    textured, _ = load_source(PF(**sizes, clutter="textured"), "val")
    assert np.array_equal(flat.labels, textured.labels)
    assert not np.array_equal(flat.images, textured.images)
    direct = load_synthetic_segmentation("val", study_split_config(32, 4, "textured"), str(tmp_path))
    assert np.array_equal(textured.images, direct.images)


def test_the_dataclass_defaults_are_what_the_synthetic_presets_run():
    complete = next(c for c in PRESETS["table1"].trial_configs("synthetic") if c["condition"] == "CompleteLabels")
    assert complete == PF(condition="CompleteLabels").to_dict()
    assert (complete["lr_pretrain"], complete["epochs_pretrain"], complete["epochs_finetune"]) == (3e-3, 15, 20)
    # PU: the dataclass defaults are the thesis's CIFAR recipe; on the synthetic view the PU presets
    # apply the one measured recipe, table2.RECIPES["synthetic"], on top (benchmarks/pu_sanity.py).
    clean = PRESETS["table2"].trial_configs("synthetic")[0]
    assert clean == PU(condition="P+N/CrossEntropyU.", setup="pn", labelled_fraction=1.0,
                       **RECIPES["synthetic"]).to_dict()
    assert PRESETS["fig5"].recipes is RECIPES
    assert PRESETS["table2"].trial_configs("cifar:/c")[0]["lr"] == PU().lr == 1e-4


def _every_trial_config():
    for name, preset in PRESETS.items():
        for kind in preset.data_kinds:
            for smoke in (False, True):
                yield name, kind, preset.trial_configs(DATA[kind], smoke=smoke, imagenet_weights="/w.pt")


@pytest.mark.parametrize(("name", "kind", "configs"), list(_every_trial_config()),
                         ids=lambda value: value if isinstance(value, str) else "")
def test_every_trial_config_of_every_preset_is_complete_and_resolved(name, kind, configs):
    cls = TRAINABLE_CONFIGS[PRESETS[name].trainable]
    fields = [f.name for f in dataclasses.fields(cls)]
    for config in configs:
        assert list(config) == fields  # every field, in the dataclass's order
        assert cls.from_dict(config).to_dict() == config  # nothing left to fill in
        if kind == "synthetic":
            assert all(config[key] > 0 for key in SIZES if key in config), config


def test_the_fixtures_tiny_config_is_the_presets_smoke_size():
    assert TINY == smoke_config("pretrain_finetune")
    assert {key: TINY[key] for key in SEGMENTATION_SMOKE} == SEGMENTATION_SMOKE
    for name, preset in PRESETS.items():
        if preset.trainable == "pretrain_finetune":
            for config in preset.trial_configs("synthetic", smoke=True):
                assert {key: config[key] for key in SEGMENTATION_SMOKE} == SEGMENTATION_SMOKE, name


def test_the_default_study_runs_on_textured_clutter_and_its_voc_run_on_the_disk_images():
    # The quick preset's textured clutter is a synthetic recipe: on VOC the config would refuse it.
    synthetic = PRESETS["quick"].trial_configs("synthetic")
    voc = PRESETS["quick"].trial_configs("voc:/data/voc")
    assert {(c["clutter"], c["image_size"], c["epochs_pretrain"], c["epochs_finetune"]) for c in synthetic} == {
        ("textured", 32, 20, 24)}
    assert len(synthetic) == 18 and {c["seed"] for c in synthetic} == {0, 1, 2}
    assert {c["clutter"] for c in voc} == {"flat"}
    assert {c["clutter"] for c in PRESETS["quick"].trial_configs("synthetic", smoke=True)} == {"textured"}
    assert {c["clutter"] for c in PRESETS["table1"].trial_configs("synthetic")} == {"flat"}


def test_a_grid_lists_its_pre_training_trials_first_and_keeps_the_preset_order_otherwise():
    """Longest first (search_spaces.base.pretrain_epochs): Ray starts a grid in list order, so the cheap
    fine-tuning-only trials must come last to fill the slots beside the last pre-training trials."""
    from search_spaces.base import pretrain_epochs

    configs = PRESETS["quick"].trial_configs("synthetic")
    keys = [pretrain_epochs(c) for c in configs]
    assert keys == sorted(keys, reverse=True) and keys[0] == 20 and keys[-1] == 0
    assert [c["condition"] for c in configs[-3:]] == ["RandomWeights"] * 3
    pretraining = [(c["condition"], c["seed"]) for c in configs if c["init"] == "pretrain"]
    names = [n for n in PRESETS["quick"].conditions if PRESETS["quick"].conditions[n].get("init") != "random"]
    assert pretraining == [(n, s) for n in names for s in range(3)]  # the preset's own order among equals
    assert pretrain_epochs({"init": "random", "epochs_pretrain": 20}) == 0
