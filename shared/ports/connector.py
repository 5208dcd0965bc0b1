"""Connector port: how the engine reads from and writes to a CRM or ERP system."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from shared.config import ChangeMode, SourceSpec, TargetSpec
from shared.errors import SyncError

ConditionalWrites = Literal["etag", "values"]


@dataclass(frozen=True)
class Capabilities:
    """What a connector can do, declared by its class (the most its kind can do) and refined per system where
    that depends on configuration (a SQL dialect). The engine asks these instead of asking which connector it
    has; `validate` refuses a flow that needs what its connector lacks, before anything connects."""

    # The `source.changes` modes read_changes serves.
    change_modes: frozenset[ChangeMode] = frozenset()
    # The change modes whose reads must be acknowledged (`acknowledge`): the source keeps the mark (status
    # flags: P sent, E failed with the reason), so a read is only done once acknowledged.
    acknowledge: frozenset[ChangeMode] = frozenset()
    # How a write can be made conditional on the row being as it was read: "etag" (If-Match with
    # SourceRecord.etag), "values" (WriteOp.if_values), or None (not at all). A lost race, and a create-only
    # write of a row that exists, fail that op with TargetChanged.
    conditional_writes: ConditionalWrites | None = None
    # Lookups written as references (`to: nav@odata.bind` with `bind:`), which the target resolves itself.
    reference_binds: bool = False
    # The change modes whose read from no position reads the whole source and says so (ChangePage.snapshot),
    # so keys missing from it are delete candidates.
    snapshot_reads: frozenset[ChangeMode] = frozenset()
    # The change modes whose reads report deletes themselves (SourceRecord.deleted).
    delete_changes: frozenset[ChangeMode] = frozenset()
    # Can list an entity's columns (SQL reflection, Dataverse metadata), so a flow's fields can be checked.
    describes_schema: bool = False
    # The change modes whose read consumes what it read (a file archived once read): a second flow reading the
    # same entity would miss what the first took, so `validate` allows one.
    consuming_reads: frozenset[ChangeMode] = frozenset()
    # Writes are handed over for the system to apply later (an import file): each succeeds without seeing its
    # row, so none fails for the row's state there (an update of a missing row, a create-only duplicate).
    deferred_writes: bool = False

    def acknowledges(self, source: SourceSpec) -> bool:
        return source.changes in self.acknowledge

    def finds_deletes(self, source: SourceSpec) -> bool:
        """Does reading this source tell of deleted records, as changes or by a full read's missing keys?"""
        return source.changes in self.delete_changes or source.changes in self.snapshot_reads


@dataclass
class SourceRecord:
    key: str  # formatted with shared.keys.format_key
    values: dict[str, Any]
    version: str  # sortable: a newer change always compares greater
    changed_at: datetime
    deleted: bool = False
    # Why this record must be dead-lettered rather than applied: the source gave it a value no change can
    # have (a change time far in the future). Pull sends it condemned, so an operator sees and fixes it.
    refused: str | None = None
    # The record's own id at a source whose change feed names deleted rows by that id only (Dataverse's
    # primary id, when the flow is keyed by another column): set on every record read from such a feed, and a
    # delete from it has key "" and only this id. The engine remembers id -> key as it pulls the records and
    # resolves those deletes with it (shared.engine.aliases).
    source_id: str | None = None
    etag: str | None = None  # the row's concurrency token, where the system has one (Dataverse @odata.etag)


@dataclass
class ChangePage:
    records: list[SourceRecord]
    position: dict[str, Any]  # the cursor position after this page; stored only once the page is on the bus
    # True when the connector is reading the whole source (first run, expired delta token): keys the
    # state knows but the snapshot lacks are then deletes.
    snapshot: bool = False
    notes: list[str] = field(default_factory=list)
    # The read stopped at its page cap before the end; `position` resumes it on the next run. A snapshot
    # that stopped early is incomplete: no delete may be inferred from it.
    stopped_early: bool = False


@dataclass(frozen=True)
class ValuePrecision:
    """How exactly a system keeps the values of one column (a connector capability): comparisons between two
    systems use the coarser of the two, so a value that comes back rounded is still the same value."""

    datetime_digits: int = 6  # fractional-second digits a date-time keeps (Dataverse: 0)
    decimal_scale: int | None = None  # decimal places a number keeps; None: as sent
    trims_trailing_spaces: bool = False  # e.g. CHAR columns, which pad and compare without the padding


@dataclass(frozen=True)
class ColumnInfo:
    """One column (SQL) or attribute (Dataverse) of an entity, named as records carry it."""

    name: str  # a Dataverse lookup is read as `_x_value`
    type: str  # as the system names it (VARCHAR(100), Picklist, ...)
    nullable: bool = True
    max_length: int | None = None
    readable: bool = True
    writable: bool = True  # writable under this name (a Dataverse lookup is written by binding, not by name)


@dataclass(frozen=True)
class EntitySchema:
    """What an entity really holds, for checking a flows file against it before anything runs."""

    entity: str
    exists: bool
    columns: tuple[ColumnInfo, ...] = ()
    # Navigation properties a write may bind with `<name>@odata.bind` (Dataverse lookups); none on SQL.
    bindings: tuple[str, ...] = ()
    # When the entity does not exist: the entities that do, so the nearest can be named.
    known_entities: tuple[str, ...] = ()

    def readable(self) -> list[str]:
        return [c.name for c in self.columns if c.readable]

    def writable(self) -> list[str]:
        return [c.name for c in self.columns if c.writable]


@dataclass
class WriteOp:
    kind: Literal["upsert", "update", "delete"]
    key: dict[str, Any]  # target key field -> value
    values: dict[str, Any] = field(default_factory=dict)
    create_only: bool = False
    if_match: str | None = None
    # Write only if these fields still hold these values (as read): a connector declaring
    # Capabilities.conditional_writes = "values" honours it; a lost race is a TargetChanged error.
    if_values: dict[str, Any] | None = None
    ref: Any = None  # the caller's correlation, returned untouched in the result


@dataclass
class WriteResult:
    op: WriteOp
    ok: bool
    key: str | None = None  # formatted target key
    etag: str | None = None
    error: SyncError | None = None


class Connector(Protocol):
    # What this connector can do with the system it is connected to (its class's, refined by configuration).
    @property
    def capabilities(self) -> Capabilities: ...

    def read_changes(
        self, source: SourceSpec, position: dict[str, Any] | None, page_size: int
    ) -> Iterator[ChangePage]: ...

    def read_record(self, source: SourceSpec, key: str) -> SourceRecord | None: ...

    def iter_keys(self, source: SourceSpec) -> Iterator[str]:
        """Every key of `source.entity` (formatted with shared.keys.format_key, each once), in ascending
        Python string order (code point order). Streamed: memory must not grow with the table, since key-set
        reconciliation merge-joins this with the key map (and initial sync scans a target with it)."""
        ...

    def read_records(self, entity: str, key_fields: Sequence[str], keys: Sequence[str]) -> dict[str, SourceRecord]:
        """Current rows by key (target-side reads for conflict detection and matching)."""
        ...

    def write_batch(self, target: TargetSpec, ops: Sequence[WriteOp]) -> list[WriteResult]:
        """One result per op, in order; one bad op never fails its neighbours."""
        ...

    def precision(self, entity: str, field: str) -> ValuePrecision:
        """How exactly `entity.field` keeps values (datetime digits, decimal scale, trailing spaces)."""
        ...

    def change_time_column(self, source: SourceSpec) -> str | None:
        """The column of `source.entity` holding when a row last changed (what last_writer_wins compares),
        or None when the system has none."""
        ...

    def describe(self, entity: str) -> EntitySchema | None:
        """The entity's columns (or `exists=False`), read from the system's own metadata (SQL: the reflection
        reads and writes use); None when the system cannot describe its entities (its fields are then not
        checked). Raises a SyncError when the system cannot be reached. Optional: `shared.engine.preflight`
        skips a connector without it."""
        ...

    def acknowledge(
        self, source: SourceSpec, sent: Sequence[SourceRecord], failed: Sequence[tuple[SourceRecord, str]]
    ) -> None:
        """Sources whose change mode the connector `acknowledges` (status flags): mark rows as sent (P) or
        failed (E, with the reason). The engine calls it for no other source.

        Each record is the row as it was read (key, version, values), and a mark is conditional on it: P only
        where the row is still flagged and still holds what was read, E only where it still holds the values
        that failed and was not re-flagged by a later edit. A row changed since it was read keeps its flag, so
        the change is read again and never lost."""
        ...

    def close(self) -> None: ...


class ConnectorClass(Protocol):
    """What the registry (`shared.connectors.registry`) needs of a connector class: its capabilities before it
    connects (for `validate`) and a way to build it from its system's settings."""

    capabilities: Capabilities  # the most this kind of connector can do

    @classmethod
    def capabilities_for(cls, system: Any) -> Capabilities:
        """The capabilities with this system's settings, as far as they tell without connecting."""
        ...

    @classmethod
    def from_config(cls, name: str, system: Any) -> Connector: ...
