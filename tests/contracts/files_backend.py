"""The files connector as a contract-suite backend: an ERP that exchanges CSV files.

The backend plays the ERP: it keeps its table, exports the whole of it into the inbox after every change of
its own (`insert`, `update`) and after every import, and imports the outbox (files with a manifest, in name
order, once each) when asked for its rows. It has the small API of the suite's other backends (create_table,
insert, update, rows, table_names, unreachable, close, `features`)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from shared.connectors.files.connector import FilesConnector
from shared.connectors.files.storage import FolderStorage
from shared.connectors.files_settings import FilesSystem


def _parsed(value: str, spec: str) -> Any:
    """The ERP's import: text to the column's type (what a database column would hold)."""
    if value == "\\N":
        return None
    if spec in ("int", "bigint"):
        return int(value)
    if spec == "decimal":
        return Decimal(value)
    if spec == "datetime":
        moment = datetime.fromisoformat(value)
        return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
    if spec == "date":
        return date.fromisoformat(value)
    if spec == "bool":
        return value == "true"
    return value


class FilesBackend:
    name = "files"
    features: ClassVar[set[str]] = {"snapshot"}

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)  # the exchange folder is set up before the connector runs
        self.system = FilesSystem(kind="files", folder=str(root))
        self.connector = FilesConnector("erp", self.system, FolderStorage(root))
        self.tables: dict[str, tuple[dict[str, str], list[str]]] = {}  # name -> (columns, key)
        self.data: dict[str, dict[tuple, dict[str, Any]]] = {}
        self.imported: set[str] = set()
        self.exports = 0

    def create_table(self, name: str, columns: dict[str, str], key: list[str], required: tuple[str, ...] = (),
                     checks: tuple[str, ...] = ()) -> None:
        self.tables[name] = (columns, key)
        self.data[name] = {}

    def _key(self, name: str, row: dict[str, Any]) -> tuple:
        return tuple(str(row[k]) for k in self.tables[name][1])

    def insert(self, name: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.data[name][self._key(name, row)] = dict(row)
        self.export(name)

    def update(self, name: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        self.data[name][self._key(name, key)].update(values)
        self.export(name)

    def export(self, name: str) -> None:
        columns = list(self.tables[name][0])
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in self.data[name].values():
            writer.writerow(["" if row.get(c) is None else str(row[c]) for c in columns])  # empty: null
        self.exports += 1
        folder = self.root / "inbox" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".export").write_text(buffer.getvalue(), encoding="utf-8")
        (folder / ".export").replace(folder / f"export-{self.exports:05d}.csv")

    def rows(self, name: str) -> list[dict[str, Any]]:
        columns, key = self.tables[name]
        outbox = self.root / "outbox" / name
        changed = False
        for manifest_path in sorted(outbox.glob("*.manifest.json")) if outbox.is_dir() else []:
            manifest = json.loads(manifest_path.read_text())
            if manifest["file"] in self.imported:
                continue
            self.imported.add(manifest["file"])
            changed = True
            for cells in csv.DictReader(io.StringIO((outbox / manifest["file"]).read_text(encoding="utf-8"))):
                operation = cells.pop("operation")
                # An empty cell is a column the row does not write.
                row = {c: _parsed(v, columns.get(c, "str")) for c, v in cells.items() if c in columns and v != ""}
                row_key = self._key(name, row)
                if operation == "delete":
                    self.data[name].pop(row_key, None)
                else:
                    self.data[name][row_key] = {**self.data[name].get(row_key, {}), **row}
        if changed:
            self.export(name)
        full = [{c: row.get(c) for c in columns} for row in self.data[name].values()]
        return sorted(full, key=lambda r: tuple((r[k] is None, r[k]) for k in key))

    def table_names(self) -> list[str]:
        return sorted(self.tables)

    def unreachable(self) -> FilesConnector:
        blocked = self.root / "not-a-folder"
        blocked.write_text("a file where the exchange folder should be")
        return FilesConnector("erp", FilesSystem(kind="files", folder=str(blocked)), FolderStorage(blocked))

    def close(self) -> None:
        self.connector.close()
