"""Connector contract: what the engine relies on from any system it reads from or writes to.

Every test talks to the system only through a `backend` (tests/contracts/connector_backends.py: SQLite,
PostgreSQL, the Dataverse simulator, the in-memory test fake) and the connector under test. A test marks what
it needs (a capability the connector must declare, a set-up its harness must be able to make); for a backend
without it the test is skipped saying which, before the backend starts: an explicit "not applicable", never a
silent pass. Another connector joins by adding one backend class there.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, get_args

import pytest
import sqlalchemy as sa

from shared.config import ChangeMode, SourceSpec, TargetSpec
from shared.connectors.sql import SqlConnector
from shared.errors import ConfigError, PermanentError, Reason, TargetChanged, TransientError
from shared.keys import format_key
from shared.ports.connector import WriteOp
from shared.versions import sortable_version
from tests.contracts.connector_backends import BACKENDS, SqlBackend, skip_reason
from tests.contracts.connector_helpers import keys_of, read_all

T0 = datetime(2024, 3, 1, 12, 0, 0)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path):
    kind = BACKENDS[request.param]
    reason = skip_reason(kind, request.node)
    if reason:
        pytest.skip(reason)
    made = kind.start(request, tmp_path)
    yield made
    made.close()


def stamped(mode: str = "watermark"):  # noqa: ANN201 - a decorator
    """A read whose test writes the change marker itself (the watermark column's values)."""
    needs_mode = pytest.mark.needs_mode(mode)
    stamps = pytest.mark.needs_harness("stamps", "the test writes the watermark column itself; this system keeps "
                                                 "its own change marker")
    return lambda test: stamps(needs_mode(test))


sql_only = pytest.mark.needs_harness("sql", "SQL connector specifics")


# ------------------------------------------------------------------------------------------ helpers

CUSTOMER_COLUMNS = {"id": "int", "name": "str:20", "city": "str", "credit": "decimal", "modified_at": "datetime"}


def customers(backend, rows: int = 0, *, stamp=lambda i: T0, required=("name",), checks=(), key="int") -> None:
    backend.create_table("customers", {**CUSTOMER_COLUMNS, "id": key}, ["id"], required=required, checks=checks)
    if rows:
        backend.insert("customers", [
            {"id": i if key == "int" else str(i), "name": f"c{i}", "city": "Oslo", "credit": Decimal("10.50"),
             "modified_at": stamp(i)}
            for i in range(1, rows + 1)
        ])


SOURCE = SourceSpec(system="erp", entity="customers", key=["id"], watermark="modified_at")
TARGET = TargetSpec(system="erp", entity="customers", key=["id"])




def upsert(key: Any, **values: Any) -> WriteOp:
    return WriteOp("upsert", {"id": key}, {"id": key, **values})


# ------------------------------------------------------------------------------------------ watermark reads


@stamped()
def test_full_read_pages_ties_across_boundaries_exactly_once(backend):
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


@stamped()
def test_resuming_from_any_stored_position_neither_skips_nor_repeats(backend):
    customers(backend, 25, stamp=lambda i: T0 + timedelta(seconds=i // 10))  # ties inside and across pages
    first = read_all(backend.connector, SOURCE, None, 7)
    expected = keys_of(first)
    assert sorted(expected, key=int) == [str(i) for i in range(1, 26)]
    for n, page in enumerate(first):  # a crash after page n: the next run resumes from its stored position
        stored = json.loads(json.dumps(page.position))
        rest = read_all(backend.connector, SOURCE, stored, 7)
        assert keys_of(first[: n + 1]) + keys_of(rest) == expected


@stamped()
def test_order_versions_and_changed_at(backend):
    customers(backend, 5, stamp=lambda i: T0 + timedelta(minutes=10 - i, microseconds=i))
    records = [r for p in read_all(backend.connector, SOURCE, None, 2) for r in p.records]
    assert [r.key for r in records] == ["5", "4", "3", "2", "1"]  # oldest change first
    versions = [r.version for r in records]
    assert versions == sorted(versions) and len(set(versions)) == 5
    kept = 5 if backend.connector.precision("customers", "modified_at").datetime_digits >= 6 else 0
    assert versions[0] == f"2024-03-01T12:05:00.00000{kept}"
    assert records[0].changed_at == datetime(2024, 3, 1, 12, 5, 0, kept, tzinfo=UTC)
    assert records[0].changed_at.tzinfo is not None


@stamped()
def test_values_are_json_friendly(backend):
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


@stamped()
def test_composite_keys_page_and_read_back(backend):
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


@stamped()
@pytest.mark.needs_harness("version_column", "no version column a test can set")
def test_version_column_is_zero_padded(backend):
    backend.create_table("docs", {"id": "int", "rv": "bigint", "modified_at": "datetime"}, ["id"])
    backend.insert("docs", [{"id": 1, "rv": 9, "modified_at": T0}, {"id": 2, "rv": 10, "modified_at": T0}])
    source = SourceSpec(system="erp", entity="docs", key=["id"], version="rv")
    records = read_all(backend.connector, source, None, 10)[0].records
    assert [r.version for r in records] == ["00000000000000000009", "00000000000000000010"]
    assert records[0].version < records[1].version


@pytest.mark.needs_mode("watermark")
def test_empty_full_read_is_one_empty_snapshot_page(backend):
    customers(backend, 0)
    pages = read_all(backend.connector, SOURCE, None, 10)
    assert len(pages) == 1 and pages[0].records == [] and pages[0].snapshot
    assert read_all(backend.connector, SOURCE, pages[0].position, 10)[0].snapshot  # still from the start


@stamped()
def test_rows_without_watermark_are_skipped_with_a_note(backend):
    customers(backend, 3)
    backend.update("customers", {"id": 2}, {"modified_at": None})
    pages = read_all(backend.connector, SOURCE, None, 10)
    assert keys_of(pages) == ["1", "3"]
    assert any("1 rows have no modified_at" in note for note in pages[0].notes)


@pytest.mark.parametrize("mode", get_args(ChangeMode))
@pytest.mark.mode_in("change_modes", declared=False)
def test_a_change_mode_not_declared_is_refused(backend, mode):
    customers(backend, 1)
    with pytest.raises(ConfigError):
        list(backend.connector.read_changes(SOURCE.model_copy(update={"changes": mode}), None, 10))


# ------------------------------------------------------------------------------------------ status flags

FLAG_COLUMNS = {"id": "int", "name": "str", "sync_status": "str:1", "sync_error": "str:30"}


@stamped("status_flag")
def test_status_flags_read_pages_and_acknowledge(backend):
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


@stamped("status_flag")
def test_status_flags_without_watermark_use_the_read_time(backend):
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


@stamped("status_flag")
def test_a_row_re_flagged_between_read_and_acknowledge_keeps_its_flag(backend):
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


@stamped("status_flag")
def test_without_version_or_watermark_acknowledge_compares_the_values_read(backend):
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


@stamped("status_flag")
def test_a_dead_letter_of_an_old_version_never_overwrites_the_users_fix(backend):
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


@stamped()
def test_acknowledge_is_a_no_op_for_watermark_sources(backend):
    customers(backend, 2)
    (first, second) = read_all(backend.connector, SOURCE, None, 10)[0].records
    backend.connector.acknowledge(SOURCE, [first], [(second, "nope")])
    assert [r["name"] for r in backend.rows("customers")] == ["c1", "c2"]


# ------------------------------------------------------------------------------------------ single reads


@pytest.mark.parametrize("key", ["int", "str:10"])
def test_read_record_and_read_records(backend, key):
    customers(backend, 1200, key=key)
    record = backend.connector.read_record(SOURCE, "42")
    assert record is not None and record.key == "42" and record.values["name"] == "c42"
    if "stamps" in backend.harness:
        assert record.version == sortable_version(T0)
    assert backend.connector.read_record(SOURCE, "4242") is None
    assert backend.connector.read_record(SOURCE, "not-a-number") is None

    wanted = [str(i) for i in range(1, 1301)] + ["1", "x"]  # past one chunk of 500; duplicates; junk
    found = backend.connector.read_records("customers", ["id"], wanted)
    assert sorted(found, key=int) == [str(i) for i in range(1, 1201)]
    assert found["7"].values["name"] == "c7"


@pytest.mark.parametrize("mode", sorted(set(get_args(ChangeMode)) - {"status_flag", "xact_id"}))  # those two
@pytest.mark.mode_in("snapshot_reads")
def test_a_full_read_is_a_snapshot_of_every_row(backend, mode):  # need columns of their own: tests above
    customers(backend, 5, key="str:10")
    pages = read_all(backend.connector, SOURCE.model_copy(update={"changes": mode}), None, 2)
    assert all(p.snapshot for p in pages) and not any(p.stopped_early for p in pages)
    assert sorted(keys_of(pages)) == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("mode", get_args(ChangeMode))
@pytest.mark.mode_in("delete_changes")
def test_a_delete_is_read_as_a_delete_change(backend, mode):
    customers(backend, 3, key="str:10")
    source = SOURCE.model_copy(update={"changes": mode})
    pages = read_all(backend.connector, source, None, 10)
    backend.delete("customers", {"id": "2"})
    changes = [r for p in read_all(backend.connector, source, pages[-1].position, 10) for r in p.records]
    deleted = [r for r in changes if r.deleted]
    assert len(deleted) == 1 and (deleted[0].key or deleted[0].source_id)  # by key, or by its own id
    assert deleted[0].version > max(r.version for p in pages for r in p.records)


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


@sql_only  # Dataverse takes each value in its column's JSON type only, as the Web API does
def test_values_are_coerced_to_column_types(backend):
    customers(backend, 0)
    op = WriteOp("upsert", {"id": "5"}, {"name": 12345, "credit": "99.90",
                                         "modified_at": "2024-03-01T13:00:00+01:00"})
    (result,) = backend.connector.write_batch(TARGET, [op])
    assert result.ok and result.key == "5"
    (row,) = backend.rows("customers")
    assert row["id"] == 5 and row["name"] == "12345" and row["credit"] == Decimal("99.90")
    assert row["modified_at"] == datetime(2024, 3, 1, 12, 0)  # aware -> UTC for a naive column


@pytest.mark.needs_capability("deferred_writes", False)
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


@pytest.mark.needs_capability("deferred_writes", False)
def test_create_only_duplicate_fails_just_that_op(backend):
    customers(backend, 1)
    ops = [WriteOp("upsert", {"id": 1}, {"name": "dupe"}, create_only=True),
           WriteOp("upsert", {"id": 2}, {"name": "fresh"}, create_only=True)]
    results = backend.connector.write_batch(TARGET, ops)
    assert [r.ok for r in results] == [False, True]
    assert isinstance(results[0].error, TargetChanged) and "already exists" in str(results[0].error)
    assert results[0].error.reason == Reason.TARGET_REJECTED
    assert [r["name"] for r in backend.rows("customers")] == ["c1", "fresh"]


@pytest.mark.needs_capability("conditional_writes", "values")
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


@pytest.mark.needs_capability("conditional_writes", "etag")
def test_a_write_conditional_on_the_etag_read_fails_when_the_row_changed(backend):
    backend.create_table("accounts", {"code": "str:10", "city": "str"}, ["code"])
    backend.insert("accounts", [{"code": code, "city": "Oslo"} for code in ("a", "b", "c")])
    read = backend.connector.read_records("accounts", ["code"], ["a", "b", "c"])
    assert all(record.etag for record in read.values())
    backend.update("accounts", {"code": "a"}, {"city": "Bergen"})  # a user's edit after our read
    target = TargetSpec(system="erp", entity="accounts", key=["code"])
    results = backend.connector.write_batch(target, [
        WriteOp("update", {"code": "a"}, {"city": "Paris"}, if_match=read["a"].etag),
        WriteOp("update", {"code": "b"}, {"city": "Rome"}, if_match=read["b"].etag),
        WriteOp("delete", {"code": "c"}, if_match=read["c"].etag)])
    assert [r.ok for r in results] == [False, True, True]
    assert isinstance(results[0].error, TargetChanged) and results[0].error.reason == Reason.CONFLICT
    assert backend.rows("accounts") == [{"code": "a", "city": "Bergen"}, {"code": "b", "city": "Rome"}]


@pytest.mark.needs_harness("required_columns", "required columns are not enforced by writes")
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


@pytest.mark.needs_harness("check_constraints", "no check constraints")
def test_one_row_breaking_a_check_constraint_fails_only_itself(backend):
    customers(backend, 0, checks=("credit >= 0",))
    ops = [upsert(i, name=f"n{i}", credit=Decimal(i)) for i in range(1, 51)]
    ops[9] = upsert(10, name="neg", credit=Decimal("-1"))
    results = backend.connector.write_batch(TARGET, ops)
    assert [i for i, r in enumerate(results) if not r.ok] == [9]
    assert "customers key 10" in str(results[9].error)
    assert len(backend.rows("customers")) == 49


@pytest.mark.needs_harness("column_types", "no column types or lengths")
def test_over_length_and_unknown_columns_fail_only_their_op(backend):
    customers(backend, 0)
    ops = [upsert(1, name="ok"), upsert(2, name="x" * 21), upsert(3, name="ok", colour="red"),
           upsert(4, name="ok", credit="lots"), upsert(5, name="ok")]
    results = backend.connector.write_batch(TARGET, ops)
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert "colour" in str(results[2].error)
    if isinstance(backend, SqlBackend):  # its own wording: the others pass on their system's message
        assert "21 characters" in str(results[1].error) and "allows 20" in str(results[1].error)
        assert "credit" in str(results[3].error)
    assert all(r.error.reason == Reason.TARGET_REJECTED for r in results if not r.ok)
    assert [r["id"] for r in backend.rows("customers")] == [1, 5]


@pytest.mark.needs_harness("fixed_tables", "a table is made by its first write")
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


@pytest.mark.needs_capability("deferred_writes", False)
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


@pytest.mark.needs_capability("describes_schema", True)
def test_describe_names_the_columns_or_says_the_entity_is_missing(backend):
    customers(backend)
    described = backend.connector.describe("customers")
    assert described.exists and set(CUSTOMER_COLUMNS) <= set(described.readable())  # and the system's own
    assert set(CUSTOMER_COLUMNS) <= set(described.writable())
    if "required_columns" in backend.harness:
        assert next(c for c in described.columns if c.name == "name").nullable is False
    missing = backend.connector.describe("custmers")
    assert not missing.exists and "customers" in missing.known_entities


# ------------------------------------------------------------------------------------------ failures


@pytest.mark.needs_harness("unreachable", "always answers")
def test_unreachable_system_is_transient_for_every_op_and_every_read(backend):
    customers(backend, 0)
    connector = backend.unreachable()
    try:
        results = connector.write_batch(TARGET, [upsert(1, name="a"), upsert(2, name="b")])
        assert [r.ok for r in results] == [False, False]
        assert all(isinstance(r.error, TransientError) for r in results)
        modes = backend.capabilities.change_modes
        source = SOURCE if SOURCE.changes in modes else SOURCE.model_copy(update={"changes": min(modes)})
        with pytest.raises(TransientError) as raised:
            list(connector.read_changes(source, None, 10))
        with pytest.raises(TransientError):
            connector.read_record(SOURCE, "1")
        with pytest.raises(TransientError):
            connector.describe("customers")
        for text in (str(raised.value), str(results[0].error)):
            assert "s3cret-pw" not in text
    finally:
        connector.close()


# ------------------------------------------------------------------------------------------ SQL specifics
# Not part of the port's contract: how the SQL connector copes with what real databases look like.


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


@sql_only
def test_key_without_unique_index_upserts_by_select_then_write(backend):
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


@sql_only
def test_schema_qualified_entity(backend):
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
