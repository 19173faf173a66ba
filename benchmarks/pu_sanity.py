"""Does the PU classifier learn on the synthetic classification view? (thesis 5.2, Table 2's top rows)

Trains the PU trainable (``trainables.pu_classification.run``, the code every table2 / fig5 trial runs)
twice on the default synthetic view: P+N with clean labels (the upper baseline) and 50%P+U with
cross-entropy (the lower baseline), with ``search_spaces.table2``'s synthetic recipe unless overridden.
Prints test accuracy, mean recall and mean F1 per epoch, then the majority baseline (every test image
predicted negative) and last the ratio P+N mean F1 / majority mean F1, which must be far above 1::

    python benchmarks/pu_sanity.py [--images-per-class N] [--epochs N] [--lr LR] [--batch-size B]
        [--lr-schedule constant|cosine] [--head-scale S] [--seed 0] [--setups pn,pu]

Target (issue 19): P+N clean mean F1 >= 0.70 and accuracy >= 0.80, flat over the last epochs.
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch

import trainables.pu_classification as pu
from benchmarks._common import machine_line, verdict
from search_spaces.table2 import RECIPES
from trainables.config import PUClassificationConfig
from trainables.metrics import ConfusionMatrix
from trainables.models import build_model

SETUPS = {"pn": ("P+N", {"setup": "pn", "labelled_fraction": 1.0}),
          "pu": ("50%P+U", {"setup": "pu", "labelled_fraction": 0.5})}
TAIL = 3  # epochs over which "converged" is judged


def majority_scores(cfg: PUClassificationConfig) -> dict[str, float]:
    """Scores of predicting class 0 (the majority: negatives are half the test set) for every test image."""
    truth = torch.from_numpy(pu.load_pu_data(cfg, "test").labels)
    matrix = ConfusionMatrix(11)
    matrix.update(torch.zeros_like(truth), truth)
    scores = matrix.compute()
    return {"acc": scores["pixel_acc"], "mean_recall": scores["mean_recall"], "mean_f1": scores["mean_f1"]}


def train(cfg: PUClassificationConfig, name: str) -> list[dict]:
    """Run one trial of ``cfg``, printing a line per epoch; return its reports."""
    reports: list[dict] = []

    def report(metrics: dict, _state: dict) -> None:
        reports.append(metrics)
        print(f"{name:>7} epoch {metrics['train/epoch']:3d}  loss {metrics['train/loss']:.3f}  "
              f"acc {metrics['test/acc']:.3f}  mean recall {metrics['test/mean_recall']:.3f}  "
              f"mean F1 {metrics['test/mean_f1']:.3f}", flush=True)

    start = time.perf_counter()
    pu.run(cfg, report=report)
    print(f"{name:>7} wall time {time.perf_counter() - start:.1f} s")
    return reports


def main() -> None:
    recipe = RECIPES["synthetic"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=recipe["images_per_class"])
    parser.add_argument("--epochs", type=int, default=recipe["epochs"])
    parser.add_argument("--lr", type=float, default=recipe["lr"])
    parser.add_argument("--batch-size", type=int, default=recipe["batch_size"])
    parser.add_argument("--lr-schedule", default=recipe.get("lr_schedule", "constant"),
                        help="constant | cosine (PUClassificationConfig.lr_schedule)")
    parser.add_argument("--head-scale", type=float, default=None,
                        help="cifar_cnn's head_scale (default: trainables.models.CIFAR_HEAD_SCALE)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setups", default="pn,pu", help="comma-separated subset of pn,pu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a table2 trial gets 1 CPU)")
    parser.add_argument("--cache-dir", default="", help="synthetic data cache (default: $NOISY_TRANSFER_CACHE)")
    args = parser.parse_args()
    if args.head_scale is not None:  # the trainable builds its model through this name
        pu.build_model = functools.partial(_build_with_head_scale, head_scale=args.head_scale)
    print(machine_line())
    values = {**recipe, "data": "synthetic", "seed": args.seed, "images_per_class": args.images_per_class,
              "epochs": args.epochs, "lr": args.lr, "lr_schedule": args.lr_schedule, "batch_size": args.batch_size,
              "num_threads": args.threads,
              "data_cache": args.cache_dir}
    print(f"recipe: {values}  head_scale {args.head_scale or 'default'}")
    torch.set_num_threads(args.threads)
    results = {}
    for key in args.setups.split(","):
        name, overrides = SETUPS[key]
        results[key] = train(PUClassificationConfig(**{**values, **overrides}), name)
    cfg = PUClassificationConfig(**values)
    majority = majority_scores(cfg)
    print(f"majority baseline: acc {majority['acc']:.3f}  mean recall {majority['mean_recall']:.3f}  "
          f"mean F1 {majority['mean_f1']:.3f}")
    if "pn" in results:
        tail = results["pn"][-TAIL:]
        f1 = [m["test/mean_f1"] for m in tail]
        acc = float(np.mean([m["test/acc"] for m in tail]))
        met = min(f1) >= 0.70 and acc >= 0.80
        print(f"P+N last {TAIL} epochs: mean F1 {np.mean(f1):.3f} (range {max(f1) - min(f1):.3f}), "
              f"acc {acc:.3f}: {verdict(met)}")
        print(f"ratio P+N mean F1 / majority mean F1 {results['pn'][-1]['test/mean_f1'] / majority['mean_f1']:.2f}")


def _build_with_head_scale(name: str, num_classes: int, head_scale: float, **kwargs):
    if name == "cifar_cnn":
        kwargs["head_scale"] = head_scale
    return build_model(name, num_classes, **kwargs)


if __name__ == "__main__":
    main()
