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

from study.progress import PROGRESS_MODES, StudyProgress, duration, eta, quiet_libraries, ray_console
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


def test_an_ending_trials_line_carries_the_progress_and_no_status_line_repeats_it():
    clock, out = Clock(), io.StringIO()
    progress = StudyProgress(total=4, quiet_every_s=300, clock=clock, out=out)
    progress.setup()
    a, b = _trial("a", "Clean"), _trial("b", "Noisy")
    progress.on_trial_start(0, [a, b], a)
    progress.on_trial_start(0, [a, b], b)
    clock.now += 10
    a.last_result = {"objective": 0.25}  # Ray marks it TERMINATED after the callbacks ran
    progress.on_trial_complete(0, [a, b], a)
    a.status = "TERMINATED"
    progress.on_step_end(0, [a, b])
    clock.now += 20
    b.last_result = {"objective": 0.5}
    progress.on_trial_complete(0, [a, b], b)
    b.status = "TERMINATED"
    for _ in range(29):  # 290 s of steps after the last line: still no status line
        clock.now += 10
        progress.on_step_end(0, [a, b])
    lines = out.getvalue().splitlines()
    # ETA: the remaining trials, as many at a time as ran at once (2), each as long as the mean finished
    # one: after a, ceil(3 / 2) * 10 s; after b, ceil(2 / 2) * 20 s
    assert lines == [
        "[noisy-transfer] start  a: Clean, fold 1, seed 0",
        "[noisy-transfer] start  b: Noisy, fold 1, seed 0",
        "[noisy-transfer] done   a: Clean, fold 1, seed 0: objective 0.2500 in 10s [1/4, best 0.2500, ETA 20s]",
        "[noisy-transfer] done   b: Noisy, fold 1, seed 0: objective 0.5000 in 30s [2/4, best 0.5000, ETA 20s]",
    ]
    clock.now += 10  # 300 s without a line: one status line
    progress.on_step_end(0, [a, b])
    progress.on_step_end(0, [a, b])
    assert out.getvalue().splitlines()[4:] == [
        "[noisy-transfer] 0 running, 2 finished, 0 failed, 2 pending; best objective 0.5000; 5m30s elapsed; ETA 20s"]


def test_while_no_line_is_printed_a_status_line_comes_every_5_minutes():
    clock, out = Clock(), io.StringIO()
    progress = StudyProgress(total=1, clock=clock, out=out)
    progress.setup()
    trial = _trial("a", "Clean")
    progress.on_trial_start(0, [trial], trial)
    for _ in range(40):  # 10 minutes of steps, 15 s apart, the trial running throughout
        clock.now += 15
        progress.on_step_end(0, [trial])
    status = [line for line in out.getvalue().splitlines() if "running" in line]
    assert [line.split("; ")[2] for line in status] == ["5m00s elapsed", "10m00s elapsed"]


def test_a_resumed_study_counts_the_trials_an_earlier_driver_saw_end():
    clock, out = Clock(), io.StringIO()
    progress = StudyProgress(total=4, clock=clock, out=out)
    progress.setup()
    before = [_trial("x", "Clean", "TERMINATED", 0.9), _trial("y", "Noisy", "TERMINATED", 0.7)]
    new = _trial("c", "Clean")
    progress.on_trial_start(0, [*before, new], new)
    clock.now += 60
    new.last_result = {"objective": 0.3}
    progress.on_trial_complete(0, [*before, new], new)
    assert out.getvalue().splitlines()[-1].endswith("objective 0.3000 in 1m00s [3/4, best 0.9000, ETA 1m00s]")


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
    assert out.getvalue() == ("[noisy-transfer] FAILED t: Diverges, fold 1, seed 0 after 0s [1/1, best none]:\n"
                              + error.read_text())


def test_a_retried_crash_is_one_line_naming_the_exception_and_tune_logs_no_second_copy(tmp_path, monkeypatch):
    error = tmp_path / "error.txt"
    error.write_text("Failure # 1 (occurred at 2026-12-01_06-13-45)\nTraceback (most recent call last):\n"
                     "  File \"x.py\", line 1\nFileNotFoundError: VOC2011 is incomplete; expected layout:\n"
                     "  ROOT/TrainVal/VOCdevkit/VOC2011/\n")
    clock, out = Clock(), io.StringIO()
    progress = StudyProgress(total=1, mode="off", clock=clock, out=out)
    progress.setup()
    trial = _trial("t", "Clean")
    trial.error_file, trial.num_failures = str(error), 1
    progress.on_trial_start(0, [trial], trial)
    clock.now += 75
    progress.on_trial_recover(0, [trial], trial)
    assert out.getvalue() == ("[noisy-transfer] RETRY  t: Clean, fold 1, seed 0 crashed after 1m15s (failure 1): "
                              "FileNotFoundError: VOC2011 is incomplete; expected layout:\n")
    for name in ("TUNE_PRINT_ALL_TRIAL_ERRORS", "RAY_AIR_NEW_OUTPUT"):  # restored after the test
        monkeypatch.delenv(name, raising=False)
    quiet_libraries("ray")
    assert "TUNE_PRINT_ALL_TRIAL_ERRORS" not in os.environ, "--progress ray keeps Tune's own error logs"
    quiet_libraries("compact")
    assert os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "0"


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


def _smoke_console(output: Path, *extra: str) -> list[str]:
    """The console lines (stdout and stderr) of ``study/run.py --preset quick --smoke`` on its own Ray."""
    argv = [sys.executable, str(ROOT / "study" / "run.py"), "--preset", "quick", "--smoke", "--output", str(output),
            *extra]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own Ray, as a user's first run has
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    lines = text.splitlines()
    starts = [line for line in lines if line.startswith("[noisy-transfer] start ")]
    ends = [line for line in lines if line.startswith("[noisy-transfer] done ")]
    assert len(starts) == len(ends) >= 2 and all("objective 0." in line for line in ends), text
    assert not any("Trial status" in line or "(pid=" in line for line in lines), "Ray's tables or worker logs"
    return lines


def _too_few_lines(lines: list[str]) -> int:
    """Lines of the summary's "cells with too few runs" list (one per cell with fewer than 2 seeds)."""
    start = lines.index("cells with too few runs:") + 1
    return next(i for i, line in enumerate(lines[start:] + [""]) if not line.startswith("  "))


@pytest.mark.slow
def test_the_smoke_study_console_is_at_most_40_lines_and_grows_by_2_lines_per_trial(tmp_path):
    # lines = fixed + 2 per trial + one per table cell with too few runs (2 seeds: "none"). Each trial
    # has exactly its start and done lines: no other line names a trial. The default study (18 trials,
    # 6 conditions, 3 seeds) adds 4 table rows to the fixed part; README's console section gives its count.
    lines = _smoke_console(tmp_path / "four", "--seeds", "2")
    trial_ids = {line.split()[2].rstrip(":") for line in lines if line.startswith("[noisy-transfer] start ")}
    print(f"quick --smoke --seeds 2 console: {len(lines)} lines for {len(trial_ids)} trials, fixed lines "
          f"{len(lines) - 2 * len(trial_ids) - _too_few_lines(lines)}")
    assert len(lines) <= 40, "\n".join(lines)
    assert (len(trial_ids), _too_few_lines(lines)) == (4, 1), "\n".join(lines)
    for trial_id in trial_ids:
        naming = [line for line in lines if trial_id in line]
        assert [line.split()[1] for line in naming] == ["start", "done"], "\n".join(naming)
