"""A folder of finished pre-trained feature extractors, keyed by the hash of the pre-training config.

Pre-training is most of a trial's cost and many trials share one (fine-tuning sweeps, baselines across
seeds of the fine-tuning only...). An entry is ``<key>.pt``: g's state dict, the pre-training history
(to replay its curves) and the config that made it. Writes go to a unique temp file and are renamed
into place, so a concurrent reader sees the whole file or none; an unreadable entry is reported, removed
and rebuilt rather than trusted.

Trials that share a pre-training often run at the same time (a grid runs its conditions side by side).
So that the pre-training runs once, the first trial to miss the cache *claims* the key (``.<key>.claim``,
created exclusively) and pre-trains; the others wait for its entry instead of pre-training it again, and
replay it as a cache hit. A claim names its owner and is kept fresh by a heartbeat thread; a claim whose
owner is gone (a dead process on this host, a heartbeat older than ``stale_after`` seconds, or the same
trial retried after its worker died) is taken over, so a crash never blocks the trials that wait. Claims
only save work: losing a race costs a duplicate pre-training, never a wrong or partial entry.

A trainable uses :func:`cached_pretraining`: a context manager that yields the entry on a hit, or a
slot to store the pre-training it builds, and releases the claim however the block ends.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CLAIM_HEARTBEAT_S = 10.0  # how often a pre-training trial refreshes its claim
CLAIM_STALE_S = 120.0  # a claim not refreshed for this long belongs to a trial that is gone
CLAIM_POLL_S = 1.0  # how often a waiting trial looks for the entry


class Claim:
    """This process's claim on pre-training one key; refreshed by a daemon thread until released."""

    def __init__(self, path: Path, heartbeat_s: float | None = None) -> None:
        self.path = path
        heartbeat_s = CLAIM_HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                        name=f"pretrain-claim-{path.name}")
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:  # removed by release() or taken over as stale: nothing left to refresh
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the claim (waiters then find the entry, or claim it themselves)."""
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)


class PretrainCache:
    """Pre-trained extractors under ``root`` (a local or shared-filesystem folder)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def claim_path(self, key: str) -> Path:
        return self.root / f".{key}.claim"

    def load(self, key: str) -> dict[str, Any] | None:
        """The entry for ``key`` ({"features", "history", "samples", "config"}), or None when absent or
        corrupt."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if not {"features", "history", "samples", "config"} <= set(entry):
                raise ValueError(f"missing keys, has {sorted(entry)}")
        except Exception as error:
            warnings.warn(f"pre-training cache entry {path} is corrupt ({error}); rebuilding it", stacklevel=2)
            path.unlink(missing_ok=True)
            return None
        return entry

    def save(self, key: str, finished: dict[str, Any], config: dict[str, Any]) -> Path:
        """Store a finished pre-training (``features``, ``history``, ``samples``) atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        torch.save({**finished, "config": config}, tmp)
        os.replace(tmp, path)
        return path

    # --- claims: one pre-training per key, however many trials want it at once ----------------------

    def acquire(self, key: str, owner: str | None = None, *, poll_s: float = CLAIM_POLL_S,
                stale_after: float = CLAIM_STALE_S) -> tuple[dict[str, Any] | None, Claim | None]:
        """``(entry, None)`` when ``key`` is cached (waiting while another live trial pre-trains it), else
        ``(None, claim)``: the caller pre-trains, saves the entry with :meth:`save`, then releases ``claim``.

        ``owner`` names the caller (a Ray trial id): its own claim left by a dead attempt is taken over.
        """
        while True:
            entry = self.load(key)
            if entry is not None:
                return entry, None
            claim = self.claim(key, owner)
            if claim is not None:
                entry = self.load(key)  # saved between our load and our claim: nothing to pre-train
                if entry is None:
                    return None, claim
                claim.release()
                return entry, None
            if self._stale(key, owner, stale_after):
                self.claim_path(key).unlink(missing_ok=True)
                continue
            time.sleep(poll_s)

    def claim(self, key: str, owner: str | None = None, *, force: bool = False) -> Claim | None:
        """Claim ``key`` (None when another trial holds it). ``force`` takes it over regardless: a trial
        resumed from a pre-training checkpoint holds its key again."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.claim_path(key)
        record = json.dumps({"owner": owner or "", "host": socket.gethostname(), "pid": os.getpid(),
                             "time": time.time()}).encode()
        if force:
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(record)
            os.replace(tmp, path)
            return Claim(path)
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(handle, "wb") as stream:
            stream.write(record)
        return Claim(path)

    def _stale(self, key: str, owner: str | None, stale_after: float) -> bool:
        """Whether the claim on ``key`` belongs to a trial that is gone (or is this trial's own)."""
        path = self.claim_path(key)
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False  # released meanwhile: the next round finds the entry or claims the key
        try:
            record = json.loads(path.read_bytes() or b"{}")
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            record = {}  # being written, or its writer died at once: judged by its age alone
        if age >= stale_after:
            return True
        if owner and record.get("owner") == owner:
            return True  # this trial's own claim, left by a worker that died
        if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
            return not _process_alive(record["pid"])
        return False


@dataclass
class CacheSlot:
    """What :func:`cached_pretraining` yields: ``entry`` on a hit, else None and :meth:`store` saves the
    pre-training built in its place (a no-op without a cache)."""

    entry: dict[str, Any] | None
    _cache: PretrainCache | None
    _key: str
    _config: dict[str, Any]

    def store(self, finished: dict[str, Any]) -> None:
        """Save a finished pre-training (``features``, ``history``, ``samples``) under the slot's key."""
        if self._cache is not None:
            self._cache.save(self._key, finished, self._config)


@contextmanager
def cached_pretraining(root: str, key: str, config: dict[str, Any], *, owner: str | None,
                       resumed: bool) -> Iterator[CacheSlot]:
    """Hit, or build and store: the cached pre-training ``key`` under ``root``, or a claim on it.

    Yields a :class:`CacheSlot`. Its ``entry`` is the cached pre-training when there is one (waiting for
    a live trial that pre-trains the same key); otherwise this trial holds the key's claim until the
    block ends (normally or not) and stores its pre-training with ``slot.store``. ``root=""`` means no
    cache: never a hit, nothing stored. ``resumed`` (a trial resumed mid-pre-training) takes the claim
    over without looking for an entry: the checkpoint it resumes from is the pre-training's own.
    """
    cache = PretrainCache(root) if root else None
    entry, claim = None, None
    if cache is not None and not resumed:
        entry, claim = cache.acquire(key, owner=owner)
    elif cache is not None:
        claim = cache.claim(key, owner=owner, force=True)
    try:
        yield CacheSlot(entry, cache, key, config)
    finally:
        if claim is not None:
            claim.release()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
