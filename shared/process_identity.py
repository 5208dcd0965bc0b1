"""Who holds a lease or a lock: `host:pid`, so a crashed holder on this host can be recognised at once."""

from __future__ import annotations

import os
import socket


def current_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_gone(holder: str) -> bool:
    """True only for a dead process on this very host; elsewhere only an expiry can tell. A dead but unreaped
    process counts as dead: kill(pid, 0) still finds a zombie (the workers of a SIGKILLed runtime in a container
    whose init does not reap orphans)."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):  # no /proc (not Linux) or the process just went away
        return False
