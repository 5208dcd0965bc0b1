"""SQL change reads against real databases: late commits under a watermark (PostgreSQL, two concurrent
transactions), the look-back overlap and its re-reads, the PostgreSQL transaction-id mode, and SQLite
date/time watermarks stored in mixed text formats."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from shared.app import SyncApp
from shared.config import SourceSpec, parse_config
from shared.connectors.sql import SqlConnector
from shared.errors import ConfigError
from shared.local_runtime import RunOptions, run_once
from tests.contracts.connector_helpers import keys_of, read_all


def _pg(url: str) -> psycopg.Connection:
    parts = make_url(url)
    return psycopg.connect(host=parts.host, port=parts.port, user=parts.username, dbname=parts.database,
                           autocommit=True)


def _late_commit(url: str, connector: SqlConnector, source: SourceSpec) -> tuple[list, list, list]:
    """Row 1 is read; a long transaction stamps row 2 with now() (its start) and holds it open while row 3 is
    inserted and read; then it commits. Returns the pages of the three reads."""
    with _pg(url) as admin:
        admin.execute("INSERT INTO items (id, name) VALUES (1, 'first')")
    first = read_all(connector, source, None, 10)
    with _pg(url) as long_tx, _pg(url) as other:
        long_tx.execute("BEGIN")
        long_tx.execute("INSERT INTO items (id, name) VALUES (2, 'late')")  # stamped at the transaction's start
        time.sleep(0.05)
        other.execute("INSERT INTO items (id, name) VALUES (3, 'newer')")  # committed, stamped later
        second = read_all(connector, source, first[-1].position, 10)
        long_tx.execute("COMMIT")
    third = read_all(connector, source, (second or first)[-1].position, 10)
    return first, second, third


def _items(url: str) -> None:
    with _pg(url) as admin:
        admin.execute("CREATE TABLE items (id INT PRIMARY KEY, name TEXT, "
                      "modified_at TIMESTAMPTZ NOT NULL DEFAULT now())")


def test_without_look_back_a_long_transaction_commits_under_the_watermark_and_is_never_read(postgres_database):
    _items(postgres_database)
    connector = SqlConnector(postgres_database)
    source = SourceSpec(system="erp", entity="items", key=["id"], lookback_seconds=0)
    try:
        first, second, third = _late_commit(postgres_database, connector, source)
        assert keys_of(first) == ["1"] and keys_of(second) == ["3"]
        assert third == []  # the hole: row 2 is committed, older than the position, and never read
        assert keys_of(read_all(connector, source, None, 10)) == ["1", "2", "3"]  # it is there
    finally:
        connector.close()


def test_the_look_back_reads_a_late_commit_and_re_reads_with_the_same_version(postgres_database):
    _items(postgres_database)
    connector = SqlConnector(postgres_database)
    source = SourceSpec(system="erp", entity="items", key=["id"])  # the default look-back
    try:
        first, second, third = _late_commit(postgres_database, connector, source)
        assert keys_of(first) == ["1"]
        assert keys_of(second) == ["1", "3"]  # row 1 again: stamped within the look-back of the first read
        assert keys_of(third) == ["1", "2", "3"]  # row 2, committed under row 3's stamp, is read; 1 and 3 again
        versions = {r.key: r.version for pages in (first, second) for p in pages for r in p.records}
        assert all(versions[r.key] == r.version for p in third for r in p.records if r.key in versions)
        assert all("read_at" in p.position for p in (*first, *second, *third))
        # Once a read begins more than the look-back after the newest stamp, nothing is read again.
        position = {**third[-1].position, "read_at": "2999-01-01T00:00:00+00:00"}
        assert read_all(connector, source, position, 10) == []
    finally:
        connector.close()


# ------------------------------------------------------------------------------------------ SQLite text stamps

MIXED = [  # (id, stored text) in time order; SQLite keeps whatever text was written
    (0, "2024-03-01 11:59:59"),  # while every text is ' '-separated, the text itself is compared
    (1, "2024-03-01T12:00:00"),
    (2, "2024-03-01 12:00:01"),  # ' ' sorts below 'T': as text this is "before" row 1
    (3, "2024-03-01T12:00:02.5Z"),
    (4, "2024-03-01T14:00:03+02:00"),  # 12:00:03 UTC
    (5, "2024-03-01 12:00:04.123456"),
    (6, "2024-03-01 12:00:05"),
    (7, "2024-03-01T00:00:06-12:00"),  # 12:00:06 UTC, its text twelve hours "earlier"
    (8, "2024-03-01 00:00:07.5-12:00"),
]


def test_sqlite_watermarks_in_mixed_text_formats_compare_as_time(tmp_path):
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE stamps (id INTEGER PRIMARY KEY, name TEXT, modified_at TIMESTAMP)")
        conn.exec_driver_sql("CREATE INDEX ix_stamps_modified ON stamps (modified_at, id)")
        conn.exec_driver_sql("INSERT INTO stamps VALUES (0, 'a', ?)", (MIXED[0][1],))
    connector = SqlConnector(url)
    source = SourceSpec(system="erp", entity="stamps", key=["id"])
    try:
        position = read_all(connector, source, None, 10)[-1].position
        seen = ["0"]
        for key, stamp in MIXED[1:]:  # each written after the previous one was read
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO stamps VALUES (?, 'x', ?)", (key, stamp))
            pages = read_all(connector, source, position, 10)
            assert keys_of(pages) == [str(key)], f"row {key} stamped {stamp!r} after {seen}"
            seen.append(str(key))
            position = pages[-1].position
        full = read_all(connector, source, None, 2)
        assert keys_of(full) == [str(k) for k, _ in MIXED]  # in time order, whatever the text
        for n, page in enumerate(full):  # resuming from any page neither skips nor repeats
            assert keys_of(full[: n + 1]) + keys_of(read_all(connector, source, page.position, 2)) == seen
    finally:
        connector.close()
        engine.dispose()


@pytest.mark.parametrize("separator", [" ", "T"])
def test_sqlite_look_back_reads_a_row_stamped_before_the_position(tmp_path, separator):
    url = f"sqlite:///{tmp_path / 'late.db'}"
    engine = sa.create_engine(url)
    now = datetime.now(UTC).replace(tzinfo=None)

    def insert(key: int, seconds_ago: float) -> None:
        with engine.begin() as conn:
            text = (now - timedelta(seconds=seconds_ago)).isoformat(sep=separator)
            conn.exec_driver_sql("INSERT INTO stamps VALUES (?, 'x', ?)", (key, text))

    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE stamps (id INTEGER PRIMARY KEY, name TEXT, modified_at TIMESTAMP)")
    insert(1, 10)  # an application stamps its rows itself, then commits
    connector = SqlConnector(url)
    try:
        for lookback in (60, 0):
            source = SourceSpec(system="erp", entity="stamps", key=["id"], lookback_seconds=lookback)
            position = read_all(connector, source, None, 10)[-1].position
            insert(2 + lookback, 20)  # committed after the read, stamped before row 1
            expected = [str(2 + lookback), "1"] if lookback else []
            assert keys_of(read_all(connector, source, position, 10)) == expected
    finally:
        connector.close()
        engine.dispose()


# ------------------------------------------------------------------------------------------ PostgreSQL xact_id

XACT_DDL = """
CREATE TABLE items (id INT PRIMARY KEY, name TEXT, modified_at TIMESTAMPTZ NOT NULL DEFAULT now(), sync_xact {kind});
CREATE FUNCTION stamp_xact() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.sync_xact := pg_current_xact_id(){cast}; RETURN NEW; END $$;
CREATE TRIGGER items_xact BEFORE INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION stamp_xact();
"""


@pytest.mark.parametrize("kind", ["xid8", "bigint"])
def test_xact_id_mode_never_reads_past_an_open_transaction(postgres_database, kind):
    with _pg(postgres_database) as admin:
        admin.execute(XACT_DDL.format(kind=kind, cast="" if kind == "xid8" else "::text::bigint"))
    connector = SqlConnector(postgres_database)
    source = SourceSpec(system="erp", entity="items", key=["id"], changes="xact_id")
    try:
        first, second, third = _late_commit(postgres_database, connector, source)
        assert keys_of(first) == ["1"]
        assert second == []  # row 3 is committed, but above the open transaction's id: it waits
        assert keys_of(third) == ["2", "3"]  # in commit-safe order, each once
        assert third[-1].records[-1].version > third[0].records[0].version > first[0].records[0].version
        assert read_all(connector, source, third[-1].position, 10) == []
        with _pg(postgres_database) as admin:
            admin.execute("UPDATE items SET name = 'again' WHERE id = 1")
        (changed,) = read_all(connector, source, third[-1].position, 10)
        assert keys_of([changed]) == ["1"] and changed.records[0].values["name"] == "again"
        assert changed.records[0].version > third[-1].records[-1].version
        assert connector.read_record(source, "1").version == changed.records[0].version
    finally:
        connector.close()


def test_xact_id_full_read_is_whole_while_a_transaction_is_open(postgres_database):
    with _pg(postgres_database) as admin:
        admin.execute(XACT_DDL.format(kind="xid8", cast=""))
        admin.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
    connector = SqlConnector(postgres_database)
    source = SourceSpec(system="erp", entity="items", key=["id"], changes="xact_id")
    try:
        with _pg(postgres_database) as open_tx, _pg(postgres_database) as other:
            open_tx.execute("BEGIN")
            open_tx.execute("INSERT INTO items (id, name) VALUES (2, 'open')")
            other.execute("INSERT INTO items (id, name) VALUES (3, 'committed above the horizon')")
            pages = read_all(connector, source, None, 1)
            assert keys_of(pages) == ["1", "3"] and all(p.snapshot for p in pages)  # a whole snapshot
            open_tx.execute("COMMIT")
        # The position never passed the open transaction: 2 and 3 come next (3 again, dropped by its version).
        assert keys_of(read_all(connector, source, pages[-1].position, 10)) == ["2", "3"]
    finally:
        connector.close()


def test_xact_id_is_refused_outside_postgresql(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with sa.create_engine(url).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, sync_xact INTEGER)")
    connector = SqlConnector(url)
    with pytest.raises(ConfigError, match="xact_id needs PostgreSQL"):
        list(connector.read_changes(SourceSpec(system="erp", entity="items", key=["id"], changes="xact_id"), None, 5))
    connector.close()


# ------------------------------------------------------------------------------------------ through the engine


@pytest.mark.parametrize("bus_drops_duplicates", [True, False])
def test_look_back_re_reads_are_never_written_twice_and_counts_add_up(postgres_database, tmp_path,
                                                                      bus_drops_duplicates):
    _items(postgres_database)
    erp_url = f"sqlite:///{tmp_path / 'erp.db'}"
    erp = sa.create_engine(erp_url)
    with erp.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (code INTEGER PRIMARY KEY, name TEXT)")
        conn.exec_driver_sql("CREATE TABLE writes (code INTEGER)")  # one row per write the target receives
        for event in ("INSERT", "UPDATE"):
            conn.exec_driver_sql(f"CREATE TRIGGER count_{event.lower()} AFTER {event} ON customers "
                                 "BEGIN INSERT INTO writes VALUES (NEW.code); END")
    config = parse_config({
        "systems": {"pg": {"kind": "sql", "url": postgres_database}, "erp": {"kind": "sql", "url": erp_url}},
        "flows": {"items": {"source": {"system": "pg", "entity": "items", "key": "id"},
                            "target": {"system": "erp", "entity": "customers", "key": "code"},
                            "fields": [{"from": "id", "to": "code"}, {"from": "name", "to": "name"}]}},
    })
    app = SyncApp.local(config, tmp_path / "state")
    if not bus_drops_duplicates:  # as after Service Bus's duplicate-detection window: apply's version check
        app.bus.duplicate_window = 0
    options = RunOptions(workers=0, drain_bound=1)
    tallies = []
    try:
        with _pg(postgres_database) as admin:
            admin.execute("INSERT INTO items (id, name) VALUES (1, 'first')")
        tallies.append(run_once(app, options).flows["items"])
        with _pg(postgres_database) as long_tx, _pg(postgres_database) as other:
            long_tx.execute("BEGIN")
            long_tx.execute("INSERT INTO items (id, name) VALUES (2, 'late')")
            time.sleep(0.05)
            other.execute("INSERT INTO items (id, name) VALUES (3, 'newer')")
            tallies.append(run_once(app, options).flows["items"])
            long_tx.execute("COMMIT")
        tallies.append(run_once(app, options).flows["items"])
    finally:
        app.close()
    assert [t.pulled for t in tallies] == [1, 2, 3]  # 1 | 1 again, 3 | 1 and 3 again, 2
    assert [t.applied for t in tallies] == [1, 1, 1]
    again = [t.duplicates if bus_drops_duplicates else t.skipped["already_applied"] for t in tallies]
    assert again == [0, 1, 2]
    assert all(t.adds_up() for t in tallies)
    with erp.connect() as conn:
        assert conn.exec_driver_sql("SELECT code, name FROM customers ORDER BY code").all() == [
            (1, "first"), (2, "late"), (3, "newer")]
        assert sorted(r[0] for r in conn.exec_driver_sql("SELECT code FROM writes")) == [1, 2, 3]  # once each
    erp.dispose()
