"""One study per output folder at a time: a kernel lock (flock) on a file holding the owner's pid and host."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

LOCK_NAME = ".study.lock"


class StudyLocked(RuntimeError):
    """Another live process owns the study folder."""


class StudyLock:
    """Context manager: take ``folder``'s lock or raise :class:`StudyLocked` naming its owner.

    The lock is the kernel's (``flock`` on the lock file), so it dies with its process: a lock file left
    by a killed driver, or one naming a pid that now belongs to an unrelated process (a container
    restart reuses pids), is simply taken over, and ``--resume`` after a crash just works. The file
    holds the owner's pid and host only for the message. Folders the lock had to create are removed
    again on exit when nothing else was written into them, so a study refused before it started leaves
    no trace.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._created: list[Path] = []
        self._fd: int | None = None

    def __enter__(self) -> "StudyLock":
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first
        while self._fd is None:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._refuse()
            if _same_file(fd, self.path):
                self._fd = fd
            else:  # the previous owner unlinked the file between our open and our flock: lock the new one
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        return self

    def _refuse(self) -> None:
        owner = self._owner() or {}
        self.__exit__(None, None, None)
        raise StudyLocked(
            f"study folder {self.path.parent} is in use by pid {owner.get('pid', '?')} on "
            f"{owner.get('host', '?')}; wait for it, or choose another --name"
        )

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # before the unlock: a waiting driver then locks a new file
            os.close(self._fd)  # releases the flock
            self._fd = None
        for folder in self._created:
            try:
                folder.rmdir()  # only succeeds when empty: nothing a study wrote is ever removed
            except OSError:
                break


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
