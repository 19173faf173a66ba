"""Is data ever the bottleneck of a trial? Noise synthesis throughput, and the loader's share of a step.

1. Noise synthesis: label maps per second of ``trainables.noise.corrupt_dataset`` for each noise type
   (unsegment, misclassify, false_segment, boundary) on the pre-training labels of the synthetic benchmark
   (fold 1), next to a reference that loops over pixels in Python (unsegment, a few maps). Noise is drawn
   once per data set, when a trial builds it, never per epoch; the script prints that one-off cost next to
   an epoch's.
2. Loader share: one pre-training epoch of the in-memory loader alone (shuffle, flip + crop augmentation,
   normalisation: every batch materialised) against one training epoch that consumes the same loader
   (forward, loss, backward, optimiser step), at the trial's default model, batch size and threads.

Loader and training epochs alternate ``--repeats`` times and each keeps its fastest, since other
processes share the cores. Last line: the ratio loader/training-step time. Target: data under 5% of
step time::

    python benchmarks/data.py [--image-size 64] [--images-per-class 60] [--objects-per-image 1]
        [--threads 1] [--batch-size 32] [--width 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, verdict  # noqa: E402

from trainables.data.base import task_view  # noqa: E402
from trainables.data.loading import SegmentationDataset, make_loader  # noqa: E402
from trainables.data.sources import target_class  # noqa: E402
from trainables.data.synthetic import SYNTHETIC_CLASSES, SyntheticConfig, load_synthetic_segmentation  # noqa: E402
from trainables.engine import train_one_epoch  # noqa: E402
from trainables.losses import make_loss  # noqa: E402
from trainables.models import small_fcn  # noqa: E402
from trainables.noise import NoiseConfig, corrupt_dataset  # noqa: E402

TARGET = 0.05
NAMES = ("background",) + SYNTHETIC_CLASSES


def noises(fold: int) -> dict[str, NoiseConfig]:
    return {
        "unsegment": NoiseConfig("unsegment", p=0.5),
        "misclassify": NoiseConfig("misclassify", rate=0.5, num_classes=15),
        "false_segment": NoiseConfig("false_segment", p=0.5, target=target_class(fold)),
        "boundary": NoiseConfig("boundary", max_radius=3),
    }


def unsegment_per_pixel(label: np.ndarray, instances: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Reference: the unsegment noise written as a Python loop over pixels (what the real one avoids)."""
    flips: dict[int, bool] = {}
    for obj in sorted(int(i) for i in np.unique(instances) if i > 0):
        flips[obj] = bool(rng.random() < p)
    out = label.copy()
    height, width = label.shape
    for row in range(height):
        for column in range(width):
            obj = int(instances[row, column])
            if obj and flips[obj] and label[row, column] not in (0, 255):
                out[row, column] = 0
    return out


def best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images-per-class", type=int, default=60)
    parser.add_argument("--objects-per-image", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's CPUs; default 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="small_fcn width")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fold", type=int, default=1, choices=(1, 2, 3, 4))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())

    config = SyntheticConfig(image_size=args.image_size, images_per_class=args.images_per_class,
                             objects_per_image=args.objects_per_image)
    with tempfile.TemporaryDirectory(prefix="nt-bench-data-") as cache_dir:
        data = task_view(load_synthetic_segmentation("train", config, cache_dir), args.fold, "pretrain", NAMES)
    labels, instances = data.labels, data.instances
    objects = int(sum(len(np.unique(m[m > 0])) for m in instances))
    print(f"{len(labels)} pre-training label maps of {args.image_size}x{args.image_size} px, {objects} objects")

    print("noise synthesis (corrupt_dataset, the whole data set):")
    rates = {}
    for name, noise in noises(args.fold).items():
        seconds = best_of(lambda: corrupt_dataset(labels, instances, noise, seed=0), args.repeats)
        rates[name] = len(labels) / seconds
        print(f"  {name:>13}: {rates[name]:9.0f} maps/s ({seconds * 1000:7.1f} ms for the data set)")
    sample = min(20, len(labels))
    rng = np.random.default_rng(0)
    seconds = best_of(lambda: [unsegment_per_pixel(labels[i], instances[i], 0.5, rng) for i in range(sample)], 1)
    print(f"  per-pixel Python loop reference (unsegment): {sample / seconds:9.0f} maps/s, "
          f"{rates['unsegment'] * seconds / sample:.0f}x slower than corrupt_dataset")

    start = time.perf_counter()
    dataset = SegmentationDataset(data, noise=(noises(args.fold)["unsegment"],), seed=0)
    build_s = time.perf_counter() - start
    loader = make_loader(dataset, args.batch_size, shuffle=True, augment=True, seed=0)
    model = small_fcn(dataset.num_classes, width=args.width, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    loss_fn = make_loss("ce")

    def loader_epoch():
        for inputs, targets in loader:  # every batch is materialised (index, copy, normalise, augment)
            inputs.sum(), targets.sum()

    def training_epoch():
        train_one_epoch(model, loader, loss_fn, optimizer, device="cpu")

    loader.set_epoch(1)
    training_epoch()  # warm-up: allocator, oneDNN kernels
    loader_s, train_s = [], []
    for repeat in range(args.repeats):
        loader.set_epoch(repeat + 2)
        loader_s.append(best_of(loader_epoch, 1))
        train_s.append(best_of(training_epoch, 1))
    loader_best, train_best = min(loader_s), min(train_s)
    print(f"one pre-training epoch ({len(loader)} batches of {args.batch_size}, small_fcn width {args.width}, "
          f"{args.threads} thread(s)), best of {args.repeats}:")
    print(f"  loader alone   {loader_best * 1000:8.1f} ms ({loader_best / len(loader) * 1000:.2f} ms per batch)")
    print(f"  training epoch {train_best * 1000:8.1f} ms ({train_best / len(loader) * 1000:.2f} ms per step, "
          f"loader included)")
    print(f"  data set build with noise, once per trial (not per epoch): {build_s * 1000:.1f} ms "
          f"= {build_s / train_best:.3f} of one epoch")
    ratio = loader_best / train_best
    print(f"ratio data/step {ratio:.4f} (target < {TARGET:.2f}: {verdict(ratio < TARGET)})")


if __name__ == "__main__":
    main()
