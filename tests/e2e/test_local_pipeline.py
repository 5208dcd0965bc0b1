"""The whole pipeline on one machine: SQL CRM -> pull -> SQLite bus -> apply -> SQL ERP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import create_engine, text

from shared.local_runtime import RunOptions, run_once
from tests.e2e.scenario import assert_demo_scenario, erp_count


def test_demo_scenario_counts_add_up_and_name_every_bad_row(sample):
    app, crm_url, erp_url = sample(accounts=2000, contacts=3000)
    tally = run_once(app, RunOptions(workers=2, drain_bound=30))
    assert_demo_scenario(app, tally, erp_url)
    # A second run finds nothing new and changes nothing.
    again = run_once(app, RunOptions(workers=2, drain_bound=1))
    assert sum(c.pulled for c in again.flows.values()) == 0


def test_incremental_change_is_applied_once(sample):
    app, crm_url, erp_url = sample(accounts=300, contacts=10, bad=False)
    run_once(app, RunOptions(drain_bound=1))
    engine = create_engine(crm_url)
    with engine.begin() as conn:
        # Now: later than every sample row (a stamp in the future would be refused as impossible).
        conn.execute(text("UPDATE accounts SET name='Renamed', modifiedon=:now WHERE accountid='acc-0000042'"),
                     {"now": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")})
    engine.dispose()
    tally = run_once(app, RunOptions(drain_bound=1))
    assert tally.flows["accounts-to-customers"].pulled == 1
    assert tally.flows["accounts-to-customers"].applied == 1
    erp = create_engine(erp_url)
    with erp.connect() as conn:
        assert conn.execute(text("SELECT name FROM customers WHERE account_number='C000042'")).scalar() == "Renamed"
    erp.dispose()


def test_sigkill_mid_run_then_once_again_converges_exactly(sample, tmp_path):
    total = 30000
    app, crm_url, erp_url = sample(accounts=total, contacts=0, bad=False)
    app.close()
    env = {**os.environ, "CRM_DB_URL": crm_url, "ERP_DB_URL": erp_url}
    cmd = [sys.executable, "-m", "shared.cli", "run", "--config", str(tmp_path / "flows.yaml"), "--once",
           "--workdir", str(tmp_path / "state")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while erp_count(erp_url, "customers") < total // 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    landed = erp_count(erp_url, "customers")
    assert 0 < landed < total, f"the kill should land mid-run, {landed} of {total} were applied"

    from shared.app import SyncApp
    from shared.config import load_config

    again = SyncApp.local(load_config(tmp_path / "flows.yaml"), tmp_path / "state", retry_base=0.02)
    try:
        tally = run_once(again, RunOptions(workers=2, drain_bound=5))
        counts = tally.flows["accounts-to-customers"]
        assert counts.adds_up() and counts.waiting == 0 and not counts.dead_lettered
        erp = create_engine(erp_url)
        with erp.connect() as e:
            expected = {(f"C{i:06d}", f"Customer {i} Ltd") for i in range(total)}
            rows = e.execute(text("SELECT account_number, name FROM customers")).all()
            assert len(rows) == total and set(map(tuple, rows)) == expected
            assert not [k for k, n in Counter(r[0] for r in rows).items() if n > 1]
        erp.dispose()
        assert again.state.count_keys("accounts-to-customers", "erp") == total
        assert again.state.count_keys("accounts-to-customers", "crm") == total
        assert again.bus.counts(again.queue).dead_letter == 0
    finally:
        again.close()
