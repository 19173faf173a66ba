"""The study console (``--progress``): the compact callback's lines driven by fake trials and a fake
clock, and the line count of a real smoke study in each mode."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from study.progress import PROGRESS_MODES, StudyProgress, duration, eta, ray_console
from study.run import main

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trial(trial_id: str, condition: str, status: str = "RUNNING", objective: float | None = None):
    return SimpleNamespace(trial_id=trial_id, config={"condition": condition, "fold": 1, "seed": 0},
                           status=status, last_result={} if objective is None else {"objective": objective},
                           error_file=None, get_error=lambda: None)


def test_compact_lines_status_every_interval_best_and_eta():
    clock, out = Clock(), io.StringIO()
    progress = StudyProgress(total=4, status_every_s=30, clock=clock, out=out)
    progress.setup()
    a, b = _trial("a", "Clean"), _trial("b", "Noisy")
    progress.on_trial_start(0, [a, b], a)
    progress.on_trial_start(0, [a, b], b)
    clock.now += 10
    a.status, a.last_result = "TERMINATED", {"objective": 0.25}
    progress.on_trial_complete(0, [a, b], a)
    progress.on_step_end(0, [a, b])  # 10 s since setup: no status line yet
    clock.now += 20
    b.status, b.last_result = "TERMINATED", {"objective": 0.5}
    progress.on_trial_complete(0, [a, b], b)
    progress.on_step_end(0, [a, b])  # 30 s: one status line
    progress.on_step_end(0, [a, b])  # and not a second one in the same interval
    lines = out.getvalue().splitlines()
    assert lines[:4] == [
        "[noisy-transfer] start  a: Clean, fold 1, seed 0",
        "[noisy-transfer] start  b: Noisy, fold 1, seed 0",
        "[noisy-transfer] done   a: Clean, fold 1, seed 0: objective 0.2500 in 10s",
        "[noisy-transfer] done   b: Noisy, fold 1, seed 0: objective 0.5000 in 30s",
    ]
    # 2 pending, each as long as the mean finished trial (20 s), one at a time (none running)
    assert lines[4:] == ["[noisy-transfer] 0 running, 2 finished, 0 failed, 2 pending; best objective 0.5000; "
                         "30s elapsed; ETA 40s"]


def test_while_nothing_changes_the_status_line_comes_every_5_minutes_only():
    clock, out = Clock(), io.StringIO()
    progress = StudyProgress(total=1, status_every_s=30, clock=clock, out=out)
    progress.setup()
    trial = _trial("a", "Clean")
    progress.on_trial_start(0, [trial], trial)
    for _ in range(40):  # 10 minutes of steps, 15 s apart, the trial running throughout
        clock.now += 15
        progress.on_step_end(0, [trial])
    status = [line for line in out.getvalue().splitlines() if "running" in line]
    # at 30 s (the start changed things), then 300 s after that line, twice within the 10 minutes
    assert [line.split("; ")[2] for line in status] == ["30s elapsed", "5m30s elapsed"]


def test_a_failed_trial_prints_its_whole_error_even_with_progress_off(tmp_path):
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\nFloatingPointError: nan loss\n")
    out = io.StringIO()
    progress = StudyProgress(total=1, mode="off", clock=Clock(), out=out)
    progress.setup()
    trial = _trial("t", "Diverges", status="ERROR")
    trial.error_file = str(error)
    progress.on_trial_start(0, [trial], trial)
    progress.on_trial_error(0, [trial], trial)
    progress.on_experiment_end([trial])
    assert out.getvalue() == ("[noisy-transfer] FAILED t: Diverges, fold 1, seed 0 after 0s:\n"
                              + error.read_text())


def test_minimize_keeps_the_lowest_objective_and_durations_read_as_clock_time():
    clock, out = Clock(), io.StringIO()
    progress = StudyProgress(total=2, direction="min", clock=clock, out=out)
    progress.setup()
    for trial_id, value in (("a", 0.7), ("b", 0.3)):
        trial = _trial(trial_id, "C", status="TERMINATED", objective=value)
        progress.on_trial_start(0, [], trial)
        progress.on_trial_complete(0, [], trial)
    assert "best objective 0.3000" in progress.status_line([])
    assert [duration(s) for s in (0, 59.4, 61, 3599, 3600 + 7 * 60)] == ["0s", "59s", "1m01s", "59m59s", "1h07m"]
    assert eta([10.0, 30.0], remaining=5, parallel=2) == 20.0 * 3


def test_ray_settings_per_mode_and_an_unknown_mode_is_refused():
    assert ray_console("compact") == {"verbose": 0, "log_to_driver": False}
    assert ray_console("off") == {"verbose": 0, "log_to_driver": False}
    assert ray_console("ray") == {"verbose": 1, "log_to_driver": True}
    with pytest.raises(ValueError, match="compact, ray, off"):
        ray_console("quiet")
    assert PROGRESS_MODES == ("compact", "ray", "off")


def test_an_unknown_progress_value_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--smoke", "--output", str(tmp_path), "--progress", "loud"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--progress" in err[0] and "'loud'" in err[0] and "compact" in err[0]
    assert not any(tmp_path.iterdir()), "nothing is written before the refusal"


@pytest.mark.slow
def test_the_smoke_study_console_is_at_most_40_lines_and_says_each_trial(tmp_path):
    argv = [sys.executable, str(ROOT / "study" / "run.py"), "--preset", "quick", "--smoke",
            "--output", str(tmp_path / "results")]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own Ray, as a user's first run has
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    lines = text.splitlines()
    print(f"quick --smoke console: {len(lines)} lines")
    assert len(lines) <= 40, text
    starts = [line for line in lines if line.startswith("[noisy-transfer] start ")]
    ends = [line for line in lines if line.startswith("[noisy-transfer] done ")]
    assert len(starts) == len(ends) >= 2 and all("objective 0." in line for line in ends), text
    assert not any("Trial status" in line or "(pid=" in line for line in lines), "Ray's tables or worker logs"
