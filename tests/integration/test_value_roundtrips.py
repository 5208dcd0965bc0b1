"""A Dataverse (simulator, over HTTP) <-> SQLite pair with values that come back in another form.

Dataverse answers datetimes as `2024-05-01T10:00:00Z` at whole seconds; a SQLite DATETIME column reads back
`2024-05-01 10:00:00.250000`; decimals travel as exact JSON numbers. The pair must converge and then write
nothing, settle last-writer-wins conflicts by the real change times of both sides, and keep every digit.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from dvsim import DataverseSimulator
from dvsim.pytest_fixtures import dataverse_sim  # noqa: F401
from shared.app import SyncApp
from shared.config import parse_config
from shared.engine.delivery import handle_delivery
from shared.engine.pull import pull_flow
from shared.local_runtime import RunOptions, run_once

TOKEN = "static-test-token-values"


def make_erp(path) -> str:
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE customers (account_number TEXT PRIMARY KEY, name TEXT, last_campaign DATETIME, "
            "credit_limit TEXT, version INTEGER NOT NULL DEFAULT 1, "
            "modified TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')))"))
        conn.execute(text("CREATE TABLE write_log (n INTEGER)"))
        # Every write bumps the row's version and timestamp, and is counted, as a real ERP would.
        conn.execute(text("""CREATE TRIGGER bump AFTER UPDATE OF name, last_campaign, credit_limit ON customers BEGIN
            UPDATE customers SET version = OLD.version + 1, modified = strftime('%Y-%m-%d %H:%M:%f','now')
            WHERE account_number = NEW.account_number;
            INSERT INTO write_log VALUES (1); END"""))
        conn.execute(text("CREATE TRIGGER born AFTER INSERT ON customers BEGIN INSERT INTO write_log VALUES (1); END"))
    engine.dispose()
    return url


def config(sim_url: str, erp_url: str, **common: Any) -> dict:
    common = {"pair": "accounts", "master": "crm", **common}
    return {
        "systems": {"crm": {"kind": "dataverse", "url": sim_url, "auth": {"static_token": "env:DV_TOKEN"}},
                    "erp": {"kind": "sql", "url": erp_url}},
        "flows": {
            "accounts-to-erp": common | {
                "source": {"system": "crm", "entity": "accounts", "key": "accountnumber", "changes": "change_tracking",
                           "select": ["name", "lastusedincampaign", "creditlimit"]},
                "target": {"system": "erp", "entity": "customers", "key": "account_number"},
                "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"},
                           {"from": "lastusedincampaign", "to": "last_campaign", "type": "datetime"},
                           {"from": "creditlimit", "to": "credit_limit", "type": "decimal"}]},
            "customers-to-crm": common | {
                "source": {"system": "erp", "entity": "customers", "key": "account_number", "watermark": "modified",
                           "version": "version"},
                "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
                "fields": [{"from": "account_number", "to": "accountnumber"}, {"from": "name", "to": "name"},
                           {"from": "last_campaign", "to": "lastusedincampaign", "type": "datetime"},
                           {"from": "credit_limit", "to": "creditlimit", "type": "decimal"}]},
        },
    }


class Erp:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    def writes(self) -> int:
        return self.sql("SELECT COUNT(*) FROM write_log")[0][0]


def crm_writes(sim: DataverseSimulator) -> int:
    """Every write bumps the global version number: its highest value moves with each write."""
    return max((r["versionnumber"] for r in sim.rows("accounts")), default=0)


@pytest.fixture
def pair(dataverse_sim, tmp_path, monkeypatch):  # noqa: F811
    def build(**common: Any) -> tuple[SyncApp, Erp]:
        erp_url = make_erp(tmp_path / "erp.db")
        app = SyncApp.local(parse_config(config(dataverse_sim.url, erp_url, **common)), tmp_path / "state",
                            retry_base=0.01)
        apps.append((app, Erp(erp_url)))
        return apps[-1]

    monkeypatch.setenv("DV_TOKEN", TOKEN)
    apps: list[tuple[SyncApp, Erp]] = []
    yield build
    for app, erp in apps:
        app.close()
        erp.engine.dispose()


def rounds(app: SyncApp, n: int) -> list[int]:
    """Applied changes per round, over `n` rounds of pull + apply."""
    applied = []
    for _ in range(n):
        tally = run_once(app, RunOptions(drain_bound=2))
        assert all(c.adds_up() and not c.dead_lettered for c in tally.flows.values()), tally
        applied.append(sum(c.applied for c in tally.flows.values()))
    return applied


def test_a_datetime_that_comes_back_in_another_form_converges_and_then_writes_nothing(pair, dataverse_sim):
    app, erp = pair()
    sim = dataverse_sim
    sim.insert("accounts", {"name": "Contoso", "accountnumber": "A-1",
                            "lastusedincampaign": "2024-05-01T10:00:00Z", "creditlimit": 1500.5})
    rounds(app, 3)
    [(stamp, credit)] = erp.sql("SELECT last_campaign, credit_limit FROM customers")
    assert stamp.startswith("2024-05-01 10:00:00") and Decimal(credit) == Decimal("1500.5")
    # An ERP edit at a finer precision than Dataverse keeps: it arrives truncated to the second.
    erp.sql("UPDATE customers SET last_campaign = '2024-06-02 08:30:15.250000', credit_limit = '1500.50'")
    rounds(app, 3)
    [row] = sim.rows("accounts")
    assert row["lastusedincampaign"] == "2024-06-02T08:30:15Z"
    settled_erp, settled_crm = erp.writes(), crm_writes(sim)
    assert rounds(app, 4) == [0, 0, 0, 0], "the pair keeps writing values both sides already hold"
    assert (erp.writes(), crm_writes(sim)) == (settled_erp, settled_crm)


def test_last_writer_wins_reads_each_sides_own_change_time(pair, dataverse_sim):
    # The ERP is the master, so a silent fallback to the master would let its older edit win.
    app, erp = pair(master="erp", conflicts="last_writer_wins")
    sim = dataverse_sim
    created = sim.insert("accounts", {"name": "Contoso", "accountnumber": "A-1"})
    rounds(app, 3)
    erp.sql("UPDATE customers SET name = 'ERP edit (older)'")
    time.sleep(1.1)  # Dataverse keeps whole seconds: the CRM edit is then later by its own clock too
    sim.update("accounts", created["accountid"], {"name": "CRM edit (newer)"})
    # The ERP's change is applied first, while the CRM's newer edit is already there to conflict with.
    pull_flow(app, "customers-to-crm")
    [outcome] = handle_delivery(app, app.bus.receive(app.queue, max_wait=1), app.bus.settler(app.queue))
    assert outcome.reason == "target_wins", outcome  # the CRM keeps its newer value: nothing to write
    rounds(app, 3)
    assert sim.get("accounts", created["accountid"])["name"] == "CRM edit (newer)"
    assert erp.sql("SELECT name FROM customers") == [("CRM edit (newer)",)]


def test_a_decimal_reaches_dataverse_with_every_digit(pair, dataverse_sim):
    app, erp = pair()
    erp.sql("INSERT INTO customers (account_number, name, credit_limit) VALUES ('A-9', 'Big', '99999999999999.99')")
    rounds(app, 2)
    [row] = dataverse_sim.rows("accounts")
    assert row["creditlimit"] == Decimal("99999999999999.99")
    assert rounds(app, 2) == [0, 0]


def test_nan_and_infinity_are_dead_lettered_naming_record_and_field(pair, dataverse_sim):
    app, erp = pair()
    erp.sql("INSERT INTO customers (account_number, name, credit_limit) VALUES ('A-N', 'NaN Ltd', 'NaN'), "
            "('A-I', 'Inf Ltd', '-Infinity'), ('A-1', 'Fine', '12.5')")
    tally = run_once(app, RunOptions(drain_bound=2))
    counts = tally.flows["customers-to-crm"]
    assert counts.adds_up()
    assert counts.applied == 1 and counts.dead_lettered == {"ValidationFailed": 2}
    assert [r["accountnumber"] for r in dataverse_sim.rows("accounts")] == ["A-1"]
    dead = {m.envelope.application_properties["key"]: m for m in app.bus.peek_dead_letters(app.queue)}
    for key, value in (("A-N", "NaN"), ("A-I", "-Infinity")):
        description = dead[key].dead_letter_description or ""
        assert f"record {key}" in description and "field creditlimit (from credit_limit)" in description, description
        assert value in description


def test_nan_and_infinity_never_reach_a_sql_target_as_null(tmp_path):
    source_url, target_url = f"sqlite:///{tmp_path / 'src.db'}", f"sqlite:///{tmp_path / 'dst.db'}"
    source, target = create_engine(source_url), create_engine(target_url)
    with source.begin() as conn:
        conn.execute(text("CREATE TABLE items (id TEXT PRIMARY KEY, price TEXT, weight REAL, "
                          "modified TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')))"))
        conn.execute(text("INSERT INTO items (id, price, weight) VALUES (:i, :p, :w)"),
                     [{"i": "nan", "p": "NaN", "w": 1.0}, {"i": "inf", "p": "1", "w": float("inf")},
                      {"i": "ok", "p": "2.5", "w": 3.0}])
    with target.begin() as conn:
        conn.execute(text("CREATE TABLE products (sku TEXT PRIMARY KEY, price NUMERIC(12, 2), weight REAL)"))
    app = SyncApp.local(parse_config({
        "systems": {"a": {"kind": "sql", "url": source_url}, "b": {"kind": "sql", "url": target_url}},
        "flows": {"items": {
            "source": {"system": "a", "entity": "items", "key": "id", "watermark": "modified"},
            "target": {"system": "b", "entity": "products", "key": "sku"},
            "fields": [{"from": "id", "to": "sku"}, {"from": "price", "to": "price", "type": "decimal"},
                       {"from": "weight", "to": "weight"}]}}}), tmp_path / "state", retry_base=0.01)
    try:
        counts = run_once(app, RunOptions(drain_bound=1)).flows["items"]
        assert counts.adds_up() and counts.applied == 1 and counts.dead_lettered == {"ValidationFailed": 2}
        dead = {m.envelope.application_properties["key"]: m.dead_letter_description or ""
                for m in app.bus.peek_dead_letters(app.queue)}
        assert "record nan: field price (from price)" in dead["nan"]
        assert "record inf: field weight (from weight)" in dead["inf"]
        with target.connect() as conn:
            assert [tuple(r) for r in conn.execute(text("SELECT sku, price, weight FROM products"))] == [
                ("ok", 2.5, 3.0)]
    finally:
        app.close()
        source.dispose()
        target.dispose()
