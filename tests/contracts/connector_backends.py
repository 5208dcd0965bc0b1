"""The systems the connector contract suite runs against, one class each.

A backend gives the suite its connector and a small harness to set the system up and look at it from the
side (create a table, put rows in, change them, list them) without going through the connector. Which
tests run is decided by what the connector *declares* (the backend class's `capabilities`, its connector's:
change modes, acknowledge, conditional writes, ...) and by what the harness can set up (`harness`: e.g.
`stamps`, a test writing the watermark column itself, which a system that stamps rows on its own cannot
do). A test says what it needs with markers (`needs_mode`, `needs_capability`, `needs_harness`, and
`mode_in` for a test parametrized by `mode`); `skip_reason` turns them into a skip with the reason before
the backend is even started: never a silent pass.

To add a connector: write one backend class with this API and add it to BACKENDS.
"""

from __future__ import annotations

import csv
import io
import json
import socket
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Protocol

import httpx
import pytest
import sqlalchemy as sa
import yaml

from shared.connectors.dataverse import DataverseConnector, primary_id_of
from shared.connectors.files.connector import FilesConnector
from shared.connectors.files.storage import FolderStorage
from shared.connectors.files_settings import FilesSystem
from shared.connectors.odata.auth import StaticTokenProvider
from shared.connectors.odata.connector import OdataConnector
from shared.connectors.odata.literals import iso_moment, moment
from shared.connectors.sql import SqlConnector
from shared.keys import format_key
from shared.ports.connector import Capabilities, Connector
from tests.fakes.memory_connector import MemoryConnector
from tests.fixtures.cap import CapServer, stored

# Column types a test asks for: int, bigint, str, str:<length>, decimal, datetime, date, bool.
Columns = dict[str, str]


class Backend(Protocol):
    name: ClassVar[str]
    harness: ClassVar[frozenset[str]]
    capabilities: ClassVar[Capabilities]  # what its connector declares, known before it starts

    @classmethod
    def start(cls, request: pytest.FixtureRequest, tmp_path: Path) -> Backend: ...

    @property
    def connector(self) -> Connector: ...

    def create_table(self, name: str, columns: Columns, key: list[str], required: tuple[str, ...] = (),
                     checks: tuple[str, ...] = ()) -> None: ...

    def insert(self, name: str, rows: list[dict[str, Any]]) -> None: ...

    def update(self, name: str, key: dict[str, Any], values: dict[str, Any]) -> None: ...

    def delete(self, name: str, key: dict[str, Any]) -> None: ...

    def rows(self, name: str) -> list[dict[str, Any]]:
        """Every row of the table with the columns the test created, as Python values, in key order."""
        ...

    def table_names(self) -> list[str]: ...

    def unreachable(self) -> Connector:
        """A connector to the same kind of system where nothing answers."""
        ...

    def close(self) -> None: ...


MARKERS = {
    "needs_mode(mode)": "the connector must declare this change mode",
    "needs_capability(name, value=True)": "the connector must declare this capability (or this value of it)",
    "needs_harness(feature, why)": "the backend's harness must be able to set this up; `why` says why not",
    "mode_in(capability, declared=True)": "for a test parametrized by `mode`: the mode must be (or not be) in "
                                          "this capability's modes",
}


def skip_reason(backend: type[Backend], item: pytest.Item) -> str | None:
    """Why `item` does not apply to `backend`, from its markers; None when it does."""
    can = backend.capabilities
    for mark in item.iter_markers("needs_mode"):
        if mark.args[0] not in can.change_modes:
            return f"{backend.name} does not declare change mode {mark.args[0]}"
    for mark in item.iter_markers("needs_capability"):
        name, value = mark.args[0], mark.args[1] if len(mark.args) > 1 else True
        declared = getattr(can, name)
        if declared != value:
            return f"{backend.name} declares {name}={declared!r}, this test needs {value!r}"
    for mark in item.iter_markers("needs_harness"):
        if mark.args[0] not in backend.harness:
            return f"{backend.name}: {mark.args[1]}"
    params = item.callspec.params if isinstance(item, pytest.Function) and hasattr(item, "callspec") else {}
    for mark in item.iter_markers("mode_in"):
        mode, modes = params["mode"], getattr(can, mark.args[0])
        declared = mark.kwargs.get("declared", True)
        if (mode in modes) != declared:
            return f"{backend.name} {'does not declare' if declared else 'declares'} {mode} in {mark.args[0]}"
    return None


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


# ------------------------------------------------------------------------------------------ SQL

_SQL_TYPES: dict[str, Callable[[], Any]] = {
    "int": sa.Integer, "bigint": sa.BigInteger, "str": sa.Text, "decimal": lambda: sa.Numeric(12, 2),
    "datetime": sa.DateTime, "date": sa.Date, "bool": sa.Boolean,
}


def _sql_type(spec: str) -> Any:
    return sa.String(int(spec[4:])) if spec.startswith("str:") else _SQL_TYPES[spec]()


class SqlBackend:
    """A database reached through SQLAlchemy; tables are created with SQLAlchemy Core."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    harness: ClassVar[frozenset[str]] = frozenset({
        "sql", "stamps", "version_column", "check_constraints", "required_columns", "column_types", "fixed_tables",
        "unreachable"})

    def __init__(self, url: str, unreachable_url: str) -> None:
        self.url = url
        self.unreachable_url = unreachable_url
        self.engine = sa.create_engine(url)
        self.metadata = sa.MetaData()
        self._connector = SqlConnector(url)

    @property
    def connector(self) -> SqlConnector:
        return self._connector

    def create_table(self, name: str, columns: Columns, key: list[str], required: tuple[str, ...] = (),
                     checks: tuple[str, ...] = ()) -> None:
        cols = [
            sa.Column(col, _sql_type(spec), primary_key=col in key, nullable=col in key or col not in required,
                      autoincrement=False)
            for col, spec in columns.items()
        ]
        table = sa.Table(name, self.metadata, *cols, *(sa.CheckConstraint(c) for c in checks))
        table.create(self.engine)

    def index(self, name: str, *columns: str) -> None:
        table = self.metadata.tables[name]
        sa.Index(f"ix_{name}_{'_'.join(columns)}", *(table.c[c] for c in columns)).create(self.engine)

    def insert(self, name: str, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(self.metadata.tables[name]), rows)

    def update(self, name: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        table = self.metadata.tables[name]
        with self.engine.begin() as conn:
            conn.execute(sa.update(table).where(*(table.c[k] == v for k, v in key.items())).values(values))

    def delete(self, name: str, key: dict[str, Any]) -> None:
        table = self.metadata.tables[name]
        with self.engine.begin() as conn:
            conn.execute(sa.delete(table).where(*(table.c[k] == v for k, v in key.items())))

    def rows(self, name: str) -> list[dict[str, Any]]:
        table = sa.Table(name, sa.MetaData(), autoload_with=self.engine)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns)).mappings()]

    def table_names(self) -> list[str]:
        return sa.inspect(self.engine).get_table_names()

    def unreachable(self) -> SqlConnector:
        return SqlConnector(self.unreachable_url)

    def close(self) -> None:
        self._connector.close()
        self.engine.dispose()


class SqliteBackend(SqlBackend):
    name: ClassVar[str] = "sqlite"
    capabilities: ClassVar[Capabilities] = SqlConnector.for_dialect("sqlite")

    @classmethod
    def start(cls, request: pytest.FixtureRequest, tmp_path: Path) -> SqliteBackend:
        return cls(f"sqlite:///{tmp_path / 'erp.db'}", f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")


class PostgresqlBackend(SqlBackend):
    name: ClassVar[str] = "postgresql"
    capabilities: ClassVar[Capabilities] = SqlConnector.for_dialect("postgresql")

    @classmethod
    def start(cls, request: pytest.FixtureRequest, tmp_path: Path) -> PostgresqlBackend:
        url = request.getfixturevalue("postgres_database")
        return cls(url, f"postgresql+psycopg://postgres:s3cret-pw@127.0.0.1:{closed_port()}/nothing")


# ------------------------------------------------------------------------------------------ Dataverse

_DV_TYPES = {"int": "int", "bigint": "int", "str": "string", "decimal": "decimal", "datetime": "datetime",
             "date": "datetime", "bool": "bool"}
DV_TOKEN = "contract-suite-token"


def _dv_attribute(spec: str) -> dict[str, Any]:
    if spec.startswith("str:"):
        return {"type": "string", "max_length": int(spec[4:])}
    return {"type": _DV_TYPES[spec]}


def _dv_value(spec: str, value: Any) -> Any:
    """A Python value as the Web API's JSON has it."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return f"{value.isoformat()}T00:00:00Z"
    return value


def _py_value(spec: str, value: Any) -> Any:
    """A Web API JSON value as the test created the column (naive UTC date-times, Decimal, date)."""
    if value is None:
        return None
    if spec == "decimal":
        return Decimal(str(value)).quantize(Decimal("0.01"))
    if spec in ("datetime", "date"):
        moment = datetime.fromisoformat(str(value)).astimezone(UTC).replace(tzinfo=None)
        return moment.date() if spec == "date" else moment
    return value


class DataverseBackend:
    """The Dataverse connector over HTTP on loopback against dvsim. A table is an entity of the simulator's
    schema (the test's key as its alternate key, the primary id a GUID beside it); as the schema is fixed
    while it serves, creating a table restarts the simulator with one more entity, so every table must be
    created before rows are put in. Its `modifiedon` and `versionnumber` are the simulator's own: a test
    cannot stamp rows."""

    name: ClassVar[str] = "dataverse"
    harness: ClassVar[frozenset[str]] = frozenset({"column_types", "fixed_tables", "unreachable"})
    capabilities: ClassVar[Capabilities] = DataverseConnector.capabilities

    @classmethod
    def start(cls, request: pytest.FixtureRequest, tmp_path: Path) -> DataverseBackend:
        return cls(tmp_path, request.getfixturevalue("monkeypatch"))

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from dvsim import DataverseSimulator

        monkeypatch.setenv("CONTRACT_DV_TOKEN", DV_TOKEN)
        self._simulator = DataverseSimulator
        self.schema_path = tmp_path / "dvsim-schema.yaml"
        self.entities: dict[str, dict[str, Any]] = {}
        self.columns: dict[str, Columns] = {}
        self.keys: dict[str, list[str]] = {}
        self.sim: Any = None
        self._connector: DataverseConnector | None = None
        self._serve()

    @property
    def connector(self) -> DataverseConnector:
        assert self._connector is not None
        return self._connector

    def _connect(self, url: str, **options: Any) -> DataverseConnector:
        return DataverseConnector(url, StaticTokenProvider("env:CONTRACT_DV_TOKEN"), name="contract", **options)

    def create_table(self, name: str, columns: Columns, key: list[str], required: tuple[str, ...] = (),
                     checks: tuple[str, ...] = ()) -> None:
        assert not checks, "Dataverse has no check constraints (harness check_constraints)"
        if self.sim is not None:
            assert not any(self.sim.rows(t) for t in self.entities), "create every table before putting rows in"
            self.close()
        self.columns[name], self.keys[name] = dict(columns), list(key)
        self.entities[name.removesuffix("s")] = {
            "set": name, "id": primary_id_of(name), "keys": {f"{name}_key": list(key)},
            "attributes": {col: _dv_attribute(spec) for col, spec in columns.items()},
        }
        self._serve()

    def _serve(self) -> None:
        self.schema_path.write_text(yaml.safe_dump({"entities": self.entities}))
        self.sim = self._simulator(schema_path=self.schema_path)
        self._connector = self._connect(self.sim.start())

    def insert(self, name: str, rows: list[dict[str, Any]]) -> None:
        columns = self.columns[name]
        for row in rows:
            self.sim.insert(name, {k: _dv_value(columns[k], v) for k, v in row.items()})

    def _record_id(self, name: str, key: dict[str, Any]) -> str:
        (found,) = [r for r in self.sim.rows(name) if all(r.get(k) == v for k, v in key.items())]
        return found[primary_id_of(name)]

    def update(self, name: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        columns = self.columns[name]
        self.sim.update(name, self._record_id(name, key), {k: _dv_value(columns[k], v) for k, v in values.items()})

    def delete(self, name: str, key: dict[str, Any]) -> None:
        self.sim.delete(name, self._record_id(name, key))

    def rows(self, name: str) -> list[dict[str, Any]]:
        columns, key = self.columns[name], self.keys[name]
        rows = [{col: _py_value(spec, row.get(col)) for col, spec in columns.items()} for row in self.sim.rows(name)]
        return sorted(rows, key=lambda r: tuple(r[k] for k in key))

    def table_names(self) -> list[str]:
        return list(self.columns)

    def unreachable(self) -> DataverseConnector:
        return self._connect(f"http://127.0.0.1:{closed_port()}", timeout_seconds=2, max_throttle_wait_seconds=0)

    def close(self) -> None:
        if self._connector is not None:
            self._connector.close()
        if self.sim is not None:
            self.sim.close()
        self._connector = self.sim = None


# ------------------------------------------------------------------------------------------ OData


class OdataBackend:
    """The OData connector against SAP CAP (`tests/fixtures/cap.py`: its `customers`, `lines` and `accounts`
    entity sets, modelled in `tests/fixtures/odata_server/`). A CAP model is fixed when the server starts, so
    `create_table` empties the entity set of that name and columns, and a test asking for a table or column
    the model lacks is skipped saying so. Rows are put in beneath the service (its SQLite file: 1,200 rows
    through the service take 10 s here) or, where the server stamps an ETag (`ETAGGED`), through the service;
    changed, deleted and looked at through the service, as the Python values a SQL backend returns (Decimal,
    naive UTC date-times). A test's `str:N` column fits a model's string of N characters or more."""

    name: ClassVar[str] = "odata"
    harness: ClassVar[frozenset[str]] = frozenset({
        "stamps", "required_columns", "column_types", "fixed_tables", "unreachable"})
    capabilities: ClassVar[Capabilities] = OdataConnector.capabilities
    MODEL: ClassVar[dict[str, tuple[list[str], Columns]]] = {  # entity set -> key, columns
        "customers": (["id"], {"id": "int", "name": "str:20", "city": "str", "credit": "decimal",
                               "modified_at": "datetime"}),
        "lines": (["company", "no"], {"company": "str:10", "no": "int", "qty": "int", "modified_at": "datetime"}),
        "accounts": (["code"], {"code": "str:100", "name": "str", "city": "str"}),
    }
    ETAGGED: ClassVar[frozenset[str]] = frozenset({"accounts"})

    @classmethod
    def start(cls, request: pytest.FixtureRequest, tmp_path: Path) -> OdataBackend:
        return cls(request.getfixturevalue("odata_server"))

    def __init__(self, server: CapServer) -> None:
        self.server = server
        self._connector = OdataConnector(server.erp, name="erp")
        self.columns: dict[str, Columns] = {}  # as each test created them (a subset of the model's)

    @property
    def connector(self) -> OdataConnector:
        return self._connector

    def create_table(self, name: str, columns: Columns, key: list[str], required: tuple[str, ...] = (),
                     checks: tuple[str, ...] = ()) -> None:
        model = self.MODEL.get(name)
        if model is None or model[0] != key or checks or not all(
                self._fits(spec, model[1].get(column)) for column, spec in columns.items()):
            pytest.skip(f"odata: the CAP model is fixed and has no table {name} {columns} {checks or ''}")
        self.columns[name] = columns
        self.server.clear(name)

    @staticmethod
    def _fits(spec: str, model: str | None) -> bool:
        if spec.startswith("str:") and model is not None and model.startswith("str:"):
            return int(spec[4:]) <= int(model[4:])
        return spec == model

    def insert(self, name: str, rows: list[dict[str, Any]]) -> None:
        if name in self.ETAGGED:
            self.server.insert(name, [self._json(row) for row in rows])
        else:
            self.server.load(name, [{k: stored(v) for k, v in row.items()} for row in rows])

    def _address(self, name: str, key: dict[str, Any]) -> str:
        literals = {k: repr(v) if isinstance(v, str) else str(v) for k, v in key.items()}
        predicate = ",".join(f"{k}={v}" for k, v in literals.items()) if len(key) > 1 else next(iter(literals.values()))
        return f"{self.server.erp}{name}({predicate})"

    @staticmethod
    def _json(values: dict[str, Any]) -> dict[str, Any]:
        return {k: iso_moment(v) if isinstance(v, datetime) else float(v) if isinstance(v, Decimal) else v
                for k, v in values.items()}  # the suite's decimals have two places: exact as a double

    def update(self, name: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        httpx.patch(self._address(name, key), json=self._json(values), headers={"If-Match": "*"},
                    timeout=30).raise_for_status()

    def delete(self, name: str, key: dict[str, Any]) -> None:
        httpx.delete(self._address(name, key), headers={"If-Match": "*"}, timeout=30).raise_for_status()

    def rows(self, name: str) -> list[dict[str, Any]]:
        key, model = self.MODEL[name]
        columns = self.columns.get(name, model)
        return [{c: self._python(columns[c], row.get(c)) for c in columns}
                for row in self.server.rows(name, ",".join(key))]

    @staticmethod
    def _python(spec: str, value: Any) -> Any:
        if value is not None and spec == "decimal":
            return Decimal(str(value))
        if value is not None and spec == "datetime":
            when = moment(value)
            return when.astimezone(UTC).replace(tzinfo=None) if when else value
        return value

    def table_names(self) -> list[str]:
        return sorted(self.MODEL)

    def unreachable(self) -> OdataConnector:
        return OdataConnector(f"http://127.0.0.1:{closed_port()}/odata/v4/erp/", name="erp", timeout_seconds=5)

    def close(self) -> None:
        self._connector.close()


# ------------------------------------------------------------------------------------------ files


def _from_csv(spec: str, value: str) -> Any:
    """The ERP's import of one cell: text to the column's type."""
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
    """The files connector on an exchange folder; the backend plays the ERP. It keeps each table, exports the
    whole of it into the inbox after every change of its own and after every import (a file per export, in
    name order), and imports the outbox (each file with a manifest, once, in name order) when asked for its
    rows. Cells are text: it has no column types, and a table is made by its first write."""

    name: ClassVar[str] = "files"
    harness: ClassVar[frozenset[str]] = frozenset({"unreachable"})
    capabilities: ClassVar[Capabilities] = FilesConnector.capabilities

    @classmethod
    def start(cls, request: pytest.FixtureRequest, tmp_path: Path) -> FilesBackend:
        return cls(tmp_path / "exchange")

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)  # the exchange folder is set up before the connector runs
        self._connector = FilesConnector("erp", FilesSystem(kind="files", folder=str(root)), FolderStorage(root))
        self.columns: dict[str, Columns] = {}
        self.keys: dict[str, list[str]] = {}
        self.data: dict[str, dict[str, dict[str, Any]]] = {}  # table -> formatted key -> row
        self.imported: set[str] = set()
        self.exports = 0

    @property
    def connector(self) -> FilesConnector:
        return self._connector

    def create_table(self, name: str, columns: Columns, key: list[str], required: tuple[str, ...] = (),
                     checks: tuple[str, ...] = ()) -> None:
        self.columns[name], self.keys[name] = dict(columns), list(key)
        self.data[name] = {}

    def _key(self, name: str, row: dict[str, Any]) -> str:
        return format_key([row[k] for k in self.keys[name]])

    def insert(self, name: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.data[name][self._key(name, row)] = dict(row)
        self.export(name)

    def update(self, name: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        self.data[name][self._key(name, key)].update(values)
        self.export(name)

    def delete(self, name: str, key: dict[str, Any]) -> None:
        del self.data[name][self._key(name, key)]
        self.export(name)

    def export(self, name: str) -> None:
        """The whole table as the next file in the inbox, written aside and renamed (as an ERP should)."""
        columns = list(self.columns[name])
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
        columns, key = self.columns[name], self.keys[name]
        outbox = self.root / "outbox" / name
        imported = False
        for manifest_path in sorted(outbox.glob("*.manifest.json")) if outbox.is_dir() else []:
            file = json.loads(manifest_path.read_text())["file"]
            if file in self.imported:
                continue
            self.imported.add(file)
            imported = True
            for cells in csv.DictReader(io.StringIO((outbox / file).read_text(encoding="utf-8"))):
                operation = cells.pop("operation")
                # An empty cell is a column the row does not write.
                row = {c: _from_csv(columns.get(c, "str"), v) for c, v in cells.items() if c in columns and v != ""}
                row_key = self._key(name, row)
                if operation == "delete":
                    self.data[name].pop(row_key, None)
                else:
                    self.data[name][row_key] = {**self.data[name].get(row_key, {}), **row}
        if imported:
            self.export(name)
        full = [{c: row.get(c) for c in columns} for row in self.data[name].values()]
        return sorted(full, key=lambda r: tuple((r[k] is None, r[k]) for k in key))

    def table_names(self) -> list[str]:
        return sorted(self.columns)

    def unreachable(self) -> FilesConnector:
        blocked = self.root / "not-a-folder"
        blocked.write_text("a file where the exchange folder should be")
        return FilesConnector("erp", FilesSystem(kind="files", folder=str(blocked)), FolderStorage(blocked))

    def close(self) -> None:
        self._connector.close()


# ------------------------------------------------------------------------------------------ the test fake


class MemoryBackend:
    """The in-memory fake the unit tests use (tests/fakes/memory_connector.py): rows in dicts, changes by its
    own version counter. It has no column types, creates a table on first write, and cannot fail to answer."""

    name: ClassVar[str] = "memory"
    harness: ClassVar[frozenset[str]] = frozenset()
    capabilities: ClassVar[Capabilities] = MemoryConnector.capabilities

    @classmethod
    def start(cls, request: pytest.FixtureRequest, tmp_path: Path) -> MemoryBackend:
        return cls()

    def __init__(self) -> None:
        self._connector = MemoryConnector()
        self.columns: dict[str, Columns] = {}
        self.keys: dict[str, list[str]] = {}

    @property
    def connector(self) -> MemoryConnector:
        return self._connector

    def create_table(self, name: str, columns: Columns, key: list[str], required: tuple[str, ...] = (),
                     checks: tuple[str, ...] = ()) -> None:
        self.columns[name], self.keys[name] = dict(columns), list(key)
        self._connector.tables.setdefault(name, {})

    def _key(self, name: str, row: dict[str, Any]) -> str:
        return format_key([row[k] for k in self.keys[name]])

    def insert(self, name: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._connector.put(name, self._key(name, row), row)

    def update(self, name: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        formatted = self._key(name, key)
        self._connector.put(name, formatted, {**self._connector.tables[name][formatted], **values})

    def delete(self, name: str, key: dict[str, Any]) -> None:
        formatted = self._key(name, key)
        del self._connector.tables[name][formatted]
        del self._connector.versions[(name, formatted)]

    def rows(self, name: str) -> list[dict[str, Any]]:
        columns, key = self.columns[name], self.keys[name]
        rows = [{col: row.get(col) for col in columns} for row in self._connector.tables.get(name, {}).values()]
        return sorted(rows, key=lambda r: tuple(r[k] for k in key))

    def table_names(self) -> list[str]:
        return list(self._connector.tables)

    def unreachable(self) -> Connector:
        raise AssertionError("the in-memory fake is always reachable (harness unreachable)")

    def close(self) -> None:
        self._connector.close()


BACKENDS: dict[str, type[Backend]] = {
    backend.name: backend for backend in (SqliteBackend, PostgresqlBackend, DataverseBackend, MemoryBackend,
                                          OdataBackend, FilesBackend)
}
