"""The study's console: ``--progress compact`` (default), ``ray`` or ``off``.

``compact`` prints one line when a trial starts and one when it ends (condition, fold, seed, objective,
wall time), a status line at most every ``status_every_s`` seconds, and while no trial starts or ends
only every 5 minutes (trials running / finished / failed / pending, best objective so far, elapsed
time, an ETA from the finished trials' mean duration), and a tqdm
bar when stdout is a terminal. ``ray`` adds Ray's own status tables and the workers' log lines to the
trial lines. ``off`` prints only what went wrong. A failed trial's error is printed in full in every mode.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Mapping, TextIO

from ray import tune

from study.faults import diverged
from study.spec import PROGRESS_MODES

STATUS_EVERY_S = 30.0  # at most one status line per this many seconds
QUIET_STATUS_EVERY_S = 300.0  # ... and, while no trial starts or ends, one per this many
PREFIX = "[noisy-transfer]"


def ray_console(mode: str) -> dict[str, Any]:
    """Ray's own console settings for ``mode``: ``verbose`` (RunConfig) and ``log_to_driver`` (ray.init)."""
    if mode not in PROGRESS_MODES:
        raise ValueError(f"--progress must be one of {', '.join(PROGRESS_MODES)}, got {mode!r}")
    return {"verbose": 1 if mode == "ray" else 0, "log_to_driver": mode == "ray"}


def quiet_libraries(mode: str) -> None:
    """Outside ``--progress ray``: no INFO chatter from Ray Tune and MLflow's store (warnings stay), and
    Tune's legacy console, which is silent at verbose 0 (the new one still prints its config box)."""
    if mode == "ray":
        return
    import logging
    import os

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in ("ray.tune", "ray.train", "mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def describe(config: Mapping[str, Any]) -> str:
    """``condition, fold F, seed S`` of a trial config (fold only where the preset has folds)."""
    parts = [str(config.get("condition", ""))]
    if "fold" in config:
        parts.append(f"fold {config['fold']}")
    parts.append(f"seed {config.get('seed')}")
    return ", ".join(parts)


def duration(seconds: float) -> str:
    """``seconds`` as ``42s``, ``3m05s`` or ``2h07m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class StudyProgress(tune.Callback):
    """Ray Tune callback that writes the console of ``--progress compact`` or ``off`` (module docstring).

    ``total``: trials the complete study has; ``mode`` decides which lines appear (errors always do);
    ``clock`` (seconds) and ``out`` are injectable so tests can drive it without waiting.
    """

    def __init__(self, total: int, mode: str = "compact", metric: str = "objective", direction: str = "max",
                 status_every_s: float = STATUS_EVERY_S, clock: Callable[[], float] = time.monotonic,
                 out: TextIO | None = None) -> None:
        self.total, self.mode, self.metric, self.direction = total, mode, metric, direction
        self.status_every_s, self.clock = status_every_s, clock
        self.out = out
        self._started: dict[str, float] = {}
        self._durations: list[float] = []
        self._failed = 0
        self._best = math.nan
        self._t0 = self._last_status = None
        self._changed = False  # a trial started or ended since the last status line
        self._bar = None

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks with its experiment state
        state = dict(self.__dict__)
        state.update(out=None, _bar=None, clock=time.monotonic)
        return state

    @property
    def stream(self) -> TextIO:
        return self.out or sys.stdout

    def _print(self, line: str, always: bool = False) -> None:
        if self.mode != "off" or always:
            if self._bar is not None:
                self._bar.write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)

    def setup(self, **info: Any) -> None:
        self._t0 = self._last_status = self.clock()
        if self.mode == "compact" and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit="trial", file=self.stream, leave=False)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started[trial.trial_id] = self.clock()
        self._changed = True
        self._print(f"{PREFIX} start  {trial.trial_id}: {describe(trial.config)}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        wall = self._ended(trial)
        message = diverged(trial.last_result)
        if message is not None:  # ended cleanly, but failed: printed in every mode, as an error is
            self._failed += 1
            self._print(f"{PREFIX} DIVERGED {trial.trial_id}: {describe(trial.config)} after {duration(wall)} "
                        f"(not retried): {message}", always=True)
            return
        value = (trial.last_result or {}).get(self.metric)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) else f"no {self.metric}"
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = max if self.direction == "max" else min
            self._best = value if math.isnan(self._best) else better(self._best, value)
        self._print(f"{PREFIX} done   {trial.trial_id}: {describe(trial.config)}: {shown} in {duration(wall)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from study.tracking import trial_error_text

        wall = self._ended(trial)
        self._failed += 1
        error = (trial_error_text(trial) or "no error text (see the trial's error.txt)").rstrip()
        self._print(f"{PREFIX} FAILED {trial.trial_id}: {describe(trial.config)} after {duration(wall)}:\n{error}",
                    always=True)

    def _ended(self, trial: Any) -> float:
        now = self.clock()
        wall = now - self._started.pop(trial.trial_id, now)
        self._changed = True
        self._durations.append(wall)
        if self._bar is not None:
            self._bar.update(1)
        return wall

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.mode != "compact" or self._last_status is None:
            return  # with --progress ray, Ray's own status table says this
        since = self.clock() - self._last_status
        if since >= self.status_every_s and (self._changed or since >= QUIET_STATUS_EVERY_S):
            self._print(self.status_line(trials))
            self._last_status, self._changed = self.clock(), False

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.mode == "compact":
            self._print(self.status_line(trials))
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def status_line(self, trials: list) -> str:
        """Counts by status, best objective so far, elapsed time and the ETA of the remaining trials."""
        counts = {"RUNNING": 0, "TERMINATED": 0, "ERROR": 0}
        for trial in trials:
            status = "ERROR" if diverged(getattr(trial, "last_result", None)) else str(trial.status)
            counts[status] = counts.get(status, 0) + 1
        finished, failed, running = counts["TERMINATED"], counts["ERROR"], counts["RUNNING"]
        pending = max(0, self.total - finished - failed - running)
        elapsed = self.clock() - (self._t0 if self._t0 is not None else self.clock())
        best = "none yet" if math.isnan(self._best) else f"{self._best:.4f}"
        line = (f"{PREFIX} {running} running, {finished} finished, {failed} failed, {pending} pending; "
                f"best {self.metric} {best}; {duration(elapsed)} elapsed")
        remaining = pending + running
        if self._durations and remaining:
            line += f"; ETA {duration(eta(self._durations, remaining, max(1, running)))}"
        return line


def eta(durations: list[float], remaining: int, parallel: int) -> float:
    """Seconds until ``remaining`` trials are done, ``parallel`` at a time, each as long as the mean of
    ``durations`` (the finished trials' wall times)."""
    return sum(durations) / len(durations) * math.ceil(remaining / parallel)
