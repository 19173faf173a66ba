"""What does early stopping save the ``search`` preset? The same trials with the scheduler and run to the end.

Both sides run the ``search`` preset (noise rates x label transform x loss and its nuisance parameters,
the preset's epochs, the transfer probe on) at a smaller data size through ``study/run.py``'s ``main()``
on one local Ray, with the same trials:

1. early: the preset as it is: ASHA on the ``epoch_total`` clock, comparing ``scheduler/score`` (the
   transfer probe at the pre-training rungs, the latest fine-tuning validation mean IU after);
2. full: the same study with ASHA replaced by FIFO (every trial runs all its epochs).

Both sides draw with Optuna's seeded random sampler (``--sampler random``), whose draws do not depend on
the results, so they run the very same trial configs (checked; TPE would draw differently once the
early side's pruned trials fed it).

Prints the trial-epochs each side spent (pre-training, probe evaluations and fine-tuning), the wall time
of each side's trials, each side's best validation objective and that trial's test score, the Spearman
rank correlation between each probe rung and the final validation objective over the full run's
trials with its 95% interval, what a probe costs against a pre-training epoch, both sides' epochs priced
at the same per-epoch seconds (the wall ratio with the load taken out), and last the ratios of epochs and
wall time early/full. Targets: both <= 0.40, the best validation objective within 0.01 of the full run's, a
probe <= 0.3 of a pre-training epoch::

    python benchmarks/early_stopping.py [--trials 12] [--image-size 32] [--images-per-class 30]
        [--epochs-pretrain N] [--epochs-finetune N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (epochs_spent, finetune_sizes, local_ray, machine_line, read_study,  # noqa: E402
                     register_preset, run_cli, scratch_folder, timed_fits, tune_results, verdict)

from search_spaces import PRESETS  # noqa: E402
from trainables.probe import probe_epochs  # noqa: E402

PRESET = "bench-search"
SEARCHED = ("noise_unsegment", "noise_misclassify", "label_transform", "loss", "q", "beta", "gamma", "prior",
            "warmup_epochs", "lr_pretrain")
RATIO_TARGET = 0.40
OBJECTIVE_TOLERANCE = 0.01
PROBE_COST_TARGET = 0.3
MIN_RUNG_CORRELATION = 0.5


def fifo_scheduler(preset, constants):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def side(output: Path, name: str, trials: int, full: bool) -> dict:
    """Run one side; return its wall time, epochs, best trial and configs."""
    import study.driver

    original = study.driver.make_scheduler
    if full:
        study.driver.make_scheduler = fifo_scheduler  # run every trial to its last epoch
    fits: list[float] = []
    try:
        with timed_fits(fits):
            wall = run_cli(["--preset", PRESET, "--output", str(output), "--name", name, "--sampler", "random",
                            "--num-samples", str(trials), "--cpus-per-trial", "1",
                            "--max-concurrent", str(os.cpu_count() or 1), "--progress", "off"])
    finally:
        study.driver.make_scheduler = original
    frame, history = read_study(output / name)
    ended = frame[frame["status"].isin(["TERMINATED", "STOPPED"])]
    complete = frame[frame["status"] == "TERMINATED"]
    best = complete.loc[complete["objective"].idxmax()]
    return {"fit": fits[0], "wall": wall, "epochs": epochs_spent(history), "history": history, "trials": frame,
            "frames": tune_results(output / "ray", name),
            "best": float(best["objective"]), "best_test": test_score(history, best["trial_id"]),
            "stopped": frame["stopped_at"].value_counts().drop("", errors="ignore").to_dict(),
            "configs": sorted(config_key(row) for _, row in ended.iterrows()), "errors": len(frame) - len(ended)}


def config_key(row: pd.Series) -> tuple:
    return tuple("-" if _missing(row[k]) else (round(row[k], 9) if isinstance(row[k], float) else row[k])
                 for k in SEARCHED if k in row)


def test_score(history: pd.DataFrame, trial_id: str, last: int = 5) -> float:
    """The mean of a trial's last ``last`` fine-tuning test mean IUs (what the tables report)."""
    rows = history[(history["trial_id"] == trial_id) & (history["phase"] == "finetune")]
    return float(rows.sort_values("epoch")["finetune/test_mean_iu"].dropna().tail(last).mean())


def spearman_interval(rho: float, n: int) -> tuple[float, float]:
    """95% interval of a Spearman rho over n pairs: Fisher's z with the variance 1.06 / (n - 3) of
    Fieller, Hartley & Pearson (1957); (nan, nan) below 4 pairs."""
    if n < 4 or not np.isfinite(rho):
        return float("nan"), float("nan")
    z, half = np.arctanh(np.clip(rho, -0.999999, 0.999999)), 1.96 * np.sqrt(1.06 / (n - 3))
    return float(np.tanh(z - half)), float(np.tanh(z + half))


def rung_correlations(full: dict, rungs: tuple[int, ...]) -> list[tuple[int, float, int]]:
    """(probe epoch, Spearman rho between its probe value and the final objective, n) over the full run."""
    history, trials = full["history"], full["trials"].set_index("trial_id")
    probes = history[(history["phase"] == "pretrain") & history["probe/val_mean_iu"].notna()]
    rows = []
    for epoch in rungs:
        at = probes[probes["epoch"] == epoch].set_index("trial_id")["probe/val_mean_iu"]
        final = trials.loc[at.index, "objective"]
        rho = stats.spearmanr(at.to_numpy(), final.to_numpy()).statistic if len(at) > 2 else float("nan")
        rows.append((epoch, float(rho), len(at)))
    return rows


def probe_cost(frames: dict[str, pd.DataFrame]) -> tuple[float, float]:
    """(median probe seconds, median pre-training epoch seconds without a probe) from Ray's own reports
    (``time_this_iter_s``) of the full run."""
    reports = pd.concat(list(frames.values()), ignore_index=True)
    pretrain = reports[reports["phase"] == "pretrain"]
    probed = pretrain["probe/val_mean_iu"].notna() if "probe/val_mean_iu" in pretrain else False
    plain = pretrain.loc[~probed, "time_this_iter_s"]
    probe = pretrain["probe/seconds"].median() if "probe/seconds" in pretrain else float("nan")
    return float(probe), float(plain.median()) if len(plain) else float("nan")


def finetune_epoch_cost(frames: dict[str, pd.DataFrame]) -> float:
    """Median seconds of a fine-tuning epoch (Ray's ``time_this_iter_s``) in the full run."""
    reports = pd.concat(list(frames.values()), ignore_index=True)
    return float(reports.loc[reports["phase"] == "finetune", "time_this_iter_s"].median())


def priced(result: dict, probe_s: float, pretrain_s: float, finetune_s: float) -> float:
    """Seconds a side's trial-epochs cost at one set of per-epoch prices: the wall-time ratio with the
    machine's load taken out (both sides priced alike), for when the two sides ran at different loads."""
    probes = int(result["history"]["probe/val_mean_iu"].notna().sum())
    return (result["epochs"]["pretrain"] * pretrain_s + probes * probe_s
            + result["epochs"]["finetune"] * finetune_s)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def report(early: dict, full: dict, args: argparse.Namespace) -> None:
    constants = PRESETS[PRESET].trial_configs("synthetic")[0]
    rungs = probe_epochs(constants["epochs_pretrain"], constants["epochs_finetune"])
    same = early["configs"] == full["configs"]
    print(f"{args.trials} trials of the search preset at {args.images_per_class} images/class, {args.image_size} px, "
          f"{constants['epochs_pretrain']} + {constants['epochs_finetune']} epochs, probes at pre-training epochs "
          f"{', '.join(map(str, rungs)) or 'none'}; same trial configs on both sides: {'yes' if same else 'NO'}")
    for name, result in (("early", early), ("full", full)):
        epochs, probes = result["epochs"], int(result["history"]["probe/val_mean_iu"].notna().sum())
        print(f"{name:>5}: {epochs['total']:4d} trial-epochs ({epochs['pretrain']} pre-training, {probes} of them "
              f"with a probe, + {epochs['finetune']} fine-tuning); stopped early {result['stopped'] or 'none'}; "
              f"{result['errors']} errors; trials {result['fit']:.1f} s; best validation objective "
              f"{result['best']:.4f}, that trial's test score {result['best_test']:.4f}")
    for epoch, rho, n in rung_correlations(full, rungs):
        low, high = spearman_interval(rho, n)
        print(f"probe rung pre-training epoch {epoch}: Spearman rho with the final validation objective {rho:+.3f} "
              f"(95% interval {low:+.2f} to {high:+.2f}) over {n} trials"
              f"{'' if rho >= MIN_RUNG_CORRELATION else ' (below 0.5: move this rung later)'}")
    probe_s, epoch_s = probe_cost(full["frames"])
    print(f"a probe costs {probe_s:.2f} s, a pre-training epoch without one {epoch_s:.2f} s: ratio "
          f"{probe_s / epoch_s:.3f} (target <= {PROBE_COST_TARGET}: {verdict(probe_s / epoch_s <= PROBE_COST_TARGET)})")
    gap = full["best"] - early["best"]
    print(f"best validation objective full - early {gap:+.4f} "
          f"(target <= {OBJECTIVE_TOLERANCE}: {verdict(gap <= OBJECTIVE_TOLERANCE)})")
    ratio = early["epochs"]["total"] / full["epochs"]["total"]
    print(f"ratio epochs early/full {ratio:.3f} (target <= {RATIO_TARGET:.2f}: {verdict(ratio <= RATIO_TARGET)})")
    finetune_s = finetune_epoch_cost(full["frames"])
    cost = priced(early, probe_s, epoch_s, finetune_s) / priced(full, probe_s, epoch_s, finetune_s)
    print(f"ratio cost early/full {cost:.3f} (both sides' epochs priced at the full run's medians: pre-training "
          f"{epoch_s:.2f} s, probe {probe_s:.2f} s, fine-tuning {finetune_s:.2f} s; what the wall ratio would be "
          f"at equal load)")
    wall = early["fit"] / full["fit"]
    print(f"ratio wall early/full {wall:.3f} (target <= {RATIO_TARGET:.2f}: {verdict(wall <= RATIO_TARGET)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="trials of each side (--num-samples)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images-per-class", type=int, default=30)
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
            early = side(output, "early", args.trials, full=False)
            print(f"early: {early['fit']:.1f} s, {machine_line()}", flush=True)
            full = side(output, "full", args.trials, full=True)
            print(f"full: {full['fit']:.1f} s, {machine_line()}", flush=True)
    print()
    report(early, full, args)


if __name__ == "__main__":
    main()
