"""What does the study machinery cost one trial? (Ray Tune, MLflow logging, a checkpoint every epoch)

Runs one pretrain-then-finetune trial of about a minute twice, side by side in one process run:

1. bare: the same training as a plain PyTorch loop in this process (load the data, pre-train with a
   validation pass per epoch and a test pass at the end, transfer g, fine-tune with a test pass per epoch),
   with no reports and no checkpoints;
2. study: the same trial through ``study/run.py``'s ``main()`` on a fresh local Ray with the trial's
   CPUs: Tune trial actor, a report and a checkpoint per epoch, MLflow child run and artifacts.

``--direct`` adds a third side: the trainable's ``run()`` in this process with a no-op reporter, which
splits the overhead between the trainable itself and Ray + MLflow.

Prints each side's wall time, the per-epoch times, what a checkpoint costs, the study's fixed costs
(Ray start, MLflow parent run, parquet export) and last the ratio of the trial's wall time through the
machinery (``Tuner.fit`` of the one-trial study; Ray's start-up is a per-study cost and is left out) to
the bare loop's. The defaults make a trial of about a minute on one CPU, the study's default
``--cpus-per-trial``. Target: <= 1.10 for a trial of a minute or more::

    python benchmarks/overhead.py [--cpus 1] [--image-size 64] [--images-per-class 60]
        [--epochs-pretrain 13] [--epochs-finetune 20] [--repeats 1] [--direct] [--keep]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (epochs_spent, local_ray, machine_line, preset_config, read_study, register_preset,  # noqa: E402
                     run_cli, scratch_folder, timed_fits, tune_results, verdict)

from trainables.config import PretrainFinetuneConfig  # noqa: E402
from trainables.data.loading import class_counts, make_loader  # noqa: E402
from trainables.data.sources import load_task_data  # noqa: E402
from trainables.engine import evaluate_segmentation, train_one_epoch  # noqa: E402
from trainables.losses import frequency_class_weights, make_loss  # noqa: E402
from trainables.models import build_model, reset_head, transfer_features  # noqa: E402
from trainables.pretrain_finetune import make_optimizer  # noqa: E402
from trainables.runtime import save_state, stream_seed  # noqa: E402

TARGET = 1.10
PRESET = "bench-overhead"


def bare_loop(cfg: PretrainFinetuneConfig) -> dict:
    """The trial's training as a plain loop: same data, model, optimiser, schedule, evaluations."""
    times = {"pretrain": [], "finetune": []}
    start = time.perf_counter()
    data = load_task_data(cfg)
    load_s = time.perf_counter() - start

    def phase(name, model, train_set, lr, epochs, loss_fn, evaluations):
        optimizer, schedule = make_optimizer(cfg, model.parameters(), lr, epochs)
        loader = make_loader(train_set, cfg.batch_size, shuffle=True, augment=True,
                             seed=stream_seed(cfg.seed, name))
        scores = None
        for epoch in range(1, epochs + 1):
            tick = time.perf_counter()
            loader.set_epoch(epoch)
            train_one_epoch(model, loader, loss_fn, optimizer, device="cpu")
            schedule.step()
            for dataset, every_epoch in evaluations:
                if every_epoch or epoch == epochs:
                    evaluation = make_loader(dataset, cfg.batch_size, shuffle=False, augment=False, seed=0)
                    scores = evaluate_segmentation(model, evaluation, dataset.num_classes, device="cpu")
            times[name].append(time.perf_counter() - tick)
        return scores

    # The trainable's seeds, so both sides train the very same weights (same final mean IU).
    torch.manual_seed(stream_seed(cfg.seed, "pretrain-init"))
    generator = torch.Generator().manual_seed(stream_seed(cfg.seed, "pretrain-weights"))
    donor = build_model(cfg.model, data.pretrain_train.num_classes, generator=generator, width=cfg.width)
    weights = None
    if cfg.class_weighting:
        weights = frequency_class_weights(class_counts(data.pretrain_train.labels, data.pretrain_train.num_classes))
    phase("pretrain", donor, data.pretrain_train, cfg.lr_pretrain, cfg.epochs_pretrain,
          make_loss("ce", class_weights=weights), [(data.pretrain_val, True), (data.pretrain_test, False)])
    torch.manual_seed(stream_seed(cfg.seed, "finetune-init"))
    generator = torch.Generator().manual_seed(stream_seed(cfg.seed, "finetune-weights"))
    model = build_model(cfg.model, data.finetune_train.num_classes, generator=generator, width=cfg.width)
    transfer_features(donor, model)
    reset_head(model, torch.Generator().manual_seed(stream_seed(cfg.seed, "head")))
    scores = phase("finetune", model, data.finetune_train, cfg.lr_finetune, cfg.epochs_finetune, make_loss("ce"),
                   [(data.finetune_test, True)])
    # What a per-epoch checkpoint of this model costs to write (the study side writes one each epoch).
    state = {"model": model.state_dict(), "epoch": cfg.epochs_finetune}
    with tempfile.TemporaryDirectory() as folder:
        tick = time.perf_counter()
        for _ in range(5):
            save_state(state, folder)
        checkpoint_s = (time.perf_counter() - tick) / 5
        checkpoint_bytes = (Path(folder) / "state.pt").stat().st_size
    return {"wall": time.perf_counter() - start, "load": load_s, "times": times, "mean_iu": scores["mean_iu"],
            "checkpoint_s": checkpoint_s, "checkpoint_bytes": checkpoint_bytes}


def direct_run(cfg: PretrainFinetuneConfig) -> dict:
    """The trainable's own ``run()`` in this process with a reporter that does nothing."""
    from trainables.pretrain_finetune import run

    start = time.perf_counter()
    last = run(cfg, report=lambda metrics, state: None, device="cpu")
    return {"wall": time.perf_counter() - start, "mean_iu": last["finetune/test_mean_iu"]}


def study_side(output: Path, name: str, cpus: int) -> dict:
    """The same trial through ``study/run.py`` on the running local Ray: wall times and Tune's frame."""
    fits: list[float] = []
    with timed_fits(fits):
        study_s = run_cli(["--preset", PRESET, "--output", str(output), "--name", name,
                           "--cpus-per-trial", str(cpus), "--max-concurrent", "1"])
    (frame,) = tune_results(output / "ray", name).values()
    trials, history = read_study(output / name)
    return {"fit": fits[0], "wall": study_s, "frame": frame, "inside": float(frame["time_total_s"].iloc[-1]),
            "mean_iu": float(trials["finetune/test_mean_iu"].iloc[0]), "epochs": epochs_spent(history)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=1,
                        help="CPUs of the trial (--cpus-per-trial, default 1 as in study/run.py) and torch "
                        "threads of the bare loop")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images-per-class", type=int, default=60)
    parser.add_argument("--epochs-pretrain", type=int, default=13)
    parser.add_argument("--epochs-finetune", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate bare and study this often and keep each side's fastest (shared cores)")
    parser.add_argument("--direct", action="store_true", help="also time the trainable's run() without Ray")
    parser.add_argument("--keep", action="store_true", help="keep the temporary study folder")
    args = parser.parse_args()

    sizes = {"image_size": args.image_size, "images_per_class": args.images_per_class,
             "finetune_train_per_class": min(10, args.images_per_class), "epochs_pretrain": args.epochs_pretrain,
             "epochs_finetune": args.epochs_finetune, "warmup_epochs": 0}
    register_preset(PRESET, base=sizes)
    print(machine_line())
    bares, directs, studies = [], [], []
    with scratch_folder("nt-bench-overhead-", keep=args.keep) as folder:
        output = folder / "results"
        # The study's own trial config (preset defaults, data cache), so both sides train the same thing.
        cfg = preset_config(PRESET, output, num_threads=args.cpus)
        load_task_data(cfg)  # generate the synthetic data once, untimed: both sides read it from the cache
        torch.set_num_threads(args.cpus)
        with local_ray(args.cpus):
            for repeat in range(args.repeats):
                bares.append(bare_loop(cfg))
                print(f"[{repeat}] bare loop: {bares[-1]['wall']:.1f} s, {machine_line()}", flush=True)
                if args.direct:
                    directs.append(direct_run(cfg))
                    print(f"[{repeat}] run() without Ray: {directs[-1]['wall']:.1f} s, {machine_line()}", flush=True)
                studies.append(study_side(output, f"overhead-{repeat}", args.cpus))
                print(f"[{repeat}] study: trial {studies[-1]['fit']:.1f} s, end to end {studies[-1]['wall']:.1f} s, "
                      f"{machine_line()}", flush=True)

    bare = min(bares, key=lambda side: side["wall"])
    study = min(studies, key=lambda side: side["fit"])
    per_report = study["frame"]["time_this_iter_s"].to_numpy()
    pretrain_n = args.epochs_pretrain
    print()
    print(f"trial: {args.epochs_pretrain} pre-training + {args.epochs_finetune} fine-tuning epochs, "
          f"{args.images_per_class} images/class at {args.image_size} px, {args.cpus} CPU(s); study epochs spent "
          f"{study['epochs']}; best of {args.repeats}")
    print(f"bare loop wall            {bare['wall']:7.1f} s   (data load {bare['load']:.1f} s; fine-tuning test "
          f"mean IU {bare['mean_iu']:.4f})")
    if directs:
        direct = min(directs, key=lambda side: side["wall"])
        print(f"run(), no Ray             {direct['wall']:7.1f} s   (fine-tuning test mean IU {direct['mean_iu']:.4f})")
    print(f"study trial (Tuner.fit)   {study['fit']:7.1f} s   (inside the trial actor {study['inside']:.1f} s; "
          f"fine-tuning test mean IU {study['mean_iu']:.4f})")
    print(f"study end to end          {study['wall']:7.1f} s   (+ Ray start-up is outside: one Ray for all sides; "
          f"MLflow parent run, export, summary: {study['wall'] - study['fit']:.1f} s)")
    for name, bare_times, study_times in (
        ("pre-training", bare["times"]["pretrain"], per_report[:pretrain_n]),
        ("fine-tuning", bare["times"]["finetune"], per_report[pretrain_n:]),
    ):
        # The first report's time also holds the data loading: compare the epochs after it.
        skip = 1 if name == "pre-training" and len(bare_times) > 1 else 0
        bare_mean = sum(bare_times[skip:]) / len(bare_times[skip:])
        study_mean = float(study_times[skip:].mean())
        print(f"{name:>13} epoch: bare {bare_mean:6.2f} s, study {study_mean:6.2f} s (report + checkpoint "
              f"included), difference {study_mean - bare_mean:+.2f} s")
    print(f"trial start and finish outside the trainable (actor start, imports, MLflow child run, artifacts): "
          f"{study['fit'] - study['inside']:.1f} s")
    print(f"checkpoint write: {bare['checkpoint_s'] * 1000:.1f} ms for {bare['checkpoint_bytes'] / 1e6:.2f} MB "
          f"(the fine-tuned model)")
    if bare["mean_iu"] != study["mean_iu"]:
        print(f"note: the sides' mean IUs differ ({bare['mean_iu']:.6f} vs {study['mean_iu']:.6f})")
    ratio = study["fit"] / bare["wall"]
    if not math.isfinite(ratio):
        raise SystemExit("no ratio: a side did not finish")
    note = "" if bare["wall"] >= 60.0 else " (this trial is shorter than the target's minute)"
    print(f"ratio end-to-end/bare {study['wall'] / bare['wall']:.3f}")
    print(f"ratio trial/bare {ratio:.3f} (target <= {TARGET:.2f}: {verdict(ratio <= TARGET)}){note}")


if __name__ == "__main__":
    main()
