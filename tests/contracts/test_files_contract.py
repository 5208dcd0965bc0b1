"""The files connector beyond the shared connector contract (tests/contracts/test_connector_contract.py, where
`FilesBackend` plays the ERP): reads are the contract of change mode `snapshot` (every page a snapshot page;
resuming from any stored position neither skips nor repeats; a later export sorts above), the source as it is
now (the last file read), and what an exchange without an export yet, or without its folder, answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared.config import SourceSpec, TargetSpec
from shared.errors import TransientError
from shared.keys import format_key
from shared.ports.connector import WriteOp
from tests.contracts import test_connector_contract as contract
from tests.contracts.connector_backends import FilesBackend
from tests.contracts.connector_helpers import keys_of, read_all

SOURCE = SourceSpec(system="erp", entity="customers", key=["id"], changes="snapshot")


@pytest.fixture
def backend(tmp_path):
    made = FilesBackend(tmp_path / "exchange")
    yield made
    made.close()


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


def test_an_unreachable_exchange_folder_fails_every_read_transiently(backend):
    connector = backend.unreachable()  # writes, read_changes and describe: the shared contract
    for read in (lambda: connector.read_records("customers", ["id"], ["1"]), lambda: list(connector.iter_keys(SOURCE))):
        with pytest.raises(TransientError, match="not-a-folder is not there"):
            read()


def test_composite_key_writes_are_rows_of_an_import_file(backend):
    backend.create_table("lines", {"company": "str:10", "no": "int", "qty": "int"}, ["company", "no"])
    target = TargetSpec(system="erp", entity="lines", key=["company", "no"])
    ops = [WriteOp("upsert", {"company": "A", "no": 1}, {"qty": 1}),
           WriteOp("upsert", {"company": "B", "no": 1}, {"qty": 3})]
    assert [r.key for r in backend.connector.write_batch(target, ops)] == ['["A","1"]', '["B","1"]']
    results = backend.connector.write_batch(target, [WriteOp("delete", {"company": "B", "no": 1})])
    assert [r.ok for r in results] == [True]
    assert [(r["company"], r["no"], r["qty"]) for r in backend.rows("lines")] == [("A", 1, 1)]


def test_describe_is_the_latest_exports_header_typed_as_its_format_reads_it(backend):
    assert backend.connector.describe("customers") is None  # no export yet: nothing to check a flow against
    contract.customers(backend, 2)
    described = backend.connector.describe("customers")
    assert described is not None and described.exists
    assert [(c.name, c.type) for c in described.columns] == [(n, "string") for n in contract.CUSTOMER_COLUMNS]
    list(backend.connector.read_changes(SOURCE, None, 10))  # read: archived, still described
    assert backend.connector.describe("customers").readable() == list(contract.CUSTOMER_COLUMNS)
