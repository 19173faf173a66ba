"""What the tracking server missed: an on-disk queue of MLflow writes, and ``python -m study.replay``.

While the MLflow tracking server is down (a crashed or restarting ``mlflow server`` on the head) a study
keeps running: every write that outlasted :func:`study.faults.with_retries` goes into the study folder's
:class:`Outbox` (``mlflow_outbox.db``, SQLite: each put is one committed, fsynced transaction, so a
killed driver loses nothing), and so does every later write until the queue is empty again, so MLflow
receives them in their order. The queue is logged once the server answers again (:func:`drain`), at
the study's end, on ``--resume``, or by hand::

    python -m study.replay STUDY_DIR [--tracking-uri URI]

Each item is one *operation* (a JSON dict, see :class:`Replayer`) that names its trial by Ray's trial id,
not by MLflow run id: a run that the server never created is created on replay, found by its
``trial_id`` tag if it exists already, so no run is created twice. A replayed metric is left out when
the run's history holds a value at that ``(key, step)`` already (a write the server committed before the
connection broke); params and tags are idempotent; artifacts are uploaded again over themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from study.optuna_search import OPTUNA_NUMBER_TAG, OptunaLink, optuna_storage_url

OUTBOX_FILE = "mlflow_outbox.db"
MAX_ITEMS = 200_000  # the queue's bound: 1000 trials x 135 epochs (VOC's 100 + 15 and more) of ~2 KB items, ~400 MB


class Outbox:
    """A bounded FIFO of MLflow operations in a SQLite file (``path``), and the trial -> run ids known.

    Items past ``max_items`` are not kept, only counted (:meth:`dropped`): their values are still in
    ``history.parquet``, and the end-of-study message says how many. The connection is opened on first
    use and never pickled (Ray pickles the callback that holds this)."""

    def __init__(self, path: Path, max_items: int = MAX_ITEMS) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.path, self.max_items = Path(path), max_items
        self._db: sqlite3.Connection | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_db": None}

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            # autocommit, fsync on every commit: a put survives a killed driver; one writer at a time (the
            # study lock), so sharing the connection between threads never interleaves
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(
                "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);"
                "CREATE TABLE IF NOT EXISTS runs (trial_id TEXT PRIMARY KEY, run_id TEXT NOT NULL);"
                "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);")
        return self._db

    def put(self, op: Mapping[str, Any]) -> bool:
        """Append ``op``; False (and counted as dropped) when the queue is full."""
        body = json.dumps(op, allow_nan=False)
        if self.pending() >= self.max_items:
            self.db.execute("INSERT INTO counters VALUES ('dropped', 1) "
                            "ON CONFLICT(name) DO UPDATE SET value = value + 1")
            return False
        self.db.execute("INSERT INTO items (body) VALUES (?)", (body,))
        return True

    def pending(self) -> int:
        """Items waiting (0 without a queue file: nothing was ever queued)."""
        if self._db is None and not self.path.exists():
            return 0
        return self.db.execute("SELECT count(*) FROM items").fetchone()[0]

    def dropped(self) -> int:
        if self._db is None and not self.path.exists():
            return 0
        row = self.db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return row[0] if row else 0

    def first(self) -> tuple[int, dict[str, Any]] | None:
        row = self.db.execute("SELECT id, body FROM items ORDER BY id LIMIT 1").fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def done(self, item_id: int) -> None:
        self.db.execute("DELETE FROM items WHERE id = ?", (item_id,))

    def remember_run(self, trial_id: str, run_id: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?)", (trial_id, run_id))

    def runs(self) -> dict[str, str]:
        """Trial id -> MLflow run id, for every run this study's writer found or created."""
        if self._db is None and not self.path.exists():
            return {}
        return dict(self.db.execute("SELECT trial_id, run_id FROM runs").fetchall())

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class Replayer:
    """Applies operations to an MLflow client, each idempotent when ``replayed`` (see module docstring).

    Operations (``op`` key): ``start`` (the trial's run, created with ``tags``/``params`` unless its
    ``trial_id`` tag finds it; status RUNNING), ``metrics`` (``metrics`` rows ``[key, value, timestamp_ms, step]``),
    ``artifacts`` (``folder``), ``end`` (``tags``, ``metrics``, terminal ``status``), ``parent``
    (the study's run: ``metrics``, ``files`` as ``[path, artifact_path]``, ``folders`` likewise, ``status``).
    ``link(trial_id, run_id)``: the Optuna trial number of a new run (search studies), or None."""

    def __init__(self, client: Any, outbox: Outbox, link: Callable[[str, str], int | None] | None = None) -> None:
        self.client, self.outbox, self.link = client, outbox, link
        self.runs: dict[str, str] = {}  # trial id -> run id
        self.last_step: dict[str, int] = {}  # trial id -> latest epoch_total the run held when found
        self._steps: dict[tuple[str, str], set[int]] = {}  # (run, key) -> steps logged

    def apply(self, op: Mapping[str, Any], replayed: bool) -> None:
        """Perform ``op``; ``replayed``: it comes from the queue, so its metrics are checked against the run's
        history first (a direct write needs no check: the callback never sends an epoch twice)."""
        kind = op["op"]
        if kind == "parent":
            return self._parent(op, replayed)
        run_id = self.run_id(op, create=op if kind == "start" else None)
        if kind == "start":
            self.client.set_tag(run_id, "status", "RUNNING")
        elif kind == "metrics":
            self._metrics(run_id, op["metrics"], replayed)
        elif kind == "artifacts":
            self.client.log_artifacts(run_id, op["folder"])
        elif kind == "end":
            self._metrics(run_id, op.get("metrics", []), replayed, tags=op.get("tags", {}))
            self.client.set_terminated(run_id, status=op["status"])
        else:
            raise ValueError(f"unknown MLflow outbox operation {kind!r} (written by a newer version?)")

    def run_id(self, op: Mapping[str, Any], create: Mapping[str, Any] | None = None) -> str:
        """The run of ``op``'s trial: known, found by its trial_id tag, or created from ``create``."""
        trial_id = op["trial_id"]
        if trial_id not in self.runs:
            found = self.client.search_runs(
                [op["experiment_id"]], max_results=1,
                filter_string=f"tags.trial_id = '{trial_id}' and tags.`mlflow.parentRunId` = '{op['parent_run_id']}'")
            if found:
                run = found[0]
                self.last_step[trial_id] = int(run.data.metrics.get("epoch_total", 0))
                linked = OPTUNA_NUMBER_TAG in run.data.tags
                if create is not None:  # created before a write of its params failed: the missing ones
                    self._log_params(run.info.run_id, {k: v for k, v in create["params"].items()
                                                       if k not in run.data.params})
            elif create is None:
                raise LookupError(f"no MLflow run for trial {trial_id} and no start operation to create one")
            else:
                run = self._create(create)
                self.last_step[trial_id], linked = 0, False
            if not linked and self.link is not None:  # new, or created by a driver killed before it linked
                number = self.link(trial_id, run.info.run_id)
                if number is not None:
                    self.client.set_tag(run.info.run_id, OPTUNA_NUMBER_TAG, str(number))
            self.runs[trial_id] = run.info.run_id
            self.outbox.remember_run(trial_id, run.info.run_id)
        return self.runs[trial_id]

    def _create(self, op: Mapping[str, Any]) -> Any:
        run = self.client.create_run(op["experiment_id"], run_name=op["run_name"], tags=op["tags"])
        self._log_params(run.info.run_id, op["params"])
        return run

    def _log_params(self, run_id: str, values: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in sorted(values.items())]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(run_id, params=params[start:start + 100])

    def _metrics(self, run_id: str, rows: list[list[Any]], replayed: bool,
                 tags: Mapping[str, str] | None = None) -> None:
        from mlflow.entities import Metric, RunTag

        if replayed:  # the server may have committed it before the connection broke
            rows = [row for row in rows if row[3] not in self._logged_steps(run_id, row[0])]
        metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in rows]
        if metrics or tags:
            try:
                self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in (tags or {}).items()])
            except Exception:
                for key, *_ in rows:  # the server may have committed it all the same: ask it again next time
                    self._steps.pop((run_id, key), None)
                raise
        for key, _, _, step in rows:  # only histories fetched already: a direct write fetches none
            if (run_id, key) in self._steps:
                self._steps[run_id, key].add(step)

    def _logged_steps(self, run_id: str, key: str) -> set[int]:
        if (run_id, key) not in self._steps:
            self._steps[run_id, key] = {m.step for m in self.client.get_metric_history(run_id, key)}
        return self._steps[run_id, key]

    def _parent(self, op: Mapping[str, Any], replayed: bool) -> None:
        run_id = op["run_id"]
        self._metrics(run_id, op.get("metrics", []), replayed)
        for path, artifact_path in op.get("files", []):
            if Path(path).is_file():
                self.client.log_artifact(run_id, path, artifact_path)
        for path, artifact_path in op.get("folders", []):
            if Path(path).is_dir():
                self.client.log_artifacts(run_id, path, artifact_path)
        if op.get("status"):
            self.client.set_terminated(run_id, status=op["status"])


def fail_fast_http() -> None:
    """Leave retrying to :func:`study.faults.with_retries` and the outbox: MLflow's HTTP client by default
    retries a refused connection 7 times, waiting up to 2 minutes between tries, which would stall Ray's
    controller (whose loop runs the callbacks) for minutes per write while the server is down. A value
    set in the environment wins."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # seconds: a hung server, not a dead one


def optuna_linker(study_dir: Path, study: str) -> Callable[[str, str], int | None] | None:
    """``OptunaLink.link_run`` of a search study's ``optuna.db`` in ``study_dir``; None for a grid study."""
    if not (Path(study_dir) / "optuna.db").is_file():
        return None
    return OptunaLink(optuna_storage_url(study_dir), study).link_run


def drain(outbox: Outbox, replayer: Replayer, call: Callable[[Callable[[], Any]], Any]) -> int:
    """Apply the queued operations in order, each through ``call`` (a retry policy), removing each once
    applied; stop at the first error (raised). Returns how many were applied."""
    applied = 0
    while (item := outbox.first()) is not None:
        item_id, op = item
        call(lambda: replayer.apply(op, replayed=True))
        outbox.done(item_id)
        applied += 1
    return applied


def unlogged_message(study_dir: Path, pending: int, dropped: int, uri: str) -> str:
    """What the end of a study (or a replay) says when MLflow is missing items: how many, and the fix."""
    lost = (f"; {dropped} more did not fit the queue ({MAX_ITEMS} items) and are only in history.parquet"
            if dropped else "")
    return (f"[noisy-transfer] the MLflow tracking server {uri} could not be reached: {pending} item(s) were not "
            f"logged (queued in {Path(study_dir) / OUTBOX_FILE}){lost}. The parquet files are complete. Once the "
            f"server is up, log them with: python -m study.replay {study_dir}  (or run the study again with --resume)")


def replay(study_dir: Path, tracking_uri: str | None = None, say: Callable[[str], None] = print,
           lock: bool = True) -> int:
    """Log a study's queued MLflow operations to ``tracking_uri`` (default: the study's, from study.json),
    under the study's lock (``lock=False``: the caller holds it, as a resuming driver does); return the
    items still queued (0: all logged). Transient errors are retried (:func:`study.faults.with_retries`);
    one that outlasts them leaves the rest queued."""
    import contextlib

    from mlflow.tracking import MlflowClient

    from study.faults import is_transient, with_retries
    from study.lock import StudyLock
    from study.spec import Secrets

    study_dir = Path(study_dir)
    meta_file = study_dir / "study.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{study_dir} holds no study (no study.json); give the study's folder, "
                                "e.g. results/<study>")
    meta = json.loads(meta_file.read_text())
    uri = tracking_uri or meta["tracking_uri"]
    with StudyLock(study_dir) if lock else contextlib.nullcontext():
        outbox = Outbox(study_dir / OUTBOX_FILE)
        if outbox.pending() == 0:
            say(f"[noisy-transfer] nothing to replay: every item of {study_dir} is in MLflow")
            return 0
        fail_fast_http()
        replayer = Replayer(MlflowClient(uri), outbox, optuna_linker(study_dir, meta["study"]))
        redact = Secrets.from_environment().redact
        try:
            applied = drain(outbox, replayer, lambda call: with_retries(call, what="replaying to MLflow", redact=redact))
        except Exception as error:
            if not is_transient(error):
                raise
            say(unlogged_message(study_dir, outbox.pending(), outbox.dropped(), redact(uri)))
            return outbox.pending()
        say(f"[noisy-transfer] logged {applied} queued item(s) of {study_dir} to MLflow ({redact(uri)})")
        if fill_run_ids(study_dir / "trials.parquet", outbox.runs()):  # runs created by the replay
            with_retries(lambda: replayer.client.log_artifact(meta["parent_run_id"], str(study_dir / "trials.parquet")),
                         what="logging trials.parquet to MLflow", redact=redact)
        return 0


def fill_run_ids(path: Path, runs: Mapping[str, str]) -> int:
    """Fill the empty ``mlflow_run_id`` cells of a trials.parquet (trials whose runs the tracking server
    created only on replay) from ``runs`` (trial id -> run id), in place and atomically, keeping the
    file's schema and metadata; the number of cells filled."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file() or not runs:
        return 0
    table = pq.read_table(path)
    old = table.column("mlflow_run_id").to_pylist()
    new = [run or runs.get(trial, "") for run, trial in zip(old, table.column("trial_id").to_pylist())]
    filled = sum(a != b for a, b in zip(old, new))
    if filled:
        index = table.schema.get_field_index("mlflow_run_id")
        table = table.set_column(index, table.schema.field(index), pa.array(new, type=table.schema.field(index).type))
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    return filled


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m study.replay STUDY_DIR``: exit 0 when everything is logged, 3 when items are left,
    2 for a folder that holds no study or one a running driver holds (it replays by itself)."""
    parser = argparse.ArgumentParser(prog="python -m study.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", type=Path, help="the study's folder (holds study.json, mlflow_outbox.db)")
    parser.add_argument("--tracking-uri", default=None, help="log there instead of the study's tracking URI")
    args = parser.parse_args(argv)
    from study.lock import StudyLocked

    try:
        left = replay(args.study_dir, args.tracking_uri)
    except (FileNotFoundError, StudyLocked) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 3 if left else 0


if __name__ == "__main__":
    sys.exit(main())
