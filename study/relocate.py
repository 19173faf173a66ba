"""``python -m study.relocate STUDY_DIR``: point a moved or copied study folder's MLflow store at itself.

A study with its own SQLite store keeps its MLflow artifacts inside the folder (``mlartifacts/``), but
MLflow records absolute ``file://`` locations. After the folder moves (to a laptop, to a colleague),
this rewrites those locations, and study.json's tracking URI, to the folder's new place; then
``mlflow ui``/``mlflow server`` on the folder's ``mlflow.db`` show every artifact again. A moved study
is resumed only from the folder it started in (``study.driver.refuse_a_moved_study``). A study logged to a
tracking server has nothing to relocate.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

ARTIFACTS_DIR = "mlartifacts"  # the study's MLflow artifact root, inside the study folder


def artifact_location(study_dir: Path) -> str:
    """The ``file://`` URI of the MLflow artifact root of the study in ``study_dir``."""
    return (Path(study_dir).resolve() / ARTIFACTS_DIR).as_uri()


def relocate(study_dir: Path) -> int:
    """Rewrite the artifact locations of ``study_dir/mlflow.db`` that point at the folder's old place,
    and study.json's tracking URI; return how many rows changed (0 when nothing had moved)."""
    study_dir = Path(study_dir).resolve()
    database = study_dir / "mlflow.db"
    if not database.is_file():
        raise FileNotFoundError(f"{database} does not exist: only a study with its own SQLite store "
                                "(the default --tracking-uri) can be relocated")
    new = artifact_location(study_dir)
    with closing(sqlite3.connect(database)) as connection, connection:
        locations = [row[0] for row in connection.execute("SELECT artifact_location FROM experiments")]
        old = next((loc for loc in locations if loc.endswith(f"/{ARTIFACTS_DIR}") and loc != new), None)
        changed = 0
        if old is not None:
            for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                changed += connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                    (new, len(old) + 1, len(old), old)).rowcount
    meta_path = study_dir / "study.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("tracking_uri", "").startswith("sqlite:///"):
            meta["tracking_uri"] = f"sqlite:///{database}"
            meta_path.write_text(json.dumps(meta, indent=2))
    return changed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m study.relocate STUDY_DIR", file=sys.stderr)
        return 2
    try:
        changed = relocate(Path(args[0]))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"[noisy-transfer] {args[0]}: {changed} MLflow artifact location(s) now point into the folder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
