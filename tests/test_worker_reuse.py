"""Workers are reused between trials (``reuse_actors=True`` in study/driver.py): a trial must not see
what earlier trials in the same process changed. ``runtime.begin_trial`` restores a fresh process's
torch settings; autocast and grad mode are thread-local and each trial runs in a new thread."""

from __future__ import annotations

import types

import pytest
import torch

import trainables.pretrain_finetune as pf
from trainables import runtime

# The pretrain-finetune metrics of a report (not Ray's bookkeeping: times, pids, ids).
METRICS = sorted(set(pf.REPORT_KEYS["pretrain"]) | set(pf.REPORT_KEYS["finetune"])
                 | set(pf.PRETRAIN_TEST_METRICS))


def poison_process() -> torch.autocast:
    """Change every process-wide torch setting a trial could change, and leave an autocast entered
    (returned, so a test in the main thread can leave it). Imports inside: a Ray worker runs a copy."""
    import torch

    torch.manual_seed(12345)
    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float64)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_float32_matmul_precision("medium")
    torch.backends.mkldnn.enabled = False
    torch.backends.cudnn.benchmark = True
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    autocast.__enter__()  # not exited in a trial's thread: autocast is thread-local, must not leak
    return autocast


def test_begin_trial_restores_every_setting_of_a_fresh_process():
    fresh = runtime.FRESH_PROCESS_STATE
    autocast = poison_process()
    try:
        runtime.begin_trial(1)
        now = runtime.ProcessState.capture()
        assert torch.equal(now.rng_state, fresh.rng_state)
        for field in ("seed", "default_dtype", "deterministic", "float32_matmul_precision", "mkldnn",
                      "cudnn_benchmark", "cudnn_deterministic", "cudnn_allow_tf32", "cuda_matmul_allow_tf32"):
            assert getattr(now, field) == getattr(fresh, field), field
        assert torch.get_num_threads() == 1
    finally:
        autocast.__exit__(None, None, None)
        fresh.restore()


def test_a_trial_after_a_poisoning_one_in_this_process_matches_its_first_run(tiny_cfg):
    """The same trial run twice in one process, with a different, state-changing trial in between."""
    def trial(cfg):
        runtime.begin_trial(cfg.num_threads)
        reports = []
        pf.run(cfg, report=lambda metrics, state: reports.append(metrics))
        return reports

    cfg = tiny_cfg(epochs_pretrain=2, epochs_finetune=2, num_threads=1)
    try:
        first = trial(cfg)
        trial(tiny_cfg(seed=7, loss="focal", gamma=2.0, lr_pretrain=0.05, num_threads=2))
        torch.set_default_dtype(torch.float64)  # in bfloat16 or float64 the trial's numbers would change
        torch.manual_seed(999)
        assert trial(cfg) == first
    finally:
        runtime.FRESH_PROCESS_STATE.restore()


@pytest.mark.slow
def test_reused_ray_worker_gives_bit_identical_metrics(ray_local, tiny_cfg, tmp_path):
    """Trials A, B, A one after another on one reused Ray worker: both A's report the very same metrics.
    B is a different config that also poisons the process (seed, threads, dtype, flags, autocast)."""
    from ray import tune

    # The workers cannot import this test module: a copy of poison_process (not found under its name
    # there) and a nested function are pickled by value; trainables is importable by the workers.
    poison = types.FunctionType(poison_process.__code__, {"__builtins__": __builtins__}, "poison")

    def poisoning_trainable(config):
        import trainables.pretrain_finetune

        config = dict(config)
        config.pop("_trial")
        poisons = config.pop("poison")
        trainables.pretrain_finetune.pretrain_finetune(config)
        if poisons:
            poison()

    a = {**tiny_cfg(epochs_pretrain=2, epochs_finetune=2, num_threads=1).to_dict(), "poison": False}
    b = {**tiny_cfg(epochs_pretrain=1, epochs_finetune=3, seed=7, loss="focal", gamma=2.0, lr_pretrain=0.05,
                    num_threads=2).to_dict(), "poison": True}
    tuner = tune.Tuner(
        tune.with_resources(poisoning_trainable, {"cpu": 1}),
        param_space={"_trial": tune.grid_search([0, 1, 2]),
                     **{key: tune.sample_from(lambda spec, key=key: (a, b, a)[spec.config["_trial"]][key])
                        for key in a}},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="reuse", verbose=0),
    )
    grid = tuner.fit()
    assert grid.num_errors == 0
    by_trial = {result.config["_trial"]: result.metrics_dataframe for result in grid}
    pids = {index: set(frame["pid"]) for index, frame in by_trial.items()}
    assert pids[0] == pids[1] == pids[2] and len(pids[0]) == 1, f"the worker was not reused: {pids}"
    first, again = by_trial[0], by_trial[2]
    columns = [c for c in METRICS if c in first]
    assert len(first) == 4 and columns
    assert first[columns].equals(again[columns])  # bit-identical, NaN where NaN
    assert not first[columns].equals(by_trial[1][columns].reindex(first.index)[columns])
