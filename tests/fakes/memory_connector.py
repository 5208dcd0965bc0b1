"""An in-memory connector for unit tests: rows in dicts, changes by a version counter, scripted failures."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from shared.config import SourceSpec, TargetSpec
from shared.errors import ConfigError, PermanentError, Reason, SyncError, TargetChanged
from shared.keys import format_key, key_of
from shared.ports.connector import (
    Capabilities,
    ChangePage,
    ColumnInfo,
    EntitySchema,
    SourceRecord,
    ValuePrecision,
    WriteOp,
    WriteResult,
)


class MemoryConnector:
    # Changes by a version counter, whatever the flow's mode says; writes are never conditional.
    capabilities = Capabilities(change_modes=frozenset({"watermark"}), snapshot_reads=frozenset({"watermark"}))

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}
        self.versions: dict[tuple[str, str], int] = {}
        self.counter = 0
        self.fail_next: list[SyncError] = []  # raised by the next write_batch calls, whole batch
        self.fail_keys: dict[str, SyncError] = {}  # per-op failures by formatted key
        self.writes = 0
        self.key_scans = 0
        self.declared: dict[str, set[str]] = {}  # entities with a schema: their columns

    def declare(self, entity: str, *columns: str) -> None:
        self.tables.setdefault(entity, {})
        self.declared.setdefault(entity, set()).update(columns)

    def put(self, entity: str, key: str, row: dict[str, Any]) -> None:
        self.counter += 1
        self.tables.setdefault(entity, {})[key] = dict(row)
        self.versions[(entity, key)] = self.counter

    def read_changes(self, source: SourceSpec, position: dict | None, page_size: int) -> Iterator[ChangePage]:
        if source.changes not in self.capabilities.change_modes:
            raise ConfigError([f"{source.entity}: changes={source.changes!r} is not supported by the memory fake"])
        since = (position or {}).get("version", 0)
        changed = sorted(
            (v, k) for (entity, k), v in self.versions.items() if entity == source.entity and v > since
        )
        whole = not since  # from the start (version 0 is where an empty full read leaves it)
        if not changed and whole:  # an empty full read is still a snapshot: every known key is gone
            yield ChangePage([], {"version": 0}, snapshot=True)
        for start in range(0, len(changed), page_size):
            chunk = changed[start : start + page_size]
            records = [self._record(source.entity, k) for _, k in chunk]
            yield ChangePage(records, {"version": chunk[-1][0]}, snapshot=whole)

    def _record(self, entity: str, key: str) -> SourceRecord:
        version = self.versions[(entity, key)]
        row = dict(self.tables[entity][key])
        modified = row.get("modified")
        changed_at = datetime.fromisoformat(modified) if isinstance(modified, str) else datetime.now(UTC)
        return SourceRecord(key, row, f"{version:020d}", changed_at)

    def read_record(self, source: SourceSpec, key: str) -> SourceRecord | None:
        return self._record(source.entity, key) if key in self.tables.get(source.entity, {}) else None

    def iter_keys(self, source: SourceSpec) -> Iterator[str]:
        self.key_scans += 1
        yield from sorted(self.tables.get(source.entity, {}))

    def read_records(self, entity: str, key_fields: Sequence[str], keys: Sequence[str]) -> dict[str, SourceRecord]:
        return {k: self._record(entity, k) for k in keys if k in self.tables.get(entity, {})}

    def write_batch(self, target: TargetSpec, ops: Sequence[WriteOp]) -> list[WriteResult]:
        self.writes += 1
        if self.fail_next:
            raise self.fail_next.pop(0)
        results = []
        rows = self.tables.setdefault(target.entity, {})
        for op in ops:
            key = format_key([op.key[f] for f in target.key])
            if key in self.fail_keys:
                results.append(WriteResult(op, ok=False, error=self.fail_keys[key]))
                continue
            refused = self._refused(target, op, key, rows)
            if refused is not None:
                results.append(WriteResult(op, ok=False, error=refused))
            elif op.kind == "delete":
                rows.pop(key, None)
                self.versions.pop((target.entity, key), None)
            else:  # a row holds its key columns, as a table row does
                self.put(target.entity, key, {**rows.get(key, {}), **op.key, **op.values})
            if refused is None:
                results.append(WriteResult(op, ok=True, key=key_of(target.key, op.key)))
        return results

    @staticmethod
    def _refused(target: TargetSpec, op: WriteOp, key: str, rows: dict[str, dict[str, Any]]) -> SyncError | None:
        """What the SQL connector fails that op alone with: an update of a row that is not there, a create of
        one that is."""
        if op.kind == "update" and key not in rows:
            return PermanentError(Reason.TARGET_REJECTED, f"{target.entity} key {key}: not found")
        if op.kind == "upsert" and op.create_only and key in rows:
            return TargetChanged(Reason.TARGET_REJECTED, f"{target.entity} key {key}: already exists")
        return None

    def precision(self, entity: str, field: str) -> ValuePrecision:
        return ValuePrecision()  # keeps every value exactly as written

    def describe(self, entity: str) -> EntitySchema | None:
        """Rows here have no schema: only a declared entity is described (declared columns and those its rows
        carry); any other is one the fake cannot say anything about."""
        if not self.declared:
            return None
        if entity not in self.declared:
            return EntitySchema(entity, exists=False, known_entities=tuple(sorted(self.declared)))
        names = self.declared[entity].union(*(row.keys() for row in self.tables[entity].values()))
        return EntitySchema(entity, exists=True, columns=tuple(ColumnInfo(n, "any") for n in sorted(names)))

    def change_time_column(self, source: SourceSpec) -> str | None:
        return source.watermark  # rows carry their change time in the watermark column (`modified`)

    def acknowledge(
        self, source: SourceSpec, sent: Sequence[SourceRecord], failed: Sequence[tuple[SourceRecord, str]]
    ) -> None:
        return None

    def close(self) -> None:
        return None
