"""The connector contract suite's backend for the OData connector, over the SAP CAP server of
`tests/fixtures/cap.py` (its `customers`, `lines` and `accounts` entity sets, in `tests/fixtures/odata_server/`).

A CAP model is fixed when the server starts, so `create_table` cannot create: it empties the entity set of the
same name and columns, and a test that needs a table the model lacks (`items`, `docs`, `orders`, `loose`) or
a check constraint is not applicable to this backend (skipped saying so). Rows are put in and looked at
beneath the service (its SQLite file, as CAP stores them: 1,200 rows through the service take 10 s here),
updated and looked at through the service itself, converted to the Python types the suite compares with
(Decimal, naive UTC datetimes) as a SQL backend returns them.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from shared.connectors.odata.connector import OdataConnector
from shared.connectors.odata.literals import iso_moment, moment
from tests.fixtures.cap import CapServer, stored

MODEL = {  # entity set -> key, columns (as the suite names their types)
    "customers": (["id"], {"id": "int", "name": "str:20", "city": "str", "credit": "decimal",
                           "modified_at": "datetime"}),
    "lines": (["company", "no"], {"company": "str:10", "no": "int", "qty": "int", "modified_at": "datetime"}),
    "accounts": (["code"], {"code": "str:100", "name": "str"}),
}


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_moment(value)
    if isinstance(value, Decimal):
        return float(value)  # the suite's decimals have two places: exact as a double
    return value


def _from_json(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "decimal":
        return Decimal(str(value))
    if kind == "datetime":
        when = moment(value)
        return when.astimezone(UTC).replace(tzinfo=None) if when else value
    return value


class OdataBackend:
    name = "odata"
    features = frozenset({"watermark"})

    def __init__(self, server: CapServer) -> None:
        self.server = server
        self.connector = OdataConnector(server.erp, name="erp")
        self.columns: dict[str, dict[str, str]] = {}  # as each test created them (a subset of the model's)

    def create_table(self, name: str, columns: dict[str, str], key: list[str], required: tuple[str, ...] = (),
                     checks: tuple[str, ...] = ()) -> None:
        model = MODEL.get(name)
        if model is None or model[0] != key or not columns.items() <= model[1].items() or checks:
            pytest.skip(f"the OData server's model is fixed and has no table {name} {columns} {checks or ''}: "
                        "not applicable")
        self.columns[name] = columns
        self.server.clear(name)

    def insert(self, name: str, rows: list[dict[str, Any]]) -> None:
        self.server.load(name, [{k: stored(v) for k, v in row.items()} for row in rows])

    def update(self, name: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        predicate = ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in key.items())
        address = f"{name}({predicate if len(key) > 1 else predicate.split('=', 1)[1]})"
        response = httpx.patch(self.server.erp + address, json={k: _to_json(v) for k, v in values.items()},
                               headers={"If-Match": "*"}, timeout=30)
        response.raise_for_status()

    def rows(self, name: str) -> list[dict[str, Any]]:
        key = MODEL[name][0]
        columns = self.columns.get(name, MODEL[name][1])
        return [{c: _from_json(columns[c], row.get(c)) for c in columns}
                for row in self.server.rows(name, ",".join(key))]

    def table_names(self) -> list[str]:
        return sorted(MODEL)

    def unreachable(self) -> OdataConnector:
        return OdataConnector(f"http://127.0.0.1:{_closed_port()}/odata/v4/erp/", name="erp", timeout_seconds=5)

    def close(self) -> None:
        self.connector.close()


def odata_backend(request: pytest.FixtureRequest, tmp_path: Any) -> OdataBackend:
    return OdataBackend(request.getfixturevalue("odata_server"))
