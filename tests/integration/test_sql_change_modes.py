"""SQL change reads against real databases: late commits under a watermark (PostgreSQL, two concurrent
transactions), the look-back overlap and its re-reads, the PostgreSQL transaction-id mode, and SQLite
date/time watermarks stored in mixed text formats."""

from __future__ import annotations

import time

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from shared.config import SourceSpec
from shared.connectors.sql import SqlConnector
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
    (1, "2024-03-01T12:00:00"),
    (2, "2024-03-01 12:00:01"),  # ' ' sorts below 'T': as text this is "before" row 1
    (3, "2024-03-01T12:00:02.5Z"),
    (4, "2024-03-01T14:00:03+02:00"),  # 12:00:03 UTC
    (5, "2024-03-01 12:00:04.123456"),
    (6, "2024-03-01 12:00:05"),
]


def test_sqlite_watermarks_in_mixed_text_formats_compare_as_time(tmp_path):
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE stamps (id INTEGER PRIMARY KEY, name TEXT, modified_at TIMESTAMP)")
        conn.exec_driver_sql("CREATE INDEX ix_stamps_modified ON stamps (modified_at, id)")
        conn.exec_driver_sql("INSERT INTO stamps VALUES (1, 'a', ?)", (MIXED[0][1],))
    connector = SqlConnector(url)
    source = SourceSpec(system="erp", entity="stamps", key=["id"])
    try:
        position = read_all(connector, source, None, 10)[-1].position
        seen = ["1"]
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
