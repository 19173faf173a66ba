"""benchmarks/gpu_check.py --cpu-dry-run: every section runs on the CPU through the GPU check's code paths
(tiny sizes, a Ray with one logical GPU), prints its ratio lines, and writes the same output to --out."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RATIOS = ("ratio step float32/bf16", "ratio checkpoint/epoch", "ratio trials/hour 2 per GPU/1 per GPU",
          "ratio trials/hour 4 per GPU/1 per GPU")


@pytest.mark.slow
def test_gpu_check_dry_run_prints_every_ratio_and_writes_out(tmp_path):
    out = tmp_path / "gpu_check.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                                         if p)}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-dry-run", "--out", str(out),
                           "--cpus", "4"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert text and text in done.stdout  # --out holds what was printed
    for ratio in RATIOS:
        (line,) = [line for line in text.splitlines() if line.startswith(ratio + " ")]
        value = float(line[len(ratio):].split()[0])
        assert math.isfinite(value) and value > 0, line
    for section in ("step", "alexnet", "sharing", "smoke"):
        assert re.search(rf"^section {section}: done in", text, re.MULTILINE), section
    assert "all sections ran" in text
    assert "--gpus-per-trial 0.5: finished" in text


def test_gpu_check_refuses_bad_arguments_before_any_work():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-dry-run", "--budget", "0"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--budget must be >= 1, got 0" in done.stderr
