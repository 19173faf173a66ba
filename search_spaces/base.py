"""What a study preset declares, and how it turns into validated trial configs.

A preset is data: the trainable it runs, its conditions (condition name -> config overrides), the
config every trial shares, the smoke-size overrides CI runs, its folds and seeds, and optionally an
Optuna define-by-run space with a scheduler. :meth:`Preset.trial_configs` expands the grid into flat
configs, each resolved to every field's concrete value and validated, so a bad preset fails before Ray
starts and ``study/run.py --print-configs`` shows exactly what each trial receives.

A trial's values come from, in order: the config dataclass's defaults (the synthetic benchmark's
recommendations, ``trainables.config``), ``SEGMENTATION_DEFAULTS`` for the data kind, the preset's
``base``, the smoke size (``SEGMENTATION_SMOKE`` / ``PU_SMOKE``), the caller's overrides (the study's
cache folders), the condition, and the trial's identity (condition, fold, seed).

Hyperparameters follow Google's tuning playbook labels: noise rates and the loss are *scientific* (the
grid or the search's subject), q/beta/gamma/prior, warmup and learning rate are *nuisance* (tuned per
condition by the search preset), everything else is *fixed* here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from trainables.config import PretrainFinetuneConfig, PUClassificationConfig, parse_data
from trainables.data.base import NUM_SOURCE_CLASSES, SegmentationData
from trainables.data.sources import noisy_pretrain_labels

TRAINABLE_CONFIGS = {
    "pretrain_finetune": PretrainFinetuneConfig,
    "pu_classification": PUClassificationConfig,
}

# Per data kind, what segmentation presets run where it differs from PretrainFinetuneConfig's defaults.
# Synthetic: nothing (those defaults are the synthetic benchmark's recommendations, measured with
# benchmarks/transfer_sanity.py). VOC: the thesis's FCN-AlexNet recipe where PyTorch allows (5.1):
# SGD, momentum 0.9, weight decay 5e-4, Caffe's Xavier filler for fresh layers. Epochs: the thesis ran
# 240,000 pre-training and 12,000 fine-tuning iterations at batch size 1, i.e. images seen, ratio 20.
# Its ~4000 single-object images (test included) leave a fold about 2400 training images of its 15
# pre-training classes and 800 of its 5 fine-tuning classes: 240,000 / 2400 = 100 pre-training epochs
# and 12,000 / 800 = 15 fine-tuning epochs, so images seen 100 * 2400 : 15 * 800 = 20 : 1 (and, with
# one batch size in both phases, gradient steps too). Learning rate and its schedule differ (README,
# "Differences from the thesis").
SEGMENTATION_DEFAULTS = {
    "synthetic": {},
    "voc": {"model": "fcn_alexnet", "epochs_pretrain": 100, "epochs_finetune": 15, "optimizer": "sgd",
            "lr_pretrain": 1e-3, "lr_finetune": 1e-3, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 20,
            "init_scheme": "xavier"},
}
# Smoke size: tiny data, one epoch per phase. Runs every preset end to end in seconds; the tests'
# tiny configs are this size too (tests/conftest.py takes them from smoke_config).
SEGMENTATION_SMOKE = {"image_size": 32, "images_per_class": 3, "finetune_train_per_class": 2,
                      "finetune_val_per_class": 1,
                      "epochs_pretrain": 1, "epochs_finetune": 1, "batch_size": 16, "width": 8}
PU_SMOKE = {"epochs": 1, "images_per_class": 4, "max_per_source": 64, "points_per_class": 40,
            "batch_size": 64}
# Trials the searcher draws in a --smoke run of a search preset (unless --num-samples says otherwise).
SMOKE_SAMPLES = 4

# define-by-run: space(optuna_trial, constants) suggests parameters, may return extra constants
SpaceFunction = Callable[[Any, Mapping[str, Any]], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Preset:
    """A study preset (one thesis experiment, or the search the product exists for)."""

    name: str
    description: str
    trainable: str  # key of TRAINABLE_CONFIGS
    conditions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    base: Mapping[str, Any] = field(default_factory=dict)
    folds: tuple[int, ...] = (1, 2, 3, 4)
    seeds: int = 3
    data_kinds: tuple[str, ...] = ("synthetic", "voc")
    smoke_conditions: tuple[str, ...] = ()  # the minimal grid of --smoke; () = every condition
    optuna_space: SpaceFunction | None = None  # define-by-run; makes this a search preset
    num_samples: int = 1  # trials drawn by the searcher (search presets)
    metric: str = "objective"
    mode: str = "max"
    time_attr: str = "finetune/epoch"  # the schedulers' clock (never a pre-training report)
    # What the scheduler compares at a rung (and Optuna records as intermediate values); "" = ``metric``.
    scheduler_metric: str = ""
    cpus_per_trial: float = 1.0
    recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # data kind -> fixed values

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE_CONFIGS:
            raise ValueError(f"preset {self.name}: unknown trainable {self.trainable!r}")
        object.__setattr__(self, "conditions", MappingProxyType(dict(self.conditions)))
        object.__setattr__(self, "base", MappingProxyType(dict(self.base)))
        unknown = set(self.smoke_conditions) - set(self.conditions)
        if unknown:
            raise ValueError(f"preset {self.name}: smoke_conditions {sorted(unknown)} are not conditions")

    @property
    def is_search(self) -> bool:
        return self.optuna_space is not None

    @property
    def uses_folds(self) -> bool:
        return self.trainable == "pretrain_finetune"

    def defaults(self, data: str, smoke: bool) -> dict[str, Any]:
        """Config shared by every trial for this data source (before condition overrides)."""
        kind, _ = parse_data(data)
        if kind not in self.data_kinds:
            raise ValueError(
                f"preset {self.name} runs on {' or '.join(self.data_kinds)} data, got --data {data!r}"
            )
        values: dict[str, Any] = {}
        if self.trainable == "pretrain_finetune":
            values.update(SEGMENTATION_DEFAULTS[kind])
        values.update(self.recipes.get(kind, {}))
        values.update(self.base)
        values["data"] = data
        if smoke:
            values.update(SEGMENTATION_SMOKE if self.trainable == "pretrain_finetune" else PU_SMOKE)
        return values

    def condition_names(self, smoke: bool, imagenet_weights: str = "") -> list[str]:
        names = list(self.smoke_conditions or self.conditions) if smoke else list(self.conditions)
        if not imagenet_weights:
            names = [n for n in names if self.conditions[n].get("init") != "imagenet"]
        return names

    def trial_configs(self, data: str, *, folds: tuple[int, ...] | None = None, seeds: int | None = None,
                      smoke: bool = False, imagenet_weights: str = "",
                      overrides: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every trial of a grid preset as a resolved flat config (condition x fold x seed).

        Each config holds every field of the trainable's config with a concrete value: what the trial
        receives, validated now rather than in a trial. For a search preset these are the constant
        configs (one per fold x seed), onto which the searcher's draws go; see :func:`validate_search`.
        """
        folds = tuple(folds or (self.folds[:1] if smoke else self.folds)) if self.uses_folds else (None,)
        seeds = seeds or (1 if smoke else self.seeds)
        base = {**self.defaults(data, smoke), **(overrides or {})}
        names = self.condition_names(smoke, imagenet_weights) if self.conditions else [""]
        configs = [self._resolve(base, name, fold, seed, smoke, imagenet_weights)
                   for name in names for fold in folds for seed in range(seeds)]
        return sorted(configs, key=pretrain_epochs, reverse=True)  # stable: the preset's order otherwise

    def _resolve(self, base: Mapping[str, Any], name: str, fold: int | None, seed: int, smoke: bool,
                 imagenet_weights: str) -> dict[str, Any]:
        """One trial's complete config: ``base``, then its condition, then its identity."""
        condition = dict(self.conditions.get(name, {}))
        if condition.get("init") == "imagenet":
            condition["imagenet_weights"] = imagenet_weights
        config = {**base, **condition, "condition": name or self.name, "seed": seed}
        if smoke:  # one epoch per phase: the main loss, not its warmup, is what smoke runs
            config["warmup_epochs"] = 0
        if fold is not None:
            config["fold"] = fold
        return TRAINABLE_CONFIGS[self.trainable].from_dict(config).to_dict()

    def search_samples(self, smoke: bool, requested: int | None = None) -> int:
        """Trials a search preset's searcher draws: ``--num-samples``, else the smoke or full count."""
        return requested or (SMOKE_SAMPLES if smoke else self.num_samples)


def pretrain_epochs(config: Mapping[str, Any]) -> int:
    """The pre-training epochs a trial config trains (0 without pre-training): the order key of a grid.

    Ray starts a grid's trials in list order, so the trials that pre-train (by far the costliest) go
    first and the cheap ones (random or ImageNet weights, fine-tuning only) last: longest first, the
    LPT rule. Then the last wave is not one lone pre-training trial with the other slots idle; the cheap
    trials fill them (the default study: 15 pre-training trials, 3 without, on 2 slots).
    """
    return int(config.get("epochs_pretrain", 0)) if config.get("init") == "pretrain" else 0


def smoke_config(trainable: str, data: str = "synthetic") -> dict[str, Any]:
    """The resolved config of a smoke trial of a preset that adds nothing of its own: the tiny size
    every ``--smoke`` study runs at, as the tests' fixtures use it."""
    preset = Preset(name="smoke", description="smoke size", trainable=trainable, data_kinds=(parse_data(data)[0],))
    return preset.trial_configs(data, smoke=True)[0]


def validate_search(preset: Preset, constants: Mapping[str, Any], draws: int = 20, seed: int = 0) -> tuple[str, ...]:
    """Draw samples from the preset's define-by-run space with Optuna's random sampler and validate each
    full config, so a space that can produce an invalid trial fails before Ray starts.

    ``draws`` random samples first, then one more for every choice of a categorical parameter they did
    not draw (every loss, say), so each branch of the space is validated whatever the random draws hit.
    In every draw, each sampled parameter named ``noise_*`` must act: moved to the far end of its range,
    it must change the noisy pre-training labels of a small fixed sample (:func:`noise_probe_source`),
    else the space is a ValueError naming the parameter, the draw's other values and the fix.
    Returns the config keys the draws set (the searched parameters), in the order first drawn.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if preset.mode == "max" else "minimize"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction=direction)
    searched: dict[str, None] = {}
    probe = noise_probe_source()
    trials = [_validated_draw(preset, constants, study, searched, probe) for _ in range(draws)]
    for name, choice in _undrawn_choices(trials):
        study.enqueue_trial({name: choice})
        _validated_draw(preset, constants, study, searched, probe)
    return tuple(searched)


def _validated_draw(preset: Preset, constants: Mapping[str, Any], study: Any, searched: dict[str, None],
                    probe: SegmentationData) -> Any:
    """Ask ``study`` for one draw of the preset's space, validate the trial config and that its noise
    parameters act, note its keys."""
    trial = study.ask()
    extra = preset.optuna_space(trial, constants) or {}
    values = {**constants, **trial.params, **extra}
    TRAINABLE_CONFIGS[preset.trainable].from_dict(values)
    _check_noises_act(preset, values, trial.distributions, probe)
    searched.update(dict.fromkeys([*trial.params, *extra]))
    study.tell(trial, 0.0)
    return study.trials[-1]


def noise_probe_source(images: int = 10, size: int = 16) -> SegmentationData:
    """A tiny fixed segmentation sample in the source label space: ``images`` ``(size, size)`` maps with
    four square objects each (one per quadrant), classes cycling through 1..20, so every fold's 15
    pre-training classes appear with several objects. Black images: only the labels matter to it."""
    labels = np.zeros((images, size, size), dtype=np.uint8)
    instances = np.zeros((images, size, size), dtype=np.uint16)
    half, margin = size // 2, size // 8
    for image in range(images):
        for quadrant in range(4):
            rows = slice((quadrant // 2) * half + margin, (quadrant // 2 + 1) * half - margin)
            columns = slice((quadrant % 2) * half + margin, (quadrant % 2 + 1) * half - margin)
            labels[image, rows, columns] = (4 * image + quadrant) % NUM_SOURCE_CLASSES + 1
            instances[image, rows, columns] = quadrant + 1
    names = ("background",) + tuple(f"class{c}" for c in range(1, NUM_SOURCE_CLASSES + 1))
    return SegmentationData(np.zeros((images, 3, size, size), dtype=np.uint8), labels, instances, names)


def _check_noises_act(preset: Preset, values: Mapping[str, Any], distributions: Mapping[str, Any],
                      probe: SegmentationData) -> None:
    """Raise a ValueError when a sampled noise parameter (``noise_*`` in ``distributions``) of the draw
    ``values`` cannot change the noisy pre-training labels of ``probe``: its value and the far end of its
    range give identical maps."""
    noises = [name for name in distributions if name.startswith("noise_")]
    if not noises:
        return
    config_cls = TRAINABLE_CONFIGS[preset.trainable]
    if config_cls is not PretrainFinetuneConfig:
        raise ValueError(f"search preset {preset.name}: {noises[0]} is a noise parameter, but trainable "
                         f"{preset.trainable} has no noisy labels; do not suggest it")
    observed = noisy_pretrain_labels(config_cls.from_dict(values), probe)
    for name in noises:
        other = _far_value(distributions[name], values[name])
        if not np.array_equal(observed, noisy_pretrain_labels(config_cls.from_dict({**values, name: other}), probe)):
            continue
        others = ", ".join(f"{key}={values[key]!r}" for key in _context_keys(values, name, distributions))
        raise ValueError(
            f"search preset {preset.name}: {name} cannot change the noisy pre-training labels where {others}: "
            f"{name}={values[name]!r} and {name}={other!r} give identical label maps, so the search would "
            f"tune an inert axis. Suggest {name} only where it acts (define-by-run: inside the branch of "
            f"the parameters that let it act, e.g. only for the label transforms that keep what it changes)")


def _far_value(distribution: Any, value: Any) -> Any:
    """The value of ``distribution`` farthest from ``value``: the end of a numeric range farther away, or
    another choice of a categorical one. Raises ValueError for a range with one value."""
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        others = [choice for choice in choices if choice != value]
    else:
        others = [end for end in (distribution.low, distribution.high) if end != value]
        others.sort(key=lambda end: -abs(end - value))
    if not others:
        raise ValueError(f"{distribution} holds one value only ({value!r}): nothing to search")
    return others[0]


def _context_keys(values: Mapping[str, Any], name: str, distributions: Mapping[str, Any]) -> list[str]:
    """The keys to name next to ``name`` in its error: the draw's other sampled parameters, then the
    fixed pre-training label settings (the transform, the other noises) that decide what a noise can do."""
    fixed = [key for key in values if key.startswith("noise_") or key in ("label_transform", "num_groups")]
    return [key for key in dict.fromkeys([*distributions, *fixed]) if key != name]


def _undrawn_choices(trials: list[Any]) -> list[tuple[str, Any]]:
    """(parameter, choice) of every categorical choice that none of the finished ``trials`` drew."""
    import optuna

    drawn: dict[str, tuple[tuple[Any, ...], set[Any]]] = {}
    for trial in trials:
        for name, distribution in trial.distributions.items():
            if isinstance(distribution, optuna.distributions.CategoricalDistribution):
                drawn.setdefault(name, (distribution.choices, set()))[1].add(trial.params[name])
    return [(name, choice) for name, (choices, seen) in drawn.items() for choice in choices if choice not in seen]
