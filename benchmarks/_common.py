"""Shared plumbing of the benchmark scripts: a private local Ray, throw-away study folders, benchmark-sized
presets, and readers of what a study spent.

Nothing here is timed by itself; each script times its own sides. Everything a benchmark writes goes to a
temporary folder that is removed at the end, and every Ray a benchmark starts is a fresh local one
(``RAY_ADDRESS=local``), so a benchmark never connects to, or disturbs, a cluster or another run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd


def finetune_sizes(images_per_class: int) -> dict[str, int]:
    """The fine-tuning split sizes a benchmark trial with ``images_per_class`` synthetic training images
    per class draws: validation first (at most the config default, 20, and a third of the pool), then
    training (at most the recommended 10) from the rest, so any size from 2 up builds a valid config."""
    val = max(1, min(20, images_per_class // 3))
    return {"finetune_val_per_class": val, "finetune_train_per_class": min(10, images_per_class - val)}


def machine_line() -> str:
    """CPU count and load average: other processes share the cores, and every figure depends on them."""
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = ["?"] * 3
    return f"cpus {os.cpu_count()}  load average {' '.join(load)}"


@contextlib.contextmanager
def scratch_folder(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary folder for the benchmark's studies, removed afterwards unless ``keep``."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        if keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    """A fresh local Ray with ``num_cpus`` CPUs (never an existing cluster), shut down on exit."""
    import ray

    os.environ["RAY_ADDRESS"] = "local"  # run_study's ray.init() reuses this instance; never a cluster
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def register_preset(name: str, *, base: Mapping[str, Any], conditions: Mapping[str, Mapping[str, Any]] | None = None,
                    seeds: int = 1, like: str | None = None, num_samples: int = 1) -> str:
    """Add a benchmark-sized preset to this process's preset table (nothing is written to disk).

    ``like``: copy that preset (its search space, scheduler clock, metric) and replace its sizes.
    """
    import dataclasses

    from search_spaces import PRESETS
    from search_spaces.base import Preset

    if like is not None:
        template = PRESETS[like]
        preset = dataclasses.replace(template, name=name, description=f"benchmark copy of {like}",
                                     base={**template.base, **base}, num_samples=num_samples)
    else:
        preset = Preset(name=name, description="benchmark", trainable="pretrain_finetune",
                        conditions=dict(conditions or {"Bench": {}}), base=dict(base), folds=(1,), seeds=seeds,
                        data_kinds=("synthetic",))
    PRESETS[name] = preset
    return name


def preset_config(name: str, output: Path, **overrides: Any) -> Any:
    """The first trial config of preset ``name`` as ``study/run.py --output OUTPUT`` would build it (same
    defaults, same data cache), with ``overrides``, as a PretrainFinetuneConfig."""
    from search_spaces import PRESETS
    from trainables.config import PretrainFinetuneConfig

    config = PRESETS[name].trial_configs("synthetic", overrides={"data_cache": str(output / ".cache" / "data")})[0]
    return PretrainFinetuneConfig.from_dict({**config, **overrides})


def run_cli(argv: list[str]) -> float:
    """Run ``study/run.py``'s ``main(argv)`` in this process; return its wall time in seconds."""
    from study.run import main

    start = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"study/run.py {' '.join(argv)} exited with {code}")
    return elapsed


@contextlib.contextmanager
def timed_fits(record: list[float]) -> Iterator[list[float]]:
    """Append the wall time of every ``Tuner.fit()`` (the trials, without Ray start-up or export)."""
    from ray import tune

    original = tune.Tuner.fit

    def fit(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            record.append(time.perf_counter() - start)

    tune.Tuner.fit = fit
    try:
        yield record
    finally:
        tune.Tuner.fit = original


def read_study(study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, history) of a finished study folder."""
    return pd.read_parquet(study_dir / "trials.parquet"), pd.read_parquet(study_dir / "history.parquet")


def epochs_spent(history: pd.DataFrame) -> dict[str, int]:
    """Epochs each phase really trained: pre-training epochs replayed from the cache cost nothing."""
    pretrain = history[history["phase"] == "pretrain"]
    if "pretrain/cache_hit" in pretrain:
        pretrain = pretrain[pretrain["pretrain/cache_hit"].fillna(0) == 0]
    finetune = history[history["phase"] == "finetune"]
    return {"pretrain": int(len(pretrain)), "finetune": int(len(finetune)),
            "total": int(len(pretrain) + len(finetune))}


def tune_results(storage: Path, name: str) -> dict[str, pd.DataFrame]:
    """Ray Tune's own per-report frames (``time_this_iter_s``, ``time_total_s``...) keyed by trial id."""
    from ray.tune import ExperimentAnalysis

    return dict(ExperimentAnalysis(str(storage / name)).trial_dataframes)


def verdict(met: bool) -> str:
    return "target met" if met else "target NOT met"
