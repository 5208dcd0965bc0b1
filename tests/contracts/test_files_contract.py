"""The connector contract for the files connector (tests/contracts/files_backend.py plays the ERP).

The write tests of the shared suite that hold for any connector that cannot refuse a single row run as they are;
reads are the contract of change mode `snapshot` (every page a snapshot page; resuming from any stored
position neither skips nor repeats). What files cannot do is left out by capability: no watermark or status
flag, no conditional writes, no refusal of an update of a missing row or a create-only duplicate (an import
file cannot know the ERP's rows)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared.config import SourceSpec, TargetSpec
from shared.errors import TransientError
from shared.keys import format_key
from shared.ports.connector import WriteOp
from tests.contracts import test_connector_contract as contract
from tests.contracts.connector_helpers import keys_of, read_all
from tests.contracts.files_backend import FilesBackend

SOURCE = SourceSpec(system="erp", entity="customers", key=["id"], changes="snapshot")


@pytest.fixture
def backend(tmp_path):
    made = FilesBackend(tmp_path / "exchange")
    yield made
    made.close()


@pytest.mark.parametrize("shared_test", [
    contract.test_upsert_inserts_and_updates_in_one_batch,
    contract.test_same_key_twice_in_a_batch_keeps_op_order,
    contract.test_delete_by_key,
    contract.test_sql_injection_in_a_key_is_stored_literally,
], ids=lambda t: t.__name__.removeprefix("test_"))
def test_shared_write_contract(backend, shared_test):
    shared_test(backend)


def test_a_snapshot_reads_in_pages_and_resumes_from_any_stored_position(backend):
    contract.customers(backend, 25)
    pages = read_all(backend.connector, SOURCE, None, 7)
    expected = keys_of(pages)
    assert sorted(expected, key=int) == [str(i) for i in range(1, 26)] and len(set(expected)) == 25
    assert [len(p.records) for p in pages] == [7, 7, 7, 4] and all(p.snapshot for p in pages)
    assert read_all(backend.connector, SOURCE, pages[-1].position, 7) == []  # read: nothing until the next export
    position = pages[-1].position
    for n in range(4):  # the next export, and a pull that dies after its page n
        backend.update("customers", {"id": 7}, {"name": f"seven-{n}"})
        reading = backend.connector.read_changes(SOURCE, position, 7)
        sent = [next(reading) for _ in range(n + 1)]
        reading.close()
        stored = json.loads(json.dumps(sent[-1].position))
        rest = read_all(backend.connector, SOURCE, stored, 7)
        assert keys_of(sent) + keys_of(rest) == expected
        assert {r.version for p in sent + rest for r in p.records} == {sent[0].records[0].version}
        assert sent[0].records[0].version > pages[0].records[0].version  # a later export sorts above
        position = (rest or sent)[-1].position
    assert read_all(backend.connector, SOURCE, position, 7) == []


def test_values_and_composite_keys(backend):
    backend.create_table("lines", {"company": "str", "no": "int", "qty": "int", "note": "str"}, ["company", "no"])
    backend.insert("lines", [{"company": c, "no": n, "qty": n, "note": None} for c in ("A", "B") for n in (1, 2)])
    source = SourceSpec(system="erp", entity="lines", key=["company", "no"], changes="snapshot")
    (page,) = read_all(backend.connector, source, None, 10)
    assert [r.key for r in page.records] == [format_key(["A", 1]), '["A","2"]', '["B","1"]', '["B","2"]']
    record = page.records[0]
    assert record.values == {"company": "A", "no": "1", "qty": "1", "note": None}  # text unless typed
    assert record.changed_at.tzinfo is not None and record.changed_at <= datetime.now(UTC)
    json.dumps(record.values)
    # The source as it is now: the last file read (read_record, read_records, iter_keys).
    assert backend.connector.read_record(source, '["B","1"]').values["qty"] == "1"
    assert backend.connector.read_record(source, '["B","9"]') is None
    found = backend.connector.read_records("lines", ["company", "no"], ['["A","1"]', '["X","1"]'])
    assert list(found) == ['["A","1"]'] and found['["A","1"]'].version == record.version
    assert list(backend.connector.iter_keys(source)) == sorted(r.key for r in page.records)


def test_a_header_only_export_is_one_empty_snapshot_page(backend):
    contract.customers(backend, 0)
    backend.insert("customers", [])  # the ERP exports an empty table: every row it had is gone
    pages = read_all(backend.connector, SOURCE, None, 10)
    assert len(pages) == 1 and pages[0].records == [] and pages[0].snapshot


def test_no_export_yet_is_no_row_but_no_key_set_either(backend):
    backend.create_table("customers", contract.CUSTOMER_COLUMNS, ["id"])
    assert backend.connector.read_records("customers", ["id"], ["1"]) == {}  # a target nothing was exported of
    with pytest.raises(TransientError, match="no export of customers yet"):
        list(backend.connector.iter_keys(SOURCE))  # a reconciliation would take it for "every row deleted"


def test_only_snapshot_reads(backend):
    contract.customers(backend, 1)
    with pytest.raises(Exception, match="changes: snapshot"):
        list(backend.connector.read_changes(contract.SOURCE, None, 10))


def test_an_unreachable_exchange_folder_fails_every_op_and_every_read_transiently(backend):
    connector = backend.unreachable()
    for read in (lambda: list(connector.read_changes(SOURCE, None, 10)),
                 lambda: connector.read_records("customers", ["id"], ["1"]), lambda: list(connector.iter_keys(SOURCE))):
        with pytest.raises(TransientError, match="not-a-folder is not there"):
            read()
    target = TargetSpec(system="erp", entity="customers", key=["id"])
    results = connector.write_batch(target, [contract.upsert(1, name="x"), WriteOp("delete", {"id": 2})])
    assert [r.ok for r in results] == [False, False]
    assert all(isinstance(r.error, TransientError) for r in results)
