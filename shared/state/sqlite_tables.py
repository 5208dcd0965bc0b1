"""Embedded table port over SQLite: one physical table, etags from a per-row counter.

Values are stored as JSON; integers of any size survive because Python's json keeps them exact.
WAL mode and a busy timeout let several worker threads and processes share one file.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from shared.errors import ConcurrencyError
from shared.ports.tables import Entity, GuardedRow, Row

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    tbl TEXT NOT NULL, pk TEXT NOT NULL, rk TEXT NOT NULL,
    data TEXT NOT NULL, etag TEXT NOT NULL,
    PRIMARY KEY (tbl, pk, rk)
) WITHOUT ROWID;
"""


def connect(path: str | Path) -> sqlite3.Connection:
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


_ETAG_PREFIX = uuid.uuid4().hex[:12]  # unique per process; the counter makes it unique per write
_etag_counter = itertools.count()


def _etag() -> str:
    # The pid too: a process forked after import shares the prefix and the counter's position.
    return f"{_ETAG_PREFIX}-{os.getpid():x}-{next(_etag_counter):x}"


class SqliteTables:
    def __init__(self, path: str | Path = ":memory:") -> None:
        self._conn = connect(path)
        self._lock = threading.RLock()  # one connection shared by threads; SQLite serialises writers anyway
        self._conn.execute(_SCHEMA)

    def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def get(self, table: str, pk: str, rk: str) -> Entity | None:
        rows = self._rows("SELECT data, etag FROM entities WHERE tbl=? AND pk=? AND rk=?", (table, pk, rk))
        return Entity(pk, rk, json.loads(rows[0][0]), rows[0][1]) if rows else None

    def get_many(self, table: str, pk: str, rks: Sequence[str]) -> dict[str, Entity]:
        found: dict[str, Entity] = {}
        unique = list(dict.fromkeys(rks))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for rk, data, etag in self._rows(
                f"SELECT rk, data, etag FROM entities WHERE tbl=? AND pk=? AND rk IN ({marks})",
                (table, pk, *chunk),
            ):
                found[rk] = Entity(pk, rk, json.loads(data), etag)
        return found

    def query(self, table: str, pk: str | None = None, rk_prefix: str | None = None) -> Iterator[Entity]:
        # Paged by (pk, rk) so a long scan neither holds the lock nor loads everything at once.
        last_pk, last_rk = "", ""
        while True:
            sql = "SELECT pk, rk, data, etag FROM entities WHERE tbl=? AND (pk > ? OR (pk = ? AND rk > ?))"
            params: list[Any] = [table, last_pk, last_pk, last_rk]
            if pk is not None:
                sql += " AND pk = ?"
                params.append(pk)
            if rk_prefix:
                sql += " AND rk >= ? AND rk < ?"
                params += [rk_prefix, rk_prefix + "\U0010ffff"]
            rows = self._rows(sql + " ORDER BY pk, rk LIMIT 1000", params)
            for row_pk, row_rk, data, etag in rows:
                yield Entity(row_pk, row_rk, json.loads(data), etag)
            if len(rows) < 1000:
                return
            last_pk, last_rk = rows[-1][0], rows[-1][1]

    def insert(self, table: str, pk: str, rk: str, data: dict[str, Any]) -> str:
        etag = _etag()
        try:
            self._rows("INSERT INTO entities VALUES (?,?,?,?,?)", (table, pk, rk, json.dumps(data), etag))
        except sqlite3.IntegrityError:
            raise ConcurrencyError(f"{table}/{pk}/{rk} already exists") from None
        return etag

    def update(self, table: str, pk: str, rk: str, data: dict[str, Any], etag: str) -> str:
        new = _etag()
        with self._lock:
            cur = self._conn.execute(
                "UPDATE entities SET data=?, etag=? WHERE tbl=? AND pk=? AND rk=? AND etag=?",
                (json.dumps(data), new, table, pk, rk, etag),
            )
        if cur.rowcount != 1:
            raise ConcurrencyError(f"{table}/{pk}/{rk} changed since it was read (or is gone)")
        return new

    def write_guarded(self, table: str, rows: Sequence[GuardedRow]) -> dict[tuple[str, str], str | None]:
        written: dict[tuple[str, str], str | None] = {}
        if not rows:
            return written
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for pk, rk, data, etag in rows:
                    new = _etag()
                    if etag is None:
                        cur = self._conn.execute("INSERT OR IGNORE INTO entities VALUES (?,?,?,?,?)",
                                                 (table, pk, rk, json.dumps(data), new))
                    else:
                        cur = self._conn.execute(
                            "UPDATE entities SET data=?, etag=? WHERE tbl=? AND pk=? AND rk=? AND etag=?",
                            (json.dumps(data), new, table, pk, rk, etag))
                    written[(pk, rk)] = new if cur.rowcount == 1 else None
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return written

    def upsert_many(self, table: str, rows: Sequence[Row]) -> None:
        if not rows:
            return
        params = [(table, pk, rk, json.dumps(data), _etag()) for pk, rk, data in rows]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO entities VALUES (?,?,?,?,?)", params)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def delete(self, table: str, pk: str, rk: str) -> None:
        self._rows("DELETE FROM entities WHERE tbl=? AND pk=? AND rk=?", (table, pk, rk))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
