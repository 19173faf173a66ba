"""Frozen, validated trial configs: the flat dicts Ray Tune hands a trainable, checked once, up front.

Ray Tune passes every trial a flat ``dict``; the trainables turn it into one of the dataclasses here
before any work starts, and the study driver builds the same dataclasses for every trial of a preset
before Ray starts, so a typo or an out-of-range value costs nothing. Every field declares its type and
range in ``field(metadata=...)``; :func:`_check_fields` enforces them generically and each config adds
the checks that span several fields (a loss parameter without its loss, more groups than classes).

Where a trial's values come from, one layer each (later layers override earlier ones):

1. the data source's numbers: ``trainables.data.synthetic`` (``RECOMMENDED_*``, ``STUDY_SIZES``);
2. the field defaults here, taken from (1): a config built with no arguments is what a synthetic preset
   runs, and a size left at 0 on synthetic data is filled in at construction, so a built config holds
   concrete values only (:func:`_fill_synthetic_sizes`);
3. per data kind and smoke size: ``search_spaces.base`` (``SEGMENTATION_DEFAULTS``, ``SEGMENTATION_SMOKE``,
   ``PU_SMOKE``);
4. the preset's shared ``base`` and its conditions: ``search_spaces/<preset>.py``;
5. where things live (data and pre-training caches): ``study.spec``.

``python study/run.py --preset P --print-configs`` prints the result for every trial. Which loss takes
which parameter, and its range, is ``trainables.loss_table``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from trainables.data.synthetic import (
    CLUTTER,
    RECOMMENDED_EPOCHS,
    RECOMMENDED_OPTIM,
    STUDY_SIZES,
    SyntheticConfig,
)
from trainables.loss_table import LOSS_NAMES, LOSSES, losses_using
from trainables.models import FCN_ALEXNET_MIN_SIZE, INIT_SCHEMES

# Fine-tuning validation images per class: what the search's objective and early stopping score.
# 20 x 5 classes = 100 images, twice the fine-tuning training set of the synthetic default, so the
# objective's sampling noise stays below the differences a search compares.
FINETUNE_VAL_PER_CLASS = 20
LABEL_TRANSFORMS = ("none", "binarize", "superclass", "random_groups", "target")
INITS = ("pretrain", "random", "imagenet")
SEGMENTATION_MODELS = ("small_fcn", "fcn_alexnet")
OPTIMIZERS = ("sgd", "adam")
DATA_KINDS = ("synthetic", "voc", "cifar", "moons")


def spec(kind: type | tuple[type, ...], *, lo: float | None = None, hi: float | None = None,
         choices: tuple[Any, ...] | None = None, doc: str = "", pretrain: bool = False,
         default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its allowed type, range or choices and whether it shapes pre-training.

    ``pretrain=True`` marks values that change the pre-trained feature extractor; they, and only they,
    enter :meth:`PretrainFinetuneConfig.pretrain_key`.
    """
    meta = {"kind": kind, "lo": lo, "hi": hi, "choices": choices, "doc": doc, "pretrain": pretrain}
    return field(default=default, metadata=meta)


def _describe(meta: Mapping[str, Any]) -> str:
    if meta["choices"] is not None:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    kinds = meta["kind"] if isinstance(meta["kind"], tuple) else (meta["kind"],)
    name = " or ".join(k.__name__ for k in kinds if k is not type(None))
    article = "an" if name[0] in "aeiou" else "a"
    lo, hi = meta["lo"], meta["hi"]
    if lo is not None and hi is not None:
        return f"{article} {name} in [{lo}, {hi}]"
    if lo is not None:
        return f"{article} {name} >= {lo}"
    return f"{article} {name}"


def _check_fields(config: Any) -> None:
    """Check every field of a dataclass instance against its ``spec`` metadata."""
    cls = type(config).__name__
    for f in dataclasses.fields(config):
        meta = f.metadata
        if not meta:
            continue
        value = getattr(config, f.name)
        kinds = meta["kind"] if isinstance(meta["kind"], tuple) else (meta["kind"],)
        if value is None and type(None) in kinds:
            continue
        # bool is an int subclass: reject True where a count is expected, accept ints where floats are.
        ok_type = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok_type and float in kinds and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(config, f.name, float(value))
            value = float(value)
            ok_type = True
        if not ok_type:
            raise ValueError(
                f"{cls}: {f.name} must be {_describe(meta)}, got {value!r} ({type(value).__name__})"
            )
        if meta["choices"] is not None and value not in meta["choices"]:
            raise ValueError(f"{cls}: {f.name} must be {_describe(meta)}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and math.isnan(value):
                raise ValueError(f"{cls}: {f.name} must be {_describe(meta)}, got nan")
            if (meta["lo"] is not None and value < meta["lo"]) or (
                meta["hi"] is not None and value > meta["hi"]
            ):
                raise ValueError(f"{cls}: {f.name} must be {_describe(meta)}, got {value!r}")


def from_flat_dict(cls: type, values: Mapping[str, Any]) -> Any:
    """Build config ``cls`` from a flat mapping; an unknown key names the closest valid key."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise ValueError(f"{cls.__name__}: unknown config key {key!r}{hint}")
    return cls(**dict(values))


def parse_data(data: str) -> tuple[str, str]:
    """Split a data spec ``"synthetic"``, ``"moons"``, ``"voc:PATH"`` or ``"cifar:PATH"`` into (kind, root)."""
    if not isinstance(data, str):
        raise ValueError(f"data must be a string like 'synthetic' or 'voc:/path', got {data!r}")
    kind, _, root = data.partition(":")
    if kind not in DATA_KINDS:
        raise ValueError(
            f"data must be 'synthetic', 'moons', 'voc:PATH' or 'cifar:PATH', got {data!r}"
        )
    if kind in ("voc", "cifar") and not root:
        raise ValueError(f"data {data!r} needs a local root: write '{kind}:/path/to/{kind}'")
    if kind in ("synthetic", "moons") and root:
        raise ValueError(f"data {data!r}: '{kind}' takes no path, write just '{kind}'")
    return kind, root


def _check_loss(cls: str, loss: str, params: Mapping[str, float | None], derived: tuple[str, ...] = ()) -> None:
    """A loss parameter is set exactly when its loss uses it, and lies in its range (trainables.loss_table);
    one named in ``derived`` may be left None (the trainable derives it from the data)."""
    wanted = LOSSES[loss]
    for name, value in params.items():
        if (wanted is None or name != wanted.name) and value is not None:
            user = losses_using(name)[0]
            raise ValueError(
                f"{cls}: {name}={value!r} is only used by loss {user!r}, but loss is {loss!r}; "
                f"remove {name} or set loss={user!r}"
            )
    if wanted is not None:
        value = params[wanted.name]
        if value is None and wanted.name in derived:
            return
        if value is None:
            raise ValueError(f"{cls}: loss {loss!r} needs {wanted.name} ({wanted.inequality})")
        if not wanted.contains(value):
            raise ValueError(f"{cls}: {wanted.name} must satisfy {wanted.inequality}, got {value!r}")


def _fill_synthetic_sizes(config: Any, sizes: Mapping[str, int]) -> None:
    """Replace each size field of ``config`` left at 0 by the synthetic benchmark's value in ``sizes``.

    0 in a size field means "the data source's default"; it is resolved here, once, when the config is
    built, so every config (and every trial config a preset produces) holds the concrete value and no
    trainable ever interprets a 0.
    """
    if parse_data(config.data)[0] != "synthetic":
        return
    for name, value in sizes.items():
        if getattr(config, name) == 0:
            object.__setattr__(config, name, value)


@dataclass(frozen=True)
class PretrainFinetuneConfig:
    """One transferability measurement (thesis Figure 1, section 5.1).

    Pre-train ``model`` on the fold's 15 pre-training classes with noisy, transformed labels (unless
    ``init`` is ``random`` or ``imagenet``), transfer its feature extractor g, fine-tune on the fold's 5
    held-out classes with clean labels, and score the fine-tuning test mean IU.
    """

    # What is measured. condition is a free label ("HalfUnsegmented") carried to MLflow and parquet.
    condition: str = spec(str, default="", doc="condition label for tables")
    data: str = spec(str, default="synthetic", doc="synthetic | voc:PATH", pretrain=True)
    fold: int = spec(int, lo=1, hi=4, default=1, doc="Table 1 fold", pretrain=True)
    seed: int = spec(int, lo=0, default=0, doc="noise, init and batch order", pretrain=True)
    init: str = spec(str, choices=INITS, default="pretrain", doc="initial feature extractor")
    imagenet_weights: str = spec(str, default="", doc="local AlexNet ImageNet state dict")
    model: str = spec(str, choices=SEGMENTATION_MODELS, default="small_fcn", pretrain=True)
    width: int = spec(int, lo=4, hi=512, default=32, doc="small_fcn channel width", pretrain=True)

    # Pre-training labels: noise (thesis 3.2) then a label transform (thesis 5.1).
    noise_unsegment: float = spec(float, lo=0.0, hi=1.0, default=0.0, pretrain=True,
                                  doc="P(object left unsegmented)")
    noise_misclassify: float = spec(float, lo=0.0, hi=1.0, default=0.0, pretrain=True,
                                    doc="random-label rate (1 = AllRandomLabels)")
    noise_false_segment: float = spec(float, lo=0.0, hi=1.0, default=0.0, pretrain=True,
                                      doc="P(non-target object labelled target); needs label_transform='target'")
    noise_boundary: int = spec(int, lo=0, hi=16, default=0, pretrain=True,
                               doc="max dilation/erosion radius in pixels")
    label_transform: str = spec(str, choices=LABEL_TRANSFORMS, default="none", pretrain=True)
    num_groups: int = spec(int, lo=0, hi=15, default=0, pretrain=True,
                           doc="random_groups: number of random categories")

    # Pre-training loss (thesis 4) and its warmup with class-weighted cross-entropy.
    loss: str = spec(str, choices=LOSS_NAMES, default="ce", pretrain=True)
    q: float | None = spec((float, type(None)), default=None, pretrain=True)
    beta: float | None = spec((float, type(None)), default=None, pretrain=True)
    gamma: float | None = spec((float, type(None)), default=None, pretrain=True)
    prior: float | None = spec((float, type(None)), default=None, pretrain=True)
    warmup_epochs: int = spec(int, lo=0, default=0, pretrain=True,
                              doc="epochs of class-weighted CE before `loss`")
    class_weighting: bool = spec(bool, default=False, pretrain=True,
                                 doc="weight classes by observed label frequency")

    # Optimisation: the defaults are what the synthetic presets run (trainables.data.synthetic's
    # RECOMMENDED_*, measured with benchmarks/transfer_sanity.py); VOC presets override them.
    epochs_pretrain: int = spec(int, lo=1, default=RECOMMENDED_EPOCHS["pretrain"], pretrain=True)
    epochs_finetune: int = spec(int, lo=1, default=RECOMMENDED_EPOCHS["finetune"])
    lr_pretrain: float = spec(float, lo=1e-7, hi=10.0, default=RECOMMENDED_OPTIM["lr"], pretrain=True)
    lr_finetune: float = spec(float, lo=1e-7, hi=10.0, default=RECOMMENDED_OPTIM["lr"])
    optimizer: str = spec(str, choices=OPTIMIZERS, default=RECOMMENDED_OPTIM["optimizer"], pretrain=True)
    momentum: float = spec(float, lo=0.0, hi=1.0, default=0.9, pretrain=True, doc="sgd only")
    weight_decay: float = spec(float, lo=0.0, hi=1.0, default=RECOMMENDED_OPTIM["weight_decay"], pretrain=True)
    batch_size: int = spec(int, lo=1, hi=4096, default=RECOMMENDED_OPTIM["batch_size"], pretrain=True)
    transfer_probe: bool = spec(bool, default=False, pretrain=True,
                                doc="score a linear probe of g on the fine-tuning validation split at the "
                                    "scheduler's pre-training rungs (trainables.probe)")
    eval_interval: int = spec(int, lo=1, default=1,
                              doc="fine-tuning epochs between validation and test evaluations")
    objective_last_k: int = spec(int, lo=1, default=5,
                                 doc="objective = mean of the last k fine-tuning validation mean IUs")

    # Data scale. On synthetic data a 0 is replaced at construction by the benchmark's value
    # (trainables.data.synthetic.STUDY_SIZES), so a built config never holds a 0 here; VOC reads
    # neither image_size (its loader fixes 128 px) nor images_per_class (it uses every image).
    image_size: int = spec(int, lo=0, hi=1024, default=0, pretrain=True,
                           doc="synthetic image side in px (0: the benchmark's 64)")
    images_per_class: int = spec(int, lo=0, default=0, pretrain=True,
                                 doc="synthetic training images per class (0: the benchmark's 60)")
    clutter: str = spec(str, choices=CLUTTER, default="flat", pretrain=True,
                        doc="synthetic background clutter: flat (generator v2) | textured (fragments "
                            "with the objects' textures and colours, so no low-level cue marks objects)")
    finetune_train_per_class: int = spec(int, lo=0, default=0,
                                         doc="cap on fine-tuning training images per class (synthetic 0: "
                                             "the recommended 10; VOC 0: no cap)")
    finetune_val_per_class: int = spec(int, lo=1, default=FINETUNE_VAL_PER_CLASS,
                                       doc="fine-tuning validation images per class, drawn per seed from "
                                           "the fine-tuning training pool before the training cap")

    # Plumbing: where things live. Never part of the science, never part of the pre-training key.
    pretrain_cache: str = spec(str, default="", doc="folder of cached pre-trained extractors")
    data_cache: str = spec(str, default="", doc="folder of cached decoded data sets")
    num_threads: int = spec(int, lo=0, default=0, doc="torch threads; 0 = the trial's CPUs")

    # How g's fresh weights are drawn (trainables.models.INIT_SCHEMES): "xavier" is the thesis's (5.1).
    init_scheme: str = spec(str, choices=INIT_SCHEMES, default="he", pretrain=True,
                            doc="fresh g weights: he (He-normal) or xavier (Caffe's filler)")

    def __post_init__(self) -> None:
        _check_fields(self)
        cls = type(self).__name__
        kind, _ = parse_data(self.data)
        if kind not in ("synthetic", "voc"):
            raise ValueError(f"{cls}: data must be 'synthetic' or 'voc:PATH' for segmentation, got {self.data!r}")
        _fill_synthetic_sizes(self, STUDY_SIZES["segmentation"])
        if kind == "synthetic":
            self._check_synthetic_sizes()
        elif self.clutter != "flat":
            raise ValueError(f"{cls}: clutter={self.clutter!r} draws the synthetic benchmark's background; "
                             f"data={self.data!r} is read from disk: leave clutter at 'flat'")
        _check_loss(cls, self.loss, {"q": self.q, "beta": self.beta, "gamma": self.gamma, "prior": self.prior})
        if self.label_transform == "random_groups" and not 1 <= self.num_groups <= 15:
            raise ValueError(
                f"{cls}: label_transform='random_groups' needs num_groups in 1..15 (the pre-training "
                f"classes), got {self.num_groups}"
            )
        if self.label_transform != "random_groups" and self.num_groups:
            raise ValueError(f"{cls}: num_groups={self.num_groups} needs label_transform='random_groups'")
        if self.noise_false_segment and self.label_transform != "target":
            raise ValueError(
                f"{cls}: noise_false_segment={self.noise_false_segment} needs label_transform='target' "
                "(the false-segmentation task labels one target class)"
            )
        if self.noise_misclassify and self.label_transform == "target":
            raise ValueError(f"{cls}: noise_misclassify does not apply to label_transform='target'")
        if self.init == "imagenet":
            if self.model != "fcn_alexnet":
                raise ValueError(f"{cls}: init='imagenet' needs model='fcn_alexnet', got {self.model!r}")
            if not self.imagenet_weights:
                raise ValueError(
                    f"{cls}: init='imagenet' needs imagenet_weights, a local file of torchvision "
                    "AlexNet ImageNet weights (nothing is downloaded)"
                )
        elif self.imagenet_weights:
            raise ValueError(f"{cls}: imagenet_weights is only used with init='imagenet'")
        if self.transfer_probe and not self.pretrains:
            raise ValueError(f"{cls}: transfer_probe=True needs init='pretrain' (there is no pre-training to "
                             f"probe with init={self.init!r})")
        if self.warmup_epochs > self.epochs_pretrain:
            raise ValueError(
                f"{cls}: warmup_epochs={self.warmup_epochs} exceeds epochs_pretrain={self.epochs_pretrain}"
            )
        if self.model == "fcn_alexnet" and 0 < self.image_size < FCN_ALEXNET_MIN_SIZE:
            raise ValueError(
                f"{cls}: model='fcn_alexnet' needs image_size >= {FCN_ALEXNET_MIN_SIZE} (its 6x6 fc6 sees "
                f"a 27x27 input at least), got {self.image_size}; use model='small_fcn' for smaller images"
            )

    def _check_synthetic_sizes(self) -> None:
        """The synthetic benchmark's own limits, checked here so a bad size fails before any trial."""
        cls = type(self).__name__
        try:
            SyntheticConfig(image_size=self.image_size, images_per_class=self.images_per_class)
        except ValueError as error:
            raise ValueError(f"{cls}: {error} (synthetic data; 0 means the benchmark's default)") from None
        # Fine-tuning validation and training images are both drawn per class from the training split.
        wanted = self.finetune_val_per_class + self.finetune_train_per_class
        if wanted > self.images_per_class:
            defaults = STUDY_SIZES["segmentation"]
            raise ValueError(
                f"{cls}: finetune_val_per_class={self.finetune_val_per_class} + finetune_train_per_class="
                f"{self.finetune_train_per_class} exceeds images_per_class={self.images_per_class}, the "
                f"training images both are drawn from (left at 0, finetune_train_per_class and "
                f"images_per_class are {defaults['finetune_train_per_class']} and {defaults['images_per_class']}); "
                "lower one of the first two or raise images_per_class"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PretrainFinetuneConfig":
        return from_flat_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def pretrains(self) -> bool:
        """Whether this trial runs (or reuses) a pre-training phase."""
        return self.init == "pretrain"

    def pretrain_key(self) -> str:
        """Hash of every value that shapes the pre-trained feature extractor (hex, 16 chars).

        Two trials with equal keys would pre-train identical weights, so the second reuses the first's.
        """
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("pretrain")}
        blob = json.dumps(values, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def config_fields(cls: type) -> dict[str, str]:
    """Field name -> human description (type/range and doc), for ``--help`` style listings."""
    return {f.name: f"{_describe(f.metadata)}" + (f"; {f.metadata['doc']}" if f.metadata["doc"] else "")
            for f in dataclasses.fields(cls)}


PU_SETUPS = ("pu", "pn")
PU_LR_SCHEDULES = ("constant", "cosine")
PU_EPOCH_LENGTHS = ("split", "full")


@dataclass(frozen=True)
class PUClassificationConfig:
    """One positive-unlabelled classification run (thesis 5.2: CIFAR P/N Table 2, Figure 5; moons Figure 4).

    ``setup="pu"``: a ``labelled_fraction`` of the positives keeps its label, the rest joins the
    negatives as label 0 (the U set). ``setup="pn"``: that fraction of the positives and of the
    negatives keeps its true label, the rest is dropped (the thesis's "P+N" baselines).

    The optimisation defaults (Adam, lr 1e-4, 20 epochs, batch 128) are the CIFAR recipe: Adam at lr 1e-4
    is the thesis's; it does not state the batch size or the training length. The table2 and fig5 presets
    run them on CIFAR; fig4 (moons) and the synthetic view set their own.
    """

    condition: str = spec(str, default="")
    data: str = spec(str, default="synthetic", doc="synthetic | cifar:PATH | moons")
    seed: int = spec(int, lo=0, default=0, doc="U-set draw, init and batch order")
    setup: str = spec(str, choices=PU_SETUPS, default="pu")
    labelled_fraction: float = spec(float, lo=0.0, hi=1.0, default=0.5)
    loss: str = spec(str, choices=LOSS_NAMES, default="ce")
    q: float | None = spec((float, type(None)), default=None)
    beta: float | None = spec((float, type(None)), default=None)
    gamma: float | None = spec((float, type(None)), default=None)
    prior: float | None = spec((float, type(None)), default=None,
                               doc="nnpu: class prior; None = the positive share of the unlabelled set")
    warmup_epochs: int = spec(int, lo=0, default=0, doc="epochs of class-weighted CE before `loss`")
    class_weighting: bool = spec(bool, default=False, doc="weight classes by observed label frequency")
    epochs: int = spec(int, lo=1, default=20)
    lr: float = spec(float, lo=1e-7, hi=10.0, default=1e-4, doc="Adam learning rate (thesis: 1e-4)")
    lr_schedule: str = spec(str, choices=PU_LR_SCHEDULES, default="constant",
                            doc="constant (thesis) | cosine: lr decays to 0 over `epochs`, epoch by epoch")
    weight_decay: float = spec(float, lo=0.0, hi=1.0, default=0.0)
    batch_size: int = spec(int, lo=1, hi=4096, default=128)
    epoch_length: str = spec(str, choices=PU_EPOCH_LENGTHS, default="split",
                             doc="split: an epoch is one pass over the training split | full: as many samples "
                                 "as the split at labelled_fraction 1, so a P+N fraction gets P+N's steps")
    objective_last_k: int = spec(int, lo=1, default=5,
                                 doc="objective = mean of the last k validation mean F1s")
    images_per_class: int = spec(int, lo=0, default=0,
                                 doc="synthetic: training images per class (0: the benchmark's 60)")
    max_per_source: int = spec(int, lo=0, default=0, doc="cifar: cap images per CIFAR-10/100; 0 = no cap")
    points_per_class: int = spec(int, lo=0, default=400, doc="moons: points per class (thesis: 400)")
    data_cache: str = spec(str, default="")
    num_threads: int = spec(int, lo=0, default=0)

    def __post_init__(self) -> None:
        _check_fields(self)
        cls = type(self).__name__
        kind, _ = parse_data(self.data)
        if kind not in ("synthetic", "cifar", "moons"):
            raise ValueError(
                f"{cls}: data must be 'synthetic', 'moons' or 'cifar:PATH' for PU classification, got {self.data!r}"
            )
        _fill_synthetic_sizes(self, STUDY_SIZES["classification"])
        # nnpu without a prior: the positive share of the unlabelled set (pu_classification).
        _check_loss(cls, self.loss, {"q": self.q, "beta": self.beta, "gamma": self.gamma, "prior": self.prior},
                    derived=("prior",))
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"{cls}: warmup_epochs={self.warmup_epochs} exceeds epochs={self.epochs}")
        if self.setup == "pn" and self.loss != "ce":
            raise ValueError(f"{cls}: setup='pn' has clean labels; use loss='ce', got {self.loss!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PUClassificationConfig":
        return from_flat_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
