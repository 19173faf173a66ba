"""What does the pre-training cache save a study whose trials share pre-trainings?

A fine-tuning sweep: ``--variants`` fine-tuning learning rates x ``--seeds`` seeds. Trials of one seed
share their pre-training (same noise, loss, data and seed: the same ``pretrain_key()``), so the study
holds ``--seeds`` distinct pre-training configs. Both sides run it through ``study/run.py``'s ``main()``
on one local Ray, as many trials at once as the machine has cores:

1. cache: the study as it runs by default (pre-trained extractors cached under the study's storage);
2. no cache: the same trials with ``pretrain_cache=""``, every trial pre-trains for itself.

Prints the pre-trainings each side ran and the epochs it spent, the wall times, and last the ratio of
epochs cache/no cache. Target: pre-training runs once per distinct pre-training config::

    python benchmarks/pretrain_cache.py [--variants 3] [--seeds 2] [--image-size 64]
        [--images-per-class 20] [--epochs-pretrain 6] [--epochs-finetune 4] [--keep]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (epochs_spent, finetune_sizes, local_ray, machine_line, preset_config, read_study, register_preset,  # noqa: E402
                     run_cli, scratch_folder, timed_fits, verdict)

from trainables.config import PretrainFinetuneConfig  # noqa: E402
from trainables.data.sources import load_task_data  # noqa: E402

LEARNING_RATES = (1e-3, 2e-3, 4e-3, 8e-4, 3e-3, 6e-3, 5e-4, 1.5e-3)


def side(output: Path, preset: str, name: str, seeds: int) -> dict:
    fits: list[float] = []
    with timed_fits(fits):
        wall = run_cli(["--preset", preset, "--output", str(output), "--name", name, "--seeds", str(seeds),
                        "--cpus-per-trial", "1"])
    trials, history = read_study(output / name)
    if not (trials["status"] == "TERMINATED").all():
        raise SystemExit(f"{name}: not every trial finished:\n{trials[['trial_id', 'status', 'error']]}")
    config_keys = [k for k in PretrainFinetuneConfig.__dataclass_fields__ if k in trials]
    keys = {PretrainFinetuneConfig.from_dict({k: _plain(row[k]) for k in config_keys}).pretrain_key()
            for _, row in trials.iterrows()}
    pretrain = history[history["phase"] == "pretrain"]
    ran = pretrain[pretrain["pretrain/cache_hit"] == 0]["trial_id"].nunique()
    hits = int((trials["pretrain/cache_hit"] == 1).sum())
    return {"fit": fits[0], "wall": wall, "epochs": epochs_spent(history), "trials": len(trials),
            "distinct": len(keys), "pretrainings": int(ran), "hits": hits}


def _plain(value):
    """A parquet cell back as the plain Python value a config holds (NaN -> None)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=3, choices=range(1, len(LEARNING_RATES) + 1),
                        metavar=f"1..{len(LEARNING_RATES)}", help="fine-tuning learning rates per pre-training")
    parser.add_argument("--seeds", type=int, default=2, help="distinct pre-trainings")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images-per-class", type=int, default=20)
    parser.add_argument("--epochs-pretrain", type=int, default=6)
    parser.add_argument("--epochs-finetune", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the temporary study folders")
    args = parser.parse_args()

    sizes = {"image_size": args.image_size, "images_per_class": args.images_per_class,
             **finetune_sizes(args.images_per_class), "epochs_pretrain": args.epochs_pretrain,
             "epochs_finetune": args.epochs_finetune, "warmup_epochs": 0}
    variants = {f"lr_finetune={lr:g}": {"lr_finetune": lr} for lr in LEARNING_RATES[:args.variants]}
    register_preset("bench-cache", base=sizes, conditions=variants, seeds=args.seeds)
    register_preset("bench-nocache", base=sizes, seeds=args.seeds,
                    conditions={name: {**values, "pretrain_cache": ""} for name, values in variants.items()})
    print(machine_line())
    with scratch_folder("nt-bench-cache-", keep=args.keep) as folder:
        output = folder / "results"
        load_task_data(preset_config("bench-cache", output))  # generate the data once, untimed
        with local_ray(os.cpu_count() or 1):
            cached = side(output, "bench-cache", "cache", args.seeds)
            print(f"cache: {cached['fit']:.1f} s, {machine_line()}", flush=True)
            uncached = side(output, "bench-nocache", "nocache", args.seeds)
            print(f"no cache: {uncached['fit']:.1f} s, {machine_line()}", flush=True)

    print()
    print(f"{args.variants} fine-tuning variants x {args.seeds} seeds = {cached['trials']} trials, "
          f"{cached['distinct']} distinct pre-trainings of {args.epochs_pretrain} epochs, then {args.epochs_finetune} "
          f"fine-tuning epochs; {os.cpu_count()} trials at once")
    for name, result in (("cache", cached), ("no cache", uncached)):
        epochs = result["epochs"]
        print(f"{name:>8}: {result['pretrainings']} pre-trainings run, {result['hits']} trials from the cache; "
              f"{epochs['total']} epochs ({epochs['pretrain']} pre-training + {epochs['finetune']} fine-tuning); "
              f"trials {result['fit']:.1f} s")
    print(f"wall time cache/no cache {cached['fit'] / uncached['fit']:.3f}")
    met = cached["pretrainings"] == cached["distinct"]
    ratio = cached["epochs"]["total"] / uncached["epochs"]["total"]
    print(f"ratio epochs cache/no cache {ratio:.3f} ({cached['pretrainings']} pre-trainings for {cached['distinct']} "
          f"distinct configs; target: one each: {verdict(met)})")


if __name__ == "__main__":
    main()
