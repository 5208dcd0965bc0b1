"""What a killed apply worker costs: target writes done twice, and delivery counts raised, per kill.

N accounts, SQLite CRM -> run_once (`dualsync run --once`, apply in worker processes) -> SQLite ERP whose
triggers count every insert and update of `customers`. While it runs, an apply worker is SIGKILLed `--kills`
times, spread over the run. Prints the target writes beyond one per record (redundant writes, per kill), the dead
letters and the run's wall time; `--kills 0` gives the cost-free baseline, `--batch-size 1000` the old batches.
Usage: python bench/crash_redo.py [--rows 20000] [--kills 3] [--workers 2] [--batch-size N]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo import sample_data  # noqa: E402
from shared.app import SyncApp  # noqa: E402
from shared.apply_workers import APPLY_BATCH  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.local_runtime import RunOptions, run_once  # noqa: E402


def count_writes(erp_path: str) -> None:
    with sqlite3.connect(erp_path) as conn:
        conn.executescript("""
            CREATE TABLE write_log (n INTEGER);
            CREATE TRIGGER counted_insert AFTER INSERT ON customers BEGIN INSERT INTO write_log VALUES (1); END;
            CREATE TRIGGER counted_update AFTER UPDATE ON customers BEGIN INSERT INTO write_log VALUES (1); END;
        """)


def scalar(path: str, sql: str) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute(sql).fetchone()[0] or 0
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


def apply_workers(runner: int) -> list[int]:
    """Worker processes: children of the runner's fork server."""
    def children(parent: int) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
                except OSError:
                    continue
                if int(fields[1]) == parent:
                    found.append(int(entry.name))
        return found

    workers = []
    for child in children(runner):
        try:
            if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers += children(child)
        except OSError:
            continue
    return workers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=APPLY_BATCH)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        crm_url, erp_url = sample_data.build(work / "data", args.rows, 0, with_bad_rows=False)
        erp_path = erp_url.removeprefix("sqlite:///")
        count_writes(erp_path)
        os.environ.update(CRM_DB_URL=crm_url, ERP_DB_URL=erp_url)
        app = SyncApp.local(load_config(sample_data.write_flows(work)), work / "state", retry_base=0.05)
        result: dict = {}
        options = RunOptions(workers=args.workers, batch_size=args.batch_size, drain_bound=5)
        started = time.monotonic()
        runner = threading.Thread(target=lambda: result.update(tally=run_once(app, options)))
        runner.start()
        killed = 0
        marks = [args.rows * (k + 1) // (args.kills + 1) for k in range(args.kills)]
        while runner.is_alive():
            if killed < len(marks) and scalar(erp_path, "SELECT COUNT(*) FROM write_log") >= marks[killed]:
                workers = apply_workers(os.getpid())
                if workers:
                    os.kill(workers[killed % len(workers)], signal.SIGKILL)
                    killed += 1
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        app.close()
        writes = scalar(erp_path, "SELECT COUNT(*) FROM write_log")
        rows = scalar(erp_path, "SELECT COUNT(*) FROM customers")
        bus = str(work / "state" / "bus.db")
        dead = scalar(bus, "SELECT COUNT(*) FROM messages WHERE dead=1")
        redundant = writes - args.rows
        counts = result["tally"].flows["accounts-to-customers"]
        print(f"rows={args.rows} workers={args.workers} batch={args.batch_size} kills={killed}"
              f" applied={counts.applied} adds_up={counts.adds_up()}")
        print(f"target rows={rows} writes={writes} redundant={redundant}"
              f" per kill={redundant / killed if killed else 0:.0f}")
        print(f"dead letters={dead} wall={elapsed:.1f}s records/s={args.rows / elapsed:.0f}")


if __name__ == "__main__":
    main()
