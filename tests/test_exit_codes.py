"""Exit codes a tool (``ray job submit``, CI, a shell script) can read, each from a real study:
0 every trial finished (tests/test_study.py's runs), 1 a trial ended in error (after exporting
everything), 130 interrupted (tests/test_study.py's Ctrl-C test), 2 bad input or an unreachable tracking
server (here and test_study.py), 3 items left for ``python -m study.replay`` (tests/test_tracking_outage.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from search_spaces.base import SEGMENTATION_SMOKE
from study.run import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNLOGGED, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[1]
# the real CLI with one more preset (JSON), as tests/test_faults.py composes its fault grids
DRIVER = textwrap.dedent("""
    import json, sys
    from search_spaces import PRESETS
    from search_spaces.base import Preset
    extra = json.loads(sys.argv[1])
    PRESETS[extra["name"]] = Preset(**{**extra, "folds": tuple(extra["folds"])})
    from study.run import main
    sys.exit(main(sys.argv[2:]))
""")
# SGD at lr 10 with batches of 4 diverges to NaN in pre-training epoch 2 (tests/test_faults.py)
DIVERGES = {"optimizer": "sgd", "lr_pretrain": 10.0, "momentum": 0.9, "weight_decay": 1.0, "batch_size": 4}


def test_the_codes_are_the_documented_ones():
    assert (EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNLOGGED, EXIT_INTERRUPTED) == (0, 1, 2, 3, 130)
    readme = (ROOT / "README.md").read_text()
    for code in ("`0`", "`1`", "`2`", "`3`", "`130`"):
        assert code in readme.split("## Exit codes")[1].split("\n## ")[0]


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["--smoke", "--output", str(tmp_path), "--seeds", "0"]) == EXIT_USAGE
    assert "--seeds" in capsys.readouterr().err


def test_a_tracking_server_that_does_not_answer_is_refused_in_one_line_before_ray_starts(tmp_path, capsys,
                                                                                         monkeypatch):
    import socket

    import ray

    # (Ray may be up already: the suite's session-wide local Ray. Starting it here would be the failure.)
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: pytest.fail("Ray was started"))
    with socket.socket() as free:  # a port nobody listens on: connections are refused
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    uri = f"http://user:hunter2@127.0.0.1:{port}"
    assert main(["--smoke", "--output", str(tmp_path), "--tracking-uri", uri]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: the MLflow tracking server http://127.0.0.1:{port} does not answer"), err
    assert "run the same command again: nothing has run yet" in err[-1] and "hunter2" not in "\n".join(err)
    assert not (tmp_path / "quick-smoke" / "study.json").exists()


def test_resume_refuses_a_study_moved_from_where_it_started_before_ray_starts(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: pytest.fail("Ray was started"))
    study = tmp_path / "quick-smoke"
    study.mkdir()
    meta = json.dumps({"study": "quick-smoke", "started_in": "/elsewhere/quick-smoke"})
    (study / "study.json").write_text(meta)
    assert main(["--smoke", "--output", str(tmp_path), "--resume"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: --resume: this study was started in /elsewhere/quick-smoke and has moved "
                              f"to {study.resolve()}"), err
    assert "move the folder back to /elsewhere/quick-smoke" in err[-1]
    assert (study / "study.json").read_text() == meta, "nothing touched"


@pytest.mark.slow
def test_a_study_with_a_diverged_trial_exports_everything_then_exits_1_and_says_why(tmp_path):
    preset = {
        "name": "exitcodes", "description": "one diverging trial", "trainable": "pretrain_finetune",
        "conditions": {"Diverges": DIVERGES, "CompleteLabels": {}}, "folds": [1], "seeds": 1,
        "base": {**SEGMENTATION_SMOKE, "epochs_pretrain": 2, "epochs_finetune": 1, "warmup_epochs": 0},
    }
    output = tmp_path / "results"
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(preset), "--preset", "exitcodes",
                           "--output", str(output), "--max-concurrent", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1400)
    log = done.stdout + done.stderr
    assert done.returncode == EXIT_ERROR, log[-4000:]
    trials = pd.read_parquet(output / "exitcodes" / "trials.parquet").set_index("condition")
    assert trials.loc["Diverges", "status"] == "ERROR" and trials.loc["CompleteLabels", "status"] == "TERMINATED"
    assert (output / "exitcodes" / "history.parquet").exists()
    # a divergence is a result, not a crash: one line with its message (a crash prints its whole
    # traceback, tests/test_console.py)
    failed = log.split("[noisy-transfer] DIVERGED ")[1].splitlines()[0]
    assert "non-finite loss" in failed and trials.loc["Diverges", "error"] in failed, log[-4000:]
    assert "1 trial(s) ended in error" in log


def test_sigusr2_prints_every_threads_stack_and_the_driver_carries_on_inside_ray_tune():
    # What a stuck driver's log shows after `kill -USR2 <pid>` (README); tests/test_faults.py sends it to a
    # driver that misses its deadline. Without the handler SIGUSR2 would end the process. Ray Tune installs
    # its own handlers when a run starts (SIGUSR1 stops the run: it cannot be the one), so they are
    # installed here first, as Tuner.fit does.
    code = textwrap.dedent("""
        import os, signal, sys
        from study.run import main
        assert main(["--list-presets"]) == 0
        from ray.tune.tune import _setup_signal_catching
        stop = _setup_signal_catching()
        os.kill(os.getpid(), signal.SIGUSR2)
        print("still running", stop.is_set())
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "still running False" in done.stdout  # and Ray Tune's run was not told to stop
    assert "Current thread" in done.stderr and 'File "<string>", line 7' in done.stderr, done.stderr
