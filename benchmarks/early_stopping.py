"""What does ASHA save the ``search`` preset? The same trials with early stopping and run to the end.

Both sides run the ``search`` preset (Optuna TPE over noise rates x loss and its nuisance parameters,
the preset's epochs and learning rates) at a smaller data size through ``study/run.py``'s ``main()`` on
one local Ray, with the same number of trials and the same sampler seed:

1. ASHA: the preset as it is (ASHA on the ``finetune/epoch`` clock, grace period max_t/4, reduction
   factor 3);
2. full: the same study with ASHA replaced by FIFO (every trial runs all its epochs). Only the scheduler
   differs; while Optuna is in its random start-up phase (the first 10 trials of TPE) both sides draw the
   very same trial configs, which the script checks.

Prints the trial-epochs each side spent (pre-training and fine-tuning; ASHA's clock is fine-tuning, so
it never saves pre-training epochs), the best objective each found, the wall times, and last the ratio
of epochs ASHA/full. Target: <= 40% of the epochs for a best objective within 0.01 of the full run's::

    python benchmarks/early_stopping.py [--trials 10] [--image-size 32] [--images-per-class 12]
        [--epochs-pretrain N] [--epochs-finetune N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (epochs_spent, finetune_sizes, local_ray, machine_line, read_study, register_preset, run_cli,  # noqa: E402
                     scratch_folder, timed_fits, verdict)

from search_spaces import PRESETS  # noqa: E402
from study.driver import make_scheduler  # noqa: E402

PRESET = "bench-search"
SEARCHED = ("noise_unsegment", "noise_misclassify", "loss", "q", "beta", "gamma", "prior", "warmup_epochs",
            "lr_pretrain")
EPOCH_TARGET = 0.40
OBJECTIVE_TOLERANCE = 0.01


def fifo_scheduler(preset, constants):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def side(output: Path, name: str, trials: int, full: bool) -> dict:
    import study.driver

    original = study.driver.make_scheduler
    if full:
        study.driver.make_scheduler = fifo_scheduler  # run every trial to its last epoch
    fits: list[float] = []
    try:
        with timed_fits(fits):
            wall = run_cli(["--preset", PRESET, "--output", str(output), "--name", name,
                            "--num-samples", str(trials), "--cpus-per-trial", "1",
                            "--max-concurrent", str(os.cpu_count() or 1)])
    finally:
        study.driver.make_scheduler = original
    frame, history = read_study(output / name)
    finished = frame[frame["status"] == "TERMINATED"]
    configs = sorted(tuple("-" if _missing(row[k]) else (round(row[k], 9) if isinstance(row[k], float) else row[k])
                           for k in SEARCHED) for _, row in finished.iterrows())
    stopped = int((finished["finetune/epoch"] < finished["epochs_finetune"]).sum())
    return {"fit": fits[0], "wall": wall, "epochs": epochs_spent(history), "best": float(finished["objective"].max()),
            "trials": len(finished), "stopped": stopped, "configs": configs,
            "errors": len(frame) - len(finished)}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="trials of each side (--num-samples)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images-per-class", type=int, default=12)
    parser.add_argument("--epochs-pretrain", type=int, default=None, help="default: the search preset's")
    parser.add_argument("--epochs-finetune", type=int, default=None, help="default: the search preset's")
    parser.add_argument("--keep", action="store_true", help="keep the temporary study folders")
    args = parser.parse_args()

    sizes = {"image_size": args.image_size, "images_per_class": args.images_per_class,
             **finetune_sizes(args.images_per_class)}
    for key in ("epochs_pretrain", "epochs_finetune"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    register_preset(PRESET, base=sizes, like="search", num_samples=args.trials)
    print(machine_line())
    with scratch_folder("nt-bench-asha-", keep=args.keep) as folder:
        output = folder / "results"
        with local_ray(os.cpu_count() or 1):
            asha = side(output, "asha", args.trials, full=False)
            print(f"ASHA: {asha['fit']:.1f} s, {machine_line()}", flush=True)
            full = side(output, "full", args.trials, full=True)
            print(f"full: {full['fit']:.1f} s, {machine_line()}", flush=True)

    print()
    same = asha["configs"] == full["configs"]
    print(f"{args.trials} trials of the search preset at {args.images_per_class} images/class, {args.image_size} px; "
          f"same trial configs on both sides: {'yes' if same else 'NO'}")
    for name, result in (("ASHA", asha), ("full", full)):
        epochs = result["epochs"]
        print(f"{name:>5}: {epochs['total']:4d} trial-epochs ({epochs['pretrain']} pre-training + "
              f"{epochs['finetune']} fine-tuning), {result['stopped']} of {result['trials']} trials stopped early, "
              f"{result['errors']} errors; best objective {result['best']:.4f}; trials {result['fit']:.1f} s")
    preset = PRESETS[PRESET]
    constants = preset.trial_configs("synthetic")[0]
    scheduler = make_scheduler(preset, constants)
    pretrain, finetune = constants["epochs_pretrain"], constants["epochs_finetune"]
    try:  # the milestones of the scheduler the preset really builds (a private attribute of Ray's ASHA)
        first_rung = min(milestone for milestone, _ in scheduler._brackets[0]._rungs)
    except (AttributeError, IndexError, TypeError, ValueError):
        first_rung = max(1, finetune // 4)
    floor = (pretrain + first_rung) / (pretrain + finetune)
    print(f"each trial: {pretrain} pre-training + {finetune} fine-tuning epochs; ASHA's first rung is fine-tuning "
          f"epoch {first_rung}, so even stopping every trial there spends {floor:.3f} of the epochs")
    finetune_ratio = asha["epochs"]["finetune"] / full["epochs"]["finetune"]
    ratio = asha["epochs"]["total"] / full["epochs"]["total"]
    gap = full["best"] - asha["best"]
    print(f"fine-tuning epochs ASHA/full {finetune_ratio:.3f}; wall time ASHA/full {asha['fit'] / full['fit']:.3f}")
    print(f"best objective full - ASHA {gap:+.4f} "
          f"(target <= {OBJECTIVE_TOLERANCE}: {verdict(gap <= OBJECTIVE_TOLERANCE)})")
    met = ratio <= EPOCH_TARGET and gap <= OBJECTIVE_TOLERANCE
    print(f"ratio epochs ASHA/full {ratio:.3f} (target <= {EPOCH_TARGET:.2f} with best objective within "
          f"{OBJECTIVE_TOLERANCE}: {verdict(met)})")


if __name__ == "__main__":
    main()
