"""The command line as other tools meet it: the console script, --version, MLFLOW_TRACKING_URI, and
where a Ray job's relative --output lands. Fast: nothing here starts Ray."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import import_module, metadata
from pathlib import Path

from study.spec import OUTPUT_HOME_ENV, RAY_JOB_ENV, parse_spec, resolve_output

ROOT = Path(__file__).resolve().parents[1]


def test_the_console_script_is_the_same_main_as_study_run():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["noisy-transfer"].partition(":")
    from study.run import main

    assert getattr(import_module(module), name) is main


def test_version_prints_the_installed_project_version_and_exits_0():
    done = subprocess.run([sys.executable, str(ROOT / "study" / "run.py"), "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"noisy-transfer {metadata.version('noisy-transfer')}"


def test_mlflow_tracking_uri_is_honoured_unless_tracking_uri_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    base = ["--smoke", "--output", str(tmp_path)]
    assert parse_spec(base).tracking_uri == "http://127.0.0.1:5999"
    assert parse_spec([*base, "--tracking-uri", "sqlite:///x.db"]).tracking_uri == "sqlite:///x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert parse_spec(base).tracking_uri == f"sqlite:///{tmp_path.resolve() / 'quick-smoke' / 'mlflow.db'}"


def test_a_ray_jobs_relative_output_resolves_against_a_stable_folder_not_the_job_working_dir(tmp_path,
                                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # stands for Ray's per-job runtime_resources/working_dir_files/... copy
    assert resolve_output("results", {}) == tmp_path.resolve() / "results"
    job = {RAY_JOB_ENV: "{}"}
    assert resolve_output("results", {**job, OUTPUT_HOME_ENV: "/srv/studies"}) == Path("/srv/studies/results")
    assert resolve_output("results", job) == Path.home().resolve() / "results"
    assert resolve_output("/abs/out", job) == Path("/abs/out"), "an absolute --output is kept as given"
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    monkeypatch.setenv(OUTPUT_HOME_ENV, str(tmp_path / "home"))
    spec = parse_spec(["--smoke"])
    assert spec.study_dir == tmp_path / "home" / "results" / "quick-smoke"
