"""A new study's MLflow SQLite store starts as a copy of an empty one that MLflow already migrated.

Why: MLflow creates a SQLite tracking store by running every schema migration it has (alembic, dozens of
them, many rebuilding tables): 2.7 s of every new study's start on an idle 2-core machine and 5.5 s under
load, before Ray or any trial (py-spy of ``study/run.py --smoke``, 2026-12-01). The result is the same for
every store of one MLflow version, so it is made once per version and cache folder and copied (~0.05 s
to open). The copy holds the schema and MLflow's own bookkeeping rows only: MLflow adds the default
experiment (id 0, with this store's artifact root and time) on the first open, as it does for any store
that lacks one.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from trainables.data.synthetic import CACHE_ENV

SQLITE_PREFIX = "sqlite:///"


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` tracking URI (PATH relative to the cwd unless it starts
    with ``/``); None for any other URI, or one with query parameters (left to MLflow as given)."""
    if not tracking_uri.startswith(SQLITE_PREFIX) or "?" in tracking_uri:
        return None
    path = tracking_uri[len(SQLITE_PREFIX):]
    return Path(path) if path and path != ":memory:" else None


def template_dir(output: Path) -> Path:
    """The cache folder of the template for studies under ``output``: ``$NOISY_TRANSFER_CACHE`` when set
    (shared by every output folder), else ``OUTPUT/.cache``, beside the data cache."""
    return Path(os.environ.get(CACHE_ENV) or Path(output) / ".cache")


def template_path(cache_dir: Path) -> Path:
    """Where the migrated empty store of the installed MLflow version is kept in ``cache_dir``."""
    import mlflow

    return Path(cache_dir) / f"mlflow-{mlflow.__version__}-empty.db"


def build_template(path: Path) -> Path:
    """Write ``path``: an empty SQLite store migrated by MLflow, without the default experiment. Atomic
    (built beside it, then renamed), so concurrent studies may build it at once."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".mlflow-template-") as folder:
        built = Path(folder) / "mlflow.db"
        store = SqlAlchemyStore(f"{SQLITE_PREFIX}{built}", str(Path(folder) / "artifacts"))
        store.engine.dispose()
        with sqlite3.connect(built) as db:
            db.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
            db.execute("DELETE FROM experiments WHERE experiment_id = 0")
        db.close()
        os.replace(built, path)
    return path


def seed_sqlite_store(tracking_uri: str, cache_dir: Path) -> bool:
    """Copy the migrated empty store to ``tracking_uri``'s file when that is a SQLite file that does not
    exist yet (building the template in ``cache_dir`` first if needed); True if it did. An existing file is never touched,
    and any other URI is left to MLflow."""
    target = sqlite_file(tracking_uri)
    if target is None or target.exists():
        return False
    template = template_path(cache_dir)
    if not template.is_file():
        build_template(template)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        shutil.copyfile(template, temp)
        if target.exists():  # made meanwhile by someone else: theirs stays
            return False
        os.replace(temp, target)
    finally:
        Path(temp).unlink(missing_ok=True)
    return True
