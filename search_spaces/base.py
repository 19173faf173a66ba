"""What a study preset declares, and how it turns into validated trial configs.

A preset is data: the trainable it runs, its conditions (condition name -> config overrides), the
config every trial shares, the smoke-size overrides CI runs, its folds and seeds, and optionally an
Optuna define-by-run space with a scheduler. :meth:`Preset.trial_configs` expands the grid into flat
configs and validates every one of them, so a bad preset fails before Ray starts.

Hyperparameters follow Google's tuning playbook labels: noise rates and the loss are *scientific* (the
grid or the search's subject), q/beta/gamma/prior, warmup and learning rate are *nuisance* (tuned per
condition by the search preset), everything else is *fixed* here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from trainables.config import PretrainFinetuneConfig, PUClassificationConfig, parse_data
from trainables.data.synthetic import RECOMMENDED_EPOCHS, RECOMMENDED_OPTIM

TRAINABLE_CONFIGS = {
    "pretrain_finetune": PretrainFinetuneConfig,
    "pu_classification": PUClassificationConfig,
}

# Fixed hyperparameters per data kind (segmentation). Synthetic: measured with
# benchmarks/transfer_sanity.py. VOC: FCN-AlexNet with SGD, epochs scaled from the thesis's 240k/12k
# iterations at batch size 1 to ~4000 images at batch size 20.
SEGMENTATION_DEFAULTS = {
    "synthetic": {"model": "small_fcn", "epochs_pretrain": RECOMMENDED_EPOCHS["pretrain"],
                  "epochs_finetune": RECOMMENDED_EPOCHS["finetune"], "optimizer": RECOMMENDED_OPTIM["optimizer"],
                  "lr_pretrain": RECOMMENDED_OPTIM["lr"], "lr_finetune": RECOMMENDED_OPTIM["lr"],
                  "weight_decay": RECOMMENDED_OPTIM["weight_decay"], "batch_size": RECOMMENDED_OPTIM["batch_size"]},
    "voc": {"model": "fcn_alexnet", "epochs_pretrain": 60, "epochs_finetune": 40, "optimizer": "sgd",
            "lr_pretrain": 1e-3, "lr_finetune": 1e-3, "momentum": 0.9, "batch_size": 20},
}
# Smoke size: tiny data, one epoch per phase. Runs every preset end to end in seconds.
SEGMENTATION_SMOKE = {"image_size": 32, "images_per_class": 3, "finetune_train_per_class": 2,
                      "epochs_pretrain": 1, "epochs_finetune": 1, "batch_size": 16, "width": 8}
PU_SMOKE = {"epochs": 1, "images_per_class": 4, "max_per_source": 64, "points_per_class": 40,
            "batch_size": 64}

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
        """Every trial of a grid preset as a validated flat config (condition x fold x seed).

        For a search preset, the configs of the constant part with one example draw are validated by
        :meth:`validate_search`, and this returns the constant configs (one per fold x seed).
        """
        folds = tuple(folds or (self.folds[:1] if smoke else self.folds)) if self.uses_folds else (None,)
        seeds = seeds or (1 if smoke else self.seeds)
        base = {**self.defaults(data, smoke), **(overrides or {})}
        names = self.condition_names(smoke, imagenet_weights) if self.conditions else [""]
        configs = []
        for name in names:
            condition = dict(self.conditions.get(name, {}))
            if condition.get("init") == "imagenet":
                condition["imagenet_weights"] = imagenet_weights
            for fold in folds:
                for seed in range(seeds):
                    config = {**base, **condition, "condition": name or self.name, "seed": seed}
                    if smoke:  # one epoch per phase: the main loss, not its warmup, is what smoke runs
                        config["warmup_epochs"] = 0
                    if fold is not None:
                        config["fold"] = fold
                    TRAINABLE_CONFIGS[self.trainable].from_dict(config)  # validate now, not in a trial
                    configs.append(config)
        return configs


def validate_search(preset: Preset, constants: Mapping[str, Any], draws: int = 20, seed: int = 0) -> None:
    """Draw ``draws`` samples from the preset's define-by-run space with Optuna's random sampler and
    validate each full config, so a space that can produce an invalid trial fails before Ray starts."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction=preset.mode == "max"
                                and "maximize" or "minimize")
    for _ in range(draws):
        trial = study.ask()
        extra = preset.optuna_space(trial, constants) or {}
        TRAINABLE_CONFIGS[preset.trainable].from_dict({**constants, **trial.params, **extra})
        study.tell(trial, 0.0)
