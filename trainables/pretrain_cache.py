"""A folder of finished pre-trained feature extractors, keyed by the hash of the pre-training config.

Pre-training is most of a trial's cost and many trials share one (fine-tuning sweeps, baselines across
seeds of the fine-tuning only...). An entry is ``<key>.pt``: g's state dict, the pre-training history
(to replay its curves) and the config that made it. Writes go to a unique temp file and are renamed
into place, so a concurrent reader sees the whole file or none; an unreadable entry is reported, removed
and rebuilt rather than trusted.
"""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch


class PretrainCache:
    """Pre-trained extractors under ``root`` (a local or shared-filesystem folder)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

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
