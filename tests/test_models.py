"""Models: the g/h split, output sizes, parameter counts, transfer, head reset and the AlexNet weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import alexnet

from trainables.models import (
    FCN_ALEXNET_OFFSET,
    FCN_ALEXNET_STRIDE,
    SplitModel,
    build_model,
    cifar_cnn,
    fcn_alexnet,
    moons_mlp,
    reset_head,
    small_fcn,
    transfer_features,
)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size", [(64, 64), (33, 31), (17, 40)])
def test_small_fcn_logits_match_input_size(size):
    model = small_fcn(6, width=8).eval()
    assert model(torch.zeros(2, 3, *size)).shape == (2, 6, *size)
    assert isinstance(model.head, nn.Conv2d) and model.head.kernel_size == (1, 1)


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "alexnet.pth"
    torch.save(alexnet().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def fcn(alexnet_file):
    return fcn_alexnet(3, backbone_weights=alexnet_file).eval()


@pytest.mark.parametrize("size", [(27, 27), (35, 29), (64, 64)])
def test_fcn_alexnet_logits_match_input_size(fcn, size):
    with torch.no_grad():
        assert fcn(torch.zeros(1, 3, *size)).shape == (1, 3, *size)


def test_fcn_alexnet_rejects_too_small_inputs(fcn):
    with pytest.raises(ValueError, match=r"input height and width must be >= 27, got \(26, 40\)"):
        fcn(torch.zeros(1, 3, 26, 40))


def test_fcn_alexnet_loads_the_torchvision_weights(fcn, alexnet_file):
    state = torch.load(alexnet_file, weights_only=True)
    convs = fcn.features.alexnet
    for index in (0, 3, 6, 8, 10):
        assert torch.equal(convs[index].weight, state[f"features.{index}.weight"])
        assert torch.equal(convs[index].bias, state[f"features.{index}.bias"])
    assert convs[0].padding == (100, 100)
    assert torch.equal(fcn.features.fc6.weight.flatten(1), state["classifier.1.weight"])
    assert torch.equal(fcn.features.fc7.weight.flatten(1), state["classifier.4.weight"])
    assert torch.equal(fcn.features.fc7.bias, state["classifier.4.bias"])
    assert isinstance(fcn.head, nn.Conv2d) and fcn.head.out_channels == 3


def test_fcn_alexnet_weight_file_errors(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=f"backbone_weights file not found: {missing}"):
        fcn_alexnet(3, backbone_weights=missing)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match=f"backbone_weights {wrong} is not a torchvision AlexNet state dict"):
        fcn_alexnet(3, backbone_weights=wrong)


def test_resampling_maps_input_pixels_to_head_positions():
    # Identity g and h: the "head output" is the input itself, so the resampled logits show where each
    # input pixel x samples the map: at (x - offset) / stride, linearly interpolated, border-clamped.
    model = SplitModel(nn.Identity(), nn.Identity(), dense=True, stride=FCN_ALEXNET_STRIDE, offset=FCN_ALEXNET_OFFSET)
    ramp = torch.arange(100, dtype=torch.float32).expand(1, 1, 3, 100)  # value = column index
    out = model(ramp)
    expected = ((torch.arange(100.0) - FCN_ALEXNET_OFFSET) / FCN_ALEXNET_STRIDE).clamp(0, 99)
    torch.testing.assert_close(out[0, 0, 0], expected)


def test_cifar_cnn_matches_thesis_table_4():
    model = cifar_cnn()
    assert _count(model) == 1_341_739
    assert model(torch.zeros(4, 3, 32, 32)).shape == (4, 11)
    assert isinstance(model.head, nn.Linear) and model.head.in_features == 512
    assert _count(model.features) == 1_341_739 - (512 * 11 + 11)


def test_moons_mlp():
    model = moons_mlp()
    assert _count(model) == (2 * 6 + 6) + (6 * 6 + 6) + (6 * 2 + 2)
    assert model(torch.zeros(5, 2)).shape == (5, 2)


def test_generator_fixes_the_initial_weights():
    same = [small_fcn(4, width=4, generator=_seeded(1)).state_dict() for _ in range(2)]
    other = small_fcn(4, width=4, generator=_seeded(2)).state_dict()
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])
    assert not torch.equal(same[0]["features.enc1.0.weight"], other["features.enc1.0.weight"])


def test_transfer_copies_g_and_leaves_h():
    src = small_fcn(16, width=4, generator=_seeded(1))
    dst = small_fcn(6, width=4, generator=_seeded(2))
    head_before = {k: v.clone() for k, v in dst.head.state_dict().items()}
    with torch.no_grad():
        src.features.enc1[1].running_mean.fill_(0.5)  # buffers travel with g too
    transfer_features(src, dst)
    for key, value in src.features.state_dict().items():
        assert torch.equal(dst.features.state_dict()[key], value)
    for key, value in dst.head.state_dict().items():
        assert torch.equal(value, head_before[key])


def test_transfer_refuses_mismatched_extractors():
    with pytest.raises(ValueError, match=r"feature extractors differ in shape at 'enc1.0.weight'"):
        transfer_features(small_fcn(4, width=4), small_fcn(4, width=8))
    with pytest.raises(ValueError, match="feature extractors differ in parameters"):
        transfer_features(small_fcn(4, width=4), cifar_cnn())


def test_transfer_from_a_state_dict_equals_the_transfer_from_the_model():
    src = small_fcn(16, width=4, generator=_seeded(1))
    from_model, from_state = (small_fcn(6, width=4, generator=_seeded(2)) for _ in range(2))
    transfer_features(src, from_model)
    transfer_features({k: v.clone() for k, v in src.features.state_dict().items()}, from_state)
    assert all(torch.equal(v, from_state.state_dict()[k]) for k, v in from_model.state_dict().items())


def test_a_refused_transfer_copies_nothing():
    dst = small_fcn(4, width=4, generator=_seeded(2))
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    state = small_fcn(4, width=4, generator=_seeded(1)).features.state_dict()
    state["enc1.0.weight"] = torch.zeros(4, 3, 5, 5)
    with pytest.raises(ValueError, match=r"differ in shape at 'enc1.0.weight': source \(4, 3, 5, 5\)"):
        transfer_features(state, dst)
    del state["enc1.0.weight"]
    with pytest.raises(ValueError, match=r"differ in parameters: \['enc1.0.weight'\] present in only one"):
        transfer_features(state, dst)
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())


def test_transfer_checks_that_only_h_was_left_unloaded():
    # moco's main_lincls.py check: after the copy, the keys of dst not loaded are exactly h's.
    src = small_fcn(4, width=4, generator=_seeded(1))
    dst = small_fcn(4, width=4, generator=_seeded(2))
    dst.register_buffer("calibration", torch.ones(1))  # state outside g and h: a transfer would miss it
    with pytest.raises(ValueError, match=r"left keys other than h's unloaded: missing \['calibration', "
                                         r"'head.bias', 'head.weight'\], unexpected \[\]"):
        transfer_features(src, dst)


def test_reset_head_is_xavier_from_the_generator_and_keeps_g():
    model = small_fcn(5, width=8, generator=_seeded(0))
    features = {k: v.clone() for k, v in model.features.state_dict().items()}
    reset_head(model, _seeded(9))
    first = model.head.weight.clone()
    reset_head(model, _seeded(9))
    assert torch.equal(model.head.weight, first)
    assert torch.equal(model.head.bias, torch.zeros(5))
    bound = (6.0 / (8 + 5)) ** 0.5  # Xavier uniform for a 1x1 conv 8 -> 5
    assert first.abs().max() <= bound and first.abs().max() > 0.5 * bound
    assert all(torch.equal(model.features.state_dict()[k], v) for k, v in features.items())


def test_build_model_dispatch():
    assert build_model("moons_mlp", 3).head.out_features == 3
    assert build_model("small_fcn", 4, width=4).head.out_channels == 4
    names = r"\('fcn_alexnet', 'small_fcn', 'cifar_cnn', 'moons_mlp'\)"
    with pytest.raises(ValueError, match=rf"model name must be one of {names}, got 'vgg'"):
        build_model("vgg", 3)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got 1"):
        build_model("small_fcn", 1)


@pytest.mark.parametrize("size", [(32, 32), (33, 31)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_small_fcn_gradients_are_those_of_plain_bilinear_upsampling(monkeypatch, size, layout):
    # _upsample only hands upsample_bilinear2d's backward a channels-last contiguous gradient (its fast
    # kernel); the gradients must be those of F.interpolate as torch.cat leaves them, bit for bit.
    from trainables import models

    def grads() -> dict[str, torch.Tensor]:
        model = small_fcn(5, width=8, generator=_seeded(0)).to(memory_format=layout)
        x = torch.randn(2, 3, *size, generator=_seeded(1)).contiguous(memory_format=layout)
        model(x).square().mean().backward()
        return {name: p.grad for name, p in model.named_parameters()}

    fast = grads()
    monkeypatch.setattr(models, "_upsample", lambda x, size: torch.nn.functional.interpolate(
        x, size=size, mode="bilinear", align_corners=False))
    plain = grads()
    assert fast.keys() == plain.keys()
    for name in fast:
        assert torch.equal(fast[name], plain[name]), name


def test_upsample_hands_its_backward_a_channels_last_gradient_for_channels_last_inputs():
    from trainables.models import _upsample

    for layout, expected in ((torch.channels_last, True), (torch.contiguous_format, False)):
        x = torch.randn(2, 4, 3, 5).contiguous(memory_format=layout).requires_grad_(True)
        out = _upsample(x, torch.Size((6, 10)))
        seen = []  # the layout of the gradient upsample_bilinear2d's backward receives
        out.grad_fn.register_prehook(lambda grads: seen.append(grads[0].is_contiguous(memory_format=torch.channels_last)))
        # a channel slice of a channels-last gradient, as torch.cat's backward passes it on
        wide = torch.cat([out, torch.zeros_like(out)], dim=1)
        wide.backward(torch.randn(wide.shape).contiguous(memory_format=torch.channels_last))
        assert seen == [expected], layout


def test_resample_is_the_interpolation_einsum_for_every_size_and_dtype_it_meets():
    # The matrices are kept per (size, head size, dtype, device): a second size or dtype on the same
    # model must get its own, and the matmul form must give the einsum's values bit for bit.
    from trainables.models import _interpolation_matrix

    model = small_fcn(3, width=8)
    for size, dtype in (((32, 32), torch.float32), ((33, 31), torch.float32), ((32, 32), torch.float64)):
        logits = torch.randn(2, 3, (size[0] + 1) // 2, (size[1] + 1) // 2, generator=_seeded(2), dtype=dtype)
        rows = _interpolation_matrix(size[0], logits.shape[-2], model.stride, model.offset).to(logits)
        cols = _interpolation_matrix(size[1], logits.shape[-1], model.stride, model.offset).to(logits)
        expected = torch.einsum("nchw,yh,xw->ncyx", logits, rows, cols)
        for _ in range(2):  # built, then reused
            out = model.resample(logits, size)
            assert out.dtype == dtype and out.shape == (2, 3, *size)
            assert torch.equal(out, expected), (size, dtype)
