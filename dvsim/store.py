"""SQLite storage: one table per entity (real columns, indexed alternate keys), tombstones, row versions.

Every write takes the next value of one global, monotonically increasing version counter (like SQL Server's
rowversion behind Dataverse's ``versionnumber``). Change tracking is then a range scan on an index:
rows with ``since < versionnumber <= upto``, and tombstones (deleted rows) the same way.

One connection, guarded by one re-entrant lock: the simulator is a test double, and serialising access keeps
change-set atomicity (SAVEPOINTs) and the version counter trivially consistent.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from . import errors
from .schema import Entity, Schema
from .values import format_datetime, utcnow

_SQL_TYPES = {
    "string": "TEXT COLLATE NOCASE",  # Dataverse (SQL Server) compares strings case-insensitively
    "int": "INTEGER",
    "optionset": "INTEGER",
    "bool": "INTEGER",
    "decimal": "TEXT",  # exact digits; compared and ordered as numbers (odata_query.column_sql)
    "datetime": "TEXT",  # normalised ISO 8601 UTC, so text order is time order
    "lookup": "TEXT",
    "guid": "TEXT",
}

TAG_COLUMN = "_dvsim_tag"  # the last `tag` query parameter a write carried (test-only, never served)
FIRST_VERSION = 1000  # arbitrary; only order and uniqueness matter


def _table(entity: Entity) -> str:
    return f'"t_{entity.set_name}"'


def _q(name: str) -> str:
    return f'"{name}"'


class Store:
    def __init__(self, schema: Schema, db_path: str = ":memory:"):
        self.schema = schema
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        if db_path != ":memory:":
            # A file database is for the demo: WAL + NORMAL keeps per-request commits cheap.
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        self._savepoint_depth = 0
        self._create_tables()
        self._version = self._load_version()
        self._token_floor = int(self._meta("token_floor") or 0)

    # --- setup -------------------------------------------------------------------------------

    def _create_tables(self) -> None:
        c = self.conn
        c.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
        c.execute(
            "CREATE TABLE IF NOT EXISTS tombstones (set_name TEXT NOT NULL, id TEXT NOT NULL, "
            "versionnumber INTEGER NOT NULL, tag TEXT, PRIMARY KEY (set_name, id))"
        )
        c.execute("CREATE INDEX IF NOT EXISTS tombstones_version ON tombstones (set_name, versionnumber)")
        for e in self.schema.entities:
            cols = [
                f"{_q(e.id_attr)} TEXT PRIMARY KEY",
                '"versionnumber" INTEGER NOT NULL',
                '"createdon" TEXT NOT NULL',
                '"modifiedon" TEXT NOT NULL',
                f"{_q(TAG_COLUMN)} TEXT",
            ] + [f"{_q(a.name)} {_SQL_TYPES[a.type]}" for a in e.attributes.values()]
            cols += [f"{_q(a.table_column)} TEXT" for a in e.attributes.values() if a.type == "lookup"]
            c.execute(f"CREATE TABLE IF NOT EXISTS {_table(e)} ({', '.join(cols)})")
            c.execute(f'CREATE UNIQUE INDEX IF NOT EXISTS "ix_{e.set_name}_version" ON {_table(e)} (versionnumber)')
            for key_name, key_attrs in e.alternate_keys.items():
                c.execute(
                    f'CREATE UNIQUE INDEX IF NOT EXISTS "ix_{e.set_name}_{key_name}" '
                    f"ON {_table(e)} ({', '.join(_q(a) for a in key_attrs)})"
                )
            for a in e.attributes.values():
                if a.type == "lookup":
                    c.execute(f'CREATE INDEX IF NOT EXISTS "ix_{e.set_name}_{a.name}" ON {_table(e)} ({_q(a.name)})')

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, str(value)))

    def _load_version(self) -> int:
        """Resume the counter after the highest version in a reopened database file."""
        highest = [FIRST_VERSION, int(self._meta("version") or 0)]
        highest.append(self.conn.execute("SELECT COALESCE(MAX(versionnumber), 0) FROM tombstones").fetchone()[0])
        for e in self.schema.entities:
            highest.append(self.conn.execute(f"SELECT COALESCE(MAX(versionnumber), 0) FROM {_table(e)}").fetchone()[0])
        return max(highest)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # --- versions and transactions -------------------------------------------------------------

    @property
    def current_version(self) -> int:
        """The highest version assigned so far: the watermark a new delta token records."""
        return self._version

    @property
    def token_floor(self) -> int:
        """Delta tokens with a watermark below this are expired."""
        return self._token_floor

    def _next_version(self) -> int:
        # Versions used by a rolled-back change set are simply skipped; only order matters.
        self._version += 1
        return self._version

    def expire_delta_tokens(self) -> None:
        """Expire every delta token issued so far; tokens issued from now on stay valid."""
        with self.transaction():
            self._token_floor = self._next_version()
            self._set_meta("version", self._version)
            self._set_meta("token_floor", self._token_floor)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Atomic unit; nests (a change set wraps the writes it contains). Holds the lock throughout."""
        with self.lock:
            self._savepoint_depth += 1
            name = f"sp{self._savepoint_depth}"
            self.conn.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
                raise
            else:
                self.conn.execute(f"RELEASE {name}")
            finally:
                self._savepoint_depth -= 1

    # --- reads ---------------------------------------------------------------------------------

    def get(self, entity: Entity, record_id: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.conn.execute(
                f"SELECT * FROM {_table(entity)} WHERE {_q(entity.id_attr)} = ?", (record_id,)
            ).fetchone()
        return dict(row) if row else None

    def find_by_key(self, entity: Entity, key_values: dict[str, Any]) -> str | None:
        """The id of the record whose alternate key columns equal these values (case-insensitive)."""
        where = " AND ".join(f"{_q(a)} = ?" for a in key_values)
        with self.lock:
            row = self.conn.execute(
                f"SELECT {_q(entity.id_attr)} FROM {_table(entity)} WHERE {where}", tuple(key_values.values())
            ).fetchone()
        return row[0] if row else None

    def select(
        self,
        entity: Entity,
        where: str,
        params: list[Any],
        order: list[tuple[str, bool]],
        limit: int,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        order_sql = ", ".join(f"{col if col.startswith('CAST(') else _q(col)} {'DESC' if desc else 'ASC'}"
                              for col, desc in order)
        sql = f"SELECT * FROM {_table(entity)} WHERE {where} ORDER BY {order_sql} LIMIT ? OFFSET ?"
        with self.lock:
            rows = self.conn.execute(sql, (*params, limit, offset)).fetchall()
        return [dict(r) for r in rows]

    def count(self, entity: Entity, where: str, params: list[Any]) -> int:
        with self.lock:
            return self.conn.execute(f"SELECT COUNT(*) FROM {_table(entity)} WHERE {where}", params).fetchone()[0]

    def changed_rows(self, entity: Entity, after: int, upto: int, limit: int) -> list[dict[str, Any]]:
        """Live rows written in (after, upto], oldest first."""
        with self.lock:
            rows = self.conn.execute(
                f"SELECT * FROM {_table(entity)} WHERE versionnumber > ? AND versionnumber <= ? "
                "ORDER BY versionnumber LIMIT ?",
                (after, upto, limit),
            ).fetchall()
        return [dict(r) for r in rows]

    def deleted_rows(self, entity: Entity, after: int, upto: int, limit: int) -> list[tuple[str, int]]:
        """(id, version) of rows deleted in (after, upto], oldest first."""
        with self.lock:
            rows = self.conn.execute(
                "SELECT id, versionnumber FROM tombstones WHERE set_name = ? AND versionnumber > ? "
                "AND versionnumber <= ? ORDER BY versionnumber LIMIT ?",
                (entity.set_name, after, upto, limit),
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def all_rows(self, entity: Entity) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.conn.execute(f"SELECT * FROM {_table(entity)} ORDER BY versionnumber").fetchall()
        return [dict(r) for r in rows]

    def tags(self) -> dict[tuple[str, str], str]:
        """(set name, id) -> last tag, for live rows and deleted ones."""
        result: dict[tuple[str, str], str] = {}
        with self.lock:
            for e in self.schema.entities:
                for rid, tag in self.conn.execute(
                    f"SELECT {_q(e.id_attr)}, {_q(TAG_COLUMN)} FROM {_table(e)} WHERE {_q(TAG_COLUMN)} IS NOT NULL"
                ):
                    result[(e.set_name, rid)] = tag
            for set_name, rid, tag in self.conn.execute("SELECT set_name, id, tag FROM tombstones WHERE tag IS NOT NULL"):
                result[(set_name, rid)] = tag
        return result

    # --- writes (callers validate values first; these enforce uniqueness) ----------------------

    def _check_keys(self, entity: Entity, record_id: str, row: dict[str, Any]) -> None:
        for key_name, key_attrs in entity.alternate_keys.items():
            values = {a: row.get(a) for a in key_attrs}
            if any(v is None for v in values.values()):
                continue  # a key with a null part identifies nothing, so it cannot collide
            other = self.find_by_key(entity, values)
            if other is not None and other != record_id:
                raise errors.duplicate_key(key_name, key_attrs)

    def insert(self, entity: Entity, record_id: str, values: dict[str, Any], tag: str | None) -> dict[str, Any]:
        with self.transaction():
            if self.get(entity, record_id) is not None:
                raise errors.duplicate_id()
            self._check_keys(entity, record_id, values)
            now = format_datetime(utcnow())
            row = {
                entity.id_attr: record_id,
                "versionnumber": self._next_version(),
                "createdon": now,
                "modifiedon": now,
                TAG_COLUMN: tag,
                **values,
            }
            cols = ", ".join(_q(c) for c in row)
            marks = ", ".join("?" for _ in row)
            self.conn.execute(f"INSERT INTO {_table(entity)} ({cols}) VALUES ({marks})", tuple(row.values()))
            # Re-creating a deleted id (upsert by id) revives it: it is no longer a deletion.
            self.conn.execute("DELETE FROM tombstones WHERE set_name = ? AND id = ?", (entity.set_name, record_id))
        return self.get(entity, record_id) or row

    def update(self, entity: Entity, record_id: str, values: dict[str, Any], tag: str | None) -> dict[str, Any]:
        with self.transaction():
            current = self.get(entity, record_id)
            if current is None:
                raise errors.record_not_found(entity.logical_name, record_id)
            self._check_keys(entity, record_id, {**current, **values})
            changes = {
                **values,
                "versionnumber": self._next_version(),
                "modifiedon": format_datetime(utcnow()),
                TAG_COLUMN: tag,
            }
            assignments = ", ".join(f"{_q(c)} = ?" for c in changes)
            self.conn.execute(
                f"UPDATE {_table(entity)} SET {assignments} WHERE {_q(entity.id_attr)} = ?",
                (*changes.values(), record_id),
            )
        return self.get(entity, record_id) or {}

    def delete(self, entity: Entity, record_id: str, tag: str | None) -> None:
        # Lookups that point at the deleted row are left as they are (no cascade): the simulator
        # does not model relationship behaviours.
        with self.transaction():
            cur = self.conn.execute(f"DELETE FROM {_table(entity)} WHERE {_q(entity.id_attr)} = ?", (record_id,))
            if cur.rowcount == 0:
                raise errors.record_not_found(entity.logical_name, record_id)
            self.conn.execute(
                "INSERT OR REPLACE INTO tombstones (set_name, id, versionnumber, tag) VALUES (?, ?, ?, ?)",
                (entity.set_name, record_id, self._next_version(), tag),
            )

    def clear(self) -> None:
        """Delete all rows and tombstones (tests reusing one simulator). Versions keep increasing."""
        with self.transaction():
            for e in self.schema.entities:
                self.conn.execute(f"DELETE FROM {_table(e)}")
            self.conn.execute("DELETE FROM tombstones")
