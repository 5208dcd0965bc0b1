"""Dataverse API round trips per 1,000 records, against the Dataverse simulator (dvsim) on loopback.

Phases, each through the engine (pull -> embedded SQLite bus -> apply) with `shared.local_runtime.run_once`:

- initial_sync: N accounts (default 10,000) CRM -> SQLite ERP, change tracking from no cursor.
- incremental: 1,000 of them modified in the CRM, then the same flow again (a delta read).
- erp_to_crm: N customers SQLite ERP -> CRM: N upserts by alternate key through $batch.

For each phase, one line for reads and one for writes: records, wall seconds and records/s of the whole phase,
API round trips (HTTP requests the simulator answered, from `sim.stats`), round trips per 1,000 records, and
the process's peak RSS. Target: writes at most 2 round trips per 1,000 records.

Usage: python bench/dataverse_calls.py [--rows 10000] [--changed 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from dvsim import DataverseSimulator  # noqa: E402
from shared.app import SyncApp  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.local_runtime import RunOptions, run_once  # noqa: E402

READS = {"query", "query_next_page", "track_changes", "track_changes_next_page", "delta", "delta_next_page",
         "retrieve", "whoami"}
WRITES = {"batch", "create", "upsert", "delete"}
WRITE_TARGET = 2.0  # round trips per 1,000 records

ERP = sa.MetaData()
sa.Table("customers", ERP, sa.Column("account_number", sa.String(20), primary_key=True),
         sa.Column("name", sa.String(200), nullable=False), sa.Column("credit_limit", sa.Numeric(18, 2)),
         sa.Column("crm_id", sa.String(36)))
sa.Table("erp_customers", ERP, sa.Column("account_number", sa.String(20), primary_key=True),
         sa.Column("name", sa.String(200), nullable=False), sa.Column("phone", sa.String(50)),
         sa.Column("modified_at", sa.DateTime, nullable=False))


def flows(page_size: int) -> dict:
    return {
        "accounts-to-erp": {
            "source": {"system": "crm", "entity": "accounts", "key": "accountid", "changes": "change_tracking",
                       "select": ["name", "accountnumber", "creditlimit"]},
            "target": {"system": "erp", "entity": "customers", "key": "account_number"},
            "page_size": page_size,
            "fields": [{"from": "accountnumber", "to": "account_number", "required": True},
                       {"from": "name", "to": "name", "required": True},
                       {"from": "creditlimit", "to": "credit_limit", "type": "decimal"},
                       {"from": "accountid", "to": "crm_id"}],
        },
        "customers-to-crm": {
            "source": {"system": "erp", "entity": "erp_customers", "key": "account_number",
                       "watermark": "modified_at"},
            "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
            "page_size": page_size,
            "fields": [{"from": "account_number", "to": "accountnumber"}, {"from": "name", "to": "name"},
                       {"from": "phone", "to": "telephone1"}],
        },
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(phase: str, records: int, seconds: float, kinds: dict[str, int], extra: str = "") -> float:
    reads = sum(n for k, n in kinds.items() if k in READS)
    writes = sum(n for k, n in kinds.items() if k in WRITES)
    rate = records / seconds if seconds else 0.0
    per = {}
    for side, trips in (("read", reads), ("write", writes)):
        per[side] = trips * 1000 / records if records else 0.0
        print(f"{phase + '.' + side:<22} records={records:<6}  round_trips={trips:<4}  per_1000={per[side]:<5.2f}  "
              f"wall_s={seconds:<6.2f}  records_per_s={rate:<8,.0f}  peak_rss_mib={peak_rss_mib():.0f}"
              + (f"  {extra}" if extra and side == "write" else ""))
    return per["write"]


def run_phase(app: SyncApp, sim: DataverseSimulator, flow: str, workers: int, batch: int):
    sim.stats.reset()
    started = time.perf_counter()
    tally = run_once(app, RunOptions(workers=workers, drain_bound=1, batch_size=batch))
    seconds = time.perf_counter() - started
    counts = tally.flows[flow]
    snapshot = sim.stats.snapshot()
    if not counts.adds_up() or counts.dead_lettered or counts.waiting:
        sys.exit(f"{flow}: counts do not add up: {counts}")
    return counts, seconds, snapshot


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--changed", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dualsync-dvbench-"))
    erp_url = f"sqlite:///{work / 'erp.db'}"
    os.environ["DVBENCH_TOKEN"] = "bench-token"
    os.environ["DVBENCH_ERP"] = erp_url
    engine = sa.create_engine(erp_url)
    ERP.create_all(engine)

    with DataverseSimulator() as sim:
        t0 = time.perf_counter()
        ids = [sim.insert("accounts", {"name": f"Customer {i} Ltd", "accountnumber": f"C{i:06d}",
                                       "creditlimit": 1000 + i / 4})["accountid"] for i in range(args.rows)]
        print(f"{'seed':<22} records={args.rows:<6}  wall_s={time.perf_counter() - t0:<6.2f}  ({work})")
        config = parse_config({
            "systems": {"crm": {"kind": "dataverse", "url": sim.url, "auth": {"static_token": "env:DVBENCH_TOKEN"}},
                        "erp": {"kind": "sql", "url": "env:DVBENCH_ERP"}},
            "flows": flows(page_size=5000),
        })
        # One embedded runtime per direction, so each phase runs only its own flow.
        crm_to_erp = config.model_copy(update={"flows": {"accounts-to-erp": config.flows["accounts-to-erp"]}})
        erp_to_crm = config.model_copy(update={"flows": {"customers-to-crm": config.flows["customers-to-crm"]}})

        app = SyncApp.local(crm_to_erp, work / "state-crm-to-erp")
        counts, seconds, stats = run_phase(app, sim, "accounts-to-erp", args.workers, 1000)
        assert counts.applied == args.rows, counts
        report("initial_sync", args.rows, seconds, stats["by_kind"])

        for i in range(args.changed):
            sim.update("accounts", ids[i * (args.rows // args.changed)], {"telephone1": f"+47 {i:08d}",
                                                                          "name": f"Customer {i} AS"})
        counts, seconds, stats = run_phase(app, sim, "accounts-to-erp", args.workers, 1000)
        assert counts.applied == args.changed, counts
        report("incremental", args.changed, seconds, stats["by_kind"])
        app.close()

        base = datetime(2026, 1, 1)
        with engine.begin() as conn:
            conn.execute(ERP.tables["erp_customers"].insert(), [
                {"account_number": f"E{i:06d}", "name": f"ERP customer {i}", "phone": f"+47 {i:08d}",
                 "modified_at": base + timedelta(seconds=i // 50)} for i in range(args.rows)])
        app = SyncApp.local(erp_to_crm, work / "state-erp-to-crm")
        # Each worker writes its share of a received batch in one $batch: 2 workers x 1,000 = 2,000 per receive.
        counts, seconds, stats = run_phase(app, sim, "customers-to-crm", args.workers, 1000 * args.workers)
        assert counts.applied == args.rows, counts
        operations = sum(stats["batch_operations"].values())
        per_write = report("erp_to_crm", args.rows, seconds, stats["by_kind"],
                           f"batch_operations={operations}")
        app.close()
        assert len(sim.rows("accounts")) == 2 * args.rows
    engine.dispose()
    verdict = "met" if per_write <= WRITE_TARGET else "MISSED"
    print(f"{'target':<22} writes_per_1000<={WRITE_TARGET:g}: {verdict} ({per_write:.2f})")
    if per_write > WRITE_TARGET:
        sys.exit(1)


if __name__ == "__main__":
    main()
