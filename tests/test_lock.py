"""The study lock is the kernel's: it dies with its owner, whatever the lock file says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from study.lock import LOCK_NAME, StudyLock, StudyLocked

# A process that takes the lock, says so, and holds it until killed.
_HOLDER = """
import sys, time
from pathlib import Path
from study.lock import StudyLock
with StudyLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_lock_on_a_held_folder_is_refused_with_the_owner_pid(tmp_path):
    with StudyLock(tmp_path / "study"):
        with pytest.raises(StudyLocked, match=rf"in use by pid {os.getpid()} on "):
            with StudyLock(tmp_path / "study"):
                pass
        assert (tmp_path / "study" / LOCK_NAME).exists(), "the refused lock leaves the owner's file alone"
    assert not (tmp_path / "study").exists(), "the folder the lock created, empty again, is removed"


def test_a_lock_file_naming_a_live_unrelated_pid_is_taken_over(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    # What a container restart leaves: the file of a dead driver whose pid now belongs to another process.
    (folder / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": "this-host"}))
    with StudyLock(folder):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()
    assert folder.exists(), "a folder that existed before the lock is never removed"


def test_a_lock_held_by_another_process_is_refused_then_taken_over_once_it_is_killed(tmp_path):
    folder = tmp_path / "study"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StudyLocked, match=rf"in use by pid {holder.pid} on "):
            with StudyLock(folder):
                pass
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the file stays, the kernel drops the lock
        holder.wait(timeout=30)
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid
        with StudyLock(folder):
            assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)
