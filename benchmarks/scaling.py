"""Do concurrent trials use this machine's cores? N identical trials at once against one after another.

Both sides run the same N trials (one condition, N seeds: the same work, different random streams)
through ``study/run.py``'s ``main()`` on one local Ray with as many CPUs as the machine has, one CPU per
trial (the study's default ``--cpus-per-trial``; each trial then runs one torch thread):

1. sequential: ``--max-concurrent 1``, the trials one after another;
2. concurrent: ``--max-concurrent N``, all N at once.

Prints each side's wall time of the trials (``Tuner.fit``; Ray's start-up and the parquet export are
left out), the mean time of one trial inside its actor on each side (how much concurrent trials slow one
another down), and last the speedup sequential/concurrent. Target: >= 0.8 x the number of cores::

    python benchmarks/scaling.py [--trials N] [--cores C] [--image-size 64] [--images-per-class 40]
        [--epochs-pretrain 6] [--epochs-finetune 12] [--keep]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (epochs_spent, finetune_sizes, local_ray, machine_line, preset_config, read_study, register_preset,  # noqa: E402
                     run_cli, scratch_folder, timed_fits, tune_results, verdict)

from trainables.data.sources import load_task_data  # noqa: E402

PRESET = "bench-scaling"


def side(output: Path, name: str, trials: int, max_concurrent: int) -> dict:
    fits: list[float] = []
    with timed_fits(fits):
        wall = run_cli(["--preset", PRESET, "--output", str(output), "--name", name, "--seeds", str(trials),
                        "--cpus-per-trial", "1", "--max-concurrent", str(max_concurrent)])
    frames = tune_results(output / "ray", name)
    inside = [float(frame["time_total_s"].iloc[-1]) for frame in frames.values()]
    frame_trials, history = read_study(output / name)
    if not (frame_trials["status"] == "TERMINATED").all():
        raise SystemExit(f"{name}: not every trial finished:\n{frame_trials[['trial_id', 'status', 'error']]}")
    return {"fit": fits[0], "wall": wall, "inside": sum(inside) / len(inside), "epochs": epochs_spent(history)["total"]}


def main() -> None:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=cores, help="CPUs given to Ray (default: this machine's)")
    parser.add_argument("--trials", type=int, default=None, help="N, the trials of each side (default: --cores)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images-per-class", type=int, default=40)
    parser.add_argument("--epochs-pretrain", type=int, default=6)
    parser.add_argument("--epochs-finetune", type=int, default=12)
    parser.add_argument("--keep", action="store_true", help="keep the temporary study folders")
    args = parser.parse_args()
    trials = args.trials or args.cores

    sizes = {"image_size": args.image_size, "images_per_class": args.images_per_class,
             **finetune_sizes(args.images_per_class), "epochs_pretrain": args.epochs_pretrain,
             "epochs_finetune": args.epochs_finetune, "warmup_epochs": 0}
    register_preset(PRESET, base=sizes, seeds=trials)
    print(machine_line())
    with scratch_folder("nt-bench-scaling-", keep=args.keep) as folder:
        output = folder / "results"
        load_task_data(preset_config(PRESET, output))  # generate the data once, untimed (seeds share it)
        with local_ray(args.cores):
            sequential = side(output, "sequential", trials, 1)
            print(f"sequential: {sequential['fit']:.1f} s, {machine_line()}", flush=True)
            concurrent = side(output, "concurrent", trials, trials)
            print(f"concurrent: {concurrent['fit']:.1f} s, {machine_line()}", flush=True)

    print()
    print(f"{trials} trials of {args.epochs_pretrain} pre-training + {args.epochs_finetune} fine-tuning epochs, "
          f"{args.images_per_class} images/class at {args.image_size} px, 1 CPU each; Ray has {args.cores} CPUs")
    for name, result in (("sequential", sequential), ("concurrent", concurrent)):
        print(f"{name:>10}: trials {result['fit']:6.1f} s (end to end {result['wall']:6.1f} s), one trial inside "
              f"its actor {result['inside']:5.1f} s on average, {result['epochs']} epochs")
    print(f"one trial's slowdown when {trials} run at once: {concurrent['inside'] / sequential['inside']:.2f}x")
    speedup = sequential["fit"] / concurrent["fit"]
    target = 0.8 * min(args.cores, trials)
    print(f"speedup sequential/concurrent {speedup:.2f} on {args.cores} cores (target >= {target:.2f}: "
          f"{verdict(speedup >= target)})")


if __name__ == "__main__":
    main()
