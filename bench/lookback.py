"""The watermark look-back's cost: incremental runs with few changes on a large SQLite table, with and without it.

A 100,000-row source table is synced once, then each scenario runs, on a copy, a series of incremental runs
(pull and apply through `run_once`, in process). The schedule is simulated: a clock moves by the run interval before
each run, the changes of a run are stamped at random moments inside that interval, and the connector reads
that clock as the database's (so no run has to wait for real minutes). Printed per scenario and look-back:
rows re-read per run (pulled minus changed), how many of those the bus dropped as duplicates, records
applied, and changed records per second of run time.
Usage: python bench/lookback.py [--rows 100000] [--runs 20] [--changes 10] [--spread-hours 8760]
(--spread-hours 12: every row stamped in the last 12 h, the worst case for SQLite's index narrowing)
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from shared.app import SyncApp  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.connectors import sql as sql_connector  # noqa: E402
from shared.local_runtime import RunOptions, run_once  # noqa: E402

FLOW = "items"
START = datetime(2026, 1, 1, tzinfo=UTC)


class SimulatedClock:
    """The database's clock as the connector sees it (read_at), moved by the bench."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def install(self) -> None:
        clock = self

        def _clock(self, wm):  # noqa: ANN001, ANN202 - replaces SqlConnector._clock for the bench only
            return sa.literal(stamp(clock.now))

        sql_connector.SqlConnector._clock = _clock


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def build(work: Path, rows: int, start: datetime, spread: timedelta) -> tuple[str, str]:
    source, target = f"sqlite:///{work / 'source.db'}", f"sqlite:///{work / 'target.db'}"
    with sa.create_engine(source).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price NUMERIC, "
                             "modified_at TIMESTAMP NOT NULL)")
        conn.exec_driver_sql("CREATE INDEX ix_items_modified ON items (modified_at, id)")
        step = spread / rows
        conn.exec_driver_sql("INSERT INTO items VALUES (?, ?, ?, ?)", [
            (i, f"item {i}", i % 1000, stamp(start - spread + i * step)) for i in range(1, rows + 1)])
    with sa.create_engine(target).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE products (code INTEGER PRIMARY KEY, name TEXT, price NUMERIC)")
    return source, target


def config(work: Path, lookback: float):  # noqa: ANN201
    source, target = f"sqlite:///{work / 'source.db'}", f"sqlite:///{work / 'target.db'}"
    return parse_config({
        "systems": {"src": {"kind": "sql", "url": source}, "dst": {"kind": "sql", "url": target}},
        "flows": {FLOW: {"source": {"system": "src", "entity": "items", "key": "id", "lookback_seconds": lookback},
                         "target": {"system": "dst", "entity": "products", "key": "code"},
                         "page_size": 1000,
                         "fields": [{"from": "id", "to": "code"}, {"from": "name", "to": "name"},
                                    {"from": "price", "to": "price"}]}},
    })


def synced(work: Path, rows: int, spread: timedelta) -> float:
    """The table, built and synced once (the scenarios start from copies); returns the seconds it took."""
    SimulatedClock(START).install()
    build(work, rows, START, spread)
    app = SyncApp.local(config(work, 60), work / "state")
    began = time.perf_counter()
    try:
        counts = run_once(app, RunOptions(workers=0, drain_bound=1)).flows[FLOW]
    finally:
        app.close()
    assert counts.applied == rows, counts
    return time.perf_counter() - began


def scenario(work: Path, rows: int, lookback: float, interval: float, runs: int, changes: int,
             burst: int = 0) -> dict[str, float]:
    clock = SimulatedClock(START)
    clock.install()
    app = SyncApp.local(config(work, lookback), work / "state")
    options = RunOptions(workers=0, drain_bound=1)
    engine = sa.create_engine(f"sqlite:///{work / 'source.db'}")
    rng = random.Random(7)
    try:
        re_read = dropped = applied = changed = 0
        seconds = 0.0
        for n in range(runs):
            size = burst if (burst and n == 0) else (0 if burst else changes)
            previous = clock.now
            clock.now += timedelta(seconds=interval)
            if size:
                with engine.begin() as conn:
                    moment = previous + timedelta(seconds=interval * rng.random())  # one transaction, one stamp
                    keys = rng.sample(range(1, rows + 1), size)
                    conn.exec_driver_sql("UPDATE items SET price = price + 1, modified_at = ? WHERE id = ?",
                                         [(stamp(moment), k) for k in keys])
            began = time.perf_counter()
            counts = run_once(app, options).flows[FLOW]
            seconds += time.perf_counter() - began
            assert counts.adds_up(), counts
            re_read += counts.pulled - size
            dropped += counts.duplicates
            applied += counts.applied
            changed += size
        return {"re_read_per_run": re_read / runs, "dropped": dropped, "applied": applied, "changed": changed,
                "seconds_per_run": seconds / runs, "records_per_s": changed / seconds if seconds else 0.0}
    finally:
        app.close()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--changes", type=int, default=10, help="rows changed before each run")
    parser.add_argument("--spread-hours", type=float, default=24 * 365,
                        help="the rows' stamps before the first run are spread over this many hours")
    args = parser.parse_args()
    cases = [  # (name, run interval in seconds, burst size)
        ("every 5 min (default schedule)", 300, 0),
        ("every 30 s", 30, 0),
        ("every 5 s", 5, 0),
        (f"burst of {args.rows // 10} then quiet, every 30 s", 30, args.rows // 10),
    ]
    with tempfile.TemporaryDirectory(prefix="dualsync-lookback-") as root:
        base = Path(root) / "base"
        base.mkdir()
        took = synced(base, args.rows, timedelta(hours=args.spread_hours))
        print(f"table {args.rows:,} rows stamped over {args.spread_hours:g} h, synced in {took:.1f}s; "
              f"{args.runs} incremental runs of {args.changes} changes (one transaction each); pull + apply "
              "in process")
        for name, interval, burst in cases:
            for lookback in (60.0, 0.0):
                work = Path(root) / f"{interval}-{burst}-{lookback:g}"
                shutil.copytree(base, work)
                got = scenario(work, args.rows, lookback, interval, args.runs, args.changes, burst)
                shutil.rmtree(work)
                print(f"{name:<40} lookback={lookback:>3.0f}s  re-read/run={got['re_read_per_run']:>7.1f}  "
                      f"dropped_as_duplicates={got['dropped']:>6}  applied={got['applied']:>6}/{got['changed']:<6} "
                      f"s/run={got['seconds_per_run']:.3f}  changed_records/s={got['records_per_s']:,.0f}")


if __name__ == "__main__":
    main()
