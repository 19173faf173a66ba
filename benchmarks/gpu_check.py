"""GPU check: what the study's CUDA path gives on one GPU, in one non-interactive run of <= 8 minutes.

Sections, each printing ``ratio ...`` lines (all output also goes to ``--out``):

1. ``step``: a small_fcn trial step in bf16 autocast + channels_last (the study's CUDA path) against float32
   NCHW on the same GPU: ``ratio step float32/bf16`` (> 1: the fast path is faster).
2. ``alexnet``: FCN-AlexNet at the VOC study's input size (128 px, batch 20, 21 classes) on synthetic tensors
   through the CUDA path: training images/s and peak GPU memory. Then the checkpoint cost at this size: the
   write time of a model + optimizer checkpoint (``runtime.save_state``) against a VOC epoch's estimated
   time (``VOC_EPOCH_IMAGES`` / images/s): ``ratio checkpoint/epoch`` (the study's limit is 0.05).
3. ``sharing``: the same 4 short trials as a study with ``--gpus-per-trial`` 1, 0.5 and 0.25 (1, 2 and 4
   trials at once on the GPU): trials per hour of each and ``ratio trials/hour``.
4. ``smoke``: the study's own smoke run ``study/run.py --smoke --preset quick --gpus-per-trial 0.5``.

``--cpu-dry-run`` runs every section on the CPU at tiny sizes through the same code paths (a Ray with one
logical GPU), so CI keeps the script working. A section that fails or runs past ``--timeout-per-section``
prints why and the next one runs; sections that would start after ``--budget`` seconds are skipped. Exit
status: 0 when every section ran. Run on a GPU node from the repository root with the venv active::

    python benchmarks/gpu_check.py --out gpu_check.txt [--budget 450] [--timeout-per-section 240]
    python benchmarks/gpu_check.py --cpu-dry-run --out /tmp/gpu_check.txt
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, register_preset, run_cli, scratch_folder, timed_fits  # noqa: E402

from trainables.losses import make_loss  # noqa: E402
from trainables.models import build_model  # noqa: E402
from trainables.runtime import autocast_dtype, place_model, save_state  # noqa: E402

VOC_EPOCH_IMAGES = 4000  # search_spaces/base.py: the VOC epochs are sized for ~4000 images at batch 20
CHECKPOINT_LIMIT = 0.05  # a checkpoint per epoch may cost at most 5% of the epoch
SIZES = {  # full size on a GPU; tiny for --cpu-dry-run (same code, seconds on a CPU)
    "gpu": {"step": (32, 64, 32), "alexnet": (20, 128), "trial": {"image_size": 64, "images_per_class": 10,
            "finetune_train_per_class": 5, "finetune_val_per_class": 5,
            "epochs_pretrain": 3, "epochs_finetune": 3, "width": 32}, "calls": 10, "warmup": 2, "sharing_trials": 4},
    "cpu": {"step": (2, 32, 8), "alexnet": (1, 32), "trial": {"image_size": 32, "images_per_class": 3,
            "finetune_train_per_class": 2, "finetune_val_per_class": 1, "epochs_pretrain": 1, "epochs_finetune": 1, "width": 8, "batch_size": 8}, "calls": 1, "warmup": 0,
            "sharing_trials": 2},  # the dry run checks the code path: 2 trials share a GPU as 4 would
}


class Tee:
    """Write to the terminal and to the ``--out`` file at once (flushed per write: a killed run keeps it)."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def __getattr__(self, name: str):  # encoding, isatty, fileno...: the terminal's
        return getattr(self.streams[0], name)


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread after ``seconds``."""
    def expire(signum, frame):
        raise TimeoutError(f"ran past --timeout-per-section {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(function: Callable[[], object], device: torch.device, calls: int, warmup: int) -> float:
    """Wall seconds per call after ``warmup`` calls, with the device synchronised around the timing."""
    for _ in range(warmup):
        function()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        function()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def training_step(model_name: str, classes: int, batch: int, size: int, device: torch.device, fast: bool,
                  **model_kwargs) -> tuple[Callable[[], None], torch.nn.Module, torch.optim.Optimizer]:
    """One SGD step on a fixed synthetic batch; ``fast``: the study's path for ``device`` (place_model's
    layout, autocast_dtype), else float32 NCHW on the same device."""
    model = build_model(model_name, classes, generator=torch.Generator().manual_seed(0), **model_kwargs)
    model = place_model(model, device) if fast else model.to(device)
    dtype = autocast_dtype(device) if device.type == "cuda" else torch.bfloat16  # CPU dry run: bf16 too
    inputs = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    if fast:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch, size, size), generator=torch.Generator().manual_seed(2)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = make_loss("ce")

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=fast):
            logits = model(inputs)
        loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, model, optimizer


def section_step(device: torch.device, sizes: dict) -> None:
    batch, size, width = sizes["step"]
    times = {}
    for fast in (False, True):
        step, _, _ = training_step("small_fcn", 16, batch, size, device, fast, width=width)
        times[fast] = seconds_per_call(step, device, sizes["calls"], sizes["warmup"])
    print(f"small_fcn width {width}, batch {batch} x {size} px: float32 NCHW {times[False] * 1000:.1f} ms/step, "
          f"bf16 autocast + channels_last {times[True] * 1000:.1f} ms/step")
    print(f"ratio step float32/bf16 {times[False] / times[True]:.3f}")


def section_alexnet(device: torch.device, sizes: dict) -> None:
    batch, size = sizes["alexnet"]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step, model, optimizer = training_step("fcn_alexnet", 21, batch, size, device, fast=True)
    seconds = seconds_per_call(step, device, sizes["calls"], sizes["warmup"])
    images_per_s = batch / seconds
    peak = (f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda"
            else "n/a on the CPU")
    print(f"FCN-AlexNet, batch {batch} x {size} px, 21 classes, the study's {device.type} path: "
          f"{images_per_s:.1f} training images/s, peak memory {peak}")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}  # what a phase checkpoint holds
    with tempfile.TemporaryDirectory(prefix="nt-gpu-check-") as folder:
        start = time.perf_counter()
        path = save_state(state, folder)
        write_s = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6
    epoch_s = VOC_EPOCH_IMAGES / images_per_s
    ratio = write_s / epoch_s
    print(f"checkpoint: {size_mb:.0f} MB written in {write_s:.2f} s; a VOC epoch ({VOC_EPOCH_IMAGES} images) at "
          f"this rate: {epoch_s:.1f} s")
    print(f"ratio checkpoint/epoch {ratio:.3g} (limit {CHECKPOINT_LIMIT}: "
          f"{'within' if ratio <= CHECKPOINT_LIMIT else 'OVER'})")


def section_sharing(device: torch.device, sizes: dict, output: Path) -> None:
    trials = sizes["sharing_trials"]
    register_preset("gpu-check-sharing", base=sizes["trial"], seeds=trials)
    rates = {}
    for per_gpu in (1, 2, 4):
        fits: list[float] = []
        with timed_fits(fits):
            run_cli(["--preset", "gpu-check-sharing", "--output", str(output), "--name", f"share-{per_gpu}",
                     "--gpus-per-trial", str(1 / per_gpu), "--cpus-per-trial", "1"])
        rates[per_gpu] = trials / fits[0] * 3600
        print(f"{per_gpu} trial(s) per GPU (--gpus-per-trial {1 / per_gpu:g}): {trials} trials in {fits[0]:.1f} s, "
              f"{rates[per_gpu]:.0f} trials/hour", flush=True)
    for per_gpu in (2, 4):
        print(f"ratio trials/hour {per_gpu} per GPU/1 per GPU {rates[per_gpu] / rates[1]:.3f}")


def section_smoke(device: torch.device, sizes: dict, output: Path) -> None:
    wall = run_cli(["--smoke", "--preset", "quick", "--output", str(output), "--name", "smoke",
                    "--gpus-per-trial", "0.5", "--cpus-per-trial", "1"])
    print(f"study/run.py --smoke --preset quick --gpus-per-trial 0.5: finished in {wall:.1f} s "
          f"(exit status 0)")


@contextlib.contextmanager
def ray_with_one_gpu(num_cpus: int) -> Iterator[None]:
    """A fresh local Ray with one GPU (a logical one in a dry run), shut down on exit."""
    import ray

    os.environ["RAY_ADDRESS"] = "local"  # run_study's ray.init() reuses this instance; never a cluster
    ray.init(num_cpus=num_cpus, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def with_ray(args: argparse.Namespace, section: Callable[[], None]) -> None:
    """Run ``section`` on its own local Ray with one GPU (a Ray that fails to start fails only it)."""
    with ray_with_one_gpu(max(4, args.cpus)):
        section()


def run_sections(args: argparse.Namespace, device: torch.device, output: Path) -> list[str]:
    """Run each section under the time limits; return the names of those that did not finish."""
    sizes = SIZES["cpu" if args.cpu_dry_run else "gpu"]
    sections = [("step", lambda: section_step(device, sizes)), ("alexnet", lambda: section_alexnet(device, sizes)),
                ("sharing", lambda: with_ray(args, lambda: section_sharing(device, sizes, output))),
                ("smoke", lambda: with_ray(args, lambda: section_smoke(device, sizes, output)))]
    start, failed = time.perf_counter(), []
    for name, section in sections:
        elapsed = time.perf_counter() - start
        print(f"\n== {name} (at {elapsed:.0f} s; {machine_line()})", flush=True)
        if elapsed >= args.budget:
            print(f"section {name}: SKIPPED, the --budget of {args.budget} s is spent")
            failed.append(name)
            continue
        tick = time.perf_counter()
        try:
            with time_limit(max(1, min(args.timeout_per_section, int(args.budget - elapsed)))):
                section()
            print(f"section {name}: done in {time.perf_counter() - tick:.1f} s", flush=True)
        except Exception as error:  # report and go on: one broken section must not hide the others
            traceback.print_exc(file=sys.stdout)
            print(f"section {name}: FAILED after {time.perf_counter() - tick:.1f} s: {type(error).__name__}: {error}")
            failed.append(name)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU, same code paths")
    parser.add_argument("--out", type=Path, default=None, help="also write all output to this file")
    parser.add_argument("--budget", type=int, default=450, help="seconds; later sections are skipped")
    parser.add_argument("--timeout-per-section", type=int, default=240, help="seconds per section")
    parser.add_argument("--cpus", type=int, default=min(8, os.cpu_count() or 1),
                        help="CPUs of the local Ray (>= 4: four trials share the GPU at once)")
    args = parser.parse_args(argv)
    for name, value, low in (("--budget", args.budget, 1), ("--timeout-per-section", args.timeout_per_section, 1),
                             ("--cpus", args.cpus, 1)):
        if value < low:
            parser.error(f"{name} must be >= {low}, got {value}")
    if not args.cpu_dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; run on a GPU node, or pass --cpu-dry-run to check the script")
    device = torch.device("cpu" if args.cpu_dry_run else "cuda")
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 (closed below, after stdout is restored)
    stdout = sys.stdout
    sys.stdout = Tee(stdout, out) if out else stdout
    try:
        gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none (--cpu-dry-run)"
        print(f"gpu_check {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine_line()}; GPU: {gpu}; "
              f"torch {torch.__version__}")
        with scratch_folder("nt-gpu-check-") as folder:
            failed = run_sections(args, device, folder / "results")
        print(f"\ngpu_check: {'all sections ran' if not failed else 'did not finish: ' + ', '.join(failed)}")
        return 1 if failed else 0
    finally:
        sys.stdout = stdout
        if out:
            out.close()


if __name__ == "__main__":
    sys.exit(main())
