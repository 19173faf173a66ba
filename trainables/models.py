"""The networks of the thesis, each split into a feature extractor g (``model.features``) and a classifier
head h (``model.head``) as in thesis 3.1, so that transferring a pre-trained extractor is copying g.

Segmentation models return logits ``(N, C, H, W)`` at the input's ``H, W``: h's coarse output is
bilinearly resampled onto the input pixels. Classifiers return ``(N, C)``.

Weights never come from the global RNG's state: every builder initialises its parameters from the
``torch.Generator`` it is given (one seeded 0 when none is), so a seed fixes the initial model.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MODEL_NAMES = ("fcn_alexnet", "small_fcn", "cifar_cnn", "moons_mlp")
# How g's fresh weights are drawn. "he": He-normal (ReLU nets, PyTorch practice). "xavier": Caffe's
# "xavier" filler that FCN-AlexNet's solver uses for the layers the thesis calls Xavier-initialised
# (5.1), U(-sqrt(3 / fan_in), +sqrt(3 / fan_in)); in PyTorch that is kaiming_uniform_ with a = 1
# (gain sqrt(2 / (1 + a^2)) = 1). h is Xavier-initialised either way (reset_head).
INIT_SCHEMES = ("he", "xavier")
FCN_ALEXNET_STRIDE = 32
# Input pixel x (index, pixel centres at integers) is seen at score-map position (x - 13) / 32: composing
# (k - 1) / 2 - pad and the strides of conv1 (k11 s4 p100), pool1/2/5 (k3 s2), conv2 (k5 p2), conv3-5
# (k3 p1) and fc6 (k6 p0) puts score pixel j's centre at input pixel 32 j + 13. FCN-32s's deconvolution
# (k64 s32) plus its crop (offset 18) implements the same map; bilinear resampling with it is exact for
# any input size, odd ones included.
FCN_ALEXNET_OFFSET = 13
# The smallest side whose pool5 map still fits fc6's 6x6 kernel, thanks to conv1's 100 px padding.
FCN_ALEXNET_MIN_SIZE = 27


def _interpolation_matrix(size_out: int, size_in: int, stride: int, offset: int) -> torch.Tensor:
    """``(size_out, size_in)`` linear interpolation weights sampling input position ``(x - offset) /
    stride`` for each output pixel x, clamped to the border."""
    position = ((torch.arange(size_out, dtype=torch.float64) - offset) / stride).clamp(0, size_in - 1)
    low = position.floor().long().clamp(max=max(size_in - 2, 0))
    frac = position - low
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    weights[torch.arange(size_out), low] = 1.0 - frac
    weights[torch.arange(size_out), (low + 1).clamp(max=size_in - 1)] += frac
    return weights


class SplitModel(nn.Module):
    """``h(g(x))``, with ``features`` = g and ``head`` = h.

    ``dense=True`` (segmentation): the head's ``(N, C, h, w)`` map is resampled onto the input grid,
    where input pixel x sits at head position ``(x - offset) / stride``. ``min_size`` is the smallest
    input side the network accepts.
    """

    def __init__(
        self, features: nn.Module, head: nn.Module, *, dense: bool, stride: int = 1, offset: int = 0, min_size: int = 1
    ) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.dense = dense
        self.stride = stride
        self.offset = offset
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: ``(N, C, H, W)`` for an ``(N, 3, H, W)`` input when dense, else ``(N, C)``."""
        if self.dense and min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"input height and width must be >= {self.min_size}, got {tuple(x.shape[-2:])}")
        logits = self.head(self.features(x))
        return self.resample(logits, tuple(x.shape[-2:])) if self.dense else logits

    def resample(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The head's ``(N, C, h, w)`` logits on the ``size = (H, W)`` input grid: ``(N, C, H, W)``, with
        the ``(H, h)`` and ``(W, w)`` interpolation matrices."""
        rows, cols = self._resampling_matrices(tuple(size), tuple(logits.shape[-2:]), logits.dtype, logits.device)
        return torch.einsum("nchw,yh,xw->ncyx", logits, rows, cols)

    def _resampling_matrices(self, size: tuple[int, int], head_size: tuple[int, int], dtype: torch.dtype,
                             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The interpolation matrices for ``head_size -> size``, built once per shape, dtype and device.

        Why kept: rebuilding them took ~20 small tensor ops per call, and the transfer probe resamples
        120 times per probe (its cost is bounded against a pre-training epoch, issue 14). The einsum
        stays: ``rows @ logits @ cols.T`` has a backward half as long, but it changed the default
        study's digits (2026-12-08), and a kept matrix changes none."""
        key = (size, head_size, dtype, device)
        cache = self.__dict__.setdefault("_resampling_cache", {})
        if key not in cache:
            cache[key] = tuple(_interpolation_matrix(out, inner, self.stride, self.offset).to(dtype=dtype, device=device)
                               for out, inner in zip(size, head_size))
        return cache[key]


def _layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def reset_head(model: SplitModel, generator: torch.Generator | None = None) -> None:
    """Re-initialise h in place: Xavier-uniform weights drawn from ``generator`` (one seeded 0 if None,
    never the global RNG), zero biases (thesis 5.1: non-transferred layers are Xavier-initialised)."""
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in _layers(model.head):
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()


def _init_weights(model: SplitModel, generator: torch.Generator | None, init_scheme: str = "he") -> SplitModel:
    """Fresh weights: g's convolutions and linear layers by ``init_scheme`` (see ``INIT_SCHEMES``),
    zero biases, unit scale for normalisation layers, Xavier for h; all draws from ``generator``
    (seeded 0 if None)."""
    if init_scheme not in INIT_SCHEMES:
        raise ValueError(f"init_scheme must be one of {INIT_SCHEMES}, got {init_scheme!r}")
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    with torch.no_grad():
        for layer in _layers(model.features):
            if init_scheme == "xavier":  # Caffe's xavier filler: variance 1 / fan_in
                nn.init.kaiming_uniform_(layer.weight, a=1.0, nonlinearity="leaky_relu", generator=generator)
            else:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()
        for norm in model.features.modules():
            if isinstance(norm, nn.BatchNorm2d):
                norm.reset_parameters()
    reset_head(model, generator)
    return model


def transfer_features(src: SplitModel | Mapping[str, torch.Tensor], dst: SplitModel) -> None:
    """Copy g into ``dst.features`` (buffers included); h is untouched. ``src`` is a model or g's state
    dict (``model.features.state_dict()``, as a pre-training checkpoint or cache entry holds it).

    Raises ValueError, before copying anything, naming the first parameter whose name or shape differs.
    After the copy it checks what was copied (as moco's ``main_lincls.py`` does): every key of ``dst``
    was loaded except exactly h's, and nothing of ``src`` was left over.
    """
    source = src.features.state_dict() if isinstance(src, SplitModel) else dict(src)
    target = dst.features.state_dict()
    if source.keys() != target.keys():
        only = sorted(set(target) ^ set(source))
        raise ValueError(f"feature extractors differ in parameters: {only[:5]} present in only one of them")
    for name, tensor in source.items():
        if tensor.shape != target[name].shape:
            raise ValueError(
                f"feature extractors differ in shape at {name!r}: source {tuple(tensor.shape)}, "
                f"destination {tuple(target[name].shape)}"
            )
    loaded = dst.load_state_dict({f"features.{name}": tensor for name, tensor in source.items()}, strict=False)
    head = {f"head.{name}" for name in dst.head.state_dict()}
    if set(loaded.missing_keys) != head or loaded.unexpected_keys:
        raise ValueError(f"transfer of g left keys other than h's unloaded: missing {sorted(loaded.missing_keys)}, "
                         f"unexpected {sorted(loaded.unexpected_keys)}, h is {sorted(head)}")


# ------------------------------------------------------------------------------------------ FCN-AlexNet


def _read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict saved at ``path``; a FileNotFoundError naming it when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone_weights file not found: {path} (nothing is downloaded)")
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_alexnet_weights(features: nn.Sequential, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load torchvision AlexNet ImageNet weights (read from ``path``) into g: conv1-5 as they are,
    classifier.1 (fc6) and classifier.4 (fc7) reshaped into 6x6 and 1x1 convolutions."""
    try:
        conv = {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
        features.alexnet.load_state_dict(conv)
        features.fc6.weight.copy_(state["classifier.1.weight"].reshape(features.fc6.weight.shape))
        features.fc6.bias.copy_(state["classifier.1.bias"])
        features.fc7.weight.copy_(state["classifier.4.weight"].reshape(features.fc7.weight.shape))
        features.fc7.bias.copy_(state["classifier.4.bias"])
    except (AttributeError, KeyError, RuntimeError) as error:
        raise ValueError(
            f"backbone_weights {path} is not a torchvision AlexNet state dict (keys of "
            f"torchvision.models.alexnet().state_dict()): {error}"
        ) from error


def fcn_alexnet(
    num_classes: int,
    backbone_weights: str | os.PathLike | None = None,
    generator: torch.Generator | None = None,
    init_scheme: str = "he",
) -> SplitModel:
    """FCN-32s on AlexNet (thesis 5.1, Long et al.): g = AlexNet conv1-5 + fc6 (6x6 conv, 4096) + fc7
    (1x1 conv, 4096) with ReLU and dropout 0.5; h = a 1x1 score convolution; logits resampled to the input.

    conv1 pads by 100 px as in FCN so small inputs (>= 27 px) still leave fc6 a 6x6 window; the
    resampling undoes that offset exactly (see ``FCN_ALEXNET_OFFSET``) instead of cropping.
    ``backbone_weights``: optional local file of torchvision AlexNet ImageNet weights (``torch.save`` of
    ``torchvision.models.alexnet().state_dict()``) loaded into g; a missing file is a FileNotFoundError.
    """
    _check_classes(num_classes)
    # Read the weights first: a wrong path fails before the 57M parameters are initialised.
    state = None if backbone_weights is None else _read_weights(backbone_weights)
    # torchvision's AlexNet layer indices (0, 3, 6, 8, 10), so its state dict loads as is; conv1 pads
    # by 100 instead of 2.
    convs = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=100),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    features = nn.Sequential(
        OrderedDict(
            alexnet=convs,
            fc6=nn.Conv2d(256, 4096, kernel_size=6),
            relu6=nn.ReLU(inplace=True),
            drop6=nn.Dropout(0.5),
            fc7=nn.Conv2d(4096, 4096, kernel_size=1),
            relu7=nn.ReLU(inplace=True),
            drop7=nn.Dropout(0.5),
        )
    )
    model = SplitModel(
        features,
        nn.Conv2d(4096, num_classes, kernel_size=1),
        dense=True,
        stride=FCN_ALEXNET_STRIDE,
        offset=FCN_ALEXNET_OFFSET,
        min_size=FCN_ALEXNET_MIN_SIZE,
    )
    _init_weights(model, generator, init_scheme)
    if state is not None:
        with torch.no_grad():
            _load_alexnet_weights(features, state, Path(backbone_weights))
    return model


# ------------------------------------------------------------------------------------------- small FCN


def _conv_bn_relu(channels_in: int, channels_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    ]


class _EncoderDecoder(nn.Module):
    """g of ``small_fcn``: a U-Net-style encoder-decoder, ``(N, 3, H, W) -> (N, width, ceil(H/2), ceil(W/2))``.

    A stride-2 stem drops the full-resolution layers, which would cost 4x as much per channel on CPU;
    the encoder has levels at 1/2, 1/4 and 1/8 of the input (``width``, ``2 width``, ``4 width``
    channels), the decoder climbs back to 1/2 through skip connections, upsampling to each skip's exact
    size so odd input sizes work.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(*_conv_bn_relu(3, width, stride=2), *_conv_bn_relu(width, width))
        self.enc2 = nn.Sequential(*_conv_bn_relu(width, 2 * width), *_conv_bn_relu(2 * width, 2 * width))
        self.enc3 = nn.Sequential(*_conv_bn_relu(2 * width, 4 * width), *_conv_bn_relu(4 * width, 4 * width))
        self.dec2 = nn.Sequential(*_conv_bn_relu(6 * width, 2 * width))
        self.dec1 = nn.Sequential(*_conv_bn_relu(3 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip1 = self.enc1(x)
        skip2 = self.enc2(F.max_pool2d(skip1, 2, ceil_mode=True))
        deep = self.enc3(F.max_pool2d(skip2, 2, ceil_mode=True))
        up = _upsample(deep, skip2.shape[-2:])
        up = self.dec2(torch.cat([up, skip2], dim=1))
        up = _upsample(up, skip1.shape[-2:])
        return self.dec1(torch.cat([up, skip1], dim=1))


def _upsample(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Bilinear resampling of ``(N, C, h, w)`` features to ``size = (H, W)`` (align_corners=False).

    A channels-last ``x`` gets its gradient back channels-last contiguous: what reaches this op's
    backward comes from torch.cat's backward, a channel slice of a channels-last gradient, which is
    contiguous in neither layout, and upsample_bilinear2d's backward then runs its generic kernel instead
    of the channels-last one: 3.3-3.9 ms against 0.4-0.9 ms per call at batch 32 on the CPU, ~8% of a
    training step (benchmarks/README.md, 2026-12-08). Values are unchanged (a copy).
    """
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if out.requires_grad and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        out.register_hook(_channels_last_contiguous)
    return out


def _channels_last_contiguous(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


def small_fcn(num_classes: int, width: int = 32, generator: torch.Generator | None = None,
              init_scheme: str = "he") -> SplitModel:
    """A small fully convolutional encoder-decoder for CPU runs on 64x64 inputs (about 6 ms per
    64x64 image and training step with ``width=32`` on 2 CPU cores).

    g = encoder + decoder (see ``_EncoderDecoder``), h = the final 1x1 classifier at half resolution;
    the stem (3x3, stride 2, pad 1) puts h's pixel j at input pixel 2 j, so logits are resampled with
    stride 2 and offset 0 onto the input grid.
    """
    _check_classes(num_classes)
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 1024:
        raise ValueError(f"width must be an integer in [1, 1024], got {width!r}")
    head = nn.Conv2d(width, num_classes, kernel_size=1)
    model = SplitModel(_EncoderDecoder(width), head, dense=True, stride=2, offset=0)
    return _init_weights(model, generator, init_scheme)


# ----------------------------------------------------------------------------------------- classifiers


# Scale of cifar_cnn's head weights relative to Xavier. He-initialised g does not keep its activations
# at unit scale: each 2x2 max pool keeps the largest of 4 values (mean and rms grow ~1.5x per block) and
# training-mode dropout rescales the survivors by 1/(1-p), so g's 512 outputs have an rms of ~3.3 on
# normalised images and a Xavier head turned them into logits of std ~6: a step-0 loss of 5.6-10 where a
# uniform prediction costs ln 11 = 2.40, and the first Adam steps spent shrinking the logits. At 0.05
# the initial logits have std ~0.3, so the step-0 loss is ln C + ~0.05 (tests/test_models.py) while g
# still gets a gradient through h from the first step (a zero head would block it for one step).
CIFAR_HEAD_SCALE = 0.05


def cifar_cnn(num_classes: int = 11, generator: torch.Generator | None = None,
              head_scale: float = CIFAR_HEAD_SCALE) -> SplitModel:
    """The 8-layer CNN of thesis Table 4 for 32x32 inputs (1,341,739 parameters with 11 classes).

    g = three blocks of two 3x3 convolutions (32, 64, 128 channels, LeakyReLU(0.2)), 2x2 max pool and
    dropout 0.2, then flatten, a 512-d fully connected layer, ReLU and dropout 0.5; h = the final fully
    connected layer (softmax lives in the loss). g is He-initialised, h's Xavier weights are multiplied
    by ``head_scale`` (see ``CIFAR_HEAD_SCALE``: the initial prediction is close to uniform).
    """
    if isinstance(head_scale, bool) or not isinstance(head_scale, (int, float)) or not 0 <= head_scale <= 1:
        raise ValueError(f"head_scale must be a number in [0, 1], got {head_scale!r}")
    _check_classes(num_classes)
    layers: list[nn.Module] = []
    channels_in = 3
    for channels in (32, 64, 128):
        layers += [
            nn.Conv2d(channels_in, channels, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.MaxPool2d(2),
            nn.Dropout(0.2),
        ]
        channels_in = channels
    layers += [nn.Flatten(), nn.Linear(128 * 4 * 4, 512), nn.ReLU(), nn.Dropout(0.5)]
    model = _init_weights(SplitModel(nn.Sequential(*layers), nn.Linear(512, num_classes), dense=False), generator)
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
    return model


def moons_mlp(num_classes: int = 2, generator: torch.Generator | None = None) -> SplitModel:
    """The 2-layer perceptron of thesis Figure 4: 2 -> 6 -> 6 (ReLU) is g, the final linear layer is h."""
    _check_classes(num_classes)
    features = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU())
    return _init_weights(SplitModel(features, nn.Linear(6, num_classes), dense=False), generator)


def _check_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")


_BUILDERS = {"fcn_alexnet": fcn_alexnet, "small_fcn": small_fcn, "cifar_cnn": cifar_cnn, "moons_mlp": moons_mlp}


def build_model(name: str, num_classes: int, **kwargs) -> SplitModel:
    """The model ``name`` (one of ``MODEL_NAMES``) for ``num_classes`` classes; ``kwargs`` go to its
    builder (``width``, ``backbone_weights``, ``generator``; ``init_scheme`` for the segmentation
    models)."""
    if name not in _BUILDERS:
        raise ValueError(f"model name must be one of {MODEL_NAMES}, got {name!r}")
    return _BUILDERS[name](num_classes, **kwargs)
