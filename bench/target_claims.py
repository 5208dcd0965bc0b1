"""What claiming target keys costs: apply N new records (none linked yet, so every one claims its target key)
SQLite CRM -> SQLite ERP, with the claim and with it switched off, in this process.

Prints apply seconds, records/s, key-map reads and guarded key-map writes per batch for both, and the time
spent in the claim itself: reading the holders, writing the claims, giving unused ones back (wall-clock
totals are noisy on a shared machine; the claim's own time is the number to read). With claims on, the
links are written over the claims (one guarded write per batch more than an unguarded upsert). Usage:
python bench/target_claims.py [--rows 20000] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.app import SyncApp  # noqa: E402
from shared.bus.sqlite_bus import SqliteBus  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.engine import apply as apply_module  # noqa: E402
from shared.engine import target_claims  # noqa: E402
from shared.engine.apply import apply_batch  # noqa: E402
from shared.engine.pull import pull_flow  # noqa: E402
from shared.engine.settle import settle  # noqa: E402
from shared.state.sqlite_tables import SqliteTables  # noqa: E402
from shared.state.store import KEYMAP, StateStore  # noqa: E402


class KeymapReads(SqliteTables):
    reads = 0
    guarded = 0

    def get_many(self, table, pk, rks):  # noqa: ANN001, ANN201
        if table == KEYMAP:
            KeymapReads.reads += 1
        return super().get_many(table, pk, rks)

    def write_guarded(self, table, rows):  # noqa: ANN001, ANN201
        if table == KEYMAP and rows:
            KeymapReads.guarded += 1
        return super().write_guarded(table, rows)


class Timed:
    """The claim's own steps, each timed into one total."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, inner):  # noqa: ANN001, ANN201
        def timed(*args):  # noqa: ANN002, ANN202
            started = time.perf_counter()
            try:
                return inner(*args)
            finally:
                self.seconds += time.perf_counter() - started
        return timed


def run(workdir: Path, rows: int, batch_size: int, claims: bool) -> tuple[float, int, int, float]:
    crm, erp = workdir / "crm.db", workdir / "erp.db"
    with create_engine(f"sqlite:///{crm}").begin() as conn:
        conn.execute(text("CREATE TABLE accounts (accountid TEXT PRIMARY KEY, accountnumber TEXT, name TEXT, "
                          "modified TEXT)"))
        conn.execute(text("INSERT INTO accounts VALUES " + ", ".join(
            f"('G{i:07d}', 'N{i:07d}', 'Account {i}', '2026-06-01 00:00:00')" for i in range(rows))))
    with create_engine(f"sqlite:///{erp}").begin() as conn:
        conn.execute(text("CREATE TABLE customers (account_number TEXT PRIMARY KEY, name TEXT)"))
    config = parse_config({
        "systems": {"crm": {"kind": "sql", "url": f"sqlite:///{crm}"},
                    "erp": {"kind": "sql", "url": f"sqlite:///{erp}"}},
        "flows": {"accounts": {
            "source": {"system": "crm", "entity": "accounts", "key": "accountid", "watermark": "modified"},
            "target": {"system": "erp", "entity": "customers", "key": "account_number"},
            "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"}]}}})
    app = SyncApp(config=config, state=StateStore(KeymapReads(str(workdir / "state.db"))),
                  bus=SqliteBus(workdir / "bus.db"))
    pull_flow(app, "accounts", owner="bench")
    KeymapReads.reads = KeymapReads.guarded = 0
    batches = 0
    started = time.perf_counter()
    timed = Timed()
    steps = {"rivals": timed.wrap(target_claims.rivals), "take": timed.wrap(target_claims.take),
             "release": timed.wrap(target_claims.release)}
    off = {"rivals": lambda *a: target_claims.Survey({}), "take": lambda *a: ({}, set()), "release": lambda *a: None}
    chosen = steps if claims else off
    with mock.patch.object(apply_module, "rivals", chosen["rivals"]), \
            mock.patch.object(target_claims, "take", chosen["take"]), \
            mock.patch.object(target_claims, "release", chosen["release"]):
        while batch := app.bus.receive(app.queue, max_messages=batch_size, max_wait=0.05):
            settle(app, app.bus.settler(app.queue), apply_batch(app, batch))
            batches += 1
    elapsed = time.perf_counter() - started
    app.close()
    return elapsed, KeymapReads.reads, KeymapReads.guarded, batches, timed.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    for claims in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            elapsed, reads, guarded, batches, claiming = run(Path(tmp), args.rows, args.batch_size, claims)
        print(f"claims {'on ' if claims else 'off'}: {args.rows} records in {elapsed:.2f} s "
              f"({args.rows / elapsed:,.0f}/s), key-map reads per batch {reads / max(batches, 1):.1f}, "
              f"guarded key-map writes per batch {guarded / max(batches, 1):.1f}"
              + (f", claiming {claiming * 1000 / max(batches, 1):.1f} ms per batch "
                 f"({100 * claiming / elapsed:.1f}% of apply)" if claims else ""))


if __name__ == "__main__":
    main()
