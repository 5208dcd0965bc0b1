"""The inbox: CSV exports an ERP drops into `<inbox>/<entity>/`, each one a complete snapshot of the entity.

Exactly once per file. Files are taken one per pull run, in name order (name them so that this is the order
they were written in, e.g. with a timestamp). The cursor's position names the file being read (name and
etag), the rows already on the bus, and the version every row of that file carries. Each page's position is
stored only once its rows are on the bus (shared.engine.pull), so a crash inside a file resumes after the last
page that was sent: nothing is lost, and a page sent again carries the same versions and is dropped as a
duplicate. A file is moved to the archive only after its last page's position was stored (the generator only
goes on once pull has stored it), as `<entity>/<version stamp>~<name>`, so the archive sorts in the order the
files were read. A file dropped again under the same name with the same etag before it was archived is not
read twice; new content under an old name (another etag) is a new file.

Versions. Files have no change marker: every row of a file gets the file's version, a moment taken when the
file is first read (later than the previous file's, by at least a microsecond), so a later file's row always
sorts above an earlier one's. Which rows are sent at all is the engine's business (change mode `snapshot`):
only those that differ from what is known of them.

The source as it is now, for read_records / iter_keys (the re-check before an inferred delete, key-set
reconciliation, a target-side read): the first file still in the inbox (the one being read, or read next), else
the newest file in the archive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.config import SourceSpec
from shared.connectors.files.csv_format import FileFormatError, Row, read_field_names, read_rows
from shared.connectors.files.storage import FileStorage, StoredFile
from shared.connectors.files_settings import FilesSystem
from shared.errors import TransientError
from shared.keys import format_key
from shared.messages import fingerprint
from shared.ports.connector import ChangePage, ColumnInfo, EntitySchema, SourceRecord
from shared.versions import sortable_version

STAMP = "%Y%m%dT%H%M%S.%f"
_STEP = timedelta(microseconds=1)


@dataclass
class _Snapshot:
    """One file read whole, by key: the source as it is now."""

    file: StoredFile
    version: str
    records: dict[str, SourceRecord]


class Inbox:
    def __init__(self, storage: FileStorage, system: FilesSystem, clock: Callable[[], datetime]) -> None:
        self.storage = storage
        self.system = system
        self.clock = clock
        self._snapshot: dict[str, _Snapshot] = {}  # entity -> the last one read, while its file is unchanged

    def pending(self, entity: str) -> list[StoredFile]:
        return [f for f in self.storage.files(self.system.inbox, f"{entity}/") if f.name.lower().endswith(".csv")]

    # -- reading changes -------------------------------------------------------------------------------
    def read_changes(self, source: SourceSpec, position: dict[str, Any] | None,
                     page_size: int) -> Iterator[ChangePage]:
        position = position or {}
        pending = self.pending(source.entity)
        if not pending:
            return
        file = pending[0]
        if file.name == position.get("file") and file.etag == position.get("etag"):
            version, done = position["version"], int(position["row"])
        else:
            version, done = self._next_version(position.get("version")), 0
        where = f"{self.system.inbox}/{file.name}"
        page: list[SourceRecord] = []
        row_number = 0
        for row_number, record in enumerate(self._records(source, file, version, where), start=1):
            if row_number <= done:
                continue  # on the bus before the crash
            page.append(record)
            if len(page) == page_size:
                yield ChangePage(page, self._position(file, version, row_number), snapshot=True)
                page = []
        yield ChangePage(page, self._position(file, version, row_number), snapshot=True,
                         notes=[f"read {where} ({row_number} rows)"])
        # Pull stored the last page's position before asking for more: every row of the file is on the bus.
        self.storage.move(self.system.inbox, file.name, self.system.archive, archived_name(file.name, version))

    @staticmethod
    def _position(file: StoredFile, version: str, rows: int) -> dict[str, Any]:
        return {"file": file.name, "etag": file.etag, "row": rows, "version": version}

    def _next_version(self, previous: str | None) -> str:
        now = sortable_version(self.clock())
        if previous is None or now > previous:
            return now
        return sortable_version(datetime.fromisoformat(previous) + _STEP)

    def _records(self, source: SourceSpec, file: StoredFile, version: str, where: str) -> Iterator[SourceRecord]:
        fmt = self.system.format_of(source.entity)
        first_line: dict[str, int] = {}
        with self.storage.open(self.system.inbox, file.name, file.etag) as stream:
            rows = read_rows(stream, fmt, where)
            for row in rows:
                record = _record(source, row, version, file, where)
                if not record.refused:
                    earlier = first_line.setdefault(record.key, row.line)
                    if earlier != row.line:
                        record.refused = (f"file {where} line {row.line}: key {record.key} is on line {earlier} "
                                          "already (one row per record in a file)")
                yield record

    # -- the source as it is now -----------------------------------------------------------------------
    def latest(self, entity: str) -> tuple[str, StoredFile] | None:
        """(area, file) of the entity's export as it is now: the first still in the inbox, else the newest
        archived; None before the first export."""
        pending = self.pending(entity)
        if pending:
            return self.system.inbox, pending[0]
        archived = [f for f in self.storage.files(self.system.archive, f"{entity}/") if "~" in f.name]
        return (self.system.archive, archived[-1]) if archived else None

    def current(self, source: SourceSpec) -> _Snapshot | None:
        latest = self.latest(source.entity)
        if latest is None:
            return None
        area, file = latest
        version = sortable_version(self.clock()) if area == self.system.inbox else version_of_archived(file.name)
        cached = self._snapshot.get(source.entity)
        if cached and cached.file == file:
            return cached
        where = f"{area}/{file.name}"
        records: dict[str, SourceRecord] = {}
        fmt = self.system.format_of(source.entity)
        with self.storage.open(area, file.name) as stream:
            for row in read_rows(stream, fmt, where):
                record = _record(source, row, version, file, where)
                records.setdefault(record.key, record)
        self._snapshot[source.entity] = _Snapshot(file, version, records)
        return self._snapshot[source.entity]

    def read_records(self, source: SourceSpec, keys: Sequence[str]) -> dict[str, SourceRecord]:
        snapshot = self.current(source)
        if snapshot is None:
            return {}
        return {key: snapshot.records[key] for key in keys if key in snapshot.records}

    def describe(self, entity: str) -> EntitySchema | None:
        """The fields of the latest export's header, typed as the entity's format reads them; None before the
        first export (nothing yet to check a flow against)."""
        latest = self.latest(entity)
        if latest is None:
            return None
        area, file = latest
        fmt = self.system.format_of(entity)
        with self.storage.open(area, file.name) as stream:
            names = read_field_names(stream, fmt, f"{area}/{file.name}")
        return EntitySchema(entity, exists=True,
                            columns=tuple(ColumnInfo(n, fmt.types.get(n, "string")) for n in names))

    def iter_keys(self, source: SourceSpec) -> Iterator[str]:
        snapshot = self.current(source)
        if snapshot is None:  # no key set is not an empty key set: a reconciliation must not delete everything
            raise TransientError(f"no export of {source.entity} yet (neither in {self.system.inbox} nor in "
                                 f"{self.system.archive}): no keys to compare with")
        yield from sorted(snapshot.records)


def archived_name(name: str, version: str) -> str:
    entity, _, file = name.partition("/")
    return f"{entity}/{datetime.fromisoformat(version).strftime(STAMP)}~{file}"


def version_of_archived(name: str) -> str:
    stamp = name.partition("/")[2].partition("~")[0]
    return sortable_version(datetime.strptime(stamp, STAMP).replace(tzinfo=UTC))


def _record(source: SourceSpec, row: Row, version: str, file: StoredFile, where: str) -> SourceRecord:
    missing = [k for k in source.key if k not in row.values]
    if missing:
        raise FileFormatError(f"{where}: no column for key field(s) {', '.join(missing)}")
    empty = [k for k in source.key if row.values[k] in (None, "")]
    problem = row.problem
    if empty:
        problem = problem or f"file {where} line {row.line} column {empty[0]!r}: the key is empty"
        # Named by its content, so the same bad row in the next export is recognised (and not dead-lettered again).
        key = f"(no key) {fingerprint(row.values)[:16]}"
    else:
        key = format_key([row.values[k] for k in source.key])
    return SourceRecord(key, row.values, version, file.modified, refused=problem)
