"""Claims on the pre-training cache: trials that share a pre-training and run at the same time pre-train
it once; a claim whose owner is gone never blocks the others."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from trainables import pretrain_cache
from trainables.config import PretrainFinetuneConfig
from trainables.pretrain_cache import PretrainCache

ENTRY = {"features": {"w": torch.ones(2)}, "history": [{"pretrain/train_loss": 1.0}], "samples": {}}


def test_a_second_trial_waits_for_the_first_ones_entry_instead_of_pretraining(tmp_path):
    cache = PretrainCache(tmp_path)
    entry, claim = cache.acquire("k", owner="trial-a")
    assert entry is None and claim is not None and cache.claim_path("k").exists()

    got: list = []
    waiter = threading.Thread(target=lambda: got.append(cache.acquire("k", owner="trial-b", poll_s=0.02)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive(), "the second trial must wait while the first one pre-trains"
    cache.save("k", ENTRY, {"config": 1})
    claim.release()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    (entry, second_claim), = got
    assert second_claim is None and torch.equal(entry["features"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["k.pt"], "a released claim leaves nothing behind"


def test_a_failed_pretraining_hands_the_key_to_a_waiting_trial(tmp_path):
    cache = PretrainCache(tmp_path)
    _, claim = cache.acquire("k", owner="trial-a")
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(cache.acquire("k", owner="trial-b", poll_s=0.02)))
    waiter.start()
    time.sleep(0.2)
    claim.release()  # trial a raised: no entry, its claim goes
    waiter.join(timeout=10)
    (entry, second_claim), = got
    assert entry is None and second_claim is not None, "the waiter now pre-trains it itself"
    second_claim.release()


def _write_claim(cache: PretrainCache, key: str, **record) -> None:
    cache.root.mkdir(parents=True, exist_ok=True)
    cache.claim_path(key).write_text(json.dumps(record))


def test_claims_of_dead_processes_old_heartbeats_and_the_same_trial_are_taken_over(tmp_path):
    import socket

    cache = PretrainCache(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    _write_claim(cache, "dead", owner="x", host=socket.gethostname(), pid=int(dead.stdout))
    _write_claim(cache, "old", owner="x", host="another-node", pid=1)
    old = time.time() - 3600
    os.utime(cache.claim_path("old"), (old, old))
    _write_claim(cache, "mine", owner="trial-a", host="another-node", pid=1)
    for key in ("dead", "old", "mine"):
        entry, claim = cache.acquire(key, owner="trial-a", poll_s=0.01)
        assert entry is None and claim is not None, key
        assert json.loads(cache.claim_path(key).read_text())["pid"] == os.getpid()
        claim.release()


def test_a_live_claim_on_another_node_is_waited_for_until_its_heartbeat_stops(tmp_path):
    cache = PretrainCache(tmp_path)
    _write_claim(cache, "k", owner="trial-a", host="another-node", pid=1)
    start = time.monotonic()
    entry, claim = cache.acquire("k", owner="trial-b", poll_s=0.05, stale_after=0.5)
    assert entry is None and claim is not None
    assert time.monotonic() - start >= 0.45, "a fresh claim of a live owner is respected"
    claim.release()


def test_a_claim_is_refreshed_while_its_trial_pretrains(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_cache, "CLAIM_HEARTBEAT_S", 0.05)
    cache = PretrainCache(tmp_path)
    claim = cache.claim("k")
    old = time.time() - 3600
    os.utime(cache.claim_path("k"), (old, old))
    time.sleep(0.3)
    assert time.time() - cache.claim_path("k").stat().st_mtime < 5, "the heartbeat keeps the claim fresh"
    assert cache.claim("k") is None, "a held claim cannot be claimed again"
    claim.release()
    assert not cache.claim_path("k").exists()


def _run_trial(config: dict, queue) -> None:
    """One trial in its own process (own torch RNG, as Ray workers have); sends back its reports."""
    from trainables import pretrain_finetune as pf

    trained: list[int] = []
    real = pf.train_one_epoch

    def counting(model, loader, *args, **kwargs):
        trained.append(len(loader.dataset))
        time.sleep(1.0)  # epochs long enough that both trials are surely pre-training at the same time
        return real(model, loader, *args, **kwargs)

    pf.train_one_epoch = counting
    torch.set_num_threads(1)
    reports: list[dict] = []
    pf.run(PretrainFinetuneConfig.from_dict(config), lambda metrics, state: reports.append(metrics))
    queue.put((config["condition"], reports, trained))


def test_concurrent_trials_sharing_a_pretraining_pretrain_it_once(tmp_path, tiny_cfg):
    from trainables.data.sources import load_task_data

    cfg = tiny_cfg(pretrain_cache=str(tmp_path / "cache"), epochs_pretrain=2)
    load_task_data(cfg)  # the data is generated once, before the race
    base = cfg.to_dict()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    children = [context.Process(target=_run_trial, args=({**base, "condition": name, "lr_finetune": lr}, queue))
                for name, lr in (("a", 1e-3), ("b", 2e-3))]
    for child in children:
        child.start()
    results = {}
    for _ in children:
        name, reports, trained = queue.get(timeout=300)
        results[name] = (reports, trained)
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0

    hits = {name: [m["pretrain/cache_hit"] for m in reports if m["phase"] == "pretrain"]
            for name, (reports, _) in results.items()}
    assert sorted(hits.values()) == [[0, 0], [1, 1]], f"exactly one trial pre-trains: {hits}"
    epochs_trained = {name: len(trained) for name, (_, trained) in results.items()}
    assert sorted(epochs_trained.values()) == [1, 3], epochs_trained  # 1 fine-tuning; 2 pre-training + 1
    pretrain = {name: [m["pretrain/val_mean_iu"] for m in reports if m["phase"] == "pretrain"]
                for name, (reports, _) in results.items()}
    assert pretrain["a"] == pretrain["b"], "the waiting trial replays the same pre-training"
    assert os.listdir(tmp_path / "cache") == [f"{cfg.pretrain_key()}.pt"], "no claim is left behind"


# --- the trainable's view: cached_pretraining, "hit, or build and store" ---------------------------


def test_a_miss_holds_the_claim_in_the_block_and_stores_what_was_built(tmp_path):
    with pretrain_cache.cached_pretraining(str(tmp_path), "k", {"seed": 0}, owner="trial-a", resumed=False) as slot:
        assert slot.entry is None
        assert json.loads(PretrainCache(tmp_path).claim_path("k").read_text())["owner"] == "trial-a"
        slot.store(ENTRY)
    assert os.listdir(tmp_path) == ["k.pt"], "the claim is released when the block ends"
    assert PretrainCache(tmp_path).load("k")["config"] == {"seed": 0}

    with pretrain_cache.cached_pretraining(str(tmp_path), "k", {"seed": 0}, owner="trial-b", resumed=False) as slot:
        assert torch.equal(slot.entry["features"]["w"], torch.ones(2))  # a hit: nothing to build
        assert not PretrainCache(tmp_path).claim_path("k").exists()


def test_a_failed_build_releases_the_claim_and_stores_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="diverged"):
        with pretrain_cache.cached_pretraining(str(tmp_path), "k", {}, owner="trial-a", resumed=False) as slot:
            assert slot.entry is None
            raise RuntimeError("diverged")
    assert os.listdir(tmp_path) == []


def test_no_cache_is_never_a_hit_and_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pretrain_cache.cached_pretraining("", "k", {}, owner=None, resumed=False) as slot:
        assert slot.entry is None
        slot.store(ENTRY)
    assert os.listdir(tmp_path) == []


def test_a_resumed_pretraining_takes_its_claim_over_without_looking_for_an_entry(tmp_path):
    cache = PretrainCache(tmp_path)
    cache.save("k", ENTRY, {})
    _write_claim(cache, "k", owner="trial-a", host="another-node", pid=1)  # its own claim, left by a dead worker
    with pretrain_cache.cached_pretraining(str(tmp_path), "k", {}, owner="trial-a", resumed=True) as slot:
        assert slot.entry is None, "the checkpoint it resumes from is the pre-training's own"
        assert json.loads(cache.claim_path("k").read_text())["pid"] == os.getpid()
    assert not cache.claim_path("k").exists()
