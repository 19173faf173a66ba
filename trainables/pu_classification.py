"""The positive-unlabelled classification trainable (thesis 5.2: Table 2, Figure 5, Figure 4).

Train a classifier from scratch on a training split whose observed labels are PU (``setup="pu"``: a
``labelled_fraction`` of the positives keeps its class, the rest is labelled 0 with the negatives) or
a clean subset (``setup="pn"``: that fraction of the positives and of the negatives, true labels), and
score it on the validation and test splits with true labels. The validation split (the source's
held-out part of its training data: CIFAR's tenth, the synthetic and moons validation draws) is what
``objective`` and the searchers see; the test split is what Table 2 and Figure 5 report. Data: the synthetic classification view (classes 1-10
positive), CIFAR-10 positives against CIFAR-100 negatives, or the 2-D moons. Models: the 8-layer CNN
of thesis Table 4 for images, the 2-layer MLP of Figure 4 for the moons. The loss is ``warmup_epochs``
of class-weighted cross-entropy (the thesis's PU weights from the observed label counts), then ``loss``.

Reports, one per epoch, through the ``report`` callable (Ray: :func:`ray.tune.report`), exactly the keys
of ``REPORT_KEYS``:

=========================  ======================================================================
``phase``                  always ``"train"``
``train/epoch``            1-based epoch; the schedulers' time attribute
``epoch_total``            the same number (the MLflow step, as in the pretrain-finetune trainable)
``train/loss``             mean training loss of the epoch (of the loss in use that epoch)
``val/acc``                validation accuracy with true labels, and ``val/mean_precision``,
                           ``val/mean_recall``, ``val/mean_f1`` as below
``test/acc``               overall test accuracy with true labels
``test/mean_precision``    test precision, recall and F1 averaged over the classes (negative
``test/mean_recall``       included; a class never predicted counts as precision 0, as with
``test/mean_f1``           scikit-learn's zero_division=0, see :mod:`trainables.metrics`)
``objective``              the mean of the last ``objective_last_k`` validation mean F1s
=========================  ======================================================================

Every report carries a checkpoint (a :class:`trainables.checkpoint.Checkpoint`: model, optimizer,
epoch, torch RNG state, config, the reports so far); the final one adds ``confusion`` and, on the moons,
``boundary`` (the classifier's P(positive) on a grid, and each training point's loss and its derivative
w.r.t. the output, for thesis Figure 4). Batch order and augmentation are drawn per ``(seed, epoch)``, so
a resumed run ends with the metrics of an uninterrupted one on CPU.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from trainables.checkpoint import Checkpoint, training_state
from trainables.config import PUClassificationConfig, parse_data
from trainables.data.base import ClassificationData
from trainables.data.loading import ClassificationDataset, class_counts, make_loader
from trainables.data.moons import grid, make_moons
from trainables.engine import evaluate_classification, train_one_epoch
from trainables.epochs import EpochResult, EpochTrainer, Evaluation, every, run_epochs, warmup_then
from trainables.losses import make_loss, pu_class_weights
from trainables.models import SplitModel, build_model
from trainables.runtime import (Reporter, autocast_dtype, begin_trial, checkpoint_state_from_tune, place_model,
                               select_device, stream_seed, tune_reporter)
from trainables.runtime import carrying_reports, ending_on_divergence, trial_config

TEST_SCORES = ("acc", "mean_precision", "mean_recall", "mean_f1")
SPLITS = ("val", "test")  # scored every epoch, with true labels
REPORT_KEYS = ("phase", "train/epoch", "epoch_total", "train/loss",
               *(f"{split}/{name}" for split in SPLITS for name in TEST_SCORES), "objective")
OBJECTIVE_SOURCE = "val/mean_f1"  # what ``objective`` averages: validation, never test
# Named random streams of a trial (runtime.stream_seed). The strings seed the generators: renaming one
# changes every result, so they stay as they were first written.
TORCH_STREAM = "train"  # torch's default generator: dropout
WEIGHTS_STREAM = "init"  # initial weights
BATCH_ORDER_STREAM = "batches"  # batch order and augmentation
PN_SUBSET_STREAM = "pn"  # which moons points a P+N training set keeps
BOUNDARY_RESOLUTION = 200  # grid points per axis of the Figure 4 probability map
BOUNDARY_MARGIN = 0.5  # data units added around the training points (the moons have radius 1)


def pu_classification(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: validate ``config``, resume from Tune's checkpoint if any, run."""
    cfg = trial_config(PUClassificationConfig, config, tune_reporter)
    if cfg is None:
        return  # a config error is a result, as a divergence: Ray must not retry it
    begin_trial(cfg.num_threads)  # a reused worker starts clean
    with ending_on_divergence(tune_reporter):  # a divergence is a result: Ray must not retry it
        state = checkpoint_state_from_tune()
        run(cfg, report=carrying_reports(tune_reporter, state), state=state, device=select_device())


def run(
    cfg: PUClassificationConfig,
    report: Reporter,
    state: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Run (or resume from ``state``) one PU classification trial; return its last report.

    ``report(metrics, checkpoint_state)`` is called once per epoch. ``state`` is a checkpoint state
    (:meth:`Checkpoint.to_dict`) produced by an earlier call of this function for the same config.
    Raises ValueError when ``state`` comes from another config or the training split is empty.
    """
    device = torch.device(device)
    resume = Checkpoint.from_dict(state) if state is not None else None
    if resume is not None and resume.config != cfg.to_dict():
        raise ValueError("checkpoint was written by a different config; refusing to resume from it")
    train_data, val_data, test_data = _load_splits(cfg)
    train_set = ClassificationDataset(train_data)
    images = train_set.inputs.ndim == 4
    model, optimizer, schedule = _build(cfg, train_data.num_classes, images, device)
    history: list[dict[str, Any]] = []
    if resume is not None:
        resume.restore(model, optimizer, schedule)
        history = list(resume.history)

    loader = make_loader(train_set, cfg.batch_size, shuffle=True, augment=True,
                         seed=stream_seed(cfg.seed, BATCH_ORDER_STREAM), device=device,
                         samples_per_epoch=samples_per_epoch(cfg, len(train_set)))
    scored = {split: make_loader(ClassificationDataset(data), cfg.batch_size, shuffle=False, augment=False, seed=0,
                                 device=device) for split, data in zip(SPLITS, (val_data, test_data))}
    # bfloat16 speeds up the CNN on a GPU; the moons MLP is tiny and its Figure 4 map wants float32.
    # train_one_epoch is this module's name for it, so a test that patches it counts the epochs.
    loss_for = warmup_then(*make_losses(cfg, train_data, device), cfg.warmup_epochs)
    trainer = EpochTrainer(model, optimizer, schedule, loader, loss_for, device,
                           autocast_dtype(device) if images else None, fit=train_one_epoch)
    evaluations = [Evaluation(split, every(1, cfg.epochs), lambda loader=loader: evaluate_classification(
        model, loader, train_data.num_classes, device=device)) for split, loader in scored.items()]

    def record(result: EpochResult) -> tuple[dict[str, Any], dict[str, Any]]:
        scores = result.scores["test"]
        history.append({"phase": "train", "train/epoch": result.epoch, "epoch_total": result.epoch,
                        "train/loss": result.train_loss,
                        **{f"{split}/{name}": float(result.scores[split][name])
                           for split in SPLITS for name in TEST_SCORES}})
        history[-1]["objective"] = objective(history, cfg.objective_last_k)
        # Copies, not views of the live model: a reporter may keep the state while training goes on.
        checkpoint = Checkpoint(cfg.to_dict(), "train", result.epoch, history=[dict(entry) for entry in history],
                                **training_state(model, optimizer, schedule, snapshot=True))
        if result.last:  # what the driver turns into MLflow artifacts
            checkpoint.confusion = torch.as_tensor(scores["confusion"])
            if not images:  # Figure 4: the map, and marker sizes from the loss of the last epoch
                checkpoint.boundary = {**decision_boundary(model, train_data, device=device),
                                       **per_sample_loss(model, train_data, loss_for(result.epoch), device=device)}
        return dict(history[-1]), checkpoint.to_dict()

    run_epochs(trainer, evaluations, record, report, done=len(history), epochs=cfg.epochs)
    return dict(history[-1])


def samples_per_epoch(cfg: PUClassificationConfig, split_size: int) -> int | None:
    """Training samples per epoch: None (one pass over the ``split_size`` samples) unless
    ``epoch_length="full"`` on a P+N fraction below 1, whose epoch then draws as many samples as the
    P+N split at fraction 1 holds: every labelled fraction gets the same optimiser steps, so a small
    fraction is not also a shorter training (P+U splits always hold the whole pool)."""
    if cfg.epoch_length == "split" or cfg.setup != "pn" or cfg.labelled_fraction == 1.0:
        return None
    return max(split_size, len(load_pu_data(dataclasses.replace(cfg, labelled_fraction=1.0), "train")))


def _load_splits(cfg: PUClassificationConfig) -> tuple[ClassificationData, ClassificationData, ClassificationData]:
    """The training (observed labels), validation and test (true labels) splits; ValueError when training
    is empty."""
    train_data, test_data = load_pu_data(cfg, "train"), load_pu_data(cfg, "test")
    val_data = with_true_labels(load_pu_data(cfg, "val"))
    if len(train_data) == 0:
        raise ValueError(
            f"the training split of data={cfg.data!r} with setup={cfg.setup!r} and "
            f"labelled_fraction={cfg.labelled_fraction} is empty; raise labelled_fraction or the data size"
        )
    return train_data, val_data, test_data


def with_true_labels(data: ClassificationData) -> ClassificationData:
    """``data`` scored with its true labels: a validation split measures the classifier, not the PU
    labelling (its observed labels are PU on the PU setups, as the training split's)."""
    return ClassificationData(data.inputs, data.true_labels.copy(), data.true_labels, data.class_names)


def _build(cfg: PUClassificationConfig, num_classes: int, images: bool, device: torch.device
           ) -> tuple[SplitModel, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The freshly initialised classifier (8-layer CNN for images, MLP for the moons), its Adam, and the
    learning-rate schedule stepped once per epoch (None for ``lr_schedule="constant"``)."""
    # torch's default generator drives dropout; it is seeded here and every checkpoint holds its state,
    # so a resumed run continues the same stream. The initial weights come from their own stream.
    torch.manual_seed(stream_seed(cfg.seed, TORCH_STREAM))
    init = torch.Generator().manual_seed(stream_seed(cfg.seed, WEIGHTS_STREAM))
    model = build_model("cifar_cnn" if images else "moons_mlp", num_classes, generator=init)
    model = place_model(model, device) if images else model.to(device)  # channels_last on CUDA
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Cosine decay ends a short run on a small step size, so its last epochs are a converged model's
    # rather than a snapshot of Adam still moving at full lr (benchmarks/pu_sanity.py measured both).
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
                if cfg.lr_schedule == "cosine" else None)
    return model, optimizer, schedule


def objective(history: list[dict[str, Any]], last_k: int) -> float:
    """The mean of the last ``last_k`` validation mean F1s of ``history`` (NaN when it is empty)."""
    values = [entry[OBJECTIVE_SOURCE] for entry in history[-last_k:]]
    return float(np.mean(values)) if values else math.nan


def load_pu_data(cfg: PUClassificationConfig, split: str) -> ClassificationData:
    """The ``split`` of the configured data: observed PU or PN labels on train and val (the P+N setup keeps
    its share of val too), true labels on test."""
    kind, root = parse_data(cfg.data)
    pn = cfg.setup == "pn"
    if kind == "synthetic":
        from trainables.data.synthetic import PU_VIEW, SyntheticConfig, load_synthetic_classification

        synthetic = SyntheticConfig(**PU_VIEW)
        if cfg.images_per_class:  # keep val/test no larger than train in small (smoke) configurations
            synthetic = SyntheticConfig(
                **PU_VIEW, images_per_class=cfg.images_per_class,
                val_per_class=min(synthetic.val_per_class, cfg.images_per_class),
                test_per_class=min(synthetic.test_per_class, cfg.images_per_class),
            )
        return load_synthetic_classification(split, cfg.labelled_fraction, cfg.seed, config=synthetic,
                                             cache_dir=cfg.data_cache or None, pn=pn)
    if kind == "cifar":
        from trainables.data.cifar import load_cifar_pu

        return load_cifar_pu(root, split, cfg.labelled_fraction, cfg.seed, pn=pn,
                             max_per_source=cfg.max_per_source or None)
    if not (pn and split == "train"):
        return make_moons(n_per_class=cfg.points_per_class, labelled_fraction=cfg.labelled_fraction,
                          seed=cfg.seed, split=split)
    full = make_moons(n_per_class=cfg.points_per_class, labelled_fraction=1.0, seed=cfg.seed, split=split)
    rng = np.random.default_rng(stream_seed(cfg.seed, PN_SUBSET_STREAM))
    return keep_fraction_per_class(full, cfg.labelled_fraction, rng)


def keep_fraction_per_class(
    data: ClassificationData, fraction: float, rng: np.random.Generator
) -> ClassificationData:
    """The P+N subset: ``round(fraction * n_c)`` (halves up) of the ``n_c`` samples of each true class
    ``c``, drawn without replacement from ``rng``, with true labels, in their original order."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    # One random key per sample; a sample is kept when its rank among its class's keys is below the quota.
    keys = rng.random(len(data))
    order = np.lexsort((keys, data.true_labels))
    classes, starts, counts = np.unique(data.true_labels[order], return_index=True, return_counts=True)
    rank = np.arange(len(data)) - np.repeat(starts, counts)
    quota = np.floor(fraction * counts + 0.5).astype(np.int64)
    keep = np.sort(order[rank < np.repeat(quota, counts)])
    return ClassificationData(data.inputs[keep], data.true_labels[keep].copy(), data.true_labels[keep],
                              data.class_names)


def decision_boundary(
    model: SplitModel, data: ClassificationData, *, device: str | torch.device
) -> dict[str, torch.Tensor]:
    """The classifier's P(positive) = 1 - P(class 0) on a grid over the 2-D points of ``data``, widened by
    ``BOUNDARY_MARGIN``, for thesis Figure 4.

    Returns float32 ``xx``, ``yy`` and ``prob`` ``(R, R)`` (R = ``BOUNDARY_RESOLUTION``; rows follow y),
    ``points`` ``(N, 2)`` and int64 ``labels`` (observed) and ``true_labels`` ``(N,)``, all on the CPU.
    """
    low, high = data.inputs.min(axis=0) - BOUNDARY_MARGIN, data.inputs.max(axis=0) + BOUNDARY_MARGIN
    xx, yy, points = grid((float(low[0]), float(high[0]), float(low[1]), float(high[1])), BOUNDARY_RESOLUTION)
    model.eval()
    with torch.inference_mode():
        probabilities = torch.softmax(model(torch.from_numpy(points).to(device)).float(), dim=1)
    return {
        "xx": torch.from_numpy(xx.astype(np.float32)),
        "yy": torch.from_numpy(yy.astype(np.float32)),
        "prob": (1.0 - probabilities[:, 0]).reshape(xx.shape).cpu(),
        "points": torch.from_numpy(data.inputs.copy()),
        "labels": torch.from_numpy(data.labels.copy()),
        "true_labels": torch.from_numpy(data.true_labels.copy()),
    }


def per_sample_loss(
    model: SplitModel, data: ClassificationData, loss_fn: torch.nn.Module, *, device: str | torch.device
) -> dict[str, torch.Tensor]:
    """Each training point's loss under ``loss_fn`` against its observed label, and that loss's derivative
    w.r.t. the model's output, for thesis Figure 4's marker sizes.

    The output is the positive-vs-negative logit ``z = z_1 - z_0`` of a two-class model (thesis Figure 2's
    x axis): a two-class softmax loss depends on z alone, so ``dL/dz = (dL/dz_1 - dL/dz_0) / 2``. A point's
    loss is ``loss_fn`` on that point alone (class weights cancel out). Returns float32 ``loss`` and
    ``dloss`` ``(N,)`` on the CPU.
    """
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(data.inputs, dtype=np.float32)).to(device)).float()
    logits.requires_grad_(True)
    targets = torch.from_numpy(data.labels).long().to(device)
    losses = torch.stack([loss_fn(logits[i : i + 1], targets[i : i + 1]) for i in range(len(targets))])
    (grad,) = torch.autograd.grad(losses.sum(), logits)
    return {"loss": losses.detach().cpu(), "dloss": ((grad[:, 1] - grad[:, 0]) / 2).cpu()}


def make_losses(
    cfg: PUClassificationConfig, train_data: ClassificationData, device: str | torch.device
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(warm-up loss, main loss) of a trial.

    Thesis 4, implementation details, and 5.2: warm up with cross-entropy weighted by the thesis's PU class
    weights from the *observed* label counts (:func:`trainables.losses.pu_class_weights`: the negative
    class against all positives as one group, ~0.67 and ~2 at 50%P+U), then switch to ``cfg.loss``, with
    the same weights when ``cfg.class_weighting``. nnPU balances through its prior instead
    (:func:`unlabelled_positive_share` when ``cfg.prior`` is None).
    """
    weights = pu_class_weights(class_counts(train_data.labels, train_data.num_classes)).to(device)
    params = {name: getattr(cfg, name) for name in ("q", "beta", "gamma", "prior") if getattr(cfg, name) is not None}
    if cfg.loss == "nnpu" and cfg.prior is None:
        params["prior"] = unlabelled_positive_share(train_data)
    main_weights = weights if cfg.class_weighting and cfg.loss != "nnpu" else None
    return make_loss("ce", class_weights=weights), make_loss(cfg.loss, class_weights=main_weights, **params)


def unlabelled_positive_share(data: ClassificationData) -> float:
    """nnPU's class prior (Kiryo et al. 2017): the share of true positives (``true_labels > 0``) among the
    unlabelled samples (observed label 0), the default prior of ``loss="nnpu"`` when ``prior`` is unset.

    Raises ValueError when the training split has no unlabelled sample, or its unlabelled samples are all
    negative or all positive (a prior of 0 or 1 is not a PU problem): set ``prior`` explicitly then.
    """
    unlabelled = data.labels == 0
    share = float(np.mean(data.true_labels[unlabelled] > 0)) if unlabelled.any() else math.nan
    if not 0.0 < share < 1.0:
        raise ValueError(
            f"nnpu's prior (the positive share of the unlabelled set) is {share} on this training split "
            f"({int(unlabelled.sum())} unlabelled samples); it must be in (0, 1): set prior in the config"
        )
    return share
