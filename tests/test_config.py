"""Trial configs: every field's type and range, cross-field rules, unknown keys, and the pre-training key
that decides which trials share a cached pre-trained extractor."""

import dataclasses
import math
import re

import pytest

from trainables.config import PretrainFinetuneConfig, PUClassificationConfig, parse_data

PF = PretrainFinetuneConfig
INITS = "'pretrain', 'random', 'imagenet'"
MODELS = "'small_fcn', 'fcn_alexnet'"
TRANSFORMS = "'none', 'binarize', 'superclass', 'random_groups', 'target'"
LOSSES = "'ce', 'weighted_neg', 'sigmoidal_neg', 'bootstrap_neg', 'focal', 'nnpu'"

# (key, bad value, the allowed range as the message must state it). One wrong type per field, plus a
# value below and above every bounded range and an unknown choice for every choice field.
FIELD_ERRORS = [
    ("condition", 3, "a str"),
    ("data", None, "a str"),
    ("fold", "1", r"an int in \[1, 4\]"),
    ("fold", 0, r"an int in \[1, 4\]"),
    ("fold", 5, r"an int in \[1, 4\]"),
    ("seed", 1.0, "an int >= 0"),
    ("seed", -1, "an int >= 0"),
    ("init", 1, f"one of {INITS}"),
    ("init", "scratch", f"one of {INITS}"),
    ("imagenet_weights", None, "a str"),
    ("model", "alexnet", f"one of {MODELS}"),
    ("width", 8.0, r"an int in \[4, 512\]"),
    ("width", 3, r"an int in \[4, 512\]"),
    ("width", 513, r"an int in \[4, 512\]"),
    ("noise_unsegment", "0.5", r"a float in \[0.0, 1.0\]"),
    ("noise_unsegment", -0.1, r"a float in \[0.0, 1.0\]"),
    ("noise_unsegment", 1.5, r"a float in \[0.0, 1.0\]"),
    ("noise_misclassify", -0.1, r"a float in \[0.0, 1.0\]"),
    ("noise_misclassify", 1.01, r"a float in \[0.0, 1.0\]"),
    ("noise_false_segment", -0.5, r"a float in \[0.0, 1.0\]"),
    ("noise_false_segment", 2.0, r"a float in \[0.0, 1.0\]"),
    ("noise_boundary", 1.5, r"an int in \[0, 16\]"),
    ("noise_boundary", -1, r"an int in \[0, 16\]"),
    ("noise_boundary", 17, r"an int in \[0, 16\]"),
    ("label_transform", "binary", f"one of {TRANSFORMS}"),
    ("num_groups", -1, r"an int in \[0, 15\]"),
    ("num_groups", 16, r"an int in \[0, 15\]"),
    ("loss", "mse", f"one of {LOSSES}"),
    ("q", "0.5", "a float"),
    ("beta", [0.5], "a float"),
    ("gamma", "2", "a float"),
    ("prior", "0.3", "a float"),
    ("warmup_epochs", -1, "an int >= 0"),
    ("warmup_epochs", 1.0, "an int >= 0"),
    ("class_weighting", 1, "a bool"),
    ("epochs_pretrain", 0, "an int >= 1"),
    ("epochs_finetune", 0, "an int >= 1"),
    ("epochs_finetune", 2.5, "an int >= 1"),
    ("lr_pretrain", 0.0, r"a float in \[1e-07, 10.0\]"),
    ("lr_pretrain", 11.0, r"a float in \[1e-07, 10.0\]"),
    ("lr_finetune", 1e-8, r"a float in \[1e-07, 10.0\]"),
    ("lr_finetune", "0.01", r"a float in \[1e-07, 10.0\]"),
    ("optimizer", "rmsprop", "one of 'sgd', 'adam'"),
    ("momentum", -0.1, r"a float in \[0.0, 1.0\]"),
    ("momentum", 1.1, r"a float in \[0.0, 1.0\]"),
    ("weight_decay", -1e-4, r"a float in \[0.0, 1.0\]"),
    ("weight_decay", 2.0, r"a float in \[0.0, 1.0\]"),
    ("batch_size", 0, r"an int in \[1, 4096\]"),
    ("batch_size", 4097, r"an int in \[1, 4096\]"),
    ("eval_interval", 0, "an int >= 1"),
    ("objective_last_k", 0, "an int >= 1"),
    ("image_size", -1, r"an int in \[0, 1024\]"),
    ("image_size", 1025, r"an int in \[0, 1024\]"),
    ("images_per_class", -1, "an int >= 0"),
    ("finetune_train_per_class", -2, "an int >= 0"),
    ("finetune_val_per_class", 0, "an int >= 1"),
    ("clutter", "busy", "one of 'flat', 'textured'"),
    ("transfer_probe", 1, "a bool"),
    ("pretrain_cache", 0, "a str"),
    ("data_cache", 0, "a str"),
    ("num_threads", -1, "an int >= 0"),
    ("num_threads", "2", "an int >= 0"),
    ("init_scheme", "glorot", "one of 'he', 'xavier'"),
]


@pytest.mark.parametrize(("key", "value", "allowed"), FIELD_ERRORS)
def test_bad_field_names_key_value_and_range(key, value, allowed):
    message = rf"PretrainFinetuneConfig: {key} must be {allowed}, got {re.escape(repr(value))}"
    with pytest.raises(ValueError, match=message):
        PF(**{key: value})


def test_every_field_has_a_checked_error():
    assert {key for key, _, _ in FIELD_ERRORS} == {f.name for f in dataclasses.fields(PF)}


def test_defaults_are_valid_and_round_trip():
    cfg = PF()
    assert PF.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("key", "close"), [("fodl", "fold"), ("lr_pretrian", "lr_pretrain"), ("noise_unsegmnt", "noise_unsegment")]
)
def test_unknown_key_suggests_the_closest_key(key, close):
    with pytest.raises(ValueError, match=rf"unknown config key '{key}'; did you mean '{close}'\?"):
        PF.from_dict({key: 1})


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    with pytest.raises(ValueError, match=r"unknown config key 'zzz'; valid keys: condition, data, fold"):
        PF.from_dict({"zzz": 1})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"beta": 0.5}, r"beta=0.5 is only used by loss 'bootstrap_neg', but loss is 'ce'"),
        ({"loss": "weighted_neg", "q": 0.5, "gamma": 2.0}, r"gamma=2.0 is only used by loss 'focal'"),
        ({"loss": "bootstrap_neg"}, r"loss 'bootstrap_neg' needs beta \(0 <= beta <= 1\)"),
        ({"loss": "bootstrap_neg", "beta": 1.5}, r"beta must satisfy 0 <= beta <= 1, got 1.5"),
        ({"loss": "weighted_neg", "q": 0.0}, r"q must satisfy 0 < q <= 1, got 0.0"),
        ({"loss": "weighted_neg", "q": 1.5}, r"q must satisfy 0 < q <= 1, got 1.5"),
        ({"loss": "weighted_neg", "q": -0.5}, r"q must satisfy 0 < q <= 1, got -0.5"),
        ({"loss": "focal", "gamma": -1.0}, r"gamma must satisfy 0 <= gamma < inf, got -1.0"),
        ({"loss": "focal", "gamma": float("inf")}, r"gamma must satisfy 0 <= gamma < inf, got inf"),
        ({"loss": "nnpu", "prior": 0.0}, r"prior must satisfy 0 < prior < 1, got 0.0"),
        ({"loss": "nnpu", "prior": 1.0}, r"prior must satisfy 0 < prior < 1, got 1.0"),
        ({"loss": "nnpu"}, r"loss 'nnpu' needs prior"),
        ({"num_groups": 4}, r"num_groups=4 needs label_transform='random_groups'"),
        ({"label_transform": "random_groups"}, r"label_transform='random_groups' needs num_groups in 1..15 .*got 0"),
        ({"label_transform": "random_groups", "num_groups": 16}, r"num_groups must be an int in \[0, 15\], got 16"),
        ({"noise_false_segment": 0.5}, r"noise_false_segment=0.5 needs label_transform='target'"),
        ({"noise_false_segment": 0.5, "label_transform": "binarize"}, r"needs label_transform='target'"),
        ({"label_transform": "target", "noise_misclassify": 0.5},
         r"noise_misclassify does not apply to label_transform='target'"),
        ({"init": "imagenet", "model": "fcn_alexnet"}, r"init='imagenet' needs imagenet_weights"),
        ({"init": "imagenet", "imagenet_weights": "/w.pt"},
         r"init='imagenet' needs model='fcn_alexnet', got 'small_fcn'"),
        ({"imagenet_weights": "/w.pt"}, r"imagenet_weights is only used with init='imagenet'"),
        ({"warmup_epochs": 3, "epochs_pretrain": 2}, r"warmup_epochs=3 exceeds epochs_pretrain=2"),
        ({"model": "fcn_alexnet", "image_size": 26, "data": "voc:/x"},
         r"model='fcn_alexnet' needs image_size >= 27 .*got 26; use model='small_fcn'"),
        ({"data": "cifar:/x"}, r"data must be 'synthetic' or 'voc:PATH' for segmentation, got 'cifar:/x'"),
        ({"data": "moons"}, r"for segmentation, got 'moons'"),
        ({"data": "voc:/x", "clutter": "textured"},
         r"clutter='textured' draws the synthetic benchmark's background; data='voc:/x' is read from disk"),
        ({"data": "voc"}, r"data 'voc' needs a local root: write 'voc:/path/to/voc'"),
        ({"data": "synthetic:/x"}, r"'synthetic' takes no path"),
        ({"data": "imagenet:/x"}, r"data must be 'synthetic', 'moons', 'voc:PATH' or 'cifar:PATH', got 'imagenet:/x'"),
    ],
)
def test_inconsistent_combinations_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        PF(**values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"image_size": 8}, r"image_size must be an integer in \[16, 1024\], got 8 \(synthetic data"),
        ({"images_per_class": 3}, r"finetune_val_per_class=20 \+ finetune_train_per_class=10 exceeds "
                                  r"images_per_class=3"),
        ({"images_per_class": 3, "finetune_train_per_class": 2, "finetune_val_per_class": 2},
         r"finetune_val_per_class=2 \+ finetune_train_per_class=2 exceeds images_per_class=3"),
        ({"finetune_train_per_class": 41}, r"finetune_val_per_class=20 \+ finetune_train_per_class=41 exceeds "
                                           r"images_per_class=60"),
    ],
)
def test_synthetic_sizes_the_benchmark_cannot_draw_are_refused(values, message):
    # Found by these tests: such configs used to pass and fail inside the trial, the cap one with a
    # message ("n=10 exceeds the 3 images of class 1") that named no config key.
    with pytest.raises(ValueError, match=rf"PretrainFinetuneConfig: {message}"):
        PF(**values)


def test_synthetic_size_limits_do_not_apply_to_voc():
    assert PF(data="voc:/data/voc", images_per_class=3).images_per_class == 3


@pytest.mark.parametrize(
    "values",
    [
        {"image_size": 16, "images_per_class": 30},  # 20 validation + 10 training images per class
        {"images_per_class": 4, "finetune_train_per_class": 3, "finetune_val_per_class": 1},
        {"loss": "weighted_neg", "q": 1.0},
        {"loss": "bootstrap_neg", "beta": 0.0},
        {"loss": "nnpu", "prior": 0.5},
        {"loss": "focal", "gamma": 0.0},
        {"label_transform": "random_groups", "num_groups": 15},
        {"label_transform": "target", "noise_false_segment": 0.5},
        {"init": "imagenet", "model": "fcn_alexnet", "imagenet_weights": "/w.pt"},
        {"warmup_epochs": 2, "epochs_pretrain": 2},
        {"data": "voc:/data/voc"},
        {"model": "fcn_alexnet", "image_size": 27, "data": "voc:/data/voc"},
    ],
)
def test_boundary_combinations_are_accepted(values):
    cfg = PF(**values)
    assert {k: getattr(cfg, k) for k in values} == values


@pytest.mark.parametrize("key", ["noise_unsegment", "lr_pretrain", "momentum", "q"])
def test_nan_is_refused(key):
    values = {key: math.nan, **({"loss": "weighted_neg"} if key == "q" else {})}
    with pytest.raises(ValueError, match=rf"{key} must be .*, got nan"):
        PF(**values)


def test_ints_are_accepted_for_float_fields_and_stored_as_floats():
    cfg = PF(noise_unsegment=1, lr_pretrain=1, loss="weighted_neg", q=1)
    assert (cfg.noise_unsegment, cfg.lr_pretrain, cfg.q) == (1.0, 1.0, 1.0)
    assert all(type(v) is float for v in (cfg.noise_unsegment, cfg.lr_pretrain, cfg.q))
    # An int and the equal float are one pre-training, so they must share the cache entry.
    assert cfg.pretrain_key() == PF(noise_unsegment=1.0, lr_pretrain=1.0, loss="weighted_neg", q=1.0).pretrain_key()


@pytest.mark.parametrize("key", ["fold", "seed", "epochs_pretrain", "batch_size", "noise_boundary"])
def test_bool_is_refused_for_int_fields(key):
    with pytest.raises(ValueError, match=rf"{key} must be an int.*, got True \(bool\)"):
        PF(**{key: True})


def test_bool_is_refused_for_float_fields():
    with pytest.raises(ValueError, match=r"noise_unsegment must be a float in \[0.0, 1.0\], got True \(bool\)"):
        PF(noise_unsegment=True)


def test_parse_data():
    assert parse_data("synthetic") == ("synthetic", "")
    assert parse_data("voc:/data/voc") == ("voc", "/data/voc")
    assert parse_data("cifar:C:/x") == ("cifar", "C:/x")
    with pytest.raises(ValueError, match=r"data must be a string .*got 3"):
        parse_data(3)


# --- the pre-training key -------------------------------------------------------------------------

NOT_IN_KEY = {
    "condition": "HalfUnsegmented",
    "init": "random",
    "epochs_finetune": 3,
    "lr_finetune": 0.5,
    "eval_interval": 2,
    "objective_last_k": 1,
    "finetune_train_per_class": 4,
    "finetune_val_per_class": 5,
    "pretrain_cache": "/tmp/cache",
    "data_cache": "/tmp/data",
    "num_threads": 2,
}

# field -> (base overrides that make both values valid, the other value).
IN_KEY = {
    "data": ({}, "voc:/data/voc"),
    "fold": ({}, 2),
    "seed": ({}, 1),
    "model": ({}, "fcn_alexnet"),
    "width": ({}, 16),
    "noise_unsegment": ({}, 0.5),
    "noise_misclassify": ({}, 0.5),
    "noise_false_segment": ({"label_transform": "target"}, 0.5),
    "noise_boundary": ({}, 2),
    "label_transform": ({}, "binarize"),
    "num_groups": ({"label_transform": "random_groups", "num_groups": 4}, 5),
    "loss": ({}, "sigmoidal_neg"),
    "q": ({"loss": "weighted_neg", "q": 0.5}, 0.25),
    "beta": ({"loss": "bootstrap_neg", "beta": 0.5}, 0.25),
    "gamma": ({"loss": "focal", "gamma": 2.0}, 1.0),
    "prior": ({"loss": "nnpu", "prior": 0.3}, 0.4),
    "warmup_epochs": ({}, 1),
    "class_weighting": ({}, True),
    "epochs_pretrain": ({}, 3),
    "lr_pretrain": ({}, 1e-3),
    "optimizer": ({}, "sgd"),
    "momentum": ({}, 0.5),
    "weight_decay": ({}, 0.0),
    "batch_size": ({}, 8),
    "image_size": ({}, 32),
    "images_per_class": ({}, 40),
    "clutter": ({}, "textured"),
    "init_scheme": ({}, "xavier"),
    "transfer_probe": ({}, True),  # the cached history holds the probe's reports
}


def test_key_fields_are_exactly_those_marked_pretrain():
    marked = {f.name for f in dataclasses.fields(PF) if f.metadata["pretrain"]}
    assert marked == set(IN_KEY)
    assert {f.name for f in dataclasses.fields(PF)} - marked == set(NOT_IN_KEY) | {"imagenet_weights"}


def test_key_is_a_stable_16_hex_digest():
    key = PF().pretrain_key()
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert PF().pretrain_key() == key


@pytest.mark.parametrize(("key", "value"), NOT_IN_KEY.items())
def test_non_pretraining_fields_leave_the_key_unchanged(key, value):
    # init is not in the key: only init='pretrain' consults the cache, so the value never matters there.
    assert PF(**{key: value}).pretrain_key() == PF().pretrain_key()


def test_all_non_pretraining_fields_at_once_leave_the_key_unchanged():
    assert PF(**NOT_IN_KEY).pretrain_key() == PF().pretrain_key()


@pytest.mark.parametrize(("key", "change"), IN_KEY.items())
def test_every_pretraining_field_changes_the_key(key, change):
    base, other = change
    first = PF(**base)
    second = PF(**{**base, key: other})
    assert getattr(first, key) != other
    assert first.pretrain_key() != second.pretrain_key()


# --- PU classification ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"setup": "pn", "loss": "sigmoidal_neg"},
         r"PUClassificationConfig: setup='pn' has clean labels; use loss='ce', got 'sigmoidal_neg'"),
        ({"data": "voc:/x"},
         r"PUClassificationConfig: data must be 'synthetic', 'moons' or 'cifar:PATH' for PU classification, "
         r"got 'voc:/x'"),
        ({"data": "cifar"}, r"data 'cifar' needs a local root"),
        ({"setup": "np"}, r"PUClassificationConfig: setup must be one of 'pu', 'pn', got 'np'"),
        ({"labelled_fraction": 1.5},
         r"PUClassificationConfig: labelled_fraction must be a float in \[0.0, 1.0\], got 1.5"),
        ({"loss": "nnpu", "prior": 1.0}, r"PUClassificationConfig: prior must satisfy 0 < prior < 1, got 1.0"),
        ({"warmup_epochs": 5, "epochs": 4}, r"PUClassificationConfig: warmup_epochs=5 exceeds epochs=4"),
        ({"epochs": True}, r"PUClassificationConfig: epochs must be an int >= 1, got True \(bool\)"),
    ],
)
def test_pu_config_refuses_inconsistent_values(values, message):
    with pytest.raises(ValueError, match=message):
        PUClassificationConfig(**values)


def test_pu_config_unknown_key_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown config key 'labeled_fraction'; did you mean 'labelled_fraction'\?"):
        PUClassificationConfig.from_dict({"labeled_fraction": 0.5})


def test_pu_config_accepts_the_thesis_setups():
    assert PUClassificationConfig(setup="pn").loss == "ce"
    assert PUClassificationConfig(data="cifar:/data/cifar", loss="nnpu", prior=0.5).prior == 0.5
    assert PUClassificationConfig(data="moons", loss="sigmoidal_neg").data == "moons"
