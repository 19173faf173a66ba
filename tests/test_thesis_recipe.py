"""The thesis's VOC recipe on paper: Xavier (Caffe filler) initialisation via init_scheme, the VOC
defaults (weight decay, the 240k:12k iteration ratio) and Table 1's SigmoidalLoss class weighting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from search_spaces import PRESETS
from search_spaces.base import SEGMENTATION_DEFAULTS
from trainables.config import PretrainFinetuneConfig
from trainables.models import INIT_SCHEMES, build_model

THESIS_ITERATIONS = (240_000, 12_000)  # thesis 5.1, batch size 1
FOLD_TRAIN_IMAGES = (2400, 800)  # ~4000 single-object images: a fold's 15 pre-training / 5 fine-tuning classes


def _convs(model):
    return [m for m in model.features.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("name", ["small_fcn", "fcn_alexnet"])
def test_xavier_scheme_is_caffes_filler_drawn_from_the_generator(name):
    """init_scheme='xavier': g's first layer is exactly U(-sqrt(3/fan_in), +sqrt(3/fan_in)) from the seed."""
    kwargs = {"width": 8} if name == "small_fcn" else {}
    model = build_model(name, 3, generator=torch.Generator().manual_seed(7), init_scheme="xavier", **kwargs)
    first = _convs(model)[0]
    fan_in = first.weight[0].numel()
    bound = math.sqrt(3.0 / fan_in)
    expected = torch.empty_like(first.weight).uniform_(-bound, bound, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first.weight, expected, rtol=0, atol=0)
    assert float(first.weight.detach().abs().max()) <= bound
    assert all(float(layer.bias.detach().abs().max()) == 0.0 for layer in _convs(model) if layer.bias is not None)


def test_he_scheme_is_the_default_and_differs_from_xavier():
    he = build_model("small_fcn", 3, width=8, generator=torch.Generator().manual_seed(0))
    same = build_model("small_fcn", 3, width=8, generator=torch.Generator().manual_seed(0), init_scheme="he")
    xavier = build_model("small_fcn", 3, width=8, generator=torch.Generator().manual_seed(0), init_scheme="xavier")
    torch.testing.assert_close(_convs(he)[0].weight, _convs(same)[0].weight, rtol=0, atol=0)
    # He-normal has variance 2 / fan_in, Caffe's Xavier 1 / fan_in: compare on the widest layer
    layer_he, layer_xavier = (max(_convs(m), key=lambda l: l.weight.numel()) for m in (he, xavier))
    fan_in = layer_he.weight[0].numel()
    assert float(layer_he.weight.detach().var()) * fan_in == pytest.approx(2.0, rel=0.15)
    assert float(layer_xavier.weight.detach().var()) * fan_in == pytest.approx(1.0, rel=0.15)
    with pytest.raises(ValueError, match=r"init_scheme must be one of \('he', 'xavier'\), got 'glorot'"):
        build_model("small_fcn", 3, width=8, init_scheme="glorot")


def test_init_scheme_is_a_validated_pretraining_field_at_the_end_of_the_config():
    from dataclasses import fields

    assert fields(PretrainFinetuneConfig)[-1].name == "init_scheme"
    assert PretrainFinetuneConfig().init_scheme == "he" and INIT_SCHEMES == ("he", "xavier")
    with pytest.raises(ValueError, match="init_scheme must be one of 'he', 'xavier', got 'glorot'"):
        PretrainFinetuneConfig(init_scheme="glorot")
    assert PretrainFinetuneConfig(init_scheme="xavier").pretrain_key() != PretrainFinetuneConfig().pretrain_key()


def test_voc_defaults_follow_the_thesis_solver():
    voc = SEGMENTATION_DEFAULTS["voc"]
    assert (voc["optimizer"], voc["momentum"], voc["weight_decay"], voc["init_scheme"]) == ("sgd", 0.9, 5e-4, "xavier")
    # images seen per phase: epochs x a fold's training images == the thesis's iterations at batch 1
    seen = (voc["epochs_pretrain"] * FOLD_TRAIN_IMAGES[0], voc["epochs_finetune"] * FOLD_TRAIN_IMAGES[1])
    assert seen == THESIS_ITERATIONS and seen[0] / seen[1] == 20
    assert PRESETS["table1"].defaults("voc:/data/voc", smoke=False)["weight_decay"] == 5e-4


def test_table1_sigmoidal_loss_weights_classes_like_table3():
    table1, table3 = PRESETS["table1"].conditions, PRESETS["table3"].conditions
    sigmoidal, reference = table1["SigmoidalLoss"], table3["50%Unseg./SigmoidalNeg."]
    for key in ("noise_unsegment", "label_transform", "loss", "class_weighting"):
        assert sigmoidal[key] == reference[key], key
    assert sigmoidal["class_weighting"] is True
