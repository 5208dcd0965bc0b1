"""What the catch-up after a full change-tracking read costs, against the Dataverse simulator on loopback.

A full read of N accounts (pages of P) from no cursor, then the catch-up query (`modifiedon ge` the read's
start): requests, rows read and seconds, for
- an old table (rows last modified before the read began: the catch-up finds nothing), and
- a table written during the read (W rows updated after the first page: they come back once, at their new
  version).

Rows seeded just before the read count as "recent" (they fall within the one-minute margin), so the first case
ages the rows first by moving the simulator's modifiedon back an hour.

Usage: python bench/dataverse_catch_up.py [--rows 20000] [--page 5000] [--writes 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvsim import DataverseSimulator  # noqa: E402
from shared.config import SourceSpec  # noqa: E402
from shared.connectors.dataverse import DataverseConnector  # noqa: E402
from shared.connectors.odata.auth import StaticTokenProvider  # noqa: E402

SOURCE = SourceSpec(system="crm", entity="accounts", key=["accountid"], changes="change_tracking",
                    select=["name", "accountnumber"])


def run(rows: int, page: int, writes: int) -> None:
    with DataverseSimulator() as sim:
        ids = [sim.insert("accounts", {"name": f"A{i}", "accountnumber": f"N-{i}"})["accountid"] for i in range(rows)]
        with sim.store.transaction():  # an old table: last modified an hour ago
            sim.store.conn.execute('UPDATE "t_accounts" SET modifiedon = datetime(modifiedon, \'-1 hour\')')
        crm = DataverseConnector(sim.url, StaticTokenProvider("bench"), page_size=page)
        for label, during in (("old table, no writes during the read", 0),
                              (f"{writes} rows updated during the read", writes)):
            sim.stats.reset()
            started = time.perf_counter()
            read = 0
            pages = crm.read_changes(SOURCE, None, page)
            for number, chunk in enumerate(pages):
                read += len(chunk.records)
                if number == 0:
                    for rid in ids[:during]:
                        sim.update("accounts", rid, {"name": "changed during the read"})
            seconds = time.perf_counter() - started
            snap = sim.stats.snapshot()
            catch_up = snap["by_kind"].get("query", 0) + snap["by_kind"].get("query_next_page", 0)
            print(f"{label:40s} rows={rows} read={read} requests={snap['requests']} "
                  f"catch-up requests={catch_up} seconds={seconds:.2f}")
        crm.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--page", type=int, default=5000)
    parser.add_argument("--writes", type=int, default=500)
    args = parser.parse_args()
    run(args.rows, args.page, args.writes)


if __name__ == "__main__":
    main()
