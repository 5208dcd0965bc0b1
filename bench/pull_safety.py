"""What safe deletes cost a pull, against the Dataverse simulator (dvsim) on loopback and a SQLite ERP.

- full read + delete inference: N accounts read with change tracking from no cursor, the key map holding
  N linked keys plus G that are gone at the source. Each candidate is re-read before its delete is sent:
  the extra round trips (one `$filter` query per 100 keys) and seconds are printed next to the whole pull.
- alias upkeep: the same full read for a flow keyed by the alternate key `accountnumber`, which remembers
  each record's primary id (so `$deletedEntity` rows can be named): pull seconds against the flow keyed by
  the primary id, and the state rows written.

Usage: python bench/pull_safety.py [--rows 5000] [--gone 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvsim import DataverseSimulator  # noqa: E402
from shared.app import SyncApp  # noqa: E402
from shared.bus.sqlite_bus import SqliteBus  # noqa: E402
from shared.config import parse_config  # noqa: E402
import shared.engine.pull as pull_module  # noqa: E402
from shared.engine.pull import pull_flow  # noqa: E402
from shared.state.sqlite_tables import SqliteTables  # noqa: E402
from shared.state.store import KeyLink, StateStore  # noqa: E402


def flow(key: str) -> dict:
    return {"source": {"system": "crm", "entity": "accounts", "key": key, "changes": "change_tracking",
                       "select": ["name", "accountnumber"]},
            "target": {"system": "erp", "entity": "customers", "key": "account_number"},
            "deletes": "delete", "page_size": 5000,
            "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"}]}


def make_app(sim: DataverseSimulator, root: Path, name: str) -> SyncApp:
    config = parse_config({"systems": {"crm": {"kind": "dataverse", "url": sim.url,
                                               "auth": {"static_token": "env:BENCH_TOKEN"}},
                                       "erp": {"kind": "sql", "url": f"sqlite:///{root / 'erp.db'}"}},
                           "flows": {"by-id": flow("accountid"), "by-number": flow("accountnumber")}})
    return SyncApp(config=config, state=StateStore(SqliteTables(root / f"{name}-state.db")),
                   bus=SqliteBus(root / f"{name}-bus.db"))


def timed_inference() -> list[float]:
    """Seconds spent in each delete inference (confirming reads and sends) of the pulls that follow."""
    spent: list[float] = []
    real = pull_module.send_confirmed_deletes

    def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    pull_module.send_confirmed_deletes = timed
    return spent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--gone", type=int, default=200)
    args = parser.parse_args()
    os.environ["BENCH_TOKEN"] = "bench"
    with tempfile.TemporaryDirectory() as tmp, DataverseSimulator() as sim:
        root = Path(tmp)
        rows = [sim.insert("accounts", {"name": f"Account {i}", "accountnumber": f"A-{i:06d}"})
                for i in range(args.rows)]

        app = make_app(sim, root, "inference")
        links = [KeyLink("crm", r["accountid"], "erp", r["accountnumber"]) for r in rows]
        links += [KeyLink("crm", f"00000000-0000-0000-0000-{i:012d}", "erp", f"G-{i}") for i in range(args.gone)]
        app.state.link_keys("by-id", links)
        spent = timed_inference()
        sim.stats.reset()
        started = time.perf_counter()
        result = pull_flow(app, "by-id", owner="bench")
        total = time.perf_counter() - started
        requests = sim.stats.requests
        reads = sim.stats.by_kind.get("query", 0) + sim.stats.by_kind.get("query_next_page", 0)
        print(f"full read of {args.rows} + {args.gone} gone: pull {total:.2f}s, {requests} requests; delete "
              f"inference {sum(spent):.2f}s ({sum(spent) / total:.0%}), {reads} confirming queries for "
              f"{args.gone} candidates, {result.deletes_inferred} deletes sent")
        app.close()

        for name in ("by-id", "by-number"):
            app = make_app(sim, root, name)
            started = time.perf_counter()
            result = pull_flow(app, name, owner="bench")
            elapsed = time.perf_counter() - started
            aliases = sum(1 for e in app.state.tables.query("keymap", name) if e.rk.startswith("~id|"))
            print(f"flow {name}: full read of {result.pulled} records {elapsed:.2f}s "
                  f"({result.pulled / elapsed:,.0f}/s), id aliases stored {aliases}")
            app.close()


if __name__ == "__main__":
    main()
