"""What a crashed receiver costs: a bounded amount of work done again, and no delivery counted against the
messages it held when the bus can tell that it died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.local_runtime import RunOptions, run_once
from shared.messages import Envelope
from tests.unit.test_local_runtime import MARKERS, erp_rows, sample, wait_for  # noqa: F401 - fixture

QUEUE = "q"
ROOT = Path(__file__).resolve().parents[2]

HOLD_AND_DIE = """
import os, sys
sys.path.insert(0, {root!r})
from shared.bus.sqlite_bus import SqliteBus
bus = SqliteBus(sys.argv[1], lock_duration=float(sys.argv[2]))
assert len(bus.receive("q", max_messages=10, max_wait=1)) == 3
os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("expired", [False, True], ids=["released", "expired"])
def test_a_dead_holders_lock_does_not_count_as_a_delivery(tmp_path, expired):
    """Released as soon as we see the holder died, or found expired later (a run restarted after the lock
    duration): either way the dead holder's delivery is not counted."""
    bus = SqliteBus(tmp_path / "bus.db", lock_duration=3600, max_delivery_count=2)
    bus.send(QUEUE, [Envelope(message_id=f"m{i}", body=b"{}", subject="f",
                              application_properties={"flow": "f", "key": f"k{i}"}) for i in range(3)])
    script = tmp_path / "hold.py"
    script.write_text(HOLD_AND_DIE.format(root=str(ROOT)))
    lock = "0.05" if expired else "3600"
    for _ in range(3):  # three receivers die holding every message: more crashes than max_delivery_count
        died = subprocess.run([sys.executable, str(script), str(tmp_path / "bus.db"), lock], check=False)
        assert died.returncode == -signal.SIGKILL
        if expired:
            time.sleep(0.1)
        else:
            assert bus.release_orphaned_locks(QUEUE) == 3
    got = bus.receive(QUEUE, max_messages=10, max_wait=0)
    assert [(m.envelope.message_id, m.delivery_count) for m in got] == [("m0", 1), ("m1", 1), ("m2", 1)]
    assert bus.counts(QUEUE).dead_letter == 0


def count_writes(app: SyncApp, erp_url: str) -> None:
    engine = create_engine(erp_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE write_log (n INTEGER)"))
        conn.execute(text("CREATE TRIGGER w_ins AFTER INSERT ON customers BEGIN INSERT INTO write_log VALUES (1); END"))
        conn.execute(text("CREATE TRIGGER w_upd AFTER UPDATE ON customers BEGIN INSERT INTO write_log VALUES (1); END"))
    engine.dispose()


def writes(erp_url: str) -> int:
    engine = create_engine(erp_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT COUNT(*) FROM write_log")).scalar_one()
    finally:
        engine.dispose()


def stall_before_state(app: SyncApp) -> None:
    """worker_init: after the target write, before the record state is saved, leave a marker and dawdle, so a
    kill lands where the whole batch in flight must be written again."""
    markers = Path(os.environ[MARKERS])
    state = app.state
    real = state.save_records

    def save_records(pair, records):  # noqa: ANN001, ANN202
        if any(r.lease is None for r in records):  # the commit after the target write, not the claim before it
            (markers / f"written-{os.getpid()}").touch()
            time.sleep(0.5)
        return real(pair, records)

    state.save_records = save_records  # type: ignore[method-assign]


def test_a_killed_worker_redoes_at_most_one_small_batch(sample, tmp_path, monkeypatch):  # noqa: F811
    total = 1500
    app, erp_url = sample("redo", accounts=total, contacts=0, bad=False)
    count_writes(app, erp_url)
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(MARKERS, str(markers))
    result = {}
    options = RunOptions(workers=2, drain_bound=1, worker_init=f"{__name__}:stall_before_state")
    runner = threading.Thread(target=lambda: result.update(tally=run_once(app, options)))
    runner.start()
    victim = wait_for(lambda: next(markers.glob("written-*"), None))
    os.kill(int(victim.name.split("-")[1]), signal.SIGKILL)  # target written, state not yet
    runner.join(120)
    counts = result["tally"].flows["accounts-to-customers"]
    assert counts.adds_up() and counts.applied == total and not counts.dead_lettered
    assert len(erp_rows(erp_url, "customers", "account_number")) == total
    redone = writes(erp_url) - total
    assert 0 < redone <= 100, f"a crash redid {redone} target writes"
