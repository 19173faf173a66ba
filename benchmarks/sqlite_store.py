"""What opening a new study's MLflow SQLite store costs: MLflow's migrations against a copy of a migrated
empty store (study.sqlite_store), side by side in one run.

    python benchmarks/sqlite_store.py [--stores 5]

Each side opens ``--stores`` new stores in turn (a client, then one query: what a study's start does) and
prints seconds per store; the last line is ``ratio seeded/migrated X``. The template is built once before
the timed stores (a study pays that once per MLflow version and cache folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import machine_line  # noqa: E402

from study.sqlite_store import build_template, seed_sqlite_store, template_path  # noqa: E402


def open_store(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).search_experiments()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=5, help="new stores per side (default 5)")
    args = parser.parse_args(argv)
    if args.stores < 1:
        parser.error(f"--stores must be >= 1, got {args.stores}")
    print(machine_line())
    open_store("sqlite:///:memory:")  # imports and MLflow's one-off set-up, outside both sides
    with tempfile.TemporaryDirectory(prefix="nt-bench-sqlite-") as folder:
        root = Path(folder)
        start = time.perf_counter()
        build_template(template_path(root / "cache"))
        print(f"template built once in {time.perf_counter() - start:.2f} s")
        seconds = {}
        for side in ("migrated", "seeded"):
            start = time.perf_counter()
            for n in range(args.stores):
                uri = f"sqlite:///{root / side / str(n) / 'mlflow.db'}"
                (root / side / str(n)).mkdir(parents=True)
                if side == "seeded":
                    assert seed_sqlite_store(uri, cache_dir=root / "cache")
                open_store(uri)
            seconds[side] = (time.perf_counter() - start) / args.stores
            print(f"{side}: {seconds[side]:.3f} s per new store ({args.stores} stores)", flush=True)
    print(f"ratio seeded/migrated {seconds['seeded'] / seconds['migrated']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
