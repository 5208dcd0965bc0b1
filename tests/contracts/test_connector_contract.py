"""Connector contract: what the engine relies on from any system it reads from or writes to.

Every test talks to the system only through a `backend` object (create a table, put rows in, look at rows)
and the connector under test, so another connector (Dataverse over its simulator) can join by adding a
backend class with the same small API to BACKENDS. A test that needs a feature a backend does not have
calls `needs(backend, feature)`: an explicit "not applicable", never a silent pass.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from shared.config import SourceSpec, TargetSpec
from shared.connectors.sql import SqlConnector
from shared.errors import ConfigError, PermanentError, Reason, TargetChanged, TransientError
from shared.keys import format_key
from shared.ports.connector import WriteOp
from shared.versions import sortable_version
from tests.contracts.connector_helpers import keys_of, read_all
from tests.contracts.odata_backend import odata_backend

T0 = datetime(2024, 3, 1, 12, 0, 0)

_TYPES = {
    "int": lambda: sa.Integer(),
    "bigint": lambda: sa.BigInteger(),
    "str": lambda: sa.Text(),
    "decimal": lambda: sa.Numeric(12, 2),
    "datetime": lambda: sa.DateTime(),
    "date": lambda: sa.Date(),
    "bool": lambda: sa.Boolean(),
}


def _type(spec: str) -> sa.types.TypeEngine:
    if spec.startswith("str:"):
        return sa.String(int(spec[4:]))
    return _TYPES[spec]()


class SqlBackend:
    """A database reached through SQLAlchemy; tables are created with SQLAlchemy Core."""

    features = {"watermark", "status_flag", "check_constraints", "version_column"}

    def __init__(self, name: str, url: str, unreachable_url: str) -> None:
        self.name = name
        self.url = url
        self.unreachable_url = unreachable_url
        self.engine = sa.create_engine(url)
        self.metadata = sa.MetaData()
        self.connector = SqlConnector(url)

    def create_table(
        self, name: str, columns: dict[str, str], key: list[str], required: tuple[str, ...] = (),
        checks: tuple[str, ...] = (),
    ) -> None:
        cols = [
            sa.Column(col, _type(spec), primary_key=col in key, nullable=col in key or col not in required,
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

    def rows(self, name: str) -> list[dict[str, Any]]:
        table = sa.Table(name, sa.MetaData(), autoload_with=self.engine)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns)).mappings()]

    def table_names(self) -> list[str]:
        return sa.inspect(self.engine).get_table_names()

    def unreachable(self) -> SqlConnector:
        return SqlConnector(self.unreachable_url)

    def close(self) -> None:
        self.connector.close()
        self.engine.dispose()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def _sqlite(request, tmp_path) -> SqlBackend:
    return SqlBackend("sqlite", f"sqlite:///{tmp_path / 'erp.db'}", f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")


def _postgresql(request, tmp_path) -> SqlBackend:
    url = request.getfixturevalue("postgres_database")
    return SqlBackend(
        "postgresql", url, f"postgresql+psycopg://postgres:s3cret-pw@127.0.0.1:{_closed_port()}/nothing"
    )


BACKENDS = {"sqlite": _sqlite, "postgresql": _postgresql, "odata": odata_backend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path):
    made = BACKENDS[request.param](request, tmp_path)
    yield made
    made.close()


def needs(backend, feature: str) -> None:
    if feature not in backend.features:
        pytest.skip(f"{backend.name} has no {feature}: not applicable")


# ------------------------------------------------------------------------------------------ helpers

CUSTOMER_COLUMNS = {"id": "int", "name": "str:20", "city": "str", "credit": "decimal", "modified_at": "datetime"}


def customers(backend, rows: int = 0, *, stamp=lambda i: T0, required=("name",), checks=()) -> None:
    backend.create_table("customers", CUSTOMER_COLUMNS, ["id"], required=required, checks=checks)
    if rows:
        backend.insert("customers", [
            {"id": i, "name": f"c{i}", "city": "Oslo", "credit": Decimal("10.50"), "modified_at": stamp(i)}
            for i in range(1, rows + 1)
        ])


SOURCE = SourceSpec(system="erp", entity="customers", key=["id"], watermark="modified_at")
TARGET = TargetSpec(system="erp", entity="customers", key=["id"])




def upsert(key: Any, **values: Any) -> WriteOp:
    return WriteOp("upsert", {"id": key}, {"id": key, **values})


# ------------------------------------------------------------------------------------------ watermark reads


def test_full_read_pages_ties_across_boundaries_exactly_once(backend):
    needs(backend, "watermark")
    customers(backend, 25)  # all 25 share one timestamp
    pages = read_all(backend.connector, SOURCE, None, 10)
    assert [len(p.records) for p in pages] == [10, 10, 5]
    assert all(p.snapshot for p in pages)
    assert sorted(keys_of(pages), key=int) == [str(i) for i in range(1, 26)]
    assert len(set(keys_of(pages))) == 25

    again = read_all(backend.connector, SOURCE, pages[-1].position, 10)
    assert again == []

    backend.update("customers", {"id": 7}, {"name": "seven", "modified_at": T0 + timedelta(seconds=1)})
    changed = read_all(backend.connector, SOURCE, pages[-1].position, 10)
    assert keys_of(changed) == ["7"]
    assert not changed[0].snapshot
    assert changed[0].records[0].values["name"] == "seven"
    assert read_all(backend.connector, SOURCE, changed[-1].position, 10) == []


def test_resuming_from_any_stored_position_neither_skips_nor_repeats(backend):
    needs(backend, "watermark")
    customers(backend, 25, stamp=lambda i: T0 + timedelta(seconds=i // 10))  # ties inside and across pages
    first = read_all(backend.connector, SOURCE, None, 7)
    expected = keys_of(first)
    assert sorted(expected, key=int) == [str(i) for i in range(1, 26)]
    for n, page in enumerate(first):  # a crash after page n: the next run resumes from its stored position
        stored = json.loads(json.dumps(page.position))
        rest = read_all(backend.connector, SOURCE, stored, 7)
        assert keys_of(first[: n + 1]) + keys_of(rest) == expected


def test_order_versions_and_changed_at(backend):
    needs(backend, "watermark")
    customers(backend, 5, stamp=lambda i: T0 + timedelta(minutes=10 - i, microseconds=i))
    records = [r for p in read_all(backend.connector, SOURCE, None, 2) for r in p.records]
    assert [r.key for r in records] == ["5", "4", "3", "2", "1"]  # oldest change first
    versions = [r.version for r in records]
    assert versions == sorted(versions) and len(set(versions)) == 5
    kept = 5 if backend.connector.precision("customers", "modified_at").datetime_digits >= 6 else 0
    assert versions[0] == f"2024-03-01T12:05:00.00000{kept}"
    assert records[0].changed_at == datetime(2024, 3, 1, 12, 5, 0, kept, tzinfo=UTC)
    assert records[0].changed_at.tzinfo is not None


def test_values_are_json_friendly(backend):
    needs(backend, "watermark")
    backend.create_table(
        "items", {"id": "int", "price": "decimal", "born": "date", "active": "bool", "note": "str",
                  "modified_at": "datetime"}, ["id"])
    backend.insert("items", [{"id": 1, "price": Decimal("12.50"), "born": date(2020, 2, 29), "active": True,
                              "note": None, "modified_at": T0}])
    source = SourceSpec(system="erp", entity="items", key=["id"])
    (record,) = read_all(backend.connector, source, None, 10)[0].records
    assert record.values == {"id": 1, "price": "12.50", "born": "2020-02-29", "active": True, "note": None,
                             "modified_at": "2024-03-01T12:00:00"}
    json.dumps(record.values)
    assert record.key == "1"


def test_composite_keys_page_and_read_back(backend):
    needs(backend, "watermark")
    backend.create_table("lines", {"company": "str:10", "no": "int", "qty": "int", "modified_at": "datetime"},
                         ["company", "no"])
    backend.insert("lines", [{"company": c, "no": n, "qty": n, "modified_at": T0}
                             for c in ("A", "B", "C") for n in range(1, 6)])
    source = SourceSpec(system="erp", entity="lines", key=["company", "no"])
    pages = read_all(backend.connector, source, None, 4)
    keys = keys_of(pages)
    assert len(keys) == 15 and len(set(keys)) == 15
    assert keys[0] == format_key(["A", 1]) == '["A","1"]'
    assert pages[0].position["last_key"] == ["A", 4]
    for n, page in enumerate(pages):
        rest = read_all(backend.connector, source, page.position, 4)
        assert keys_of(pages[: n + 1]) + keys_of(rest) == keys

    record = backend.connector.read_record(source, '["B","3"]')
    assert record is not None and record.values["qty"] == 3 and record.key == '["B","3"]'
    assert backend.connector.read_record(source, '["B","9"]') is None
    found = backend.connector.read_records("lines", ["company", "no"], ['["A","1"]', '["C","5"]', '["X","1"]'])
    assert sorted(found) == ['["A","1"]', '["C","5"]']


def test_version_column_is_zero_padded(backend):
    needs(backend, "version_column")
    backend.create_table("docs", {"id": "int", "rv": "bigint", "modified_at": "datetime"}, ["id"])
    backend.insert("docs", [{"id": 1, "rv": 9, "modified_at": T0}, {"id": 2, "rv": 10, "modified_at": T0}])
    source = SourceSpec(system="erp", entity="docs", key=["id"], version="rv")
    records = read_all(backend.connector, source, None, 10)[0].records
    assert [r.version for r in records] == ["00000000000000000009", "00000000000000000010"]
    assert records[0].version < records[1].version


def test_empty_full_read_is_one_empty_snapshot_page(backend):
    needs(backend, "watermark")
    customers(backend, 0)
    pages = read_all(backend.connector, SOURCE, None, 10)
    assert len(pages) == 1 and pages[0].records == [] and pages[0].snapshot
    assert read_all(backend.connector, SOURCE, pages[0].position, 10)[0].snapshot  # still from the start


def test_rows_without_watermark_are_skipped_with_a_note(backend):
    needs(backend, "watermark")
    customers(backend, 3)
    backend.update("customers", {"id": 2}, {"modified_at": None})
    pages = read_all(backend.connector, SOURCE, None, 10)
    assert keys_of(pages) == ["1", "3"]
    assert any("1 rows have no modified_at" in note for note in pages[0].notes)


def test_change_tracking_is_refused(backend):
    needs(backend, "watermark")
    customers(backend, 1)
    with pytest.raises(ConfigError):
        list(backend.connector.read_changes(SOURCE.model_copy(update={"changes": "change_tracking"}), None, 10))


# ------------------------------------------------------------------------------------------ status flags

FLAG_COLUMNS = {"id": "int", "name": "str", "sync_status": "str:1", "sync_error": "str:30"}


def test_status_flags_read_pages_and_acknowledge(backend):
    needs(backend, "status_flag")
    backend.create_table("orders", {**FLAG_COLUMNS, "modified_at": "datetime"}, ["id"])
    flags = {1: "N", 2: "P", 3: "U", 4: "E", 5: "N", 6: "N", 7: "U"}
    backend.insert("orders", [{"id": i, "name": f"o{i}", "sync_status": s, "sync_error": None,
                               "modified_at": T0 + timedelta(seconds=i)} for i, s in flags.items()])
    source = SourceSpec(system="erp", entity="orders", key=["id"], changes="status_flag")
    pages = read_all(backend.connector, source, None, 2)
    assert keys_of(pages) == ["1", "3", "5", "6", "7"]
    assert [len(p.records) for p in pages] == [2, 2, 1]
    assert not any(p.snapshot for p in pages)
    first = pages[0].records[0]
    assert "sync_status" not in first.values and "sync_error" not in first.values
    assert first.version == sortable_version(T0 + timedelta(seconds=1))  # the watermark column is the version

    reason = "name is required by the CRM and this text is far too long"
    read = {r.key: r for p in pages for r in p.records}
    backend.connector.acknowledge(source, [read[k] for k in ("1", "3", "5", "6")], [(read["6"], reason)])
    rows = {r["id"]: r for r in backend.rows("orders")}
    assert [rows[i]["sync_status"] for i in range(1, 8)] == ["P", "P", "P", "E", "P", "E", "U"]
    assert rows[6]["sync_error"] == reason[:30]  # cut to the column's length
    assert rows[1]["sync_error"] is None
    assert keys_of(read_all(backend.connector, source, pages[-1].position, 2)) == ["7"]  # flags are the cursor

    backend.update("orders", {"id": 1}, {"sync_status": "U", "modified_at": T0 + timedelta(hours=1)})
    again = read_all(backend.connector, source, None, 10)
    assert keys_of(again) == ["1", "7"]
    assert again[0].records[0].version > first.version


def test_status_flags_without_watermark_use_the_read_time(backend):
    needs(backend, "status_flag")
    backend.create_table("orders", FLAG_COLUMNS, ["id"])
    backend.insert("orders", [{"id": 1, "name": "a", "sync_status": "N", "sync_error": None}])
    source = SourceSpec(system="erp", entity="orders", key=["id"], changes="status_flag")
    before = datetime.now(UTC)
    (one,) = read_all(backend.connector, source, None, 10)[0].records
    assert one.changed_at >= before
    backend.connector.acknowledge(source, [one], [])
    assert read_all(backend.connector, source, None, 10) == []
    backend.update("orders", {"id": 1}, {"sync_status": "U"})
    (two,) = read_all(backend.connector, source, None, 10)[0].records
    assert two.version > one.version


def test_a_row_re_flagged_between_read_and_acknowledge_keeps_its_flag(backend):
    needs(backend, "status_flag")
    backend.create_table("orders", {**FLAG_COLUMNS, "modified_at": "datetime"}, ["id"])
    backend.insert("orders", [{"id": i, "name": f"o{i}", "sync_status": "N", "sync_error": None,
                               "modified_at": T0} for i in (1, 2, 3)])
    source = SourceSpec(system="erp", entity="orders", key=["id"], changes="status_flag")
    read = {r.key: r for p in read_all(backend.connector, source, None, 10) for r in p.records}
    backend.update("orders", {"id": 1}, {"name": "edited", "sync_status": "U",
                                         "modified_at": T0 + timedelta(seconds=1)})  # a new version
    backend.update("orders", {"id": 2}, {"sync_status": "P"})  # marked by someone else: left alone
    backend.connector.acknowledge(source, list(read.values()), [])
    assert {r["id"]: r["sync_status"] for r in backend.rows("orders")} == {1: "U", 2: "P", 3: "P"}
    (again,) = read_all(backend.connector, source, None, 10)[0].records
    assert again.key == "1" and again.values["name"] == "edited" and again.version > read["1"].version


def test_without_version_or_watermark_acknowledge_compares_the_values_read(backend):
    needs(backend, "status_flag")
    backend.create_table("orders", {**FLAG_COLUMNS, "note": "str"}, ["id"])
    backend.insert("orders", [{"id": i, "name": f"o{i}", "sync_status": "U", "sync_error": None, "note": None}
                              for i in (1, 2, 3)])
    source = SourceSpec(system="erp", entity="orders", key=["id"], changes="status_flag")
    read = {r.key: r for p in read_all(backend.connector, source, None, 10) for r in p.records}
    backend.update("orders", {"id": 1}, {"note": "a late edit"})  # NULL -> text
    backend.update("orders", {"id": 2}, {"name": None})  # text -> NULL
    backend.update("orders", {"id": 3}, {"sync_status": "U"})  # flagged again, nothing changed: nothing to lose
    backend.connector.acknowledge(source, list(read.values()), [])
    assert {r["id"]: r["sync_status"] for r in backend.rows("orders")} == {1: "U", 2: "U", 3: "P"}


def test_a_dead_letter_of_an_old_version_never_overwrites_the_users_fix(backend):
    needs(backend, "status_flag")
    backend.create_table("orders", {**FLAG_COLUMNS, "modified_at": "datetime"}, ["id"])
    backend.insert("orders", [{"id": i, "name": "", "sync_status": "N", "sync_error": None, "modified_at": T0}
                              for i in (1, 2, 3)])
    source = SourceSpec(system="erp", entity="orders", key=["id"], changes="status_flag")
    read = {r.key: r for p in read_all(backend.connector, source, None, 10) for r in p.records}
    backend.connector.acknowledge(source, list(read.values()), [])  # sent: all P
    # The user fixes row 1 (new name, new stamp, flag U) before the old version's dead letter comes back.
    backend.update("orders", {"id": 1}, {"name": "fixed", "sync_status": "U", "modified_at": T0 + timedelta(1)})
    why = "ValidationFailed: name is required"
    backend.connector.acknowledge(source, [], [(read[k], why) for k in ("1", "2")])
    rows = {r["id"]: r for r in backend.rows("orders")}
    assert (rows[1]["sync_status"], rows[1]["sync_error"], rows[1]["name"]) == ("U", None, "fixed")
    assert (rows[2]["sync_status"], rows[2]["sync_error"]) == ("E", why[:30])  # still the version that failed
    assert rows[3]["sync_status"] == "P"
    assert keys_of(read_all(backend.connector, source, None, 10)) == ["1"]  # the fix is read and sent


def test_acknowledge_is_a_no_op_for_watermark_sources(backend):
    needs(backend, "watermark")
    customers(backend, 2)
    (first, second) = read_all(backend.connector, SOURCE, None, 10)[0].records
    backend.connector.acknowledge(SOURCE, [first], [(second, "nope")])
    assert [r["name"] for r in backend.rows("customers")] == ["c1", "c2"]


# ------------------------------------------------------------------------------------------ single reads


def test_read_record_and_read_records(backend):
    customers(backend, 1200)
    record = backend.connector.read_record(SOURCE, "42")
    assert record is not None and record.key == "42" and record.values["name"] == "c42"
    assert record.version == sortable_version(T0)
    assert backend.connector.read_record(SOURCE, "4242") is None
    assert backend.connector.read_record(SOURCE, "not-a-number") is None

    wanted = [str(i) for i in range(1, 1301)] + ["1", "x"]  # past one chunk of 500; duplicates; junk
    found = backend.connector.read_records("customers", ["id"], wanted)
    assert sorted(found, key=int) == [str(i) for i in range(1, 1201)]
    assert found["7"].values["name"] == "c7"


# ------------------------------------------------------------------------------------------ writes


def test_upsert_inserts_and_updates_in_one_batch(backend):
    customers(backend, 2)
    ops = [upsert(1, name="one"), upsert(3, name="three", city="Bergen", credit=Decimal("1.25")),
           upsert(2, name="two", modified_at=T0 + timedelta(days=1))]
    results = backend.connector.write_batch(TARGET, ops)
    assert [r.ok for r in results] == [True, True, True]
    assert [r.key for r in results] == ["1", "3", "2"]
    assert [r.op for r in results] == ops
    rows = {r["id"]: r for r in backend.rows("customers")}
    assert rows[1]["name"] == "one" and rows[1]["city"] == "Oslo"  # columns not sent are left alone
    assert rows[3]["city"] == "Bergen" and rows[3]["credit"] == Decimal("1.25")
    assert rows[2]["modified_at"] == T0 + timedelta(days=1)


def test_same_key_twice_in_a_batch_keeps_op_order(backend):
    customers(backend, 0)
    ops = [upsert(1, name="first"), upsert(2, name="x"), upsert(1, name="second", city="Rome"),
           WriteOp("delete", {"id": 2}), upsert(2, name="back")]
    results = backend.connector.write_batch(TARGET, ops)
    assert all(r.ok for r in results)
    rows = {r["id"]: r for r in backend.rows("customers")}
    assert rows[1]["name"] == "second" and rows[1]["city"] == "Rome"
    assert rows[2]["name"] == "back"


def test_values_are_coerced_to_column_types(backend):
    customers(backend, 0)
    op = WriteOp("upsert", {"id": "5"}, {"name": 12345, "credit": "99.90",
                                         "modified_at": "2024-03-01T13:00:00+01:00"})
    (result,) = backend.connector.write_batch(TARGET, [op])
    assert result.ok and result.key == "5"
    (row,) = backend.rows("customers")
    assert row["id"] == 5 and row["name"] == "12345" and row["credit"] == Decimal("99.90")
    assert row["modified_at"] == datetime(2024, 3, 1, 12, 0)  # aware -> UTC for a naive column


def test_update_of_a_missing_row_fails_only_that_op(backend):
    customers(backend, 2)
    ops = [WriteOp("update", {"id": 1}, {"city": "Paris"}), WriteOp("update", {"id": 99}, {"city": "Nowhere"}),
           WriteOp("update", {"id": 2}, {"city": "Rome"})]
    results = backend.connector.write_batch(TARGET, ops)
    assert [r.ok for r in results] == [True, False, True]
    error = results[1].error
    assert isinstance(error, PermanentError) and error.reason == Reason.TARGET_REJECTED
    assert "not found" in str(error) and "99" in str(error)
    assert [r["city"] for r in backend.rows("customers")] == ["Paris", "Rome"]
    assert [r["id"] for r in backend.rows("customers")] == [1, 2]


def test_delete_by_key(backend):
    customers(backend, 3)
    results = backend.connector.write_batch(TARGET, [WriteOp("delete", {"id": 2}), WriteOp("delete", {"id": 77})])
    assert [r.ok for r in results] == [True, True]  # deleting what is gone is done
    assert [r["id"] for r in backend.rows("customers")] == [1, 3]


def test_create_only_duplicate_fails_just_that_op(backend):
    customers(backend, 1)
    ops = [WriteOp("upsert", {"id": 1}, {"name": "dupe"}, create_only=True),
           WriteOp("upsert", {"id": 2}, {"name": "fresh"}, create_only=True)]
    results = backend.connector.write_batch(TARGET, ops)
    assert [r.ok for r in results] == [False, True]
    assert isinstance(results[0].error, TargetChanged) and "already exists" in str(results[0].error)
    assert results[0].error.reason == Reason.TARGET_REJECTED
    assert [r["name"] for r in backend.rows("customers")] == ["c1", "fresh"]


def test_a_write_conditional_on_the_values_read_fails_when_the_row_changed(backend):
    customers(backend, 4)
    backend.update("customers", {"id": 2}, {"credit": None})
    read = backend.connector.read_records("customers", ["id"], ["1", "2", "3", "4"])
    backend.update("customers", {"id": 1}, {"city": "Bergen"})  # a user's edit after our read
    backend.update("customers", {"id": 3}, {"name": "elsewhere"})  # a field we do not guard
    backend.update("customers", {"id": 4}, {"credit": Decimal("10.5")})  # the same value, written again

    def guarded(key: int, **values: Any) -> WriteOp:
        seen = read[str(key)].values
        return WriteOp("update", {"id": key}, values, if_values={n: seen[n] for n in ("city", "credit")})

    ops = [guarded(1, city="Paris"), guarded(2, city="Rome"), guarded(3, city="Lima"), guarded(4, city="Nice")]
    results = backend.connector.write_batch(TARGET, ops)
    assert [r.ok for r in results] == [False, True, True, True]
    assert isinstance(results[0].error, TargetChanged) and results[0].error.reason == Reason.CONFLICT
    assert [r["city"] for r in backend.rows("customers")] == ["Bergen", "Rome", "Lima", "Nice"]
    backend.connector.write_batch(TARGET, [WriteOp("delete", {"id": 2})])
    (gone,) = backend.connector.write_batch(TARGET, [guarded(2, city="Oslo")])
    assert isinstance(gone.error, TargetChanged)


def test_one_row_violating_not_null_fails_only_itself(backend):
    customers(backend, 0)
    ops = [upsert(i, name=f"n{i}") for i in range(1, 101)]
    ops[41] = upsert(42, name=None, city="Bad")
    results = backend.connector.write_batch(TARGET, ops)
    assert [r.ok for r in results].count(True) == 99
    bad = results[41]
    assert not bad.ok and isinstance(bad.error, PermanentError) and bad.error.reason == Reason.TARGET_REJECTED
    message = str(bad.error)
    assert message.startswith("customers key 42: ") and "\n" not in message
    assert "null" in message.lower()
    assert len(backend.rows("customers")) == 99


def test_one_row_breaking_a_check_constraint_fails_only_itself(backend):
    needs(backend, "check_constraints")
    customers(backend, 0, checks=("credit >= 0",))
    ops = [upsert(i, name=f"n{i}", credit=Decimal(i)) for i in range(1, 51)]
    ops[9] = upsert(10, name="neg", credit=Decimal("-1"))
    results = backend.connector.write_batch(TARGET, ops)
    assert [i for i, r in enumerate(results) if not r.ok] == [9]
    assert "customers key 10" in str(results[9].error)
    assert len(backend.rows("customers")) == 49


def test_over_length_and_unknown_columns_fail_only_their_op(backend):
    customers(backend, 0)
    ops = [upsert(1, name="ok"), upsert(2, name="x" * 21), upsert(3, name="ok", colour="red"),
           upsert(4, name="ok", credit="lots"), upsert(5, name="ok")]
    results = backend.connector.write_batch(TARGET, ops)
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert "21 characters" in str(results[1].error) and "allows 20" in str(results[1].error)
    assert "colour" in str(results[2].error)
    assert "credit" in str(results[3].error)
    assert all(r.error.reason == Reason.TARGET_REJECTED for r in results if not r.ok)
    assert [r["id"] for r in backend.rows("customers")] == [1, 5]


def test_missing_table_rejects_every_op(backend):
    results = backend.connector.write_batch(
        TargetSpec(system="erp", entity="nope", key=["id"]), [upsert(1, name="a"), upsert(2, name="b")]
    )
    assert all(not r.ok and isinstance(r.error, PermanentError) for r in results)
    assert "nope" in str(results[0].error)


def test_sql_injection_in_a_key_is_stored_literally(backend):
    backend.create_table("accounts", {"code": "str:100", "name": "str"}, ["code"])
    evil = "x'); DROP TABLE accounts; --"
    target = TargetSpec(system="erp", entity="accounts", key=["code"])
    (result,) = backend.connector.write_batch(target, [WriteOp("upsert", {"code": evil}, {"name": "O'Brien"})])
    assert result.ok and result.key == evil
    assert "accounts" in backend.table_names()
    assert backend.rows("accounts") == [{"code": evil, "name": "O'Brien"}]
    found = backend.connector.read_records("accounts", ["code"], [evil])
    assert list(found) == [evil]
    results = backend.connector.write_batch(target, [WriteOp("delete", {"code": evil})])
    assert results[0].ok and backend.rows("accounts") == []


def test_composite_key_writes(backend):
    backend.create_table("lines", {"company": "str:10", "no": "int", "qty": "int"}, ["company", "no"])
    target = TargetSpec(system="erp", entity="lines", key=["company", "no"])
    ops = [WriteOp("upsert", {"company": "A", "no": 1}, {"qty": 1}),
           WriteOp("upsert", {"company": "A", "no": 2}, {"qty": 2}),
           WriteOp("upsert", {"company": "B", "no": 1}, {"qty": 3})]
    assert [r.key for r in backend.connector.write_batch(target, ops)] == ['["A","1"]', '["A","2"]', '["B","1"]']
    ops = [WriteOp("upsert", {"company": "A", "no": 2}, {"qty": 20}), WriteOp("delete", {"company": "B", "no": 1}),
           WriteOp("update", {"company": "B", "no": 2}, {"qty": 0})]
    results = backend.connector.write_batch(target, ops)
    assert [r.ok for r in results] == [True, True, False]
    assert [(r["company"], r["no"], r["qty"]) for r in backend.rows("lines")] == [("A", 1, 1), ("A", 2, 20)]


# ------------------------------------------------------------------------------------------ failures


def test_unreachable_database_is_transient_for_every_op_and_every_read(backend):
    connector = backend.unreachable()
    try:
        results = connector.write_batch(TARGET, [upsert(1, name="a"), upsert(2, name="b")])
        assert [r.ok for r in results] == [False, False]
        assert all(isinstance(r.error, TransientError) for r in results)
        with pytest.raises(TransientError) as raised:
            list(connector.read_changes(SOURCE, None, 10))
        with pytest.raises(TransientError):
            connector.read_record(SOURCE, "1")
        for text in (str(raised.value), str(results[0].error)):
            assert "s3cret-pw" not in text
    finally:
        connector.close()


# ------------------------------------------------------------------------------------------ SQL specifics
# Not part of the port's contract: how the SQL connector copes with what real databases look like.


def sql_only(backend) -> None:
    if not isinstance(backend, SqlBackend):
        pytest.skip("SQL connector specifics")


def test_sqlite_text_timestamps_with_ties_page_exactly_once(tmp_path):
    # CURRENT_TIMESTAMP writes '2024-03-01 12:00:00', SQLAlchemy '2024-03-01 12:00:00.000000': the cursor
    # compares the stored text, so ties at a page boundary are still read exactly once.
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE legacy (id INTEGER PRIMARY KEY, name TEXT, "
                             "modified_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)")
        for i in range(1, 26):
            conn.exec_driver_sql("INSERT INTO legacy (id, name, modified_at) VALUES (?, ?, ?)",
                                 (i, f"n{i}", "2024-03-01 12:00:00" if i % 2 else "2024-03-01 12:00:00.000000"))
    connector = SqlConnector(url)
    source = SourceSpec(system="erp", entity="legacy", key=["id"])
    pages = read_all(connector, source, None, 10)
    keys = keys_of(pages)
    assert sorted(keys, key=int) == [str(i) for i in range(1, 26)] and len(keys) == 25
    for n, page in enumerate(pages):
        assert keys_of(pages[: n + 1]) + keys_of(read_all(connector, source, page.position, 10)) == keys
    assert pages[0].records[0].changed_at == datetime(2024, 3, 1, 12, tzinfo=UTC)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE legacy SET name = 'new', modified_at = CURRENT_TIMESTAMP WHERE id = 3")
    assert keys_of(read_all(connector, source, pages[-1].position, 10)) == ["3"]
    connector.close()
    engine.dispose()


def test_key_without_unique_index_upserts_by_select_then_write(backend):
    sql_only(backend)
    with backend.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE loose (code VARCHAR(10), name VARCHAR(20) NOT NULL)")
        conn.exec_driver_sql("INSERT INTO loose (code, name) VALUES ('a', 'old')")
    target = TargetSpec(system="erp", entity="loose", key=["code"])
    ops = [WriteOp("upsert", {"code": "a"}, {"name": "new"}), WriteOp("upsert", {"code": "b"}, {"name": "bee"}),
           WriteOp("upsert", {"code": "c"}, {"name": None})]
    results = backend.connector.write_batch(target, ops)
    assert [r.ok for r in results] == [True, True, False]
    with backend.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT code, name FROM loose ORDER BY code").all() == [("a", "new"), ("b", "bee")]


def test_schema_qualified_entity(backend):
    sql_only(backend)
    customers(backend, 3)
    schema = "main" if backend.name == "sqlite" else "public"
    source = SourceSpec(system="erp", entity=f"{schema}.customers", key=["id"])
    assert len(keys_of(read_all(backend.connector, source, None, 10))) == 3
    target = TargetSpec(system="erp", entity=f"{schema}.customers", key=["id"])
    assert backend.connector.write_batch(target, [upsert(9, name="nine")])[0].ok


def test_timezone_aware_watermark(postgres_database):
    engine = sa.create_engine(postgres_database)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE tz (id INT PRIMARY KEY, modified_at TIMESTAMPTZ)")
        conn.exec_driver_sql("SET TIME ZONE 'Europe/Oslo'")
        for i in range(1, 6):
            conn.exec_driver_sql("INSERT INTO tz VALUES (%s, TIMESTAMPTZ '2024-03-01 12:00:00+00')", (i,))
    connector = SqlConnector(postgres_database)
    source = SourceSpec(system="erp", entity="tz", key=["id"])
    pages = read_all(connector, source, None, 2)
    assert keys_of(pages) == ["1", "2", "3", "4", "5"]
    assert pages[0].records[0].changed_at == datetime(2024, 3, 1, 12, tzinfo=UTC)
    assert pages[0].records[0].version == "2024-03-01T12:00:00.000000"
    assert keys_of(read_all(connector, source, pages[0].position, 2)) == ["3", "4", "5"]
    connector.close()
    engine.dispose()


def test_bad_url_never_echoes_the_password():
    with pytest.raises(ConfigError) as raised:
        SqlConnector("postgresql+psycopg://user:hunter2@host:notaport/db")
    assert "hunter2" not in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        SqlConnector("nosuchdb+driver://user:hunter2@host/db")
    assert "hunter2" not in str(raised.value)
