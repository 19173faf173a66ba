"""The pretrain-then-finetune trainable: one transferability measurement (thesis Figure 1, section 5.1).

1. Pre-train (``init="pretrain"``) on the fold's 15 pre-training classes with noisy, transformed training
   labels; the loss is ``warmup_epochs`` of class-weighted cross-entropy, then ``loss``. Validation
   scores the clean labels of the same (transformed) task.
2. Transfer the feature extractor g into a fresh model, re-initialise the head h with Xavier, and
   fine-tune on the fold's 5 held-out classes with clean labels and cross-entropy.
3. Score the fine-tuning test set every ``eval_interval`` epochs.

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
``pretrain/test_mean_iu``   last pre-training epoch only: the pre-training task's test scores on
                            clean (transformed) labels, also ``test_mean_acc``, ``test_pixel_acc``,
                            ``test_fw_iu`` (thesis Table 3)
``finetune/train_loss``     mean training loss of the epoch (fine-tuning)
``finetune/test_mean_iu``   fine-tuning test mean IU (also ``test_mean_acc``, ``test_pixel_acc``,
                            ``test_fw_iu``), from the latest evaluation
``objective``               what a study optimises: the mean of the last ``objective_last_k``
                            fine-tuning test mean IUs (thesis 5.1 averages the last 5 snapshots);
                            NaN in pre-training reports, so no scheduler or searcher compares a
                            pre-training number with a fine-tuning one
==========================  ===================================================================

Every report carries a checkpoint (model, optimizer, scheduler, phase, epoch, torch RNG state) from
which :func:`run` continues exactly; batch order and augmentation are drawn per ``(seed, epoch)``, so
a resumed trial ends with the metrics of an uninterrupted one on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainables.config import PretrainFinetuneConfig
from trainables.data.loading import SegmentationDataset, class_counts, make_loader
from trainables.data.sources import TaskData, load_task_data
from trainables.engine import evaluate_segmentation, predict, train_one_epoch
from trainables.losses import frequency_class_weights, make_loss
from trainables.models import build_model, reset_head, transfer_features
from trainables.pretrain_cache import PretrainCache
from trainables.runtime import (Reporter, autocast_dtype, begin_trial, checkpoint_state_from_tune, current_trial_id,
                               place_model, select_device, stream_seed, tune_reporter)

PHASES = ("pretrain", "finetune")
TEST_SCORES = ("mean_iu", "mean_acc", "pixel_acc", "fw_iu")
FINETUNE_TEST_METRICS = {f"finetune/test_{name}": name for name in TEST_SCORES}
PRETRAIN_TEST_METRICS = tuple(f"pretrain/test_{name}" for name in TEST_SCORES)
# Exactly the keys of each report (the last pre-training report adds PRETRAIN_TEST_METRICS).
REPORT_KEYS = {
    "pretrain": ("phase", "pretrain/epoch", "epoch_total", "pretrain/train_loss",
                 "pretrain/val_mean_iu", "pretrain/cache_hit", "objective"),
    "finetune": ("phase", "finetune/epoch", "epoch_total", "finetune/train_loss",
                 *FINETUNE_TEST_METRICS, "pretrain/cache_hit", "objective"),
}
NUM_SAMPLES = 4  # example images kept in the final checkpoint for the MLflow sample figure


def pretrain_finetune(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: validate ``config``, resume from Tune's checkpoint if any, run."""
    cfg = PretrainFinetuneConfig.from_dict(config)
    begin_trial(cfg.num_threads)  # a reused worker starts clean
    run(cfg, report=tune_reporter, state=checkpoint_state_from_tune(), device=select_device())


@dataclass
class _Phase:
    """The mutable training state of one phase (what a checkpoint holds)."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0  # completed epochs

    def state(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])


def run(
    cfg: PretrainFinetuneConfig,
    report: Reporter,
    state: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Run (or resume from ``state``) one pretrain-then-finetune trial; return its last report.

    ``report(metrics, checkpoint_state)`` is called once per epoch. ``state`` is a checkpoint state
    produced by an earlier call of this function for the same config.
    """
    device = torch.device(device)
    if state is not None and state.get("config") != cfg.to_dict():
        raise ValueError("checkpoint was written by a different config; refusing to resume from it")
    # torch's default generator drives nn.init and dropout: each phase seeds it from the config when
    # it starts, and every checkpoint holds its state, so a resumed trial continues the same stream.
    data = load_task_data(cfg)

    pretrained, pretrain_epochs = _pretrain_phase(cfg, data, report, state, device)
    return _finetune_phase(cfg, data, report, state, device, pretrained, pretrain_epochs)


# --- pre-training ---------------------------------------------------------------------------------


def _pretrain_phase(
    cfg: PretrainFinetuneConfig,
    data: TaskData,
    report: Reporter,
    state: dict[str, Any] | None,
    device: torch.device,
) -> tuple[dict[str, Any] | None, int]:
    """Pre-train, reuse the cache, or skip. Returns (the finished pre-training or None, its epochs).

    A finished pre-training is ``{"features": g's state dict, "history": per-epoch metrics,
    "samples": noisy-label examples, "cache_hit": bool}``, exactly what the cache stores.
    """
    if not cfg.pretrains:
        return None, 0
    if state is not None and state["phase"] == "finetune":  # the fine-tuning state has the model
        return {"cache_hit": bool(state["cache_hit"]), "samples": state["pretrain_samples"]}, cfg.epochs_pretrain
    if state is not None and state["epoch"] == cfg.epochs_pretrain:  # finished, not yet fine-tuned
        return _finished(state, bool(state["cache_hit"])), cfg.epochs_pretrain
    cache = PretrainCache(cfg.pretrain_cache) if cfg.pretrain_cache else None
    key = cfg.pretrain_key()
    claim = None
    if cache is not None and state is None:
        # A trial that shares this pre-training with one running now waits for its entry (claims).
        cached, claim = cache.acquire(key, owner=current_trial_id())
        if cached is not None:
            for epoch, metrics in enumerate(cached["history"], start=1):
                report(_pretrain_metrics(epoch, metrics, cache_hit=True), None)
            return _finished(cached, True), cfg.epochs_pretrain
    elif cache is not None:  # resumed mid-pre-training: this trial holds its key again
        claim = cache.claim(key, owner=current_trial_id(), force=True)
    try:
        return _pretrain(cfg, data, report, state, device, cache, key)
    finally:
        if claim is not None:
            claim.release()


def _pretrain(
    cfg: PretrainFinetuneConfig,
    data: TaskData,
    report: Reporter,
    state: dict[str, Any] | None,
    device: torch.device,
    cache: PretrainCache | None,
    key: str,
) -> tuple[dict[str, Any], int]:
    """Pre-train from scratch or from ``state`` (a pre-training checkpoint), store it in ``cache``."""
    torch.manual_seed(stream_seed(cfg.seed, "pretrain-init"))
    train_set = data.pretrain_train
    phase = _make_phase("pretrain", cfg, train_set.num_classes, cfg.lr_pretrain, cfg.epochs_pretrain, device)
    history: list[dict[str, float]] = []
    if state is not None:
        phase.load(state)
        history = list(state["history"])
    # Thesis 4, implementation details: warm up with class-weighted CE (weights from the *observed*
    # label frequencies), then switch to the configured loss. nnPU balances through its prior instead.
    weights = frequency_class_weights(class_counts(train_set.labels, train_set.num_classes)).to(device)
    warmup_loss = make_loss("ce", class_weights=weights)
    main_weights = weights if cfg.class_weighting and cfg.loss != "nnpu" else None
    main_loss = make_loss(cfg.loss, class_weights=main_weights, **_loss_params(cfg))
    train = make_loader(train_set, cfg.batch_size, shuffle=True, augment=True,
                        seed=stream_seed(cfg.seed, "pretrain"), device=device)
    val = make_loader(data.pretrain_val, cfg.batch_size, shuffle=False, augment=False, seed=0, device=device)

    while phase.epoch < cfg.epochs_pretrain:
        epoch = phase.epoch + 1
        train.set_epoch(epoch)
        loss_fn = warmup_loss if epoch <= cfg.warmup_epochs else main_loss
        stats = train_one_epoch(phase.model, train, loss_fn, phase.optimizer, device=device,
                                autocast_dtype=_autocast(device))
        phase.scheduler.step()
        phase.epoch = epoch
        scores = evaluate_segmentation(phase.model, val, data.pretrain_val.num_classes, device=device)
        metrics = {"pretrain/train_loss": stats["train_loss"], "pretrain/val_mean_iu": scores["mean_iu"]}
        if epoch == cfg.epochs_pretrain:  # the pre-training task's own test scores (thesis Table 3)
            test = make_loader(data.pretrain_test, cfg.batch_size, shuffle=False, augment=False, seed=0,
                               device=device)
            scores = evaluate_segmentation(phase.model, test, data.pretrain_test.num_classes, device=device)
            metrics.update({f"pretrain/test_{name}": scores[name] for name in TEST_SCORES})
        history.append(metrics)
        if epoch < cfg.epochs_pretrain:
            checkpoint = {**phase.state(), **_base_state(cfg, "pretrain", epoch, False), "history": history}
        else:
            finished = {"features": _features_state(phase.model), "history": history,
                        "samples": _samples(phase.model, train_set, device, noisy=True)}
            if cache is not None:
                cache.save(key, finished, cfg.to_dict())
            checkpoint = {**_base_state(cfg, "pretrain", epoch, False), **finished}
        report(_pretrain_metrics(epoch, metrics, cache_hit=False), checkpoint)
    return _finished(checkpoint, False), cfg.epochs_pretrain


def _finished(entry: dict[str, Any], cache_hit: bool) -> dict[str, Any]:
    return {"features": entry["features"], "history": entry["history"], "samples": entry["samples"],
            "cache_hit": cache_hit}


def _pretrain_metrics(epoch: int, metrics: dict[str, float], *, cache_hit: bool) -> dict[str, Any]:
    return {
        "phase": "pretrain",
        "pretrain/epoch": epoch,
        "epoch_total": epoch,
        **metrics,
        "pretrain/cache_hit": int(cache_hit),
        "objective": math.nan,
    }


# --- fine-tuning ----------------------------------------------------------------------------------


def _finetune_phase(
    cfg: PretrainFinetuneConfig,
    data: TaskData,
    report: Reporter,
    state: dict[str, Any] | None,
    device: torch.device,
    pretrained: dict[str, Any] | None,
    pretrain_epochs: int,
) -> dict[str, Any]:
    """Transfer g (when pre-trained), fine-tune with clean labels and CE, score the test set."""
    # Re-seed at the phase start: a fine-tuning run is then the same whether its extractor was just
    # pre-trained, came from the cache or from a checkpoint.
    torch.manual_seed(stream_seed(cfg.seed, "finetune-init"))
    phase = _make_phase("finetune", cfg, data.finetune_train.num_classes, cfg.lr_finetune,
                        cfg.epochs_finetune, device, backbone_weights=cfg.imagenet_weights or None)
    cache_hit = bool(pretrained and pretrained["cache_hit"])
    evals: list[dict[str, float]] = []
    if state is not None and state["phase"] == "finetune":
        phase.load(state)
        evals = list(state["evals"])
    else:
        if pretrained is not None:
            phase.model.features.load_state_dict(pretrained["features"])
        reset_head(phase.model, generator=torch.Generator().manual_seed(stream_seed(cfg.seed, "head")))

    train = make_loader(data.finetune_train, cfg.batch_size, shuffle=True, augment=True,
                        seed=stream_seed(cfg.seed, "finetune"), device=device)
    test = make_loader(data.finetune_test, cfg.batch_size, shuffle=False, augment=False, seed=0, device=device)
    loss_fn = make_loss("ce")
    metrics: dict[str, Any] = {}
    while phase.epoch < cfg.epochs_finetune:
        epoch = phase.epoch + 1
        train.set_epoch(epoch)
        stats = train_one_epoch(phase.model, train, loss_fn, phase.optimizer, device=device,
                                autocast_dtype=_autocast(device))
        phase.scheduler.step()
        phase.epoch = epoch
        last = epoch == cfg.epochs_finetune
        # The final epoch is always scored; earlier ones every eval_interval epochs counted back from it.
        if (cfg.epochs_finetune - epoch) % cfg.eval_interval == 0:
            scores = evaluate_segmentation(phase.model, test, data.finetune_test.num_classes, device=device)
            evals.append({key: float(scores[name]) for key, name in FINETUNE_TEST_METRICS.items()})
        latest = evals[-1] if evals else dict.fromkeys(FINETUNE_TEST_METRICS, math.nan)
        metrics = {
            "phase": "finetune",
            "finetune/epoch": epoch,
            "epoch_total": pretrain_epochs + epoch,
            "finetune/train_loss": stats["train_loss"],
            **latest,
            "pretrain/cache_hit": int(cache_hit),
            "objective": objective(evals, cfg.objective_last_k),
        }
        checkpoint = {**phase.state(), **_base_state(cfg, "finetune", epoch, cache_hit), "evals": evals,
                      "pretrain_samples": pretrained["samples"] if pretrained else {}}
        if last:  # what the driver turns into MLflow artifacts
            checkpoint["confusion"] = torch.as_tensor(scores["confusion"])
            checkpoint["samples"] = _samples(phase.model, data.finetune_test, device, noisy=False)
        report(metrics, checkpoint)
    return metrics


def objective(evals: list[dict[str, float]], last_k: int) -> float:
    """The mean of the last ``last_k`` fine-tuning test mean IUs (NaN before the first evaluation)."""
    values = [e["finetune/test_mean_iu"] for e in evals[-last_k:]]
    return float(np.mean(values)) if values else math.nan


# --- helpers --------------------------------------------------------------------------------------


def _make_phase(name: str, cfg: PretrainFinetuneConfig, num_classes: int, lr: float, epochs: int,
                device: torch.device, backbone_weights: str | None = None) -> _Phase:
    # Initial weights from the trial's seed (nn.init draws from this generator, not torch's global one).
    generator = torch.Generator().manual_seed(stream_seed(cfg.seed, f"{name}-weights"))
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
    return {"width": cfg.width} if cfg.model == "small_fcn" else {}


def _loss_params(cfg: PretrainFinetuneConfig) -> dict[str, float]:
    return {name: getattr(cfg, name) for name in ("q", "beta", "gamma", "prior")
            if getattr(cfg, name) is not None}


def _samples(model: torch.nn.Module, dataset: Any, device: torch.device, *, noisy: bool) -> dict[str, torch.Tensor]:
    """The first images of ``dataset`` with ground truth, prediction and (``noisy``) observed labels."""
    count = min(NUM_SAMPLES, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)])
    samples = {
        "images": dataset.inputs[:count].clone(),
        "clean": torch.as_tensor(dataset.clean_labels[:count]).clone(),
        "prediction": predict(model, images, device=device).to(torch.uint8).cpu(),
    }
    if noisy:
        samples["noisy"] = torch.as_tensor(dataset.labels[:count]).clone()
    return samples


def _features_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.features.state_dict().items()}


def _base_state(cfg: PretrainFinetuneConfig, phase: str, epoch: int, cache_hit: bool) -> dict[str, Any]:
    return {"phase": phase, "epoch": epoch, "cache_hit": cache_hit, "config": cfg.to_dict()}


def _autocast(device: torch.device) -> torch.dtype | None:
    return autocast_dtype(device)
