"""Which faults a study retries, and how: retries that fit the fault.

- A diverged trial (a NaN or infinite loss) is a *result*: its trainable ends it with one report that
  carries ``diverged = 1`` and the message (:func:`trainables.runtime.ending_on_divergence`), so Ray
  never retries it and ``--resume`` never reruns it. :func:`diverged` reads that report; the MLflow
  callback, the parquet export and the Optuna searcher use it to record the trial as failed.
- A config error inside a trial (its trainable's config validation refused the config: a ``ValueError``)
  is deterministic too: :func:`trainables.runtime.trial_config` ends the trial with one report that
  carries ``config_error = 1`` and the message; :func:`failure` reads either kind of report.
- A crash (a killed worker, a lost node, out of memory) is retried by Ray from the trial's last
  checkpoint, up to ``--max-failures`` times.
- A transient MLflow error (a locked SQLite store, an HTTP 5xx, a dropped connection) is retried with
  bounded exponential backoff (:func:`with_retries`); a permanent one (a 4xx, bad input) is raised at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from trainables.runtime import CONFIG_ERROR, CONFIG_ERROR_MESSAGE, DIVERGED, DIVERGED_MESSAGE

T = TypeVar("T")
RETRY_ATTEMPTS = 5  # calls in all: the first and 4 retries
RETRY_FIRST_DELAY_S = 0.5  # seconds before the first retry; doubled before each next one
RETRY_MAX_DELAY_S = 8.0  # no single wait is longer (0.5 + 1 + 2 + 4 = 7.5 s in all by default)
TRANSIENT_HTTP = frozenset({429, 500, 502, 503, 504})  # busy, or the server (or its proxy) failing
# The deterministic failures a trial reports as its result: (flag key, message key, message if lost).
FAILURE_KEYS = ((DIVERGED, DIVERGED_MESSAGE, "training diverged (non-finite loss)"),
                (CONFIG_ERROR, CONFIG_ERROR_MESSAGE, "invalid trial config"))


def diverged(result: Mapping[str, Any] | None) -> str | None:
    """The divergence message of a trial whose (last) report ``result`` says it diverged, else None."""
    if not result or result.get(DIVERGED) != 1:
        return None
    return str(result.get(DIVERGED_MESSAGE) or "training diverged (non-finite loss)")


def failure(result: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``(kind, message)`` of a trial whose (last) report ``result`` says it ended on a deterministic failure,
    kind :data:`~trainables.runtime.DIVERGED` or :data:`~trainables.runtime.CONFIG_ERROR`; else None."""
    for flag, message_key, fallback in FAILURE_KEYS:
        if result and result.get(flag) == 1:
            return flag, str(result.get(message_key) or fallback)
    return None


def is_transient(error: BaseException) -> bool:
    """Whether a tracking-store error may go away by itself: SQLite's "database is locked", an HTTP
    429/5xx (MLflow's ``MlflowException`` carries it as its error code), a connection error or timeout.
    Anything else (a 4xx, a bad value, a programming error) is permanent."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if "database is locked" in str(error):
        return True
    try:
        import requests

        if isinstance(error, (requests.ConnectionError, requests.Timeout)):
            return True
    except ImportError:  # requests comes with MLflow; without it there is no HTTP error to classify
        pass
    status = getattr(error, "get_http_status_code", None)
    return callable(status) and status() in TRANSIENT_HTTP


def with_retries(call: Callable[[], T], *, attempts: int = RETRY_ATTEMPTS, first_delay_s: float = RETRY_FIRST_DELAY_S,
                 max_delay_s: float = RETRY_MAX_DELAY_S, sleep: Callable[[float], None] = time.sleep,
                 what: str = "MLflow call", redact: Callable[[str], str] = str) -> T:
    """``call()``, called again after a transient error (:func:`is_transient`), at most ``attempts`` times
    in all, waiting ``first_delay_s`` seconds, then twice as long each time (at most ``max_delay_s``).
    A permanent error, or the last attempt's error, is raised. Each retry prints one line (its error text
    through ``redact``, which keeps credentials out of the log). ``sleep`` is injectable for tests."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as error:
            if attempt == attempts or not is_transient(error):
                raise
            print(f"[noisy-transfer] {what} failed ({redact(_first_line(error))}); retry {attempt} of {attempts - 1} "
                  f"in {delay:g} s")
            sleep(delay)
            delay = min(2 * delay, max_delay_s)
    raise AssertionError("unreachable")  # the loop returns or raises


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"
