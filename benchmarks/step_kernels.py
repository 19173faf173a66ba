"""What three kernel-level changes of 2026-12-08 save in a default-study training step, side by side.

The default study's pre-training step (small_fcn, width 32, batch 32 x 32 px, 16 classes, channels_last,
one thread, Adam) spent about a fifth of its time outside the convolutions, in places that compute
nothing the thesis needs (``torch.profiler``, 2026-12-08):

- ``loss``: the negative-class losses flattened the logits into an ``(M, C)`` copy of the non-ignored
  elements (movedim + reshape + boolean indexing, and in the backward a zero-filled ``index_put``);
  now every element is scored in place and an ignored one weighs 0 (``trainables.losses``);
- ``upsample``: the decoder's bilinear upsampling got its gradient through ``torch.cat``'s backward as
  a channel slice of a channels-last tensor, which sends ``upsample_bilinear2d``'s backward to its
  generic kernel; now the gradient is made channels-last contiguous first (``trainables.models._upsample``);
- ``resample``: the head's logits are resampled onto the input grid by an einsum of interpolation
  matrices that were rebuilt on every call; now they are built once per shape (``SplitModel.resample``;
  the same values bit for bit). The transfer probe resamples 120 times.

Each side is built from the same seed and trained on the same batches; the "before" code is kept here,
as it was. Each round runs one step of every side, in an order that rotates between rounds, so a drift
of the machine's load hits all sides alike. Prints each side's median and minimum step time, its ratio
to ``before``, how far its parameters are from ``before``'s after the run (float noise, or another
result?; Adam on these random labels amplifies a rounding difference over the steps, so the
single-step loss and gradient gap from the same weights is printed first), and last
``ratio after/before``::

    python benchmarks/step_kernels.py [--steps 60] [--threads 1] [--batch-size 32] [--image-size 32]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

from trainables import losses, models  # noqa: E402
from trainables.runtime import place_model  # noqa: E402

SIDES = {"before": (False, False, False), "loss": (True, False, False), "upsample": (False, True, False),
         "resample": (False, False, True), "after": (True, True, True)}
NUM_CLASSES = 16  # 15 pre-training classes + background
IGNORED = 0.05  # share of pixels labelled 255 in the benchmark's batches


def compacting_forward(self: losses._NegativeClassLoss, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``_NegativeClassLoss.forward`` before 2026-12-08: the non-ignored elements flattened to ``(M, C)``."""
    log_p, target = losses._flatten(logits, target, self.ignore_index)
    if self.class_weights is None:
        weights = torch.ones_like(target, dtype=log_p.dtype)
    else:
        weights = self.class_weights.to(log_p.dtype)[target]
    return losses._weighted_mean(self.element_loss(log_p, target), weights)


def plain_upsample(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """``models._upsample`` before 2026-12-08: F.interpolate, the gradient as torch.cat leaves it."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def einsum_resample(self: models.SplitModel, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``SplitModel.resample`` before 2026-12-08: matrices rebuilt per call, one einsum."""
    rows = models._interpolation_matrix(size[0], logits.shape[-2], self.stride, self.offset).to(logits)
    cols = models._interpolation_matrix(size[1], logits.shape[-1], self.stride, self.offset).to(logits)
    return torch.einsum("nchw,yh,xw->ncyx", logits, rows, cols)


@contextlib.contextmanager
def code_of(new_loss: bool, new_upsample: bool, new_resample: bool) -> Iterator[None]:
    """Run the block with the old or the new loss, upsampling and resampling, restoring the code after."""
    loss_forward, upsample = losses._NegativeClassLoss.forward, models._upsample
    resample = models.SplitModel.resample
    if not new_loss:
        losses._NegativeClassLoss.forward = compacting_forward
    if not new_upsample:
        models._upsample = plain_upsample
    if not new_resample:
        models.SplitModel.resample = einsum_resample
    try:
        yield
    finally:
        losses._NegativeClassLoss.forward, models._upsample = loss_forward, upsample
        models.SplitModel.resample = resample


def batches(args: argparse.Namespace, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` fixed training batches: channels-last images (what the augmenting loader yields) and
    labels with :data:`IGNORED` of their pixels ignored."""
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.image_size, args.image_size)
    out = []
    for _ in range(count):
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
        labels = torch.randint(0, NUM_CLASSES, shape, generator=generator)
        labels[torch.rand(shape, generator=generator) < IGNORED] = 255
        out.append((images.contiguous(memory_format=torch.channels_last), labels))
    return out


def first_step_gap(args: argparse.Namespace, loss_fn: torch.nn.Module, images: torch.Tensor,
                   labels: torch.Tensor) -> tuple[float, float]:
    """The loss and the largest gradient entry of ``after`` minus ``before`` on one batch from the same
    weights: what the new code changes in a single step, before training amplifies it."""
    results = []
    for side in ("before", "after"):
        model = place_model(models.build_model("small_fcn", NUM_CLASSES, generator=torch.Generator().manual_seed(0),
                                               width=args.width), torch.device("cpu"))
        with code_of(*SIDES[side]):
            loss = loss_fn(model(images), labels)
            loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (loss_before, grad_before), (loss_after, grad_after) = results
    return abs(loss_after - loss_before), (grad_after - grad_before).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per side (after 3 warm-up steps)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's default: 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32, help="the default study's synthetic size")
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"small_fcn width {args.width}, batch {args.batch_size} x {args.image_size} px, {NUM_CLASSES} classes, "
          f"channels_last, {args.threads} thread(s), Adam; {args.steps} timed steps per side")
    weights = torch.linspace(0.5, 2.0, NUM_CLASSES)  # class-weighted CE, as the pre-training warm-up
    loss_fn = losses.make_loss("ce", class_weights=weights)
    warmup = 3
    data = batches(args, 8)
    loss_gap, grad_gap = first_step_gap(args, loss_fn, *data[0])
    print(f"one step from the same weights, after - before: |loss| {loss_gap:.2e}, max |gradient| {grad_gap:.2e}")
    sides = {}
    for name in SIDES:
        model = models.build_model("small_fcn", NUM_CLASSES, generator=torch.Generator().manual_seed(0),
                                   width=args.width)
        model = place_model(model, torch.device("cpu"))
        sides[name] = (model, torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4))
    times: dict[str, list[float]] = {name: [] for name in SIDES}
    names = list(SIDES)
    for step in range(warmup + args.steps):
        images, labels = data[step % len(data)]
        order = names[step % len(names):] + names[:step % len(names)]
        for name in order:
            model, optimizer = sides[name]
            with code_of(*SIDES[name]):
                start = time.perf_counter()
                loss = loss_fn(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                elapsed = time.perf_counter() - start
            if step >= warmup:
                times[name].append(elapsed)
    reference = dict(sides["before"][0].named_parameters())
    base = statistics.median(times["before"])
    for name in SIDES:
        median, fastest = statistics.median(times[name]), min(times[name])
        drift = max((p.detach() - reference[k].detach()).abs().max().item()
                    for k, p in sides[name][0].named_parameters())
        print(f"{name:>9}: median {median * 1000:6.1f} ms/step  min {fastest * 1000:6.1f}  "
              f"x{median / base:.3f} of before  max |param - before| after {warmup + args.steps} steps {drift:.2e}")
    print(f"ratio after/before {statistics.median(times['after']) / base:.3f} (median step time; target < 1)")


if __name__ == "__main__":
    main()
