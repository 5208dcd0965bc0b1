"""Who holds a lease or a lock: `host:pid`, so a crashed holder on this host can be recognised at once."""

from __future__ import annotations

import os
import socket


def current_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_gone(holder: str) -> bool:
    """True only for a dead process on this very host; elsewhere only an expiry can tell."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
