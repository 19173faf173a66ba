"""What does the study machinery cost a trial, and what does reusing workers save? (Ray Tune, MLflow
logging, a checkpoint every epoch)

Runs, side by side in one process run:

1. bare: one trial's training as a plain PyTorch loop in this process (load the data, pre-train with a
   validation pass per epoch and a test pass at the end, transfer g, fine-tune with a validation and a test
   pass per epoch),
   with no reports and no checkpoints;
2. study without reuse: ``--trials`` trials (seeds) of the same config through ``study/run.py``'s ``main()``
   on a fresh local Ray with the trial's CPUs, one at a time, each in a fresh worker process
   (``reuse_actors=False``, Ray Tune's default): Tune trial actor, a report and a checkpoint per epoch,
   MLflow child run and artifacts;
3. study with reuse: the same study as study/driver.py runs it, ``reuse_actors=True``: the second and later
   trials run in the first trial's worker (no new process, no second torch import).

``--direct`` adds a side: the trainable's ``run()`` in this process with a no-op reporter, which splits
the overhead between the trainable itself and Ray + MLflow.

Prints each side's wall time, the per-epoch times, what a checkpoint costs, the fixed cost per trial
outside the trainable (``Tuner.fit`` minus the time inside the trials, per trial) with and without reuse,
and last the ratio of the trials' wall time through the machinery (``Tuner.fit``; Ray's start-up is a
per-study cost and is left out) to ``--trials`` bare loops. The defaults make trials of about 85 s on
one CPU, the study's default ``--cpus-per-trial``. Targets: fixed cost <= 1.0 s per trial and ratio
<= 1.03 with reuse::

    python benchmarks/overhead.py [--cpus 1] [--image-size 64] [--images-per-class 60] [--trials 3]
        [--more-trials 0] [--epochs-pretrain 6] [--epochs-finetune 8] [--repeats 1] [--direct] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (epochs_spent, finetune_sizes, local_ray, machine_line, preset_config, read_study, register_preset,  # noqa: E402
                     run_cli, scratch_folder, timed_fits, tune_results, verdict)

from trainables.config import PretrainFinetuneConfig  # noqa: E402
from trainables.data.loading import class_counts, make_loader  # noqa: E402
from trainables.data.sources import load_task_data  # noqa: E402
from trainables.engine import evaluate_segmentation, train_one_epoch  # noqa: E402
from trainables.losses import frequency_class_weights, make_loss  # noqa: E402
from trainables.models import build_model, reset_head, transfer_features  # noqa: E402
from trainables.pretrain_finetune import make_optimizer  # noqa: E402
from trainables.runtime import save_state, stream_seed  # noqa: E402

TARGET = 1.03  # trials through the study / the same trials as bare loops
FIXED_TARGET = 1.0  # seconds per trial outside the trainable
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
    # The trainable scores the fine-tuning validation split every epoch too (it feeds `objective`).
    scores = phase("finetune", model, data.finetune_train, cfg.lr_finetune, cfg.epochs_finetune, make_loss("ce"),
                   [(data.finetune_val, True), (data.finetune_test, True)])
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


@contextlib.contextmanager
def actor_reuse(reuse: bool) -> Iterator[None]:
    """Force Ray Tune's ``reuse_actors`` for the Tuners built inside (study/driver.py turns it on)."""
    from ray import tune

    original = tune.Tuner.__init__

    def init(self, *args, tune_config=None, **kwargs):
        if tune_config is not None:
            tune_config.reuse_actors = reuse
        original(self, *args, tune_config=tune_config, **kwargs)

    tune.Tuner.__init__ = init
    try:
        yield
    finally:
        tune.Tuner.__init__ = original


def study_side(output: Path, name: str, cpus: int, seed: int, reuse: bool, preset: str = PRESET) -> dict:
    """The preset's trials through ``study/run.py``, one at a time, on the running local Ray, with or
    without worker reuse: wall times, Tune's frames, the worker processes the trials ran in."""
    fits: list[float] = []
    with timed_fits(fits), actor_reuse(reuse):
        study_s = run_cli(["--preset", preset, "--output", str(output), "--name", name,
                           "--cpus-per-trial", str(cpus), "--max-concurrent", "1"])
    frames = list(tune_results(output / "ray", name).values())
    trials, history = read_study(output / name)
    first = trials[trials["seed"] == seed]
    inside = [float(frame["time_total_s"].iloc[-1]) for frame in frames]
    return {"fit": fits[0], "wall": study_s, "frame": frames[0], "inside": sum(inside), "trials": len(frames),
            "fixed": (fits[0] - sum(inside)) / len(frames), "workers": len({int(f["pid"].iloc[0]) for f in frames}),
            "mean_iu": float(first["finetune/test_mean_iu"].iloc[0]), "epochs": epochs_spent(history)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=1,
                        help="CPUs of the trial (--cpus-per-trial, default 1 as in study/run.py) and torch "
                        "threads of the bare loop")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images-per-class", type=int, default=60)
    parser.add_argument("--epochs-pretrain", type=int, default=6)
    parser.add_argument("--epochs-finetune", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate bare and study this often and keep each side's fastest (shared cores)")
    parser.add_argument("--trials", type=int, default=3,
                        help="trials per study (seeds), one at a time: with reuse, trials 2.. reuse the worker")
    parser.add_argument("--more-trials", type=int, default=0,
                        help="also run a reuse study of this many trials (> --trials): the two reuse studies "
                        "split the fixed cost into the worker's start-up (once per worker) and the cost of each "
                        "further trial on it (the slope)")
    parser.add_argument("--direct", action="store_true", help="also time the trainable's run() without Ray")
    parser.add_argument("--keep", action="store_true", help="keep the temporary study folder")
    args = parser.parse_args()

    if args.trials < 2:
        parser.error(f"--trials must be >= 2 (reuse starts with the second trial), got {args.trials}")
    if args.more_trials and args.more_trials <= args.trials:
        parser.error(f"--more-trials must be more than --trials ({args.trials}), got {args.more_trials}")
    sizes = {"image_size": args.image_size, "images_per_class": args.images_per_class,
             **finetune_sizes(args.images_per_class), "epochs_pretrain": args.epochs_pretrain,
             "epochs_finetune": args.epochs_finetune, "warmup_epochs": 0}
    register_preset(PRESET, base=sizes, seeds=args.trials)
    if args.more_trials:
        register_preset(f"{PRESET}-more", base=sizes, seeds=args.more_trials)
    print(machine_line())
    bares, directs, studies, more = [], [], {True: [], False: []}, []
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
                for reuse in (False, True):  # side by side, alternated per repeat
                    side = study_side(output, f"overhead-{repeat}-{'reuse' if reuse else 'fresh'}", args.cpus,
                                      cfg.seed, reuse)
                    studies[reuse].append(side)
                    print(f"[{repeat}] study, reuse_actors={reuse}: {side['trials']} trials {side['fit']:.1f} s, "
                          f"{side['workers']} worker process(es), {machine_line()}", flush=True)
                if args.more_trials:
                    more.append(study_side(output, f"overhead-{repeat}-more", args.cpus, cfg.seed, True,
                                           preset=f"{PRESET}-more"))
                    print(f"[{repeat}] study, reuse_actors=True: {more[-1]['trials']} trials {more[-1]['fit']:.1f} s, "
                          f"{more[-1]['workers']} worker process(es), {machine_line()}", flush=True)
    report(args, bares, directs, studies)
    if more:
        report_split(studies[True], more)


def report_split(fewer: list[dict], more: list[dict]) -> None:
    """The reuse studies' time outside the trials, F(N) = W + N * p over N trials: W, the worker's start-up
    (paid once per worker), and p, each further trial on the reused worker (the slope between two N)."""
    a, b = (min(sides, key=lambda side: side["fit"]) for sides in (fewer, more))
    if a["workers"] != 1 or b["workers"] != 1:
        raise SystemExit(f"the split needs every trial in one worker; got {a['workers']} and {b['workers']}")
    outside = {side["trials"]: side["fixed"] * side["trials"] for side in (a, b)}
    (n, f_n), (m, f_m) = sorted(outside.items())
    per_trial = (f_m - f_n) / (m - n)
    start_up = f_n - n * per_trial
    print(f"outside the trials with reuse: {f_n:.2f} s for {n} trials, {f_m:.2f} s for {m} trials")
    print(f"split: worker start-up {start_up:.2f} s once per worker; each further trial on a reused worker "
          f"{per_trial:.2f} s (target <= {FIXED_TARGET:.1f} s: {verdict(per_trial <= FIXED_TARGET)})")


def report(args: argparse.Namespace, bares: list[dict], directs: list[dict], studies: dict[bool, list[dict]]) -> None:
    """Print each side's best figures, the fixed cost per trial with and without reuse, and the ratios."""
    bare = min(bares, key=lambda side: side["wall"])
    best = {reuse: min(sides, key=lambda side: side["fit"]) for reuse, sides in studies.items()}
    study = best[True]
    per_report = study["frame"]["time_this_iter_s"].to_numpy()
    pretrain_n = args.epochs_pretrain
    print()
    print(f"trial: {args.epochs_pretrain} pre-training + {args.epochs_finetune} fine-tuning epochs, "
          f"{args.images_per_class} images/class at {args.image_size} px, {args.cpus} CPU(s); {args.trials} trials "
          f"one at a time per study; best of {args.repeats}")
    print(f"bare loop wall            {bare['wall']:7.1f} s   (data load {bare['load']:.1f} s; fine-tuning test "
          f"mean IU {bare['mean_iu']:.4f})")
    if directs:
        direct = min(directs, key=lambda side: side["wall"])
        print(f"run(), no Ray             {direct['wall']:7.1f} s   (fine-tuning test mean IU {direct['mean_iu']:.4f})")
    for reuse, side in best.items():
        print(f"study, reuse_actors={str(reuse):5}  {side['fit']:7.1f} s for {side['trials']} trials in "
              f"{side['workers']} worker(s) (inside the trials {side['inside']:.1f} s; first trial's mean IU "
              f"{side['mean_iu']:.4f}; end to end {side['wall']:.1f} s)")
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
    print(f"checkpoint write: {bare['checkpoint_s'] * 1000:.1f} ms for {bare['checkpoint_bytes'] / 1e6:.2f} MB "
          f"(the fine-tuned model)")
    for reuse, side in best.items():
        if bare["mean_iu"] != side["mean_iu"]:
            print(f"note: mean IUs differ (bare {bare['mean_iu']:.6f}, reuse_actors={reuse} {side['mean_iu']:.6f})")
    print(f"fixed cost per trial outside the trainable (actor start, imports, MLflow child run, artifacts): "
          f"without reuse {best[False]['fixed']:.2f} s, with reuse {best[True]['fixed']:.2f} s "
          f"(target <= {FIXED_TARGET:.1f} s: {verdict(best[True]['fixed'] <= FIXED_TARGET)})")
    ratios = {reuse: side["fit"] / (side["trials"] * bare["wall"]) for reuse, side in best.items()}
    if not all(math.isfinite(r) for r in ratios.values()):
        raise SystemExit("no ratio: a side did not finish")
    note = "" if bare["wall"] >= 60.0 else " (a trial shorter than the target's minute)"
    print(f"ratio trials/bare without reuse {ratios[False]:.3f}")
    print(f"ratio trials/bare {ratios[True]:.3f} (with reuse; target <= {TARGET:.2f}: "
          f"{verdict(ratios[True] <= TARGET)}){note}")

if __name__ == "__main__":
    main()
