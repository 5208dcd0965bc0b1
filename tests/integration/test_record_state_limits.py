"""Record state on Table Storage (Azurite) whatever the synced data is, and one record's state failure
confined to its own message.

A Table Storage property holds 64 KiB and an entity 1 MiB; a synced text can be longer. The target is written
before the state, so a state write that fails must never take the rest of the batch down with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
from sqlalchemy import create_engine, text

from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import parse_config
from shared.local_runtime import RunOptions, run_once
from shared.state.azure_tables import AzureTables
from shared.state.store import RECORDS, StateStore

BIG = "x" * 100_000 + " end"


def make_db(path, table: str, key: str) -> str:
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} ({key} TEXT PRIMARY KEY, title TEXT, body TEXT, "
                          "modified TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')))"))
    engine.dispose()
    return url


def flows(source_url: str, target_url: str) -> dict:
    return {
        "systems": {"crm": {"kind": "sql", "url": source_url}, "erp": {"kind": "sql", "url": target_url}},
        "flows": {"notes-to-erp": {
            "source": {"system": "crm", "entity": "notes", "key": "id", "watermark": "modified"},
            "target": {"system": "erp", "entity": "memos", "key": "memo_id"},
            "fields": [{"from": "id", "to": "memo_id"}, {"from": "title", "to": "title"},
                       {"from": "body", "to": "body"}]}},
    }


class FailingRecordState:
    """The real Azurite backend, except that writing the record state of one record fails twice (batched
    and on its own), as a store that keeps refusing one row would."""

    def __init__(self, tables: AzureTables, poisoned: str) -> None:
        self.tables, self.poisoned, self.failures_left = tables, poisoned, 2

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tables, name)

    def _refuse(self, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        if self.failures_left and table == RECORDS and any(row[1].endswith(f"|{self.poisoned}") for row in rows):
            self.failures_left -= 1
            raise ServiceRequestError("connection reset while writing the record state")

    def upsert_many(self, table: str, rows: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        self._refuse(table, rows)
        self.tables.upsert_many(table, rows)

    def write_guarded(self, table: str, rows: Sequence[tuple[Any, ...]]) -> Any:
        self._refuse(table, rows)
        return self.tables.write_guarded(table, rows)


@pytest.fixture
def notes(tmp_path, azurite_tables, azurite_table_prefix):
    source_url = make_db(tmp_path / "crm.db", "notes", "id")
    target_url = make_db(tmp_path / "erp.db", "memos", "memo_id")
    source = create_engine(source_url)
    apps: list[SyncApp] = []

    def build(poisoned: str | None = None) -> SyncApp:
        tables: Any = AzureTables.from_settings({"STATE_TABLES_CONNECTION": azurite_tables,
                                                 "STATE_TABLE_PREFIX": azurite_table_prefix})
        if poisoned:
            tables = FailingRecordState(tables, poisoned)
        app = SyncApp(config=parse_config(flows(source_url, target_url)), state=StateStore(tables),
                      bus=SqliteBus(tmp_path / "bus.db", max_delivery_count=10), retry_base=0.01)
        apps.append(app)
        return app

    def write(statement: str, **params: Any) -> None:
        with source.begin() as conn:
            conn.execute(text(statement), params)

    def target() -> dict[str, tuple[str, str]]:
        engine = create_engine(target_url)
        with engine.connect() as conn:
            rows = {r[0]: (r[1], r[2]) for r in conn.execute(text("SELECT memo_id, title, body FROM memos"))}
        engine.dispose()
        return rows

    yield build, write, target
    for app in apps:
        app.close()
    source.dispose()


def counts(app: SyncApp) -> Any:
    tally = run_once(app, RunOptions(drain_bound=1))
    result = tally.flows["notes-to-erp"]
    assert result.adds_up()
    return result


def test_a_100_kb_text_is_synced_and_its_state_fits(notes):
    build, write, target = notes
    app = build()
    write("INSERT INTO notes (id, title, body) VALUES ('big', 'Big', :b), ('n1', 'One', 'one'), ('n2', 'Two', 'two')",
          b=BIG)
    first = counts(app)
    assert (first.applied, sum(first.dead_lettered.values()), first.retried) == (3, 0, 0)
    assert target()["big"] == ("Big", BIG)
    # The state knows what it wrote: the same text again is nothing to write, a change at its very end is.
    write("UPDATE notes SET title = title, modified = strftime('%Y-%m-%d %H:%M:%f','now') WHERE id = 'big'")
    again = counts(app)
    assert (again.applied, again.skipped["unchanged"]) == (0, 1)
    write("UPDATE notes SET body = :b, modified = strftime('%Y-%m-%d %H:%M:%f','now') WHERE id = 'big'",
          b=BIG + "!")
    changed = counts(app)
    assert changed.applied == 1 and target()["big"] == ("Big", BIG + "!")


def test_a_failed_state_write_retries_only_its_own_message(notes):
    build, write, target = notes
    app = build(poisoned="n2")
    write("INSERT INTO notes (id, title, body) VALUES ('n1', 'One', 'one'), ('n2', 'Two', 'two'), "
          "('n3', 'Three', 'three')")
    first = counts(app)
    # n1 and n3 are applied once; only n2's message comes back (its target write is an idempotent upsert).
    assert (first.applied, first.retried, sum(first.dead_lettered.values())) == (3, 1, 0), first
    assert set(target()) == {"n1", "n2", "n3"}
    states = app.state.get_records("notes-to-erp", ["crm|n1", "crm|n2", "crm|n3"])
    assert set(states) == {"crm|n1", "crm|n2", "crm|n3"}
