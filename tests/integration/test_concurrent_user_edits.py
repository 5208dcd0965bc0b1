"""A user edits the target row between apply's read of it and apply's write: the edit must survive, or be
settled by the pair's conflict policy like any other edit on both sides. Never silently overwritten.

The edit is injected for real, right after the connector's read of the target rows: in a SQLite ERP (a
plain UPDATE) and in the Dataverse simulator (a write through its own API, which moves the row's ETag).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dvsim import DataverseSimulator
from dvsim.pytest_fixtures import dataverse_sim  # noqa: F401
from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import parse_config
from shared.engine.delivery import handle_delivery
from shared.engine.outcome import Kind, Outcome
from shared.engine.pull import pull_flow
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore


def make_table(path: Path, table: str, key: str, phone: str) -> str:
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} ({key} TEXT PRIMARY KEY, name TEXT, {phone} TEXT, "
                             "modified TEXT)"))
    engine.dispose()
    return url


def execute(url: str, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        result = conn.execute(sa.text(sql), params)
        rows = list(result) if result.returns_rows else []
    engine.dispose()
    return rows


def pair(crm: dict[str, Any], crm_source: dict[str, Any], erp_url: str, master: str) -> dict[str, Any]:
    common = {"pair": "accounts", "master": master}
    return {
        "systems": {"crm": crm, "erp": {"kind": "sql", "url": erp_url}},
        "flows": {
            "accounts-to-erp": common | {
                "source": {"system": "crm", "entity": "accounts", "key": "accountnumber", **crm_source},
                "target": {"system": "erp", "entity": "customers", "key": "account_number"},
                "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"},
                           {"from": "telephone1", "to": "phone"}]},
            "customers-to-crm": common | {
                "source": {"system": "erp", "entity": "customers", "key": "account_number", "watermark": "modified"},
                "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
                "fields": [{"from": "account_number", "to": "accountnumber"}, {"from": "name", "to": "name"},
                           {"from": "phone", "to": "telephone1"}]},
        },
    }


def make_app(tmp_path: Path, config: dict[str, Any]) -> SyncApp:
    return SyncApp(config=parse_config(config), state=StateStore(SqliteTables(":memory:")),
                   bus=SqliteBus(tmp_path / "bus.db"), retry_base=0.01)


def sync(app: SyncApp, flow: str) -> list[Outcome]:
    pull_flow(app, flow, owner="test")
    outcomes: list[Outcome] = []
    for _ in range(50):
        batch = app.bus.receive(app.queue, max_messages=100, max_wait=0.1)
        if batch:
            outcomes += handle_delivery(app, batch, app.bus.settler(app.queue))
        elif app.bus.counts(app.queue).scheduled == 0:
            return outcomes
    raise AssertionError("the queue did not drain")


def edit_after_read(app: SyncApp, system: str, entity: str, edit) -> list[int]:  # noqa: ANN001
    """Run `edit` once, right after apply's next read of `entity` rows in `system`."""
    connector = app.connector(system)
    real = connector.read_records
    done: list[int] = []

    def read_then_edit(name: str, key_fields, keys):  # noqa: ANN001, ANN202
        rows = real(name, key_fields, keys)
        if name == entity and not done:
            edit()
            done.append(1)
        return rows

    connector.read_records = read_then_edit  # type: ignore[method-assign]
    return done


def stamp(n: int) -> str:
    return datetime(2026, 1, 1, 12, n, tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


# -- SQLite ERP as the target ----------------------------------------------------------------------------


@pytest.fixture
def sql_pair(tmp_path):
    crm_url = make_table(tmp_path / "crm.db", "accounts", "accountnumber", "telephone1")
    erp_url = make_table(tmp_path / "erp.db", "customers", "account_number", "phone")
    execute(crm_url, "INSERT INTO accounts VALUES ('A1', 'first', 'p1', :m)", m=stamp(1))
    apps: list[SyncApp] = []

    def build(master: str) -> SyncApp:
        app = make_app(tmp_path, pair({"kind": "sql", "url": crm_url}, {"watermark": "modified"}, erp_url, master))
        apps.append(app)
        sync(app, "accounts-to-erp")
        sync(app, "customers-to-crm")
        execute(crm_url, "UPDATE accounts SET name = 'crm edit', modified = :m WHERE accountnumber = 'A1'",
                m=stamp(2))
        return app

    yield build, crm_url, erp_url
    for app in apps:
        app.close()


def test_sql_a_user_edit_of_another_field_between_read_and_write_survives(sql_pair):
    build, _, erp_url = sql_pair
    app = build("crm")
    injected = edit_after_read(app, "erp", "customers", lambda: execute(
        erp_url, "UPDATE customers SET phone = 'user phone' WHERE account_number = 'A1'"))
    outcomes = sync(app, "accounts-to-erp")
    assert injected
    assert [o.kind for o in outcomes] == [Kind.APPLIED]
    assert execute(erp_url, "SELECT name, phone FROM customers") == [("crm edit", "user phone")]


def test_sql_a_user_edit_of_the_same_field_between_read_and_write_is_settled_by_the_policy(sql_pair):
    build, _, erp_url = sql_pair
    app = build("erp")  # the ERP is the master: its user's edit wins the conflict
    injected = edit_after_read(app, "erp", "customers", lambda: execute(
        erp_url, "UPDATE customers SET name = 'user name' WHERE account_number = 'A1'"))
    outcomes = sync(app, "accounts-to-erp")
    assert injected
    assert execute(erp_url, "SELECT name, phone FROM customers") == [("user name", "p1")]
    assert [(o.kind, o.conflicts) for o in outcomes] == [(Kind.SKIPPED, 1)]  # nothing left to write


# -- Dataverse as the target -------------------------------------------------------------------------------


@pytest.fixture
def dv_pair(tmp_path, dataverse_sim: DataverseSimulator, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DV_TOKEN", "t")
    erp_url = make_table(tmp_path / "erp.db", "customers", "account_number", "phone")
    execute(erp_url, "INSERT INTO customers VALUES ('A1', 'first', 'p1', :m)", m=stamp(1))
    crm = {"kind": "dataverse", "url": dataverse_sim.url, "auth": {"static_token": "env:DV_TOKEN"}}
    apps: list[SyncApp] = []

    def build(master: str) -> SyncApp:
        app = make_app(tmp_path, pair(crm, {"changes": "watermark"}, erp_url, master))
        apps.append(app)
        sync(app, "customers-to-crm")
        sync(app, "accounts-to-erp")
        execute(erp_url, "UPDATE customers SET name = 'erp edit', modified = :m WHERE account_number = 'A1'",
                m=stamp(2))
        return app

    yield build, dataverse_sim, erp_url
    for app in apps:
        app.close()


def test_dataverse_a_user_edit_of_another_field_between_read_and_write_survives(dv_pair):
    build, sim, _ = dv_pair
    app = build("crm")
    (row,) = sim.rows("accounts")
    injected = edit_after_read(app, "crm", "accounts",
                               lambda: sim.update("accounts", row["accountid"], {"telephone1": "user phone"}))
    outcomes = sync(app, "customers-to-crm")
    assert injected
    assert [o.kind for o in outcomes] == [Kind.APPLIED]
    (row,) = sim.rows("accounts")
    assert (row["name"], row["telephone1"]) == ("erp edit", "user phone")


def test_dataverse_a_user_edit_of_the_same_field_between_read_and_write_is_settled_by_the_policy(dv_pair):
    build, sim, _ = dv_pair
    app = build("crm")  # the CRM is the master: its user's edit wins the conflict
    (row,) = sim.rows("accounts")
    injected = edit_after_read(app, "crm", "accounts",
                               lambda: sim.update("accounts", row["accountid"], {"name": "user name"}))
    outcomes = sync(app, "customers-to-crm")
    assert injected
    (row,) = sim.rows("accounts")
    assert (row["name"], row["telephone1"]) == ("user name", "p1")
    assert [(o.kind, o.conflicts) for o in outcomes] == [(Kind.SKIPPED, 1)]
