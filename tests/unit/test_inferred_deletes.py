"""Deletes the engine infers from a full read, on real SQLite: only confirmed by a re-read, never for rows the
read skipped or records created while it ran, never lost to a crash, and never above a later edit or restore."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import parse_config
from shared.connectors.sql import SqlConnector
from shared.engine.apply import apply_batch
from shared.engine.pull import pull_flow
from shared.engine.settle import settle
from shared.engine.tally import Tally
from shared.messages import parse_body
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import KeyLink, StateStore

META = sa.MetaData()
ACCOUNTS = sa.Table("accounts", META, sa.Column("accountnumber", sa.String(20), primary_key=True),
                    sa.Column("name", sa.String(100)), sa.Column("modified", sa.DateTime, nullable=True))
CUSTOMERS = sa.Table("customers", META, sa.Column("account_number", sa.String(20), primary_key=True),
                     sa.Column("name", sa.String(100)), sa.Column("status", sa.String(10)),
                     sa.Column("modified", sa.DateTime, nullable=True))

TO_ERP = {
    "source": {"system": "crm", "entity": "accounts", "key": "accountnumber", "watermark": "modified"},
    "target": {"system": "erp", "entity": "customers", "key": "account_number"},
    "deletes": "deactivate", "page_size": 2,
    "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"}],
}
TO_CRM = {
    "source": {"system": "erp", "entity": "customers", "key": "account_number", "watermark": "modified"},
    "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
    "fields": [{"from": "account_number", "to": "accountnumber"}, {"from": "name", "to": "name"}],
}


def T(minute: int) -> datetime:  # noqa: N802 - a moment, read like a constant
    return datetime(2026, 1, 1, 12, minute)


class Systems:
    def __init__(self, root: Path, pair: bool) -> None:
        self.urls = {name: f"sqlite:///{root / f'{name}.db'}" for name in ("crm", "erp")}
        self.engines = {name: sa.create_engine(url) for name, url in self.urls.items()}
        for engine in self.engines.values():
            META.create_all(engine)
        flows = {"accounts-to-erp": TO_ERP | ({"pair": "accounts"} if pair else {})}
        if pair:
            flows["customers-to-crm"] = TO_CRM | {"pair": "accounts"}
        config = parse_config({"systems": {n: {"kind": "sql", "url": u} for n, u in self.urls.items()},
                               "flows": flows})
        self.connectors = {name: SqlConnector(url) for name, url in self.urls.items()}
        self.app = SyncApp(config=config, state=StateStore(SqliteTables(":memory:")),
                           bus=SqliteBus(root / "bus.db"), retry_base=0.01,
                           connector_factory=lambda name: self.connectors[name])

    def execute(self, system: str, statement) -> None:  # noqa: ANN001
        with self.engines[system].begin() as conn:
            conn.execute(statement)

    def rows(self, system: str, table: sa.Table) -> dict[str, dict]:
        with self.engines[system].connect() as conn:
            return {r[0]: dict(r._mapping) for r in conn.execute(sa.select(table))}

    def drain(self) -> Tally:
        tally = Tally()
        tally.applied_total = 0  # type: ignore[attr-defined]
        while batch := self.app.bus.receive(self.app.queue, max_messages=100, max_wait=0.05):
            outcomes = apply_batch(self.app, batch)
            settle(self.app, self.app.bus.settler(self.app.queue), outcomes)
            tally.record(outcomes)
            tally.applied_total += sum(o.kind.value == "applied" for o in outcomes)  # type: ignore[attr-defined]
        return tally

    def queued_deletes(self) -> list[str]:
        return sorted(m.key for m in (parse_body(r.envelope.body) for r in self.app.bus.peek(self.app.queue, 1000))
                      if m.op == "delete")

    def reset_cursor(self, flow: str) -> None:
        cursor = self.app.state.get_cursor(flow)
        cursor.position = None
        self.app.state.save_cursor(cursor)

    def close(self) -> None:
        self.app.close()
        for engine in self.engines.values():
            engine.dispose()


@pytest.fixture
def one_way(tmp_path):
    s = Systems(tmp_path, pair=False)
    yield s
    s.close()


@pytest.fixture
def pair(tmp_path):
    s = Systems(tmp_path, pair=True)
    yield s
    s.close()


def test_rows_the_reverse_flow_wrote_without_the_watermark_are_not_deleted(pair):
    # The ERP's customers reach the CRM through the reverse flow, which does not set the CRM's watermark.
    pair.execute("erp", CUSTOMERS.insert().values(
        [{"account_number": f"E{i}", "name": f"e{i}", "status": "active", "modified": T(i)} for i in range(3)]))
    pull_flow(pair.app, "customers-to-crm", owner="t")
    assert pair.drain().applied_total == 3
    assert all(r["modified"] is None for r in pair.rows("crm", ACCOUNTS).values())

    first = pull_flow(pair.app, "accounts-to-erp", owner="t")  # a full read: it skips NULL watermarks

    assert (first.pulled, first.deletes_inferred) == (0, 0)
    assert pair.queued_deletes() == []
    pair.drain()
    assert {k: r["status"] for k, r in pair.rows("erp", CUSTOMERS).items()} == {
        "E0": "active", "E1": "active", "E2": "active"}


def test_a_record_created_and_linked_while_the_full_read_runs_is_not_deleted(one_way):
    one_way.execute("crm", ACCOUNTS.insert().values(
        [{"accountnumber": f"A{i}", "name": f"a{i}", "modified": T(10 + i)} for i in range(4)]))

    def created_meanwhile(_: int) -> None:  # committed behind the read's position, then linked
        if one_way.app.state.lookup_keys("accounts-to-erp", "crm", ["LATE"]):
            return
        one_way.execute("crm", ACCOUNTS.insert().values(accountnumber="LATE", name="late", modified=T(1)))
        one_way.app.state.link_keys("accounts-to-erp", [KeyLink("crm", "LATE", "erp", "LATE")])

    result = pull_flow(one_way.app, "accounts-to-erp", owner="t", on_page=created_meanwhile)

    assert (result.pulled, result.deletes_inferred) == (4, 0)
    assert one_way.queued_deletes() == []


def test_a_true_delete_is_still_inferred_and_applied(one_way):
    one_way.execute("crm", ACCOUNTS.insert().values(accountnumber="A1", name="a1", modified=T(1)))
    one_way.app.state.link_keys("accounts-to-erp", [KeyLink("crm", "GONE", "erp", "GONE")])
    one_way.execute("erp", CUSTOMERS.insert().values(account_number="GONE", name="g", status="active"))
    result = pull_flow(one_way.app, "accounts-to-erp", owner="t")
    assert (result.pulled, result.deletes_inferred) == (1, 1)
    assert one_way.drain().applied_total == 2
    assert one_way.rows("erp", CUSTOMERS)["GONE"]["status"] == "inactive"

    # Deactivated, so still linked: the next full read (long after) finds it gone again, and it is not re-sent
    # to the target.
    one_way.reset_cursor("accounts-to-erp")
    one_way.app.bus._clock = lambda: time.time() + 3600
    assert pull_flow(one_way.app, "accounts-to-erp", owner="t").deletes_inferred == 1
    assert dict(one_way.drain().flows["accounts-to-erp"].skipped) == {"already_applied": 2}


def test_a_crash_between_the_last_page_and_the_inference_does_not_lose_the_deletes(one_way):
    one_way.execute("crm", ACCOUNTS.insert().values(accountnumber="A1", name="a1", modified=T(1)))
    one_way.app.state.link_keys("accounts-to-erp", [KeyLink("crm", "GONE", "erp", "GONE")])
    real_send = one_way.app.bus.send

    def crash_on_deletes(queue, envelopes):  # noqa: ANN001, ANN202
        if any(e.application_properties["op"] == "delete" for e in envelopes):
            raise ConnectionError("process killed")
        return real_send(queue, envelopes)

    one_way.app.bus.send = crash_on_deletes
    try:
        pull_flow(one_way.app, "accounts-to-erp", owner="t")
    except ConnectionError:
        pass  # today's code lets it out; either way, the run died before the deletes were sent
    one_way.app.bus.send = real_send
    assert one_way.queued_deletes() == []

    again = pull_flow(one_way.app, "accounts-to-erp", owner="t")  # an incremental read: nothing new

    assert again.deletes_inferred == 1
    assert one_way.queued_deletes() == ["GONE"]
    assert pull_flow(one_way.app, "accounts-to-erp", owner="t").deletes_inferred == 0  # finished: done once


def test_a_restore_with_the_same_version_wins_over_the_inferred_delete(one_way):
    one_way.execute("crm", ACCOUNTS.insert().values(accountnumber="A1", name="a1", modified=T(1)))
    pull_flow(one_way.app, "accounts-to-erp", owner="t")
    assert one_way.drain().applied_total == 1
    one_way.execute("crm", ACCOUNTS.delete())
    one_way.reset_cursor("accounts-to-erp")
    assert pull_flow(one_way.app, "accounts-to-erp", owner="t").deletes_inferred == 1
    assert one_way.drain().applied_total == 1
    assert one_way.rows("erp", CUSTOMERS)["A1"]["status"] == "inactive"

    # Restored from a backup: the same row, the same watermark. A re-read finds it, so it is sent again.
    one_way.execute("crm", ACCOUNTS.insert().values(accountnumber="A1", name="a1 restored", modified=T(1)))
    one_way.reset_cursor("accounts-to-erp")
    # Restored long after: duplicate detection has forgotten the first send of that version.
    one_way.app.bus._clock = lambda: time.time() + 3600
    assert pull_flow(one_way.app, "accounts-to-erp", owner="t").pulled == 1
    tally = one_way.drain()

    assert tally.applied_total == 1, dict(tally.flows["accounts-to-erp"].skipped)
    assert one_way.rows("erp", CUSTOMERS)["A1"]["name"] == "a1 restored"


def test_a_record_the_reverse_flow_created_takes_later_edits_after_an_inferred_delete(pair):
    pair.execute("erp", CUSTOMERS.insert().values(account_number="E1", name="e1", status="active", modified=T(1)))
    pull_flow(pair.app, "customers-to-crm", owner="t")
    assert pair.drain().applied_total == 1
    pair.execute("crm", ACCOUNTS.delete())  # deleted in the CRM
    pull_flow(pair.app, "accounts-to-erp", owner="t")  # the first full read finds it gone
    pair.drain()
    assert pair.rows("erp", CUSTOMERS)["E1"]["status"] == "inactive"

    # Re-created in the CRM with a real watermark: this edit must reach the ERP.
    pair.execute("crm", ACCOUNTS.insert().values(accountnumber="E1", name="e1 again", modified=T(30)))
    assert pull_flow(pair.app, "accounts-to-erp", owner="t").pulled == 1
    tally = pair.drain()

    assert tally.flows["accounts-to-erp"].applied == 1, dict(tally.flows["accounts-to-erp"].skipped)
    assert pair.rows("erp", CUSTOMERS)["E1"]["name"] == "e1 again"
