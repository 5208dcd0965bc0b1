"""500 records edited on both sides for 5 rounds: the pair converges, the master wins conflicts, and no
write is an echo. Both databases bump a version and a timestamp on every write, as real systems do, so
each of our writes comes back as a change that must be recognised."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from shared.app import SyncApp
from shared.config import parse_config
from shared.local_runtime import RunOptions, run_once

RECORDS, ROUNDS = 500, 5


def make_db(path: Path, table: str, key: str, name: str, phone: str) -> str:
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} ({key} TEXT PRIMARY KEY, {name} TEXT, {phone} TEXT, "
                          "version INTEGER NOT NULL DEFAULT 1, "
                          "modified TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')))"))
        conn.execute(text("CREATE TABLE write_log (n INTEGER)"))
        # Every write bumps the row's version and timestamp, and is counted.
        conn.execute(text(f"""CREATE TRIGGER bump AFTER UPDATE OF {name}, {phone} ON {table} BEGIN
            UPDATE {table} SET version = OLD.version + 1, modified = strftime('%Y-%m-%d %H:%M:%f','now')
            WHERE {key} = NEW.{key};
            INSERT INTO write_log VALUES (1); END"""))
        conn.execute(text(f"CREATE TRIGGER born AFTER INSERT ON {table} BEGIN INSERT INTO write_log VALUES (1); END"))
    engine.dispose()
    return url


def config(crm_url: str, erp_url: str) -> dict:
    common = {"pair": "accounts", "master": "crm", "page_size": 200}
    return {
        "systems": {"crm": {"kind": "sql", "url": crm_url}, "erp": {"kind": "sql", "url": erp_url}},
        "flows": {
            "accounts-to-erp": common | {
                "source": {"system": "crm", "entity": "accounts", "key": "accountnumber", "watermark": "modified",
                           "version": "version"},
                "target": {"system": "erp", "entity": "customers", "key": "account_number"},
                "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"},
                           {"from": "telephone1", "to": "phone"}]},
            "customers-to-crm": common | {
                "source": {"system": "erp", "entity": "customers", "key": "account_number", "watermark": "modified",
                           "version": "version"},
                "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
                "fields": [{"from": "account_number", "to": "accountnumber"}, {"from": "name", "to": "name"},
                           {"from": "phone", "to": "telephone1"}]},
        },
    }


class Side:
    def __init__(self, url: str, table: str, key: str, name: str, phone: str) -> None:
        self.engine = create_engine(url)
        self.table, self.key, self.fields = table, key, {"name": name, "phone": phone}

    def edit(self, key: str, field: str, value: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(f"UPDATE {self.table} SET {self.fields[field]} = :v WHERE {self.key} = :k"),
                         {"v": value, "k": key})

    def rows(self) -> dict[str, tuple[str, str]]:
        with self.engine.connect() as conn:
            return {r[0]: (r[1], r[2]) for r in conn.execute(text(
                f"SELECT {self.key}, {self.fields['name']}, {self.fields['phone']} FROM {self.table}"))}

    def writes(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT COUNT(*) FROM write_log")).scalar_one()


def sides(directory: Path) -> tuple[str, str, Side, Side]:
    """The two databases of the pair (CRM accounts, ERP customers), empty: their URLs and their sides."""
    crm_url = make_db(directory / "crm.db", "accounts", "accountnumber", "name", "telephone1")
    erp_url = make_db(directory / "erp.db", "customers", "account_number", "name", "phone")
    return (crm_url, erp_url, Side(crm_url, "accounts", "accountnumber", "name", "telephone1"),
            Side(erp_url, "customers", "account_number", "name", "phone"))


@pytest.fixture
def pair(tmp_path):
    crm_url, erp_url, crm, erp = sides(tmp_path)
    with crm.engine.begin() as conn:
        conn.execute(text("INSERT INTO accounts (accountnumber, name, telephone1) VALUES (:k, :n, :p)"),
                     [{"k": f"A{i:04d}", "n": f"name {i}", "p": f"+1 555 {i:04d}"} for i in range(RECORDS)])
    app = SyncApp.local(parse_config(config(crm_url, erp_url)), tmp_path / "state", retry_base=0.01)
    yield app, crm, erp
    app.close()
    crm.engine.dispose()
    erp.engine.dispose()


def quiesce(app: SyncApp) -> Counter:
    """Run until a pass finds nothing to write; returns the skip reasons seen on the way."""
    reasons: Counter = Counter()
    for _ in range(4):
        tally = run_once(app, RunOptions(drain_bound=2))
        assert all(c.adds_up() and not c.dead_lettered for c in tally.flows.values())
        for c in tally.flows.values():
            reasons.update(c.skipped)
        if sum(c.applied for c in tally.flows.values()) == 0:
            return reasons
    raise AssertionError("the pair did not settle: writes kept coming back (ping-pong)")


def test_concurrent_edits_converge_with_master_winning_and_no_echo_writes(pair):
    app, crm, erp = pair
    quiesce(app)
    assert erp.rows() == crm.rows()
    rng = random.Random(7)
    base_crm, base_erp = crm.writes(), erp.writes()
    user_crm = user_erp = expected_to_erp = expected_to_crm = conflicts = 0
    for round_no in range(ROUNDS):
        crm_edits: dict[str, set[str]] = {}
        erp_edits: dict[str, set[str]] = {}
        for i in rng.sample(range(RECORDS), 150):
            key, field = f"A{i:04d}", rng.choice(["name", "phone"])
            crm.edit(key, field, f"crm r{round_no} {field} {i}")
            crm_edits.setdefault(key, set()).add(field)
            user_crm += 1
        for i in rng.sample(range(RECORDS), 150):
            key, field = f"A{i:04d}", rng.choice(["name", "phone"])
            erp.edit(key, field, f"erp r{round_no} {field} {i}")
            erp_edits.setdefault(key, set()).add(field)
            user_erp += 1
        for key in crm_edits.keys() | erp_edits.keys():
            mine, theirs = crm_edits.get(key, set()), erp_edits.get(key, set())
            expected_to_erp += bool(mine)  # the master's edits always reach the ERP
            expected_to_crm += bool(theirs - mine)  # the ERP's, unless the master changed the same field
            conflicts += len(mine & theirs)
        reasons = quiesce(app)
        crm_rows, erp_rows = crm.rows(), erp.rows()
        assert crm_rows == erp_rows, f"round {round_no}: the two sides differ"
        for key, fields in crm_edits.items():
            for field in fields:
                value = crm_rows[key][0 if field == "name" else 1]
                assert value.startswith(f"crm r{round_no}"), f"{key}.{field}: the master's edit must win"
        assert reasons["echo"] > 0
    writes_to_crm = crm.writes() - base_crm - user_crm
    writes_to_erp = erp.writes() - base_erp - user_erp
    print(f"\nsoak: {RECORDS} records x {ROUNDS} rounds; user edits crm={user_crm} erp={user_erp}; "
          f"conflicts={conflicts}; writes to crm={writes_to_crm} (needed {expected_to_crm}), "
          f"writes to erp={writes_to_erp} (needed {expected_to_erp})")
    assert writes_to_erp == expected_to_erp, "every write to the ERP carries a real change: no echo writes"
    assert writes_to_crm == expected_to_crm, "every write to the CRM carries a real change: no echo writes"
