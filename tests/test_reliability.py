"""Reliability and security guarantees that are not about killing processes (see test_faults.py for
those): credentials never reach what a study writes, two studies never share a folder, the same seed
gives the same bits in another process, CIFAR files cannot run code, and bad input is refused before
anything starts."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from search_spaces import PRESETS
from search_spaces.base import Preset
from study.export import trial_frames
from study.run import main
from study.spec import MIN_SECRET_LENGTH, Secrets, parse_spec
from helpers.fixtures_data import write_mini_cifar
from trainables.data.cifar import load_cifar_pu

ROOT = Path(__file__).resolve().parents[1]
SECRET = "wJalrXUtn-test-secret-4f9d1c"  # planted value of an environment variable with a secret name
ENV = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)}  # subprocesses start their own Ray


# --- credentials ----------------------------------------------------------------------------------


def test_secrets_are_found_by_name_and_short_flags_are_not_values():
    secrets = Secrets.from_environment({"AWS_SECRET_ACCESS_KEY": SECRET, "GITHUB_TOKEN": "short",
                                        "MLFLOW_TRACKING_PASSWORD": "p" * MIN_SECRET_LENGTH, "HOME": "/root"})
    assert secrets.names == {"AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "MLFLOW_TRACKING_PASSWORD"}
    assert set(secrets.values) == {SECRET, "p" * MIN_SECRET_LENGTH}  # "short" would garble every text
    assert secrets.redact(f"a {SECRET} b") == "a *** b"
    assert secrets.redact("/home/short/x") == "/home/short/x"


@pytest.mark.parametrize(("text", "expected"), [
    ("http://alice:pa55@mlflow.example:5000", "http://mlflow.example:5000"),
    ("--tracking-uri https://tok@host/path?x=1", "--tracking-uri https://host/path?x=1"),
    ("s3://bucket/prefix", "s3://bucket/prefix"),
    ("sqlite:////tmp/results/quick/mlflow.db", "sqlite:////tmp/results/quick/mlflow.db"),
])
def test_uri_credentials_are_removed_and_the_uri_still_names_its_host(text, expected):
    assert Secrets().redact(text) == expected


def test_pickled_secrets_and_callbacks_carry_no_secret_value(tmp_path, monkeypatch):
    """Ray pickles the MLflow callback (and its Secrets) into tuner.pkl: no value may be in those bytes,
    and the unpickled copy redacts again from the environment of the process that loads it."""
    import pickle

    from study.tracking import MLflowTrials

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    secrets = Secrets.from_environment()
    assert secrets.redact(SECRET) == "***"
    callback = MLflowTrials("sqlite:///x.db", "1", "parent", tmp_path, secrets)
    for obj in (secrets, callback):
        blob = pickle.dumps(obj)
        assert SECRET.encode() not in blob
    restored = pickle.loads(pickle.dumps(callback))
    assert restored.secrets.redact(f"key {SECRET}") == "key ***"  # re-read from this environment
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert pickle.loads(pickle.dumps(secrets)).values == ()  # nothing travelled in the pickle


def test_public_config_drops_secret_keys_and_redacts_values():
    secrets = Secrets.from_environment({"API_KEY": SECRET})
    public = secrets.public({"API_KEY": "x", "data": f"voc:/data/{SECRET}", "seed": 3})
    assert public == {"data": "voc:/data/***", "seed": 3}


def _fake_trial(trial_id: str, config: dict, status: str = "TERMINATED", error: str = "") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config=config, status=status, checkpoint=None,
                           last_result={"objective": 0.5, "epoch_total": 2}, get_error=lambda: error)


def test_mlflow_child_runs_and_parquet_rows_carry_no_secret(tmp_path):
    """The two writers of trial data, fed a config and an error message that hold a secret."""
    from mlflow.tracking import MlflowClient

    from study.tracking import MLflowTrials

    secrets = Secrets.from_environment({"AWS_SECRET_ACCESS_KEY": SECRET})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("leak")
    parent = client.create_run(experiment).info.run_id
    config = {"condition": "C", "seed": 0, "data_cache": f"/cache/{SECRET}", "AWS_SECRET_ACCESS_KEY": "k"}
    callback = MLflowTrials(uri, experiment, parent, tmp_path / "artifacts", secrets)
    ok, bad = _fake_trial("t1", config), _fake_trial("t2", config, "ERROR", f"boom at http://u:{SECRET}@host")
    callback.on_trial_start(0, [], ok)
    callback.on_trial_complete(0, [], ok)
    callback.on_trial_start(0, [], bad)
    callback.on_trial_error(0, [], bad)

    for run_id in (callback.run_id(ok), callback.run_id(bad)):
        run = client.get_run(run_id)
        written = json.dumps([run.data.params, run.data.tags])
        assert SECRET not in written and "AWS_SECRET_ACCESS_KEY" not in written
        assert run.data.params["data_cache"] == "/cache/***", "the rest of the value is kept"
    assert client.get_run(callback.run_id(bad)).data.tags["error"].startswith("boom at http://host")
    artifact = (tmp_path / "artifacts" / "t1" / "config.json").read_text()
    assert SECRET not in artifact and json.loads(artifact)["seed"] == 0

    trials, _ = trial_frames([ok, bad], {}, study="s", preset="quick", run_ids={},
                             config_keys=list(config), secrets=secrets)
    assert "AWS_SECRET_ACCESS_KEY" not in trials.columns
    assert not trials.astype(str).apply(lambda column: column.str.contains(SECRET)).any().any()
    assert trials.set_index("trial_id").loc["t2", "error"] == "boom at http://host"


def test_a_failed_trial_error_is_read_from_the_staging_copy_before_ray_syncs_it(tmp_path):
    """Ray calls on_trial_error before the error file reaches storage, where get_error() looks."""
    from study.export import _error_line
    from study.tracking import trial_error_text

    staged = tmp_path / "error.txt"
    staged.write_text("Failure # 1\nTraceback ...\nFloatingPointError: non-finite loss, training diverged\n")
    trial = _fake_trial("t3", {}, "ERROR")
    trial.get_error = lambda: None  # not synced yet
    assert trial_error_text(trial) is None
    trial.error_file = str(staged)
    assert trial_error_text(trial) == staged.read_text()
    assert _error_line(trial) == "FloatingPointError: non-finite loss, training diverged"


RAY_ERROR = """Failure # 1 (occurred at 2026-12-01_12-00-00)
ray::ImplicitFunc.train() (pid=4242, ip=127.0.0.1, actor_id=ab12, repr=pretrain_finetune)
  File "/venv/lib/python3.11/site-packages/ray/tune/trainable/trainable.py", line 331, in train
    raise skipped from exception_cause(skipped)
  File "/repo/trainables/pretrain_finetune.py", line 88, in run
    cfg = PretrainFinetuneConfig.from_dict(config)
ValueError: invalid trial config: lr_pretrain must be > 0, got -1.0
  (a search draw outside the preset's range)
"""


def test_the_error_column_keeps_a_message_of_several_lines_whole():
    from study.export import exception_text

    assert exception_text(RAY_ERROR) == ("ValueError: invalid trial config: lr_pretrain must be > 0, got -1.0\n"
                                         "  (a search draw outside the preset's range)")
    chained = RAY_ERROR + "\nThe above exception was the direct cause of the following exception:\n\n" + (
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nRuntimeError: trial failed\n")
    assert exception_text(chained) == "RuntimeError: trial failed", "the last exception of a chain"
    assert exception_text("KeyboardInterrupt\n") == "KeyboardInterrupt"
    assert exception_text("") == ""


def test_parent_run_tags_redact_credentials_in_the_command_line(monkeypatch, tmp_path):
    from study.driver import parent_tags

    argv = ["study/run.py", "--tracking-uri", f"http://bob:{SECRET}@127.0.0.1:5000", "--output", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    spec = parse_spec(argv[1:])
    tags = parent_tags(spec, Secrets.from_environment({"MLFLOW_TRACKING_TOKEN": SECRET}))
    assert SECRET not in json.dumps(tags)
    assert "http://127.0.0.1:5000" in tags["command"]


@pytest.mark.slow
def test_a_real_study_writes_no_secret_anywhere(tmp_path, ray_local, monkeypatch):
    """Secret-named environment variables set while a study runs: not one of their names or values in
    MLflow (params, tags, metric names of every run), parquet, study.json or the artifacts."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("NOISY_TRANSFER_API_KEY", SECRET[::-1])
    argv = ["--preset", "quick", "--smoke", "--output", str(tmp_path / "results")]
    assert main(argv) == 0
    study_dir = parse_spec(argv).study_dir
    meta = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    runs = client.search_runs([meta["experiment_id"]], max_results=100)
    assert len(runs) == 3  # the parent and the two smoke trials: the scan below covers real runs
    forbidden = (SECRET, SECRET[::-1], "AWS_SECRET_ACCESS_KEY", "NOISY_TRANSFER_API_KEY")
    for run in runs:
        text = json.dumps([run.data.params, run.data.tags, sorted(run.data.metrics)])
        assert not [s for s in forbidden if s in text], run.info.run_id
    files = [p for p in study_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".parquet", ".png")]
    assert any(p.name == "config.json" for p in files)
    for path in files:
        text = path.read_bytes().decode("latin1")
        assert not [s for s in forbidden if s in text], path
    # Every file the study wrote, Ray's experiment state (tuner.pkl) and checkpoints in the storage
    # included: no secret value in any of their bytes.
    everything = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert any(p.name == "tuner.pkl" for p in everything)
    for path in everything:
        data = path.read_bytes()
        assert SECRET.encode() not in data and SECRET[::-1].encode() not in data, path
    for name in ("trials.parquet", "history.parquet"):
        frame = pd.read_parquet(study_dir / name)
        assert not [s for s in forbidden if frame.astype(str).apply(lambda c: c.str.contains(s)).any().any()]


# --- data files cannot run code -------------------------------------------------------------------


class _Payload:
    """A pickle that would create a file when loaded by a plain unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_cifar_batch_that_would_run_code_is_refused_without_running_it(tmp_path):
    root = tmp_path / "cifar"
    write_mini_cifar(root)
    marker = tmp_path / "pwned"
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": _Payload(marker), "labels": []}))
    with pytest.raises(ValueError, match=rf"CIFAR file {batch} is corrupt .*refusing to load posix\.system"):
        load_cifar_pu(root, "train", 0.5, seed=0)
    assert not marker.exists(), "the payload ran"


# --- one study per folder -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_driver_on_a_running_study_is_refused_with_the_owner_pid(tmp_path):
    """Two real drivers at once on one folder: the second exits 2 naming the first's pid, whether it
    asks for a new study or --resume, and writes nothing; the first finishes a whole study."""
    output = tmp_path / "results"
    argv = [sys.executable, str(ROOT / "study" / "run.py"), "--preset", "quick", "--smoke", "--seeds", "2",
            "--max-concurrent", "1", "--output", str(output)]
    lock = output / "quick-smoke" / ".study.lock"
    first = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not lock.exists():
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the first driver never took the lock"
            time.sleep(0.1)
        assert json.loads(lock.read_text())["pid"] == first.pid
        for extra in ([], ["--resume"]):
            second = subprocess.run([*argv, *extra], env=ENV, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
            assert f"in use by pid {first.pid}" in second.stderr, second.stderr
            assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert first.poll() is None, "the first driver must still be running for the refusal to mean anything"
        assert json.loads(lock.read_text())["pid"] == first.pid, "the refused driver left the lock alone"
        log, _ = first.communicate(timeout=400)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 0, log[-3000:]
    study_dir = output / "quick-smoke"
    assert not lock.exists()
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all()
    from mlflow.tracking import MlflowClient

    meta = json.loads((study_dir / "study.json").read_text())
    runs = MlflowClient(meta["tracking_uri"]).search_runs([meta["experiment_id"]], max_results=100)
    assert sum(r.data.tags.get("noisy_transfer.role") == "study" for r in runs) == 1, "one parent run"


# --- determinism across processes -----------------------------------------------------------------

_DETERMINISM_SCRIPT = """
import hashlib, json, sys
sys.path.insert(0, "tests")
from conftest import TINY
from trainables.config import PretrainFinetuneConfig
from trainables.data.sources import load_task_data
from trainables.pretrain_finetune import run

cfg = PretrainFinetuneConfig(**{**TINY, "data_cache": sys.argv[1], "seed": int(sys.argv[2]),
                                "noise_unsegment": 0.5, "noise_misclassify": 0.5, "epochs_pretrain": 2})
labels = load_task_data(cfg).pretrain_train.labels
reports = []
run(cfg, report=lambda metrics, state: reports.append(metrics))
print(json.dumps({"labels": hashlib.sha256(labels.tobytes()).hexdigest(), "reports": reports}))
"""


def _run_in_new_process(data_cache: Path, seed: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT, str(data_cache), str(seed)], env=ENV,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_same_seed_gives_identical_noisy_labels_and_metrics_in_separate_processes(data_cache):
    first, second, other = (_run_in_new_process(data_cache, seed) for seed in (0, 0, 1))
    assert first["labels"] == second["labels"], "noisy label maps differ between processes"
    # JSON holds NaN as NaN; equal text means bit-equal floats (repr round-trips a float exactly)
    assert json.dumps(first["reports"]) == json.dumps(second["reports"])
    assert len(first["reports"]) == 3  # 2 pre-training + 1 fine-tuning epoch: real training was compared
    assert other["labels"] != first["labels"], "another seed must draw another corruption"
    assert json.dumps(other["reports"]) != json.dumps(first["reports"])


# --- refused before anything starts ---------------------------------------------------------------


def test_gpus_per_trial_above_this_machine_is_refused_before_ray_starts(tmp_path):
    output = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "study" / "run.py"), "--gpus-per-trial", "1",
                           "--output", str(output)], env={**ENV, "CUDA_VISIBLE_DEVICES": ""},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "error: --gpus-per-trial 1 exceeds the GPUs of this machine (0); no trial could ever start. "
        "Use --gpus-per-trial 0 here, or run on a cluster with GPU nodes (ray up cluster.yaml)"]
    assert "Started a local Ray instance" not in done.stdout + done.stderr
    assert not output.exists(), "nothing written"


@pytest.mark.parametrize(("base", "message"), [
    ({"beta": 0.5}, "beta=0.5 is only used by loss 'bootstrap_neg', but loss is 'ce'"),
    ({"label_transform": "random_groups", "num_groups": 16}, "num_groups must be"),
    ({"noise_unsegment": 1.5}, "noise_unsegment must be"),
    ({"epochs_pretrain": "8"}, "epochs_pretrain must be"),
    ({"lr_pretrian": 0.1}, "unknown config key 'lr_pretrian'; did you mean 'lr_pretrain'?"),
])
def test_a_preset_with_a_bad_config_is_refused_in_one_line_before_anything_is_written(
        base, message, tmp_path, monkeypatch, capsys):
    broken = Preset(name="broken", description="a preset with one bad value", trainable="pretrain_finetune",
                    conditions={"Only": {}}, base=base, folds=(1,), seeds=1)
    monkeypatch.setitem(PRESETS, "broken", broken)
    import ray

    was_running = ray.is_initialized()
    assert main(["--preset", "broken", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists()
    assert ray.is_initialized() == was_running
