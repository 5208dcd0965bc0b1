"""The files connector: an ERP that exchanges CSV files, in a folder (embedded) or Blob Storage (Azure).

Reading is the inbox (shared.connectors.files.inbox): each file is a full snapshot of its entity, read once;
files carry no change marker, so flows read them with change mode `snapshot` and the engine sends only the
rows that changed, and infers deletes from the rows a snapshot lacks. Writing is the outbox
(shared.connectors.files.outbox): one atomic CSV file and manifest per write batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from shared.config import SourceSpec, TargetSpec, resolve_secret
from shared.connectors.files.inbox import Inbox
from shared.connectors.files.outbox import Outbox
from shared.connectors.files.storage import BlobStorage, FileStorage, FolderStorage
from shared.connectors.files_settings import FilesSystem
from shared.errors import ConfigError
from shared.ports.connector import (
    Capabilities,
    ChangePage,
    EntitySchema,
    SourceRecord,
    ValuePrecision,
    WriteOp,
    WriteResult,
)
from shared.settings import setting


def _now() -> datetime:
    return datetime.now(UTC)


class FilesConnector:
    # Each export is the whole entity with no change marker (read as `snapshot`, deletes found by the keys it
    # lacks) and is archived once read (consumed). Writes are rows of an import file the ERP applies later: a
    # file cannot say whether a row is still as it was read (no conditional writes, so no pairs) nor resolve a
    # reference (no binds). describe() answers only for an entity exported at least once (its header), and
    # never says an entity is missing (an entity we only write has no export), so schemas are not declared.
    capabilities = Capabilities(
        change_modes=frozenset({"snapshot"}),
        snapshot_reads=frozenset({"snapshot"}),
        consuming_reads=frozenset({"snapshot"}),
        deferred_writes=True,
    )

    def __init__(self, name: str, system: FilesSystem, storage: FileStorage,
                 clock: Callable[[], datetime] = _now) -> None:
        self.name = name
        self.system = system
        self.storage = storage
        self.inbox = Inbox(storage, system, clock)
        self.outbox = Outbox(storage, system, clock)

    @classmethod
    def capabilities_for(cls, system: FilesSystem) -> Capabilities:
        return cls.capabilities  # a folder and Blob Storage serve the same

    @classmethod
    def from_config(cls, name: str, system: FilesSystem) -> FilesConnector:
        return cls(name, system, storage_of(system))

    def _source(self, entity: str, key: Sequence[str]) -> SourceSpec:
        return SourceSpec(system=self.name, entity=entity, key=list(key), changes="snapshot")

    def read_changes(self, source: SourceSpec, position: dict[str, Any] | None,
                     page_size: int) -> Iterator[ChangePage]:
        if source.changes != "snapshot":
            raise ConfigError([f"system {self.name}: files have no change marker; read them with changes: snapshot"])
        return self.inbox.read_changes(source, position, page_size)

    def read_record(self, source: SourceSpec, key: str) -> SourceRecord | None:
        return self.inbox.read_records(source, [key]).get(key)

    def iter_keys(self, source: SourceSpec) -> Iterator[str]:
        return self.inbox.iter_keys(source)

    def read_records(self, entity: str, key_fields: Sequence[str], keys: Sequence[str]) -> dict[str, SourceRecord]:
        return self.inbox.read_records(self._source(entity, key_fields), keys)

    def write_batch(self, target: TargetSpec, ops: Sequence[WriteOp]) -> list[WriteResult]:
        return self.outbox.write_batch(target, ops)

    def precision(self, entity: str, field: str) -> ValuePrecision:
        return ValuePrecision()

    def change_time_column(self, source: SourceSpec) -> str | None:
        return None  # a row has no change time of its own; the file's time is the record's changed_at

    def describe(self, entity: str) -> EntitySchema | None:
        """The header of the entity's latest export. An import of an entity that is also exported is checked
        against the same columns; one never exported is not checked (None)."""
        return self.inbox.describe(entity)

    def acknowledge(self, source: SourceSpec, sent: Sequence[SourceRecord],
                    failed: Sequence[tuple[SourceRecord, str]]) -> None:
        return None  # the archive is the acknowledgement: a file moves there once all its rows are on the bus

    def close(self) -> None:
        self.storage.close()


def storage_of(system: FilesSystem) -> FileStorage:
    if system.folder:
        return FolderStorage(system.folder)
    if system.blob_connection:
        return BlobStorage.from_connection_string(resolve_secret(system.blob_connection))
    assert system.blob_endpoint  # the model requires one of the three
    return BlobStorage.from_endpoint(system.blob_endpoint, setting("AZURE_CLIENT_ID"))
