"""One `dualsync run` per workdir: an OS lock on `<workdir>/run.lock`, which the kernel drops when its process dies.

Two runners on one workdir would be safe (leases and the bus keep every change once), but each would start its
own workers and both would print counts that do not add up; it is a mistake to report, not a mode. The lock file
says who holds it and since when, so the refusal can name them.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LOCK_NAME = "run.lock"


class WorkdirInUse(Exception):
    def __init__(self, workdir: Path, holder: str) -> None:
        super().__init__(f"workdir {workdir} is in use by {holder}")
        self.workdir, self.holder = workdir, holder


@dataclass
class RunLock:
    path: Path
    fd: int

    def release(self) -> None:
        os.close(self.fd)  # closing drops the flock; the file stays, a later run takes it over


def take(workdir: Path) -> RunLock:
    """Lock `workdir` for this process or raise WorkdirInUse naming the holder (pid and since when)."""
    path = workdir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise WorkdirInUse(workdir, holder) from None
    since = datetime.now(UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {since}\n".encode(), 0)
    return RunLock(path, fd)
