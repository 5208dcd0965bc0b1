"""The outbox: the changes for an ERP that imports files, as CSV files in `<outbox>/<entity>/`.

One file per `write_batch` call, that is per apply batch of a flow, named `<UTC stamp>-<random>.csv` so that
name order is the order they were written in; beside it `<same name>.manifest.json` with its counts (rows,
and rows per operation: upsert, update, delete), its SHA-256 and its encoding. Each file appears whole or not
at all (shared.connectors.files.storage: rename into place, or a committed block list), and the manifest is
written only after its file: **an importer takes a CSV only once its manifest is there**, and checks the
digest.

Why a file per call, not one per run accumulated until close: apply records a change as applied (record
state, key map) as soon as `write_batch` returns success. Rows held back for a later commit would be reported
written while only in memory, and a crash before that commit would lose them for good. A file committed before
returning can only be written *again*: a crash after the commit and before the state is saved redelivers the
batch and writes its rows into a second file, with the same values.

What the importing ERP does: rows in name order of the files, each row by its key; `upsert` inserts, or
updates the fields the row writes, `update` changes the fields the row writes (a deactivation: the status),
`delete` removes the row and a missing row is no error. So a file written twice, or two files holding the
same row, change nothing the second time: the effect is exactly once. An import that stopped halfway can be
run again from the start of that file. Columns: the operation column first, then the key fields, then every
other field written in that file. An empty cell is a field that row does not write (leave it as it is: a
deactivation, or a write of only the fields that changed); a field set to null holds the format's
`null_marker` (`\\N`, as PostgreSQL's COPY and MySQL's LOAD DATA write it).

Name order is the writers' clock order. Two changes of one record are written at least a record-state round
trip apart (apply's per-record lease: the second is written only after the first was recorded), far more than
the clocks of NTP-synchronised instances differ, so a record's files sort in the order of its changes.

Files cannot refuse a single row, nor check that a row is as it was read: `conditional_writes` is None, and
`create_only` writes are upserts.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from shared.config import TargetSpec
from shared.connectors.files.csv_format import encode_rows
from shared.connectors.files.storage import FileStorage
from shared.connectors.files_settings import FilesSystem
from shared.errors import SyncError, TransientError
from shared.keys import format_key
from shared.ports.connector import WriteOp, WriteResult

MANIFEST_SUFFIX = ".manifest.json"


class Outbox:
    def __init__(self, storage: FileStorage, system: FilesSystem, clock: Callable[[], datetime]) -> None:
        self.storage = storage
        self.system = system
        self.clock = clock

    def write_batch(self, target: TargetSpec, ops: Sequence[WriteOp]) -> list[WriteResult]:
        if not ops:
            return []
        fmt = self.system.format_of(target.entity)
        rows = [{fmt.operation_column: op.kind, **op.values, **op.key} for op in ops]
        columns = list(dict.fromkeys([fmt.operation_column, *target.key, *(n for r in rows for n in r)]))
        name = f"{target.entity}/{self.clock().strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}.csv"
        digest = hashlib.sha256()

        def hashed(chunks: Iterator[bytes]) -> Iterator[bytes]:
            for chunk in chunks:
                digest.update(chunk)
                yield chunk

        try:
            self.storage.write(self.system.outbox, name, hashed(encode_rows(columns, rows, fmt)))
            manifest = _manifest(name, ops, digest.hexdigest(), fmt.encoding, self.clock())
            try:
                self.storage.write(self.system.outbox, name + MANIFEST_SUFFIX, iter([manifest]))
            except Exception:
                self.storage.delete(self.system.outbox, name)  # without its manifest no importer takes it anyway
                raise
        except SyncError as exc:
            return [WriteResult(op, ok=False, error=exc) for op in ops]
        except OSError as exc:
            error = TransientError(f"cannot write {self.system.outbox}/{name}: {exc.strerror or exc}")
            return [WriteResult(op, ok=False, error=error) for op in ops]
        return [WriteResult(op, ok=True, key=format_key([op.key[k] for k in target.key])) for op in ops]


def _manifest(name: str, ops: Sequence[WriteOp], sha256: str, encoding: str, now: datetime) -> bytes:
    kinds = Counter(op.kind for op in ops)
    body: dict[str, Any] = {"file": name.rpartition("/")[2], "rows": len(ops),
                            "upsert": kinds["upsert"], "update": kinds["update"], "delete": kinds["delete"],
                            "sha256": sha256, "encoding": encoding, "written_at": now.isoformat()}
    return json.dumps(body, indent=1).encode()
