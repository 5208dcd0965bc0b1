"""Deleted records on real SQLite databases: a record that comes back is written again, and in a pair a
delete racing an update on the other side is settled by the flow's conflict policy, whatever the order
the two changes are delivered in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import parse_config
from shared.engine.apply import apply_batch
from shared.engine.decisions import list_parked, resolve_conflict
from shared.engine.outcome import Outcome
from shared.engine.pull import pull_flow
from shared.engine.reconcile import reconcile_deletes
from shared.engine.settle import settle
from shared.engine.tally import Tally
from shared.messages import parse_body
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import CONFLICTS, StateStore

TO_ERP, TO_CRM = "accounts-to-erp", "customers-to-crm"
ONE_BATCH = "one-batch"


class Db:
    """One side: a SQLite table whose `modified` column is the watermark (and so the version)."""

    def __init__(self, path: Path, table: str, key: str, name: str) -> None:
        self.url = f"sqlite:///{path}"
        self.engine = create_engine(self.url)
        self.table, self.key, self.name = table, key, name
        self.clock = 0
        with self.engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE {table} ({key} TEXT PRIMARY KEY, {name} TEXT, "
                              "modified TEXT NOT NULL DEFAULT '2026-01-01 00:00:00.000000')"))

    def _tick(self) -> str:
        self.clock += 1
        return f"2026-06-01 00:00:{self.clock:02d}.000000"

    def insert(self, key: str, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {self.table} VALUES (:k, :n, :m)"),
                         {"k": key, "n": name, "m": self._tick()})

    def rename(self, key: str, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(f"UPDATE {self.table} SET {self.name} = :n, modified = :m WHERE {self.key} = :k"),
                         {"n": name, "m": self._tick(), "k": key})

    def delete(self, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(f"DELETE FROM {self.table} WHERE {self.key} = :k"), {"k": key})

    def rows(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return dict(conn.execute(text(f"SELECT {self.key}, {self.name} FROM {self.table}")).all())


def pair_config(crm: Db, erp: Db, conflicts: str, master: str | None, one_way: bool = False) -> dict:
    common = {"pair": "accounts", "conflicts": conflicts, "deletes": "delete"} | ({"master": master} if master else {})
    flows = {
        TO_ERP: common | {
            "source": {"system": "crm", "entity": "accounts", "key": "accountnumber", "watermark": "modified"},
            "target": {"system": "erp", "entity": "customers", "key": "account_number"},
            "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"}]},
        TO_CRM: common | {
            "source": {"system": "erp", "entity": "customers", "key": "account_number", "watermark": "modified"},
            "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
            "fields": [{"from": "account_number", "to": "accountnumber"}, {"from": "name", "to": "name"}]},
    }
    if one_way:
        flows = {TO_ERP: flows[TO_ERP] | {"pair": None}}
    return {"systems": {"crm": {"kind": "sql", "url": crm.url}, "erp": {"kind": "sql", "url": erp.url}},
            "flows": flows}


@pytest.fixture
def sides(tmp_path) -> Iterator[Callable[..., tuple[SyncApp, Db, Db]]]:
    apps: list[SyncApp] = []

    def build(conflicts: str = "master_wins", master: str | None = "crm", one_way: bool = False):
        crm = Db(tmp_path / f"crm{len(apps)}.db", "accounts", "accountnumber", "name")
        erp = Db(tmp_path / f"erp{len(apps)}.db", "customers", "account_number", "name")
        app = SyncApp(config=parse_config(pair_config(crm, erp, conflicts, master, one_way)),
                      state=StateStore(SqliteTables(":memory:")), bus=SqliteBus(tmp_path / f"bus{len(apps)}.db"),
                      retry_base=0.01)
        apps.append(app)
        return app, crm, erp

    yield build
    for app in apps:
        app.close()


def deliver(app: SyncApp, first: str | None = None) -> list[Outcome]:
    """Everything on the queue, one message per batch, `first`'s messages before the other flow's; with
    `first` ONE_BATCH, everything received in one batch."""
    outcomes: list[Outcome] = []
    while batch := app.bus.receive(app.queue, max_messages=500, max_wait=0.05):
        batch.sort(key=lambda r: parse_body(r.envelope.body).flow != first)
        for group in [batch] if first == ONE_BATCH else [[received] for received in batch]:
            result = apply_batch(app, group)
            settle(app, app.bus.settler(app.queue), result)
            outcomes += result
    return outcomes


def sync(app: SyncApp, rounds: int = 3) -> list[Outcome]:
    """Pull and reconcile every flow and apply everything, until quiet."""
    outcomes: list[Outcome] = []
    for _ in range(rounds):
        for flow in app.config.flows:
            pull_flow(app, flow, owner="test")
            reconcile_deletes(app, flow)
        outcomes += deliver(app)
    return outcomes


def applied(outcomes: list[Outcome]) -> list[tuple[str, str, str]]:
    return [(o.flow, o.message.key, o.reason) for o in outcomes if o.kind == "applied" and o.message]


# -- a record that comes back -----------------------------------------------------------------------------


@pytest.mark.parametrize("one_way", [True, False], ids=["one-way", "pair"])
def test_a_record_deleted_and_created_again_with_the_same_values_is_written_again(sides, one_way):
    app, crm, erp = sides(one_way=one_way)
    crm.insert("A1", "Acme")
    sync(app)
    assert erp.rows() == {"A1": "Acme"}
    crm.delete("A1")
    sync(app)
    assert erp.rows() == {}
    crm.insert("A1", "Acme")  # SQL delete then insert: same key, same values, a newer watermark
    outcomes = sync(app)
    assert erp.rows() == {"A1": "Acme"}
    assert (TO_ERP, "A1", "upsert") in applied(outcomes)
    assert not applied(sync(app))  # and it settles: nothing more to write


# -- a delete racing an update on the other side ----------------------------------------------------------


def race(app: SyncApp, crm: Db, erp: Db, deleting: Db, updating: Db, first: str) -> list[Outcome]:
    """Both records synced; then one side deletes A1 while the other renames it; both changes are queued
    before either is applied, and `first`'s is delivered first."""
    crm.insert("A1", "Acme")
    crm.insert("A2", "Bystander")
    sync(app)
    assert crm.rows() == erp.rows() == {"A1": "Acme", "A2": "Bystander"}
    deleting.delete("A1")
    updating.rename("A1", "Renamed")
    for flow in app.config.flows:
        pull_flow(app, flow, owner="test")
        reconcile_deletes(app, flow)
    return deliver(app, first=first) + sync(app)


ORDERS = [TO_ERP, TO_CRM, ONE_BATCH]


@pytest.mark.parametrize("first", ORDERS)
def test_master_deletes_while_the_other_side_updates_both_end_deleted(sides, first):
    app, crm, erp = sides(master="crm")
    outcomes = race(app, crm, erp, deleting=crm, updating=erp, first=first)
    assert crm.rows() == erp.rows() == {"A2": "Bystander"}
    assert sum(o.conflicts for o in outcomes) >= 1
    assert not [o for o in outcomes if o.kind == "dead_letter"]


@pytest.mark.parametrize("first", ORDERS)
def test_master_updates_while_the_other_side_deletes_both_keep_the_masters_values(sides, first):
    app, crm, erp = sides(master="crm")
    race(app, crm, erp, deleting=erp, updating=crm, first=first)
    assert crm.rows() == erp.rows() == {"A1": "Renamed", "A2": "Bystander"}


@pytest.mark.parametrize("first", ORDERS)
def test_an_update_on_the_master_side_beats_a_delete_on_the_other(sides, first):
    app, crm, erp = sides(master="erp")
    race(app, crm, erp, deleting=crm, updating=erp, first=first)
    assert crm.rows() == erp.rows() == {"A1": "Renamed", "A2": "Bystander"}


@pytest.mark.parametrize("first", ORDERS)
def test_last_writer_wins_has_no_time_for_a_delete_and_says_the_master_decided(sides, first):
    app, crm, erp = sides(conflicts="last_writer_wins", master="crm")
    outcomes = race(app, crm, erp, deleting=crm, updating=erp, first=first)
    assert crm.rows() == erp.rows() == {"A2": "Bystander"}
    notes = [o.description for o in outcomes if o.conflicts]
    assert notes and all("no change time" in note and "crm (master) wins" in note for note in notes)


@pytest.mark.parametrize("first", ORDERS)
def test_a_pair_without_a_master_settles_a_delete_race_the_same_way_from_both_flows(sides, first):
    app, crm, erp = sides(master=None)
    race(app, crm, erp, deleting=erp, updating=crm, first=first)
    rows = crm.rows()
    assert rows == erp.rows() and rows["A2"] == "Bystander"


@pytest.mark.parametrize("first", ORDERS)
@pytest.mark.parametrize("take", ["crm", "erp"])
def test_manual_policy_parks_a_delete_race_until_an_operator_takes_a_side(sides, first, take):
    app, crm, erp = sides(conflicts="manual")
    race(app, crm, erp, deleting=crm, updating=erp, first=first)
    assert crm.rows() == {"A2": "Bystander"} and erp.rows() == {"A1": "Renamed", "A2": "Bystander"}
    parked = list_parked(app, CONFLICTS)
    assert parked and all(p.key == "A1" for p in parked)
    assert all("deleted in crm while changed in erp" in p.data["detail"] for p in parked)
    resolve_conflict(app, "A1", take=take, flow=first if first in {p.flow for p in parked} else parked[0].flow)
    sync(app)
    expected = {"A2": "Bystander"} if take == "crm" else {"A1": "Renamed", "A2": "Bystander"}
    assert crm.rows() == erp.rows() == expected
    assert list_parked(app, CONFLICTS) == []  # taking a side closes the race in both flows


def test_a_losing_update_carries_the_delete_when_the_deleting_side_never_reports_it(sides):
    """No reconciliation on the CRM flow: its delete is only ever seen from the other end."""
    app, crm, erp = sides(master="crm")
    crm.insert("A1", "Acme")
    sync(app)
    crm.delete("A1")
    erp.rename("A1", "Renamed")
    outcomes: list[Outcome] = []
    tally = Tally()
    for _ in range(2):
        for flow in app.config.flows:
            pulled = pull_flow(app, flow, owner="test")
            tally.pulled(flow, pulled.pulled, pulled.duplicates)
        outcomes += deliver(app)
    tally.record(outcomes)
    assert crm.rows() == erp.rows() == {}
    assert all(counts.adds_up() for counts in tally.flows.values())  # the carried delete is counted in
    assert [(o.flow, o.reason, o.fetched_parent) for o in outcomes if o.conflicts] == [
        (TO_CRM, "target_deleted", TO_ERP), (TO_ERP, "delete", None)]


def test_a_losing_delete_carries_the_record_back_when_its_update_is_not_on_the_way(sides):
    """The ERP flow is never pulled: only the delete's own apply can bring the record back to the CRM."""
    app, crm, erp = sides(master="erp")
    crm.insert("A1", "Acme")
    sync(app)
    crm.delete("A1")
    erp.rename("A1", "Renamed")
    tally = Tally()
    tally.pulled(TO_ERP, reconcile_deletes(app, TO_ERP).deleted)
    outcomes = deliver(app)
    tally.record(outcomes)
    assert all(counts.adds_up() for counts in tally.flows.values())
    assert [(o.flow, o.reason, o.fetched_parent) for o in outcomes if o.conflicts] == [
        (TO_ERP, "target_updated", TO_CRM), (TO_CRM, "upsert", None)]
    assert crm.rows() == erp.rows() == {"A1": "Renamed"}
