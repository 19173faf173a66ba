"""How close does a small_fcn training step come to what this CPU can do? (FLOP/s, 1 thread by default)

One run measures, side by side:

1. attainable FLOP/s: a large float32 matmul (``--matmul-size``, 2 n^3 FLOPs) and, at the trial's input
   shape, the forward convolution of the model's largest layer alone (the layer with the most FLOPs);
2. achieved FLOP/s of a whole training step (forward, loss, backward, SGD step) of ``small_fcn`` at the
   trial's shapes, with its forward + backward FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``;
3. the same step in each variant that could raise it on a CPU: channels_last, oneDNN off (to show what
   it gives), bf16 autocast (only where the CPU has native bf16), other batch sizes, ``torch.compile``
   (``--compile``; compiling takes a minute or more). Each variant prints its FLOP/s and how far its
   parameters after ``CHECK_STEPS`` steps are from the float32 baseline's (float noise is ~1e-6).

Then the reason for the gap, measured with ``torch.profiler``: the share of the step's op time in the
FLOP-doing ops (convolutions, matrix products), their own rate, and the bound on the ratio if they ran at
the attainable rate while the memory-bound rest took what it takes now.
Prints ``ratio achieved/attainable`` last: the baseline step's FLOP/s over the larger attainable figure.
Target: >= 0.50. Timings keep the best of ``--repeats`` on shared cores::

    python benchmarks/throughput.py [--threads 1] [--batch-size 32] [--image-size 64] [--width 32]
        [--classes 16] [--repeats 5] [--steps 5] [--compile]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # torch.profiler on a CPU: no "gpuGetDeviceCount failed" error line
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, verdict  # noqa: E402

from trainables.losses import make_loss  # noqa: E402
from trainables.models import small_fcn  # noqa: E402

TARGET = 0.50
CHECK_STEPS = 3  # steps compared with the float32 baseline for the "results unchanged" check


def best_time(function: Callable[[], object], repeats: int, calls: int) -> float:
    """Seconds per call of ``function``: the best of ``repeats`` timings of ``calls`` calls each."""
    function()  # warm-up: oneDNN primitives, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def count_flops(function: Callable[[], object]) -> int:
    """FLOPs of one call of ``function`` as FlopCounterMode counts them (matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def matmul_flops_per_s(n: int, repeats: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_time(lambda: a @ b, repeats, 3)


def largest_conv(model: nn.Module, inputs: torch.Tensor) -> tuple[str, nn.Module, torch.Tensor, int]:
    """(name, layer, its input, forward FLOPs) of the convolution with the most FLOPs at ``inputs``."""
    seen: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, (m, args[0])))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(inputs)
    for hook in hooks:
        hook.remove()
    flops = {name: count_flops(lambda m=m, x=x: m(x)) for name, (m, x) in seen.items()}
    name = max(flops, key=flops.get)
    return name, seen[name][0], seen[name][1].detach(), flops[name]


def conv_flops_per_s(layer: nn.Module, x: torch.Tensor, flops: int, repeats: int) -> float:
    with torch.no_grad():
        return flops / best_time(lambda: layer(x), repeats, 5)


class Step:
    """One training step of small_fcn on a fixed batch: the model, its SGD optimiser, the loss."""

    def __init__(self, args: argparse.Namespace, batch_size: int, channels_last: bool = False,
                 bf16: bool = False, compile_model: bool = False) -> None:
        generator = torch.Generator().manual_seed(0)
        self.model = small_fcn(args.classes, width=args.width, generator=generator)
        data = torch.Generator().manual_seed(1)
        self.inputs = torch.randn(batch_size, 3, args.image_size, args.image_size, generator=data)
        self.labels = torch.randint(0, args.classes, (batch_size, args.image_size, args.image_size), generator=data)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.inputs = self.inputs.contiguous(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.bf16 = bf16
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.loss = make_loss("ce")

    def __call__(self) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.forward(self.inputs)
        loss = self.loss(logits.float(), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def parameters_after(self, steps: int) -> torch.Tensor:
        for _ in range(steps):
            self()
        return torch.cat([p.detach().reshape(-1).float() for p in self.model.parameters()])


FLOP_OPS = ("conv", "addmm", "aten::mm", "aten::bmm")  # the ops FlopCounterMode counts (by name)


def flop_op_share(step: Callable[[], object], steps: int) -> float:
    """The share of a step's op time (torch.profiler's self CPU time, summed over ``steps`` steps) spent in
    the ops that do the counted FLOPs: convolutions forward and backward, and matrix products."""
    from torch.profiler import ProfilerActivity, profile

    step()  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    flop_time = sum(event.self_cpu_time_total for event in events if any(op in event.key for op in FLOP_OPS))
    return flop_time / total


def print_bound(baseline: dict, attainable: float, share: float) -> None:
    """Why the step stays below the attainable rate: the time outside the FLOP ops (memory-bound batch
    norm, ReLU, pooling, upsampling, the loss and the optimizer) and the FLOP ops' own rate."""
    flop_ops_rate = baseline["rate"] / share  # the FLOP ops' FLOP/s while they run
    # If the FLOP ops ran at the attainable rate and everything else took the time it takes now:
    fastest = baseline["flops"] / attainable + (1.0 - share) * baseline["seconds"]
    print(f"time in FLOP ops (conv fwd/bwd, matmul) {share:.1%} of the step; they run at "
          f"{flop_ops_rate / 1e9:.2f} GFLOP/s = {flop_ops_rate / attainable:.2f} of attainable; the rest "
          f"{(1.0 - share) * baseline['seconds'] * 1000:.0f} ms/step is memory-bound work no FLOP counts")
    print(f"bound: with every FLOP op at the attainable rate the step would reach "
          f"{baseline['flops'] / fastest / attainable:.3f} of attainable")


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX): without it bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_variant(args: argparse.Namespace, batch_size: int, reference: torch.Tensor | None, **options) -> dict:
    """Seconds per step, FLOP/s (eager float32 FLOPs of the same step) and the largest parameter
    difference from ``reference`` after CHECK_STEPS steps (None: the variant trains something else)."""
    flops = count_flops(Step(args, batch_size))
    seconds = best_time(Step(args, batch_size, **options), args.repeats, args.steps)
    difference = None
    if reference is not None:
        difference = float((Step(args, batch_size, **options).parameters_after(CHECK_STEPS) - reference).abs().max())
    return {"seconds": seconds, "flops": flops, "rate": flops / seconds, "difference": difference}


def variants(args: argparse.Namespace) -> list[tuple[str, int, dict, bool]]:
    """(name, batch size, Step options, same training as the baseline?) of every variant tried."""
    tried = [("channels_last", args.batch_size, {"channels_last": True}, True),
             ("oneDNN off", args.batch_size, {"mkldnn": False}, True)]
    if cpu_has_bf16():
        tried.append(("bf16 autocast", args.batch_size, {"bf16": True}, True))
    for batch_size in args.other_batch_sizes:
        tried.append((f"batch {batch_size}", batch_size, {}, False))
    if args.compile:
        tried.append(("torch.compile", args.batch_size, {"compile_model": True}, True))
    return tried


def print_variant(name: str, result: dict, baseline: dict) -> None:
    difference = ("n/a (another batch size trains something else)" if result["difference"] is None
                  else f"{result['difference']:.2e}")
    print(f"{name:>16}: {result['seconds'] * 1000:8.1f} ms/step  {result['rate'] / 1e9:7.2f} GFLOP/s  "
          f"x{result['rate'] / baseline['rate']:.2f} of the baseline  max |param - baseline| after "
          f"{CHECK_STEPS} steps {difference}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's default: 1 CPU)")
    parser.add_argument("--batch-size", type=int, default=32, help="the study's default batch size")
    parser.add_argument("--other-batch-sizes", type=int, nargs="*", default=[8, 128])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--classes", type=int, default=16, help="15 pre-training classes + background")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile (slow to compile)")
    args = parser.parse_args()
    for name, value in (("--threads", args.threads), ("--batch-size", args.batch_size), ("--repeats", args.repeats),
                        ("--steps", args.steps), ("--matmul-size", args.matmul_size)):
        if value < 1:
            raise SystemExit(f"{name} must be >= 1, got {value}")
    torch.set_num_threads(args.threads)
    print(f"{machine_line()}  torch threads {args.threads}  oneDNN {torch.backends.mkldnn.is_available()}  "
          f"native bf16 {cpu_has_bf16()}")

    matmul = matmul_flops_per_s(args.matmul_size, args.repeats)
    model = small_fcn(args.classes, width=args.width, generator=torch.Generator().manual_seed(0))
    inputs = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    name, layer, x, layer_flops = largest_conv(model, inputs)
    conv = conv_flops_per_s(layer, x, layer_flops, args.repeats)
    attainable = max(matmul, conv)
    print(f"attainable: matmul {args.matmul_size}^2 float32 {matmul / 1e9:.2f} GFLOP/s; largest conv "
          f"{name} {layer} on {tuple(x.shape)}: {conv / 1e9:.2f} GFLOP/s ({layer_flops / 1e9:.2f} GFLOP)")

    reference = Step(args, args.batch_size).parameters_after(CHECK_STEPS)
    baseline = run_variant(args, args.batch_size, reference)
    print(f"small_fcn width {args.width}, batch {args.batch_size} x {args.image_size} px, {args.classes} "
          f"classes: {baseline['flops'] / 1e9:.2f} GFLOP per step (forward + backward)")
    print_variant("float32 NCHW", baseline, baseline)
    for variant, batch_size, options, same in variants(args):
        mkldnn = options.pop("mkldnn", True)
        with torch.backends.mkldnn.flags(enabled=mkldnn):
            print_variant(variant, run_variant(args, batch_size, reference if same else None, **options), baseline)
    print_bound(baseline, attainable, flop_op_share(Step(args, args.batch_size), args.steps))
    ratio = baseline["rate"] / attainable
    print(f"ratio achieved/attainable {ratio:.3f} (step {baseline['rate'] / 1e9:.2f} GFLOP/s over "
          f"{attainable / 1e9:.2f}; target >= {TARGET:.2f}: {verdict(ratio >= TARGET)})")


if __name__ == "__main__":
    main()
