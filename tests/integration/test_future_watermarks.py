"""A change time far in the future (a typo, `9999-12-31`) must not carry the watermark there, or every real
change after it would never be pulled: such a row is dead-lettered once, naming the record and the value, and
the cursor stays where real time is. On real SQLite (text and julianday comparisons) and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shared.app import SyncApp
from shared.apply_workers import RunOptions
from shared.bus.sqlite_bus import SqliteBus
from shared.config import parse_config
from shared.local_runtime import run_once
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore
from tests.fixtures.postgres import postgres_database, postgres_url  # noqa: F401


def _config(source_url: str, target_url: str) -> dict:
    return {
        "systems": {"crm": {"kind": "sql", "url": source_url}, "erp": {"kind": "sql", "url": target_url}},
        "flows": {"notes": {
            "source": {"system": "crm", "entity": "notes", "key": "id", "watermark": "modified_at"},
            "target": {"system": "erp", "entity": "memos", "key": "memo_id"},
            "fields": [{"from": "id", "to": "memo_id"}, {"from": "title", "to": "title"}]}},
    }


def _scenario(tmp_path, source_url: str, stamp) -> None:  # noqa: ANN001 - a text or a datetime
    source = sa.create_engine(source_url)
    target_url = f"sqlite:///{tmp_path / 'erp.db'}"
    target = sa.create_engine(target_url)
    with target.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE memos (memo_id TEXT PRIMARY KEY, title TEXT)")
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    with source.begin() as conn:
        conn.execute(sa.text("INSERT INTO notes (id, title, modified_at) VALUES "
                             "('n1', 'One', :a), ('typo', 'Typo', :far)"), {"a": stamp(now - timedelta(hours=1)),
                                                                          "far": stamp(datetime(9999, 12, 31))})
    app = SyncApp(config=parse_config(_config(source_url, target_url)),
                  state=StateStore(SqliteTables(tmp_path / "state.db")), bus=SqliteBus(tmp_path / "bus.db"),
                  retry_base=0.01)
    try:
        first = run_once(app, RunOptions(workers=0, drain_bound=1)).flows["notes"]
        assert first.adds_up() and first.applied == 1 and first.dead_lettered["ValidationFailed"] == 1
        [letter] = [r for r in app.bus.peek_dead_letters(app.queue, max_messages=10, from_sequence=0)]
        assert "record typo" in letter.dead_letter_description and "9999-12-31" in letter.dead_letter_description
        assert not str(app.state.get_cursor("notes").position["watermark"]).startswith("9999")
        with source.begin() as conn:
            conn.execute(sa.text("INSERT INTO notes (id, title, modified_at) VALUES ('n2', 'Two', :b)"),
                         {"b": stamp(now)})
        second = run_once(app, RunOptions(workers=0, drain_bound=1)).flows["notes"]
        assert (second.pulled, second.applied, sum(second.dead_lettered.values())) == (1, 1, 0)  # reported once
        with target.connect() as conn:
            assert {r[0] for r in conn.exec_driver_sql("SELECT memo_id FROM memos")} == {"n1", "n2"}
    finally:
        app.close()
        source.dispose()
        target.dispose()


@pytest.mark.parametrize("text_form", ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"])
def test_sqlite_a_future_stamp_is_dead_lettered_and_the_cursor_stays_in_real_time(tmp_path, text_form):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE notes (id TEXT PRIMARY KEY, title TEXT, modified_at DATETIME)")
    engine.dispose()
    _scenario(tmp_path, url, lambda moment: moment.strftime(text_form))


def test_postgresql_a_future_stamp_is_dead_lettered_and_the_cursor_stays_in_real_time(tmp_path, postgres_database):  # noqa: F811
    engine = sa.create_engine(postgres_database)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE notes (id TEXT PRIMARY KEY, title TEXT, modified_at TIMESTAMPTZ)")
    engine.dispose()
    _scenario(tmp_path, postgres_database, lambda moment: moment.replace(tzinfo=UTC))
