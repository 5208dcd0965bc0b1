"""What change mode `snapshot` costs a pull: the `kind: files` inbox (CSV exports in a folder) through the embedded
runtime (SyncApp.local: SQLite state and queue), one flow `customers-in` (snapshot, deletes: delete) into a
SQLite table, pages of 1,000 rows.

For each size N (default 20,000 and 100,000), in a fresh workdir:

- first: an export of N rows; one pull (every row is new, so every row goes on the bus). Then apply drains the
  queue (`run_once`, 2 worker processes: not measured here, its seconds are printed for orientation), which
  fills the key map and the record state the next pull compares with.
- second: the next export, in which 1% of the rows have another name and 0.5% are gone; one pull. Only the
  changed rows and the deletes of the missing ones may go on the bus: the benchmark exits 1 otherwise.

Per pull: `rows` read from the file, `rows/s` (rows read per wall second of `pull_flow`), `on_bus` (changes
sent: changed rows plus inferred deletes), `expected` (what the export changed), `pages`, `state/page` (calls to
the state's table backend per page, each one round trip to SQLite), `azure/page` (the requests those calls
would make to Table Storage, by the Azure adapter's limits: see CountingTables), `bus_sends` (send calls),
`peak_rss_mib` and `start_rss_mib` (this process's resident memory: the peak, sampled every 5 ms while the pull
ran, and at its start), then the state calls by method, summed over the pull, delete inference included:
`get_many` reads the snapshot markers, the key map and the record state (kept in 16 partitions: up to 16 calls
a page), `upsert_many` writes the markers, `update` moves the cursor, `query` lists the key map once.

Reading the numbers: a page of 1,000 rows costs about 20 state calls, but on Table Storage about 230 requests
(72 queries each for markers and key map, about 80 for the 16 partitions of record state, 10 transactions of
markers): that, not the CSV, would bound a pull on Azure. The first pull's memory does not grow with the file
(one page at a time). The second's does: its deletes are confirmed against the export as it is now, which the
inbox reads whole into memory (`Inbox.current`, about 0.5 KB a row) and keeps while that export is the latest.
tracemalloc is not used: it slows this pure-Python path tenfold.

Usage: python bench/files_snapshot.py [--rows 20000 100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa

from bench.rss_peak import RssPeak
from shared.app import SyncApp
from shared.config import parse_config
from shared.engine.pull import PullResult, pull_flow
from shared.local_runtime import RunOptions, run_once
from shared.state.azure_tables import MAX_BATCH_OPERATIONS, MAX_FILTER_COMPARISONS

FLOW = "customers-in"
PAGE = 1000
TABLE_PAGE = 1000  # entities per answer of a Table Storage query
CHANGED, GONE = 0.01, 0.005  # of the rows, in the second export


class CountingTables:
    """The state's table backend, counting every call by method, and the requests the same calls would make to
    Table Storage (`shared.state.azure_tables`): a `get_many` is one query per 14 row keys (the service allows
    15 comparisons in a filter), an `upsert_many` one transaction per 100 rows of a partition, a `query` one
    request per 1,000 entities listed, any other call one request."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.table_requests = 0

    def clear(self) -> None:
        self.calls.clear()
        self.table_requests = 0

    def get_many(self, table: str, pk: str, rks: Sequence[str]) -> Any:
        self.calls["get_many"] += 1
        self.table_requests += math.ceil(len(set(rks)) / (MAX_FILTER_COMPARISONS - 1))
        return self.inner.get_many(table, pk, rks)

    def upsert_many(self, table: str, rows: Sequence[tuple[str, str, Any]]) -> Any:
        self.calls["upsert_many"] += 1
        per_partition = Counter(pk for pk, _, _ in rows)
        self.table_requests += sum(math.ceil(n / MAX_BATCH_OPERATIONS) for n in per_partition.values())
        return self.inner.upsert_many(table, rows)

    def query(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        self.calls["query"] += 1
        listed = 0
        for entity in self.inner.query(*args, **kwargs):
            listed += 1
            yield entity
        self.table_requests += max(1, math.ceil(listed / TABLE_PAGE))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            self.table_requests += 1
            return method(*args, **kwargs)

        return counted


class CountingBus:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sends = 0

    def send(self, queue: str, envelopes: Sequence[Any]) -> Any:
        self.sends += 1
        return self.inner.send(queue, envelopes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def config(folder: Path, db_url: str) -> dict[str, Any]:
    return {
        "systems": {"erp": {"kind": "files", "folder": str(folder), "csv": {"types": {"credit": "decimal"}}},
                    "crm": {"kind": "sql", "url": db_url}},
        "flows": {FLOW: {
            "source": {"system": "erp", "entity": "customers", "key": "id", "changes": "snapshot"},
            "target": {"system": "crm", "entity": "customers", "key": "id"},
            "deletes": "delete", "page_size": PAGE,
            "fields": [{"from": "id", "to": "id"}, {"from": "name", "to": "name", "required": True},
                       {"from": "credit", "to": "credit", "type": "decimal"}],
        }},
    }


def export(folder: Path, file_name: str, names: dict[int, str]) -> None:
    """The ERP's export, renamed into place whole as an exporting ERP does."""
    inbox = folder / "inbox" / "customers"
    inbox.mkdir(parents=True, exist_ok=True)
    lines = ["id,name,credit\n", *(f"C{i:07d},{name},{i % 5000}.{i % 100:02d}\n" for i, name in names.items())]
    (inbox / ".tmp").write_text("".join(lines), encoding="utf-8")
    (inbox / ".tmp").replace(inbox / file_name)


def pull(app: SyncApp, label: str, rows: int, expected: int) -> PullResult:
    tables, bus = app.state.tables, app.bus
    tables.clear()
    bus.sends = 0
    with RssPeak() as rss:
        started = time.perf_counter()
        result = pull_flow(app, FLOW)
        seconds = time.perf_counter() - started
    if result.status != "ok":
        sys.exit(f"{label}: pull {result.status}: {result.error}")
    calls = sum(tables.calls.values())
    breakdown = " ".join(f"{k}={n}" for k, n in sorted(tables.calls.items()))
    print(f"{label:<7} {rows:>7} {rows / seconds:>8,.0f} {seconds:>7.2f} {result.sent:>7} {expected:>8} "
          f"{result.pages:>5} {calls / result.pages:>10.1f} {tables.table_requests / result.pages:>10.1f} "
          f"{bus.sends:>9} {rss.peak:>12.0f} {rss.start:>13.0f}  {breakdown}")
    if result.sent != expected or result.pulled + result.unchanged != rows:
        sys.exit(f"{label}: {result.sent} changes on the bus ({result.pulled} rows, {result.deletes_inferred} "
                 f"deletes, {result.unchanged} unchanged) where the export changed {expected}")
    return result


def apply(app: SyncApp, workdir: Path, workers: int, sent: int) -> None:
    started = time.perf_counter()
    tally = run_once(app, RunOptions(workers=workers, drain_bound=1, workdir=workdir))
    counts = tally.flows[FLOW]
    if counts.applied != sent or not counts.adds_up() or counts.dead_lettered or counts.waiting:
        sys.exit(f"apply: {counts}")
    seconds = time.perf_counter() - started
    print(f"{'apply':<7} {sent:>7} {sent / seconds:>8,.0f} {seconds:>7.2f}  (between the pulls, {workers} worker "
          "processes; not part of the pulls)")


def run_size(root: Path, rows: int, workers: int) -> None:
    folder, workdir = root / "exchange", root / "state"
    folder.mkdir()
    db_url = f"sqlite:///{root / 'crm.db'}"
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, credit NUMERIC)"))
    app = SyncApp.local(parse_config(config(folder, db_url)), workdir)
    app.state.tables = CountingTables(app.state.tables)
    app.bus = CountingBus(app.bus)
    try:
        names = {i: f"Customer {i}" for i in range(rows)}
        export(folder, "export-001.csv", names)
        first = pull(app, "first", rows, rows)
        apply(app, workdir, workers, first.sent)

        changed = range(0, rows, round(1 / CHANGED))
        gone = set(range(1, rows, round(1 / GONE)))
        names.update({i: f"Customer {i} renamed" for i in changed})
        kept = {i: n for i, n in names.items() if i not in gone}
        export(folder, "export-002.csv", kept)
        pull(app, "second", len(kept), len(changed) + len(gone))
    finally:
        app.close()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--workers", type=int, default=2, help="apply worker processes between the pulls")
    args = parser.parse_args()
    print(f"{'pull':<7} {'rows':>7} {'rows/s':>8} {'wall_s':>7} {'on_bus':>7} {'expected':>8} {'pages':>5} "
          f"{'state/page':>10} {'azure/page':>10} {'bus_sends':>9} {'peak_rss_mib':>12} {'start_rss_mib':>13}  state calls")
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="dualsync-filesbench-") as tmp:
            run_size(Path(tmp), rows, args.workers)


if __name__ == "__main__":
    main()
