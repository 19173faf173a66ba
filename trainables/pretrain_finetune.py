"""The pretrain-then-finetune trainable: one transferability measurement (thesis Figure 1, section 5.1).

1. Decide where the fine-tuning model's feature extractor g comes from (:func:`initial_features`, as
   nanoGPT's ``init_from``): random weights, ImageNet weights, the pre-training cache, a checkpoint,
   or a fresh pre-training.
2. Pre-train (``init="pretrain"``, on a cache miss) on the fold's 15 pre-training classes with noisy,
   transformed training labels; the loss is ``warmup_epochs`` of class-weighted cross-entropy, then
   ``loss``. Validation scores the clean labels of the same (transformed) task; the last epoch also
   scores its test set. The finished pre-training is stored in the cache.
3. Transfer g into a fresh model (:func:`trainables.models.transfer_features`), re-initialise the
   head h with Xavier, and fine-tune on the fold's 5 held-out classes with clean labels and
   cross-entropy, scoring the fine-tuning validation and test sets every ``eval_interval`` epochs.
   The validation split (drawn per seed from the fine-tuning training pool) is what ``objective``, the
   searchers and the schedulers see; the test split is what the tables and figures report.

Both phases run the shared epoch loop of :mod:`trainables.epochs`; every checkpoint is a
:class:`trainables.checkpoint.Checkpoint`.

Reports, one per epoch, through the ``report`` callable (Ray: :func:`ray.tune.report`):

==========================  ===================================================================
``phase``                   ``"pretrain"`` or ``"finetune"``
``pretrain/epoch``          1-based pre-training epoch (pre-training reports only)
``finetune/epoch``          1-based fine-tuning epoch (fine-tuning reports only); the schedulers'
                            time attribute, so ASHA never sees a pre-training report
``epoch_total``             monotonic across both phases: pre-training epochs + fine-tuning epoch
``pretrain/train_loss``     mean training loss of the epoch (pre-training)
``pretrain/val_mean_iu``    mean IU on the clean validation labels of the pre-training task
``pretrain/cache_hit``      1 when the pre-trained extractor came from the cache (epochs replayed)
``probe/val_mean_iu``      ``transfer_probe`` on, probe epochs only (:func:`trainables.probe.probe_epochs`):
                            mean IU on the fine-tuning validation split of a fresh head trained on
                            this epoch's frozen g; ``probe/seconds`` is what the probe cost
``scheduler/score``        what the search's scheduler compares at a rung: ``probe/val_mean_iu`` in
                            pre-training (NaN on epochs without a probe), the latest
                            ``finetune/val_mean_iu`` in fine-tuning (not ``objective``'s mean over
                            the last k epochs, which would punish slow starters at an early rung)
``pretrain/test_mean_iu``   last pre-training epoch only: the pre-training task's test scores on
                            clean (transformed) labels, also ``test_mean_acc``, ``test_pixel_acc``,
                            ``test_fw_iu`` (thesis Table 3)
``finetune/train_loss``     mean training loss of the epoch (fine-tuning)
``finetune/val_mean_iu``    fine-tuning validation mean IU (also ``val_mean_acc``, ``val_pixel_acc``,
                            ``val_fw_iu``) of this epoch; NaN on an epoch that was not evaluated
                            (``eval_interval`` > 1); the last epoch always is
``finetune/test_mean_iu``   fine-tuning test mean IU (also ``test_mean_acc``, ``test_pixel_acc``,
                            ``test_fw_iu``), on the same epochs as validation; what tables report
``objective``               what a study optimises: the mean of the last ``objective_last_k``
                            evaluations' *validation* mean IUs (thesis 5.1 averages the last 5
                            snapshots; section 4 chooses hyperparameters on a validation set); NaN
                            in pre-training reports, so no scheduler or searcher compares a
                            pre-training number with a fine-tuning one
==========================  ===================================================================

Every trained epoch's report carries a checkpoint (model, optimizer, scheduler, phase, epoch, torch RNG
state; a finished pre-training keeps g instead of the model) from
which :func:`run` continues exactly; batch order and augmentation are drawn per ``(seed, epoch)``, so
a resumed trial ends with the metrics of an uninterrupted one on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainables.checkpoint import Checkpoint, training_state
from trainables.config import PretrainFinetuneConfig
from trainables.data.loading import class_counts, make_loader
from trainables.data.sources import TaskData, load_task_data
from trainables.engine import evaluate_segmentation, predict, train_one_epoch
from trainables.epochs import EpochResult, EpochTrainer, Evaluation, every, on_epochs, run_epochs, warmup_then
from trainables.losses import frequency_class_weights, make_loss
from trainables.models import build_model, reset_head, transfer_features
from trainables.pretrain_cache import cached_pretraining
from trainables.probe import probe_epochs, transfer_probe
from trainables.runtime import (Reporter, autocast_dtype, begin_trial, checkpoint_state_from_tune, current_trial_id,
                               place_model, select_device, stream_seed, tune_reporter)
from trainables.runtime import carrying_reports, ending_on_divergence, trial_config

PHASES = ("pretrain", "finetune")
TEST_SCORES = ("mean_iu", "mean_acc", "pixel_acc", "fw_iu")
FINETUNE_TEST_METRICS = {f"finetune/test_{name}": name for name in TEST_SCORES}
FINETUNE_VAL_METRICS = {f"finetune/val_{name}": name for name in TEST_SCORES}
FINETUNE_SPLITS = {"val": FINETUNE_VAL_METRICS, "test": FINETUNE_TEST_METRICS}  # evaluation -> report keys
OBJECTIVE_SOURCE = "finetune/val_mean_iu"  # what ``objective`` averages: validation, never test
PRETRAIN_TEST_METRICS = tuple(f"pretrain/test_{name}" for name in TEST_SCORES)
# Exactly the keys of each report (the last pre-training report adds PRETRAIN_TEST_METRICS).
REPORT_KEYS = {
    "pretrain": ("phase", "pretrain/epoch", "epoch_total", "pretrain/train_loss",
                 "pretrain/val_mean_iu", "pretrain/cache_hit", "scheduler/score", "objective"),
    "finetune": ("phase", "finetune/epoch", "epoch_total", "finetune/train_loss",
                 *FINETUNE_VAL_METRICS, *FINETUNE_TEST_METRICS, "pretrain/cache_hit", "scheduler/score", "objective"),
}
NUM_SAMPLES = 4  # example images kept in the final checkpoint for the MLflow sample figure
INIT_SOURCES = ("random", "imagenet", "cache", "checkpoint", "pretrained")
# Named random streams of a trial (runtime.stream_seed). The strings seed the generators: renaming one
# changes every result, so they stay as they were first written.
TORCH_STREAM = {"pretrain": "pretrain-init", "finetune": "finetune-init"}  # torch's generator: dropout
WEIGHTS_STREAM = {"pretrain": "pretrain-weights", "finetune": "finetune-weights"}  # initial weights
BATCH_ORDER_STREAM = {"pretrain": "pretrain", "finetune": "finetune"}  # batch order and augmentation
HEAD_STREAM = "head"  # the fine-tuning head's Xavier re-initialisation
PROBE_STREAM = "probe-head"  # the transfer probe's fresh head (the same draw at every probe epoch)
PROBE_METRICS = ("probe/val_mean_iu", "probe/seconds")  # probe epochs of a trial with transfer_probe on


def pretrain_finetune(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: validate ``config``, resume from Tune's checkpoint if any, run."""
    cfg = trial_config(PretrainFinetuneConfig, config, tune_reporter, ("objective", "scheduler/score"))
    if cfg is None:
        return  # a config error is a result, as a divergence: Ray must not retry it
    begin_trial(cfg.num_threads)  # a reused worker starts clean
    with ending_on_divergence(tune_reporter, ("objective", "scheduler/score")):  # a divergence is a result: Ray must not retry it
        state = checkpoint_state_from_tune()
        run(cfg, report=carrying_reports(tune_reporter, state), state=state, device=select_device())


def run(
    cfg: PretrainFinetuneConfig,
    report: Reporter,
    state: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Run (or resume from ``state``) one pretrain-then-finetune trial; return its last report.

    ``report(metrics, checkpoint_state)`` is called once per epoch. ``state`` is a checkpoint state
    (:meth:`Checkpoint.to_dict`) produced by an earlier call of this function for the same config.
    """
    device = torch.device(device)
    resume = Checkpoint.from_dict(state) if state is not None else None
    if resume is not None and resume.config != cfg.to_dict():
        raise ValueError("checkpoint was written by a different config; refusing to resume from it")
    # torch's default generator drives nn.init and dropout: each phase seeds it from the config when
    # it starts, and every checkpoint holds its state, so a resumed trial continues the same stream.
    data = load_task_data(cfg)
    init = initial_features(cfg, data, report, resume, device)
    return finetune(cfg, data, report, resume if resume is not None and resume.phase == "finetune" else None,
                    device, init)


# --- 1. where g comes from ------------------------------------------------------------------------


@dataclass(frozen=True)
class InitialFeatures:
    """Where the fine-tuning model's g comes from; every path fills every field.

    ``source`` is one of :data:`INIT_SOURCES`. ``features`` is g's state dict to transfer, None when
    there is nothing to transfer: g is random or ImageNet's (built with the model), or a fine-tuning
    checkpoint holds the whole model. ``samples`` are the pre-training's noisy-label examples ({} without
    pre-training), ``cache_hit`` whether it came from the cache, ``pretrain_epochs`` the epochs it took
    (0 without; fine-tuning's ``epoch_total`` starts after them).
    """

    source: str
    features: dict[str, torch.Tensor] | None
    samples: dict[str, torch.Tensor]
    cache_hit: bool
    pretrain_epochs: int


def initial_features(
    cfg: PretrainFinetuneConfig,
    data: TaskData,
    report: Reporter,
    resume: Checkpoint | None,
    device: torch.device,
) -> InitialFeatures:
    """The trial's initial g (nanoGPT's ``init_from``), pre-training it when nothing else provides it.

    A cache hit replays the cached pre-training's reports (no checkpoint); a fresh pre-training reports
    its epochs as it trains them, resuming from ``resume`` when that is a pre-training checkpoint.
    """
    if not cfg.pretrains:  # random or ImageNet weights: built with the fine-tuning model
        return InitialFeatures(cfg.init, None, {}, False, 0)
    if resume is not None and resume.phase == "finetune":  # the fine-tuning checkpoint has the model
        return InitialFeatures("checkpoint", None, resume.pretrain_samples, resume.cache_hit, cfg.epochs_pretrain)
    if resume is not None and resume.features is not None:  # pre-trained, not yet fine-tuned
        return InitialFeatures("checkpoint", resume.features, resume.samples, resume.cache_hit, cfg.epochs_pretrain)
    # A trial that shares this pre-training with one running now waits for its entry (cache claims).
    with cached_pretraining(cfg.pretrain_cache, cfg.pretrain_key(), cfg.to_dict(), owner=current_trial_id(),
                            resumed=resume is not None) as slot:
        if slot.entry is not None:
            for epoch, metrics in enumerate(slot.entry["history"], start=1):
                report(_pretrain_metrics(epoch, metrics, cache_hit=True), None)
            return InitialFeatures("cache", slot.entry["features"], slot.entry["samples"], True,
                                   cfg.epochs_pretrain)
        finished = pretrain(cfg, data, report, resume, device, store=slot.store)
    return InitialFeatures("pretrained", finished.features, finished.samples, False, cfg.epochs_pretrain)


# --- 2. pre-training ------------------------------------------------------------------------------


def pretrain(
    cfg: PretrainFinetuneConfig,
    data: TaskData,
    report: Reporter,
    resume: Checkpoint | None,
    device: torch.device,
    store: Callable[[dict[str, Any]], None],
) -> Checkpoint:
    """Pre-train from scratch or from ``resume`` (a pre-training checkpoint). Returns the finished
    pre-training's checkpoint (``features``, ``history``, ``samples``), which goes to ``store`` (the
    cache) before its report, so a trial killed after that report finds it there."""
    torch.manual_seed(stream_seed(cfg.seed, TORCH_STREAM["pretrain"]))
    train_set = data.pretrain_train
    phase = _make_phase("pretrain", cfg, train_set.num_classes, cfg.lr_pretrain, cfg.epochs_pretrain, device)
    history: list[dict[str, float]] = []
    if resume is not None:
        resume.restore(phase.model, phase.optimizer, phase.scheduler)
        history = list(resume.history)
    trainer = phase.trainer(_pretrain_losses(cfg, train_set, device), _train_loader(cfg, "pretrain", train_set, device),
                            device)
    val, test = _eval_loader(cfg, data.pretrain_val, device), _eval_loader(cfg, data.pretrain_test, device)
    evaluations = [
        Evaluation("val", every(1, cfg.epochs_pretrain), lambda: _score(phase.model, val, device)),
        # the pre-training task's own test scores, on its clean (transformed) labels (thesis Table 3)
        Evaluation("test", on_epochs(cfg.epochs_pretrain), lambda: _score(phase.model, test, device)),
        *([_probe_evaluation(cfg, data, phase.model, device)] if cfg.transfer_probe else []),
    ]
    finished: list[Checkpoint] = []

    def record(result: EpochResult) -> tuple[dict[str, Any], dict[str, Any]]:
        metrics = {"pretrain/train_loss": result.train_loss, "pretrain/val_mean_iu": result.scores["val"]["mean_iu"]}
        if "test" in result.scores:
            metrics.update({f"pretrain/test_{name}": result.scores["test"][name] for name in TEST_SCORES})
        if "probe" in result.scores:
            metrics.update({f"probe/{name}": result.scores["probe"][name] for name in ("val_mean_iu", "seconds")})
        history.append(metrics)
        base = {"config": cfg.to_dict(), "phase": "pretrain", "epoch": result.epoch, "cache_hit": False,
                "history": list(history)}
        if not result.last:
            checkpoint = Checkpoint(**base, **phase.training_state())
        else:  # the finished pre-training keeps g only: fine-tuning builds its own model around it
            checkpoint = Checkpoint(**base, features=_features_state(phase.model),
                                    samples=_samples(phase.model, train_set, device, noisy=True))
            store({"features": checkpoint.features, "history": checkpoint.history, "samples": checkpoint.samples})
            finished.append(checkpoint)
        return _pretrain_metrics(result.epoch, metrics, cache_hit=False), checkpoint.to_dict()

    run_epochs(trainer, evaluations, record, report, done=resume.epoch if resume else 0, epochs=cfg.epochs_pretrain)
    return finished[0]


def _probe_evaluation(cfg: PretrainFinetuneConfig, data: TaskData, model: torch.nn.Module,
                      device: torch.device) -> Evaluation:
    """The transfer probe at :func:`probe_epochs`: g of ``model`` frozen, a fresh fine-tuning-shaped head
    trained on the fine-tuning training split, scored on its validation split (never the test split)."""
    generator = torch.Generator().manual_seed(stream_seed(cfg.seed, PROBE_STREAM))
    shape = place_model(build_model(cfg.model, data.finetune_train.num_classes, generator=generator,
                                    **_model_kwargs(cfg)), device)
    train, val = _eval_loader(cfg, data.finetune_train, device), _eval_loader(cfg, data.finetune_val, device)
    seed = stream_seed(cfg.seed, PROBE_STREAM)
    return Evaluation("probe", on_epochs(*probe_epochs(cfg.epochs_pretrain, cfg.epochs_finetune)),
                      lambda: transfer_probe(model, shape, train, val, seed=seed))


def _pretrain_losses(cfg: PretrainFinetuneConfig, train_set: Any, device: torch.device) -> Callable[[int], Any]:
    """The loss of each pre-training epoch. Thesis 4, implementation details: warm up with class-weighted
    CE (weights from the *observed* label frequencies), then switch to the configured loss. nnPU
    balances through its prior instead."""
    weights = frequency_class_weights(class_counts(train_set.labels, train_set.num_classes)).to(device)
    warmup_loss = make_loss("ce", class_weights=weights)
    main_weights = weights if cfg.class_weighting and cfg.loss != "nnpu" else None
    main_loss = make_loss(cfg.loss, class_weights=main_weights, **_loss_params(cfg))
    return warmup_then(warmup_loss, main_loss, cfg.warmup_epochs)


def _pretrain_metrics(epoch: int, metrics: dict[str, float], *, cache_hit: bool) -> dict[str, Any]:
    """A pre-training report: the epoch's ``metrics`` with the phase, its epoch and the cache flag."""
    return {
        "phase": "pretrain",
        "pretrain/epoch": epoch,
        "epoch_total": epoch,
        **metrics,
        "pretrain/cache_hit": int(cache_hit),
        "scheduler/score": metrics.get("probe/val_mean_iu", math.nan),
        "objective": math.nan,
    }


# --- 3. transfer and fine-tuning ------------------------------------------------------------------


def finetune(
    cfg: PretrainFinetuneConfig,
    data: TaskData,
    report: Reporter,
    resume: Checkpoint | None,
    device: torch.device,
    init: InitialFeatures,
) -> dict[str, Any]:
    """Transfer ``init``'s g (when it has one), fine-tune with clean labels and CE, score the validation
    and test sets;
    continue from ``resume`` (a fine-tuning checkpoint) when given. Returns the last report ({} when
    ``resume`` was the final checkpoint)."""
    # Re-seed at the phase start: a fine-tuning run is then the same whether its extractor was just
    # pre-trained, came from the cache or from a checkpoint.
    torch.manual_seed(stream_seed(cfg.seed, TORCH_STREAM["finetune"]))
    phase = _make_phase("finetune", cfg, data.finetune_train.num_classes, cfg.lr_finetune,
                        cfg.epochs_finetune, device, backbone_weights=cfg.imagenet_weights or None)
    evals: list[dict[str, float]] = []
    if resume is not None:
        resume.restore(phase.model, phase.optimizer, phase.scheduler)
        evals = list(resume.evals)
    else:
        if init.features is not None:
            transfer_features(init.features, phase.model)
        reset_head(phase.model, generator=torch.Generator().manual_seed(stream_seed(cfg.seed, HEAD_STREAM)))
    loss_fn = make_loss("ce")
    trainer = phase.trainer(lambda epoch: loss_fn, _train_loader(cfg, "finetune", data.finetune_train, device), device)
    loaders = {"val": _eval_loader(cfg, data.finetune_val, device), "test": _eval_loader(cfg, data.finetune_test, device)}
    # The final epoch is always scored; earlier ones every eval_interval epochs counted back from it.
    due = every(cfg.eval_interval, cfg.epochs_finetune)
    evaluations = [Evaluation(split, due, lambda loader=loader: _score(phase.model, loader, device))
                   for split, loader in loaders.items()]

    def record(result: EpochResult) -> tuple[dict[str, Any], dict[str, Any]]:
        if "test" in result.scores:
            evals.append({key: float(result.scores[split][name])
                          for split, keys in FINETUNE_SPLITS.items() for key, name in keys.items()})
        checkpoint = Checkpoint(cfg.to_dict(), "finetune", result.epoch, cache_hit=init.cache_hit,
                                evals=list(evals), pretrain_samples=init.samples, **phase.training_state())
        if result.last:  # what the driver turns into MLflow artifacts
            checkpoint.confusion = torch.as_tensor(result.scores["test"]["confusion"])
            checkpoint.samples = _samples(phase.model, data.finetune_test, device, noisy=False)
        return _finetune_metrics(cfg, result, evals, init), checkpoint.to_dict()

    last = run_epochs(trainer, evaluations, record, report, done=resume.epoch if resume else 0,
                      epochs=cfg.epochs_finetune)
    return last if last is not None else {}


def _finetune_metrics(cfg: PretrainFinetuneConfig, result: EpochResult, evals: list[dict[str, float]],
                      init: InitialFeatures) -> dict[str, Any]:
    """A fine-tuning report: the epoch's training loss, its validation and test scores (NaN on an epoch
    that was not evaluated, so no curve or average counts a score twice) and the objective."""
    keys = [*FINETUNE_VAL_METRICS, *FINETUNE_TEST_METRICS]
    latest = evals[-1] if "test" in result.scores else dict.fromkeys(keys, math.nan)
    return {
        "phase": "finetune",
        "finetune/epoch": result.epoch,
        "epoch_total": init.pretrain_epochs + result.epoch,
        "finetune/train_loss": result.train_loss,
        **latest,
        "pretrain/cache_hit": int(init.cache_hit),
        "scheduler/score": evals[-1][OBJECTIVE_SOURCE] if evals else math.nan,  # the latest, not a mean
        "objective": objective(evals, cfg.objective_last_k),
    }


def objective(evals: list[dict[str, float]], last_k: int) -> float:
    """The mean of the last ``last_k`` fine-tuning validation mean IUs (NaN before the first evaluation)."""
    values = [e[OBJECTIVE_SOURCE] for e in evals[-last_k:]]
    return float(np.mean(values)) if values else math.nan


# --- helpers --------------------------------------------------------------------------------------


@dataclass
class _Phase:
    """One phase's model and optimisation state (the ``training_state`` of its checkpoints)."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def training_state(self) -> dict[str, Any]:
        return training_state(self.model, self.optimizer, self.scheduler)

    def trainer(self, loss_for: Callable[[int], Any], loader: Any, device: torch.device) -> EpochTrainer:
        # train_one_epoch is looked up here, in this module, so a test that patches it counts epochs.
        return EpochTrainer(self.model, self.optimizer, self.scheduler, loader, loss_for, device,
                            autocast_dtype(device), fit=train_one_epoch)


def _make_phase(name: str, cfg: PretrainFinetuneConfig, num_classes: int, lr: float, epochs: int,
                device: torch.device, backbone_weights: str | None = None) -> _Phase:
    # Initial weights from the trial's seed (nn.init draws from this generator, not torch's global one).
    generator = torch.Generator().manual_seed(stream_seed(cfg.seed, WEIGHTS_STREAM[name]))
    model = build_model(cfg.model, num_classes, generator=generator, **_model_kwargs(cfg), **(
        {"backbone_weights": backbone_weights} if backbone_weights else {}))
    model = place_model(model, device)  # channels_last on CUDA
    optimizer, scheduler = make_optimizer(cfg, model.parameters(), lr, epochs)
    return _Phase(name, model, optimizer, scheduler)


def make_optimizer(cfg: PretrainFinetuneConfig, parameters: Any, lr: float, epochs: int) -> tuple[
        torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """One phase's optimizer (SGD with momentum, or AdamW: decoupled weight decay) and its cosine
    schedule, annealed to 0 over the phase's ``epochs`` (stepped once per epoch)."""
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)


def _model_kwargs(cfg: PretrainFinetuneConfig) -> dict[str, Any]:
    return {"init_scheme": cfg.init_scheme, **({"width": cfg.width} if cfg.model == "small_fcn" else {})}


def _loss_params(cfg: PretrainFinetuneConfig) -> dict[str, float]:
    return {name: getattr(cfg, name) for name in ("q", "beta", "gamma", "prior")
            if getattr(cfg, name) is not None}


def sample_indices(length: int, count: int = NUM_SAMPLES) -> list[int]:
    """``count`` indices spread evenly over ``range(length)``, first and last included (all of them when
    ``length <= count``). Spread, not the first ones: a split stored class by class (the synthetic test
    split) would otherwise show one class only."""
    if length <= count:
        return list(range(length))
    return [round(i * (length - 1) / (count - 1)) for i in range(count)]


def _samples(model: torch.nn.Module, dataset: Any, device: torch.device, *, noisy: bool) -> dict[str, torch.Tensor]:
    """:data:`NUM_SAMPLES` images of ``dataset`` (:func:`sample_indices`): ``images`` (S, 3, H, W) as
    stored, ``clean`` ground truth and ``prediction`` (S, H, W) uint8, and (``noisy``) the observed
    labels ``noisy`` (S, H, W)."""
    chosen = sample_indices(len(dataset))
    images = torch.stack([dataset[i][0] for i in chosen])
    samples = {
        "images": dataset.inputs[chosen].clone(),
        "clean": torch.as_tensor(dataset.clean_labels[chosen]).clone(),
        "prediction": predict(model, images, device=device).to(torch.uint8).cpu(),
    }
    if noisy:
        samples["noisy"] = torch.as_tensor(dataset.labels[chosen]).clone()
    return samples


def _features_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.features.state_dict().items()}


def _train_loader(cfg: PretrainFinetuneConfig, phase: str, dataset: Any, device: torch.device) -> Any:
    """The shuffled, augmented loader of ``phase``'s training set (its own batch-order stream)."""
    return make_loader(dataset, cfg.batch_size, shuffle=True, augment=True,
                       seed=stream_seed(cfg.seed, BATCH_ORDER_STREAM[phase]), device=device)


def _eval_loader(cfg: PretrainFinetuneConfig, dataset: Any, device: torch.device) -> Any:
    return make_loader(dataset, cfg.batch_size, shuffle=False, augment=False, seed=0, device=device)


def _score(model: torch.nn.Module, loader: Any, device: torch.device) -> dict[str, Any]:
    return evaluate_segmentation(model, loader, loader.dataset.num_classes, device=device)
