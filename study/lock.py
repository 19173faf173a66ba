"""One study per output folder at a time: a lock file holding the owner's pid and host."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import psutil

LOCK_NAME = ".study.lock"


class StudyLocked(RuntimeError):
    """Another live process owns the study folder."""


class StudyLock:
    """Context manager: take ``folder``'s lock or raise :class:`StudyLocked` naming its owner.

    A lock whose owner pid is no longer running on this host is stale (a killed driver) and is taken
    over, so ``--resume`` after a crash just works. Folders the lock had to create are removed again on
    exit when nothing else was written into them, so a study refused before it started leaves no trace.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._created: list[Path] = []

    def __enter__(self) -> "StudyLock":
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner and owner.get("host") == me["host"] and not psutil.pid_exists(owner.get("pid", -1)):
                    self.path.unlink(missing_ok=True)  # stale: its driver died
                    continue
                raise StudyLocked(
                    f"study folder {self.path.parent} is in use by pid {owner.get('pid') if owner else '?'} on "
                    f"{owner.get('host') if owner else '?'}; wait for it, or remove {self.path} if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            return self

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)
        for folder in self._created:
            try:
                folder.rmdir()  # only succeeds when empty: nothing a study wrote is ever removed
            except OSError:
                break
