"""Initial sync benchmark: N accounts SQLite CRM -> pull -> SQLite bus -> apply -> SQLite ERP.

Prints records/s end to end, bus messages/s, state writes per record (rows and round trips) and peak RSS.
Usage: python bench/initial_sync.py [--rows 100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo import sample_data  # noqa: E402
from shared.app import SyncApp  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.local_runtime import RunOptions, run_once  # noqa: E402


class CountingTables:
    """Wraps a table backend to count what the engine writes and how often it goes to the store."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.rows_written = 0
        self.write_calls = 0
        self.read_calls = 0

    def upsert_many(self, table, rows):  # noqa: ANN001, ANN201
        self.rows_written += len(rows)
        self.write_calls += 1
        return self.inner.upsert_many(table, rows)

    def get_many(self, table, pk, rks):  # noqa: ANN001, ANN201
        self.read_calls += 1
        return self.inner.get_many(table, pk, rks)

    def __getattr__(self, name):  # noqa: ANN001, ANN204
        return getattr(self.inner, name)


class CountingBus:
    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.sent = 0
        self.send_calls = 0

    def send(self, queue, envelopes):  # noqa: ANN001, ANN201
        self.sent += len(envelopes)
        self.send_calls += 1
        return self.inner.send(queue, envelopes)

    def __getattr__(self, name):  # noqa: ANN001, ANN204
        return getattr(self.inner, name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dualsync-bench-"))
    t0 = time.perf_counter()
    crm_url, erp_url = sample_data.build(work / "data", accounts=args.rows, contacts=0, with_bad_rows=False)
    os.environ["CRM_DB_URL"], os.environ["ERP_DB_URL"] = crm_url, erp_url
    print(f"seeded {args.rows} rows in {time.perf_counter() - t0:.1f}s ({work})")
    app = SyncApp.local(load_config(sample_data.write_flows(work)), work / "state")
    tables = CountingTables(app.state.tables)
    app.state.tables = tables
    bus = CountingBus(app.bus)
    app.bus = bus
    start = time.perf_counter()
    tally = run_once(app, RunOptions(workers=args.workers, drain_bound=1))
    elapsed = time.perf_counter() - start
    counts = tally.flows["accounts-to-customers"]
    app.close()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"initial_sync  rows={args.rows}  applied={counts.applied}  seconds={elapsed:.2f}  "
          f"records_per_s={counts.applied / elapsed:,.0f}")
    print(f"bus           messages={bus.sent}  send_calls={bus.send_calls}  messages_per_s={bus.sent / elapsed:,.0f}")
    print(f"state         rows_written_per_record={tables.rows_written / args.rows:.2f}  "
          f"write_round_trips_per_1000={tables.write_calls * 1000 / args.rows:.1f}  "
          f"read_round_trips_per_1000={tables.read_calls * 1000 / args.rows:.1f}")
    print(f"memory        peak_rss_mib={peak_mib:.0f}")
    if not counts.adds_up() or counts.applied != args.rows:
        sys.exit("counts do not add up")


if __name__ == "__main__":
    main()
