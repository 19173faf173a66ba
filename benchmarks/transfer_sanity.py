"""Does pre-training on the synthetic benchmark transfer? (thesis 3.1 / 5.1, CompleteLabels vs RandomWeights)

Pre-trains ``small_fcn`` on a fold's 15 pre-training classes with clean labels and cross-entropy,
transfers g into a fresh model, and fine-tunes it on the 5 held-out classes' small training set; then
fine-tunes a randomly initialised model the same way (same data, batches, head initialisation and
optimiser). Prints both fine-tuning test mean IUs, the wall time, and last their ratio
(pretrained / random), which should be clearly above 1::

    python benchmarks/transfer_sanity.py [--fold 1] [--epochs-pretrain N] [--epochs-finetune N] [--seed 0]
        [--label-transform {none,binarize}] [--clutter {flat,textured}] [--image-size PX]
        [--images-per-class N] [--width W] [--batch-size B] [--threads T]

``--label-transform binarize`` pre-trains on foreground/background instead of the 15 classes and prints
that task's own test mean IU (issue 15: between 0.60 and 0.90 when objectness needs shape, as on VOC;
0.97 on the flat-clutter generator, where a texture cue gives it away). ``--clutter`` picks the
background clutter of the generator (``trainables.data.synthetic.CLUTTER``). Before training it prints
the low-level objectness cue of the data (``trainables.data.cues``: a per-pixel logistic regression's
foreground/background mean IU).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from trainables.data.base import task_view
from trainables.data.cues import cue_mean_iu
from trainables.data.loading import SegmentationDataset, make_loader, subsample_per_class
from trainables.data.synthetic import (
    RECOMMENDED_EPOCHS,
    RECOMMENDED_FINETUNE_PER_CLASS,
    RECOMMENDED_OPTIM,
    CLUTTER,
    SYNTHETIC_CLASSES,
    SyntheticConfig,
    load_synthetic_segmentation,
    study_split_config,
)
from trainables.engine import evaluate_segmentation, train_one_epoch
from trainables.labels import binarize
from trainables.losses import make_loss
from trainables.models import SplitModel, reset_head, small_fcn, transfer_features

NAMES = ("background",) + SYNTHETIC_CLASSES


def _generator(seed: int, stream: str) -> torch.Generator:
    """A torch generator for one named random stream of this run."""
    state = np.random.SeedSequence([seed, *stream.encode()]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def train(model: SplitModel, dataset: SegmentationDataset, epochs: int, seed: int,
          val: SegmentationDataset | None = None, label: str = "",
          batch_size: int = RECOMMENDED_OPTIM["batch_size"]) -> list[float]:
    """Train ``model`` for ``epochs`` with the recommended optimiser, cosine-annealed, clean CE.

    With ``val``, scores it after every epoch and prints the curve (is the recipe long enough?);
    returns the validation mean IUs, one per epoch ([] without ``val``).
    """
    loader = make_loader(dataset, batch_size, shuffle=True, augment=True, seed=seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=RECOMMENDED_OPTIM["lr"], weight_decay=RECOMMENDED_OPTIM["weight_decay"]
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = make_loss("ce")
    curve: list[float] = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        train_one_epoch(model, loader, loss_fn, optimizer, device="cpu")
        schedule.step()
        if val is not None:
            curve.append(test_mean_iu(model, val))
    if curve:
        print(f"{label} validation mean IU by epoch: " + " ".join(f"{v:.3f}" for v in curve))
    return curve


def test_mean_iu(model: SplitModel, dataset: SegmentationDataset) -> float:
    loader = make_loader(dataset, 64, shuffle=False, augment=False, seed=0)
    return evaluate_segmentation(model, loader, dataset.num_classes, device="cpu")["mean_iu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", type=int, default=1, choices=(1, 2, 3, 4))
    parser.add_argument("--epochs-pretrain", type=int, default=RECOMMENDED_EPOCHS["pretrain"])
    parser.add_argument("--epochs-finetune", type=int, default=RECOMMENDED_EPOCHS["finetune"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-transform", default="none", choices=("none", "binarize"),
                        help="the pre-training task: the fold's 15 classes, or foreground/background")
    parser.add_argument("--clutter", default=SyntheticConfig.clutter, choices=CLUTTER,
                        help="background clutter of the synthetic generator")
    parser.add_argument("--image-size", type=int, default=SyntheticConfig.image_size, help="image side in px")
    parser.add_argument("--images-per-class", type=int, default=SyntheticConfig.images_per_class,
                        help="training images per class (pre-training uses all of its 15 classes')")
    parser.add_argument("--width", type=int, default=32, help="small_fcn channel width")
    parser.add_argument("--batch-size", type=int, default=RECOMMENDED_OPTIM["batch_size"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (a study trial runs 1)")
    parser.add_argument("--cache-dir", default=None, help="synthetic data cache (default: $NOISY_TRANSFER_CACHE)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    config = study_split_config(args.image_size, args.images_per_class, args.clutter)
    train_split = load_synthetic_segmentation("train", config, args.cache_dir)
    test_split = load_synthetic_segmentation("test", config, args.cache_dir)
    val_split = load_synthetic_segmentation("val", config, args.cache_dir)
    # every 6th image: the cue is a property of the generator, and 200 + 100 images measure it to ~0.01
    cue = cue_mean_iu(train_split.images[::6], train_split.labels[::6], test_split.images[::6],
                      test_split.labels[::6])
    print(f"low-level objectness cue (per-pixel logistic regression, foreground/background test mean IU) {cue:.3f}")
    transform = binarize if args.label_transform == "binarize" else None
    classes = 2 if transform else None
    pretrain_set = SegmentationDataset(task_view(train_split, args.fold, "pretrain", NAMES),
                                       label_transform=transform, num_classes=classes)
    finetune_train = subsample_per_class(
        task_view(train_split, args.fold, "finetune", NAMES), RECOMMENDED_FINETUNE_PER_CLASS, args.seed
    )
    finetune_set = SegmentationDataset(finetune_train)
    test_set = SegmentationDataset(task_view(test_split, args.fold, "finetune", NAMES))
    print(
        f"fold {args.fold}: pre-train {len(pretrain_set)} images x {args.epochs_pretrain} epochs, fine-tune "
        f"{len(finetune_set)} images x {args.epochs_finetune} epochs, test {len(test_set)} images; {config}"
    )

    donor = small_fcn(pretrain_set.num_classes, args.width, generator=_generator(args.seed, "pretrain"))
    pretrain_val = SegmentationDataset(task_view(val_split, args.fold, "pretrain", NAMES),
                                       label_transform=transform, num_classes=classes)
    pretrain_start = time.perf_counter()
    train(donor, pretrain_set, args.epochs_pretrain, args.seed, pretrain_val, "pre-training", args.batch_size)
    print(f"pre-training {time.perf_counter() - pretrain_start:.1f} s ({args.threads} thread(s), validation included)")
    pretrain_test = SegmentationDataset(task_view(test_split, args.fold, "pretrain", NAMES),
                                        label_transform=transform, num_classes=classes)
    task = "foreground/background" if transform else "15 classes + background"
    print(f"pre-training test mean IU ({task}) {test_mean_iu(donor, pretrain_test):.4f}")

    finetune_val = SegmentationDataset(task_view(val_split, args.fold, "finetune", NAMES))
    scores = {}
    for init in ("pretrained", "random"):
        model = small_fcn(finetune_set.num_classes, args.width, generator=_generator(args.seed, "random-init"))
        if init == "pretrained":
            transfer_features(donor, model)
        reset_head(model, _generator(args.seed, "head"))
        train(model, finetune_set, args.epochs_finetune, args.seed + 1, finetune_val, f"{init} fine-tuning",
              args.batch_size)
        scores[init] = test_mean_iu(model, test_set)
        print(f"{init:>10} init: fine-tuning test mean IU {scores[init]:.4f}")
    print(f"wall time {time.perf_counter() - start:.1f} s")
    print(f"ratio pretrained/random {scores['pretrained'] / scores['random']:.3f}")


if __name__ == "__main__":
    main()
