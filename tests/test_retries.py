"""Retries that fit the fault: MLflow metric writes retry transient errors (a locked SQLite store, an HTTP
5xx, a refused connection) with bounded exponential backoff and raise permanent ones at once; a crashed
trial is retried up to ``--max-failures`` times (Ray's FailureConfig), a bad value is refused."""

from __future__ import annotations

import socket
import sqlite3
from types import SimpleNamespace

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.utils.rest_utils import verify_rest_response

from study.faults import RETRY_ATTEMPTS, is_transient, with_retries


def locked() -> MlflowException:
    """What MLflow's SQLAlchemy store raises when SQLite stays locked past its busy timeout."""
    return MlflowException(message=sqlite3.OperationalError("database is locked"), error_code=TEMPORARILY_UNAVAILABLE)


def http_error(status: int, body: str = "upstream unavailable") -> MlflowException:
    """What MLflow's REST client raises for a response with ``status``: the real ``verify_rest_response``."""
    response = requests.Response()
    response.status_code, response._content = status, body.encode()
    with pytest.raises(MlflowException) as raised:
        verify_rest_response(response, "/api/2.0/mlflow/runs/log-batch")
    return raised.value


class Flaky:
    """A call that raises ``errors`` one after the other, then returns "ok"; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_transient_errors_are_retried_with_doubling_waits_until_the_call_succeeds():
    call, waits = Flaky(locked(), http_error(503), http_error(502)), []
    assert with_retries(call, sleep=waits.append) == "ok"
    assert call.calls == 4 and waits == [0.5, 1.0, 2.0]


def test_permanent_errors_are_raised_at_once():
    bad_request = RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad metric name"})
    for error in (bad_request, http_error(404, "no such run"), MlflowException("x", INVALID_PARAMETER_VALUE),
                  ValueError("bad value"), TypeError("bug")):
        call, waits = Flaky(error), []
        with pytest.raises(type(error)):
            with_retries(call, sleep=waits.append)
        assert call.calls == 1 and waits == [], f"{error!r} was retried"


def test_a_fault_that_outlasts_the_retries_raises_its_last_error_after_bounded_waits():
    errors = [locked() for _ in range(RETRY_ATTEMPTS + 1)]
    call, waits = Flaky(*errors), []
    with pytest.raises(MlflowException, match="database is locked"):
        with_retries(call, sleep=waits.append)
    assert call.calls == RETRY_ATTEMPTS and waits == [0.5, 1.0, 2.0, 4.0]
    call, waits = Flaky(*[http_error(500) for _ in range(7)]), []
    with pytest.raises(MlflowException):
        with_retries(call, attempts=7, first_delay_s=1.0, max_delay_s=8.0, sleep=waits.append)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0], "each wait is capped"


def test_a_refused_connection_to_a_tracking_server_is_transient(monkeypatch):
    """A real MLflow client against a port nothing listens on (MLflow's own HTTP retries off)."""
    from mlflow.tracking import MlflowClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(f"http://127.0.0.1:{port}")
    with pytest.raises(MlflowException) as raised:
        client.get_experiment("0")
    assert is_transient(raised.value), raised.value
    assert is_transient(requests.ConnectionError("reset")) and is_transient(TimeoutError())
    assert [is_transient(http_error(code)) for code in (429, 500, 502, 503, 504)] == [True] * 5
    assert [is_transient(http_error(code)) for code in (400, 401, 403, 404)] == [False] * 4


class LockedTwice:
    """An MlflowClient whose first two metric writes find the store locked; the rest go through."""

    def __init__(self, client) -> None:
        self.client, self.failures = client, 2

    def log_batch(self, *args, **kwargs):
        if self.failures and kwargs.get("metrics"):
            self.failures -= 1
            raise locked()
        return self.client.log_batch(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_the_metric_writer_survives_a_locked_store_and_logs_each_epoch_once(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from study.tracking import MLflowTrials

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    real = MlflowClient(uri)
    experiment = real.create_experiment("locked")
    parent = real.create_run(experiment).info.run_id
    callback = MLflowTrials(uri, experiment, parent, tmp_path / "artifacts")
    callback.writer._client = LockedTwice(real)
    trial = SimpleNamespace(trial_id="t1", config={"condition": "C", "seed": 0})
    for epoch in (1, 2):
        callback.on_trial_result(0, [], trial, {"epoch_total": epoch, "finetune/train_loss": 1.0 / epoch,
                                                "timestamp": epoch})
    history = real.get_metric_history(callback.run_id(trial), "finetune/train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]
    assert callback.writer._client.failures == 0
    assert callback.writer.outbox.pending() == 0, "retried, not queued"
    assert capsys.readouterr().out.count("database is locked") == 2, "each retry says why, once"


# --- --max-failures -------------------------------------------------------------------------------


def _spec(tmp_path, *flags: str):
    from study.spec import parse_spec

    return parse_spec(["--smoke", "--output", str(tmp_path), *flags])


def test_max_failures_reaches_rays_failure_config(tmp_path):
    from study.driver import OpenStudy, run_config
    from study.spec import DEFAULT_MAX_FAILURES, Secrets

    for flags, expected in (((), DEFAULT_MAX_FAILURES), (("--max-failures", "0"), 0), (("--max-failures", "3"), 3)):
        spec = _spec(tmp_path, *flags)
        study = OpenStudy(spec, spec.trial_configs(), Secrets(), None, "0", "parent", 0.0)
        assert run_config(study).failure_config.max_failures == expected, flags
    assert DEFAULT_MAX_FAILURES == 10


@pytest.mark.parametrize("value", ["-1", "-5"])
def test_a_negative_max_failures_exits_2_with_one_line_before_anything_runs(tmp_path, value, capsys):
    from study.run import main

    assert main(["--smoke", "--output", str(tmp_path), "--max-failures", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --max-failures must be an integer >= 0 (retries of a crashed trial; 0: none), "
                   f"got {value}"], err
    assert not any(tmp_path.iterdir()), "nothing is written"


@pytest.mark.parametrize("value", ["two", "1.5"])
def test_a_non_integer_max_failures_is_refused_by_the_parser_with_exit_2(tmp_path, value, capsys):
    from study.run import main

    with pytest.raises(SystemExit) as ended:
        main(["--smoke", "--output", str(tmp_path), "--max-failures", value])
    assert ended.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"error: argument --max-failures: invalid int value: '{value}'")


def test_help_documents_max_failures(capsys):
    from study.spec import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "--max-failures N" in text and "default 10" in text and "never retried" in text
