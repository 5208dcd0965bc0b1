"""`dualsync run` stops within a bounded time whatever became of its apply workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_BOUND = 30.0  # seconds: the runner's own stop timeout is far below this for an idle queue


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[1]), int(fields[2])


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat and stat[0] == parent:
                found.append(int(entry.name))
    return found


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != b"Z":
                found.append(int(entry.name))
    return found


def _apply_workers(runner: int) -> list[int]:
    """Worker processes are forked by the runner's fork server, a child of the runner."""
    workers = []
    for child in _children(runner):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"forkserver" in cmdline:
            workers += _children(child)
    return workers


def _wait_for(predicate, timeout: float = 60.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_sigterm_to_the_process_group_after_a_worker_died_stops_within_a_bound(sample, tmp_path):
    sample(accounts=200, contacts=0, bad=False)
    env = {**os.environ, "CRM_DB_URL": os.environ["CRM_DB_URL"], "ERP_DB_URL": os.environ["ERP_DB_URL"]}
    cmd = [sys.executable, "-m", "shared.cli", "run", "--config", str(tmp_path / "flows.yaml"), "--workers", "2",
           "--workdir", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group, as a service manager starts it
    try:
        workers = _wait_for(lambda: (w := _apply_workers(proc.pid)) and len(w) == 2 and w)
        time.sleep(1.0)  # let them drain the queue and idle
        os.kill(workers[0], signal.SIGKILL)
        _wait_for(lambda: _stat(workers[0]) is None or workers[0] not in _apply_workers(proc.pid))
        time.sleep(0.5)  # the runner notices and starts a replacement
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_BOUND)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"dualsync run did not stop within {STOP_BOUND:g} s of SIGTERM") from None
        assert time.monotonic() - started < STOP_BOUND
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert "Traceback" not in stderr, stderr
        # Workers stopped as told (none taken for crashed and replaced while stopping), and nothing is left over.
        assert stderr.count("restarted") == 1 and "while stopping" not in stderr, stderr
        _wait_for(lambda: not _group(proc.pid), timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
