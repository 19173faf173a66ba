"""The study's console: ``--progress compact`` (default), ``ray`` or ``off``.

``compact`` prints one line when a trial starts and one when it ends (condition, fold, seed, objective,
wall time), the line of an ending trial closed by the study's progress (trials ended of all, best
objective so far, an ETA from the finished trials' mean duration), a status line (trials running /
finished / failed / pending, best objective, elapsed time, ETA) when nothing was printed for
``quiet_every_s`` seconds and once at the end, and a tqdm bar when stdout is a terminal. So a study of N
trials prints 2 N trial lines, a fixed number more and one per quiet interval (``tests/test_console.py``).
``ray`` adds Ray's own status tables and the workers' log lines to the trial lines. ``off`` prints only
what went wrong. A failed trial's error is printed in full in every mode.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Mapping, TextIO

from ray import tune

from study.faults import failure
from study.spec import PROGRESS_MODES

# A status line comes only after this many seconds without a line: a status line every 30 s took ~40 of
# the default study's 75 lines and repeated what the trial lines say (issue 21: at most 60 in all).
QUIET_STATUS_EVERY_S = 300.0
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
    # Tune logs every trial failure with its traceback; the FAILED line prints the same error in full
    # and a retried crash gets its RETRY line, so each error is shown once (read when the Tuner is built)
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
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
    ``quiet_every_s``: seconds without a printed line after which a status line comes; ``clock``
    (seconds) and ``out`` are injectable so tests can drive it without waiting.
    """

    def __init__(self, total: int, mode: str = "compact", metric: str = "objective", direction: str = "max",
                 quiet_every_s: float = QUIET_STATUS_EVERY_S, clock: Callable[[], float] = time.monotonic,
                 out: TextIO | None = None) -> None:
        self.total, self.mode, self.metric, self.direction = total, mode, metric, direction
        self.quiet_every_s, self.clock = quiet_every_s, clock
        self.out = out
        self._started: dict[str, float] = {}
        self._durations: list[float] = []
        self._failed = 0
        self._peak = 0  # most trials seen running at once: what the cluster runs in parallel
        self._best = math.nan
        self._t0 = self._last_line = None
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
            self._last_line = self.clock()
            if self._bar is not None:
                self._bar.write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)

    def setup(self, **info: Any) -> None:
        self._t0 = self._last_line = self.clock()
        if self.mode == "compact" and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit="trial", file=self.stream, leave=False)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started[trial.trial_id] = self.clock()
        self._peak = max(self._peak, len(self._started))
        self._absorb(trials)
        self._print(f"{PREFIX} start  {trial.trial_id}: {describe(trial.config)}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        wall = self._ended(trial)
        found = failure(trial.last_result)
        if found is not None:  # ended cleanly, but failed: printed in every mode, as an error is
            kind, message = found
            label = kind.replace("_", " ").upper()  # DIVERGED, CONFIG ERROR
            self._failed += 1
            self._print(f"{PREFIX} {label} {trial.trial_id}: {describe(trial.config)} after {duration(wall)} "
                        f"(not retried) {self.so_far(trials, trial)}: {message}", always=True)
            return
        value = (trial.last_result or {}).get(self.metric)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) else f"no {self.metric}"
        self._note(value)
        self._print(f"{PREFIX} done   {trial.trial_id}: {describe(trial.config)}: {shown} in {duration(wall)} "
                    f"{self.so_far(trials, trial)}")

    def _note(self, value: Any) -> None:
        """Keep ``value`` as the best objective if it is a finite number better than the best so far."""
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = max if self.direction == "max" else min
            self._best = value if math.isnan(self._best) else better(self._best, value)

    def _absorb(self, trials: list) -> None:
        """Count the objectives of trials that finished before this driver saw them end (a resumed study)."""
        for other in trials:
            if str(other.status) == "TERMINATED" and failure(other.last_result) is None:
                self._note((other.last_result or {}).get(self.metric))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from study.tracking import trial_error_text

        wall = self._ended(trial)
        self._failed += 1
        error = (trial_error_text(trial) or "no error text (see the trial's error.txt)").rstrip()
        self._print(f"{PREFIX} FAILED {trial.trial_id}: {describe(trial.config)} after {duration(wall)} "
                    f"{self.so_far(trials, trial)}:\n{error}", always=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A crashed trial that Ray retries from its last checkpoint: one line in every mode, with the
        exception's line (the whole error is the trial's error.txt, and the FAILED line if it ends so)."""
        from study.tracking import trial_error_text

        now = self.clock()
        self._print(f"{PREFIX} RETRY  {trial.trial_id}: {describe(trial.config)} crashed after "
                    f"{duration(now - self._started.get(trial.trial_id, now))} (failure "
                    f"{getattr(trial, 'num_failures', '?')}): {exception_line(trial_error_text(trial))}", always=True)

    def _ended(self, trial: Any) -> float:
        now = self.clock()
        wall = now - self._started.pop(trial.trial_id, now)
        self._durations.append(wall)
        if self._bar is not None:
            self._bar.update(1)
        return wall

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.mode != "compact" or self._last_line is None:
            return  # with --progress ray, Ray's own status table says this
        if self.clock() - self._last_line >= self.quiet_every_s:
            self._print(self.status_line(trials))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._absorb(trials)
        if self.mode == "compact":
            self._print(self.status_line(trials))
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def status_line(self, trials: list) -> str:
        """Counts by status, best objective so far, elapsed time and the ETA of the remaining trials."""
        counts = {"RUNNING": 0, "TERMINATED": 0, "ERROR": 0}
        for trial in trials:
            status = "ERROR" if failure(getattr(trial, "last_result", None)) else str(trial.status)
            counts[status] = counts.get(status, 0) + 1
        finished, failed, running = counts["TERMINATED"], counts["ERROR"], counts["RUNNING"]
        pending = max(0, self.total - finished - failed - running)
        elapsed = self.clock() - (self._t0 if self._t0 is not None else self.clock())
        best = "none yet" if math.isnan(self._best) else f"{self._best:.4f}"
        line = (f"{PREFIX} {running} running, {finished} finished, {failed} failed, {pending} pending; "
                f"best {self.metric} {best}; {duration(elapsed)} elapsed")
        remaining = pending + running
        if self._durations and remaining:
            line += f"; ETA {duration(eta(self._durations, remaining, max(1, self._peak)))}"
        return line

    def so_far(self, trials: list, trial: Any) -> str:
        """``[ended/total, best B, ETA T]``: the study's progress when ``trial`` (one of ``trials``) ends,
        trials ended in an earlier session of a resumed study included."""
        # Ray marks a completing trial TERMINATED only after the callbacks ran: it is counted here
        earlier = sum(str(t.status) in ("TERMINATED", "ERROR") for t in trials if t is not trial)
        ended = max(len(self._durations), earlier + 1)
        best = "none" if math.isnan(self._best) else f"{self._best:.4f}"
        text = f"[{ended}/{self.total}, best {best}"
        if ended < self.total:
            text += f", ETA {duration(eta(self._durations, self.total - ended, max(1, self._peak)))}"
        return text + "]"


def eta(durations: list[float], remaining: int, parallel: int) -> float:
    """Seconds until ``remaining`` trials are done, ``parallel`` at a time, each as long as the mean of
    ``durations`` (the finished trials' wall times)."""
    return sum(durations) / len(durations) * math.ceil(remaining / parallel)


def exception_line(error: str | None) -> str:
    """The exception's own line of a traceback text (its last unindented line: a message may go on over
    indented lines), or a placeholder when there is no text."""
    lines = [line for line in (error or "").splitlines() if line.strip() and not line[0].isspace()]
    return lines[-1] if lines else "no error text (see the trial's error.txt)"
