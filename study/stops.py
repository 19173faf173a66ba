"""Which trials the scheduler stopped early, and where: one rule for parquet and MLflow.

Ray Tune marks a trial the scheduler stopped ``TERMINATED``, like one that ran to its end. A trial
stopped early is told apart by its last report: not the final epoch of its last phase. Its scores cover
fewer epochs than a complete trial's, so tables leave it out (status ``STOPPED``) and say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STOPPED = "STOPPED"  # the parquet status and MLflow status tag of a trial the scheduler stopped early
# phase -> the config key holding its epoch count, for the phases a trial can end in
_LAST_PHASE_EPOCHS = {"finetune": "epochs_finetune", "train": "epochs"}


def stopped_at(last_result: Mapping[str, Any] | None, config: Mapping[str, Any]) -> str:
    """``"phase:epoch"`` (e.g. ``"pretrain:9"``) when the trial's last report is not the final epoch of
    its last phase, else ``""`` (complete, or nothing reported yet)."""
    if not last_result or "phase" not in last_result:
        return ""
    phase = str(last_result["phase"])
    epoch = last_result.get(f"{phase}/epoch")
    if epoch is None:
        return ""
    total = config.get(_LAST_PHASE_EPOCHS.get(phase, ""))
    if total is not None and int(epoch) >= int(total):
        return ""
    return f"{phase}:{int(epoch)}"


def ended_status(ray_status: str, last_result: Mapping[str, Any] | None, config: Mapping[str, Any]) -> str:
    """The status exported for a trial: ``STOPPED`` for a ``TERMINATED`` trial stopped early, else Ray's."""
    return STOPPED if ray_status == "TERMINATED" and stopped_at(last_result, config) else ray_status
