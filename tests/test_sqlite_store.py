"""study.sqlite_store: a new study's SQLite store copied from a migrated empty one is the store MLflow
would have made, and nothing that exists is overwritten."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study import sqlite_store
from study.sqlite_store import seed_sqlite_store, sqlite_file, template_dir, template_path
from trainables.data.synthetic import CACHE_ENV


def schema(db_file: Path) -> tuple[list, list]:
    """(every table, index and trigger definition, the alembic revision) of a SQLite store. A definition's
    lines are compared as a set: MLflow's migrations order a table's constraints differently from one
    process to the next (Python's string hashing), so two stores MLflow made differ in that order too."""
    with sqlite3.connect(db_file) as db:
        found = sorted((kind, name, frozenset(line.strip().rstrip(",") for line in (sql or "").splitlines()))
                       for kind, name, sql in db.execute(
                           "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
        revision = db.execute("SELECT version_num FROM alembic_version").fetchall()
    db.close()
    return found, revision


@pytest.mark.parametrize(("uri", "path"), [
    ("sqlite:////abs/study/mlflow.db", Path("/abs/study/mlflow.db")),
    ("sqlite:///results/study/mlflow.db", Path("results/study/mlflow.db")),
    ("sqlite:///results/mlflow.db?timeout=30", None),
    ("sqlite:///:memory:", None),
    ("http://127.0.0.1:5000", None),
    ("file:///abs/mlruns", None),
])
def test_only_a_sqlite_file_uri_names_a_file(uri, path):
    assert sqlite_file(uri) == path


def test_the_template_sits_beside_the_data_cache_unless_the_cache_variable_says_where(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert template_dir(tmp_path / "results") == tmp_path / "results" / ".cache"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "shared"))
    assert template_dir(tmp_path / "results") == tmp_path / "shared"


def test_a_seeded_store_is_the_store_mlflow_makes_with_its_own_default_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns of the cwd
    fresh, seeded = tmp_path / "fresh" / "mlflow.db", tmp_path / "seeded" / "mlflow.db"
    fresh.parent.mkdir()
    MlflowClient(f"sqlite:///{fresh}").search_experiments()  # MLflow's migrations
    before = int(time.time() * 1000)
    assert seed_sqlite_store(f"sqlite:///{seeded}", cache_dir=tmp_path / "cache")
    assert template_path(tmp_path / "cache").is_file()
    assert schema(seeded) == schema(fresh)
    with sqlite3.connect(seeded) as db:
        assert db.execute("SELECT count(*) FROM experiments").fetchone() == (0,), "no default experiment copied"
    db.close()

    client = MlflowClient(f"sqlite:///{seeded}")
    (default,) = client.search_experiments()
    (made,) = MlflowClient(f"sqlite:///{fresh}").search_experiments()
    assert (default.experiment_id, default.name, default.artifact_location) == (
        made.experiment_id, made.name, made.artifact_location)
    assert default.creation_time >= before, "made when the store was first opened, not with the template"
    run = client.create_run(client.create_experiment("study")).info.run_id
    client.log_metric(run, "finetune/test_mean_iu", 0.25, step=3)
    assert [(m.step, m.value) for m in client.get_metric_history(run, "finetune/test_mean_iu")] == [(3, 0.25)]


def test_an_existing_store_is_never_touched(tmp_path):
    target = tmp_path / "mlflow.db"
    target.write_bytes(b"a study's runs")
    assert not seed_sqlite_store(f"sqlite:///{target}", cache_dir=tmp_path / "cache")
    assert target.read_bytes() == b"a study's runs"
    assert not template_path(tmp_path / "cache").exists(), "no work done for a store that exists"
    assert not seed_sqlite_store("http://127.0.0.1:1/", cache_dir=tmp_path / "cache")
    assert list(tmp_path.iterdir()) == [target]


def test_the_template_is_built_once_per_mlflow_version(tmp_path, monkeypatch):
    import mlflow

    cache = tmp_path / "cache"
    assert mlflow.__version__ in template_path(cache).name
    assert seed_sqlite_store(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}", cache_dir=cache)

    def refuse(path):
        raise AssertionError(f"built again: {path}")

    monkeypatch.setattr(sqlite_store, "build_template", refuse)
    assert seed_sqlite_store(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}", cache_dir=cache)
    assert (tmp_path / "b" / "mlflow.db").read_bytes() == template_path(cache).read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [template_path(cache).name], "no temporary left behind"
