"""The Dataverse connector over real HTTP on loopback, against dvsim's Dataverse simulator (and its identity
provider for MSAL). Engine-level tests build a SyncApp with the real connectors (Dataverse + SQLite ERP), the
SQLite state store and the SQLite bus, and drive shared.engine.pull / shared.engine.delivery directly.

The connector contract suite (tests/contracts) runs the Dataverse connector too, on entities it makes for each
test (a restarted simulator with a schema of the test's tables), for what every connector must do; what only
Dataverse does (change tracking's shapes, alternate keys and binds on the entities Dataverse really has, sign-in,
throttling) is tested here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msal
import pytest
import sqlalchemy as sa

from dvsim import DataverseSimulator, IdentityProvider
from dvsim.identity import ManagedIdentityEndpoint
from dvsim.pytest_fixtures import dataverse_sim, dataverse_sim_factory, identity_provider  # noqa: F401
from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import DataverseAuth, DataverseSystem, SourceSpec, TargetSpec, parse_config
from shared.connectors import build_connector
from shared.connectors.dataverse import REBASELINE_NOTE, DataverseConnector, odata_literal, primary_id_of
from shared.connectors.odata.auth import (
    ConfidentialClientTokenProvider,
    ManagedIdentityTokenProvider,
    StaticTokenProvider,
    token_provider_for,
)
from shared.engine.delivery import handle_delivery
from shared.engine.outcome import Kind, Outcome
from shared.engine.pull import pull_flow
from shared.errors import AuthError, ConfigError, Reason, TargetChanged, TransientError
from shared.ports.connector import WriteOp
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore
from tests.contracts.connector_helpers import keys_of, read_all

TOKEN = "static-test-token-7f3a"
SECRET = "s3cr3t-Value-4242-xyz"

ACCOUNTS_CT = SourceSpec(system="crm", entity="accounts", key=["accountid"], changes="change_tracking",
                         select=["name", "accountnumber"])
ACCOUNTS_WM = SourceSpec(system="crm", entity="accounts", key=["accountid"], changes="watermark")
ACCOUNTS_BY_NUMBER = TargetSpec(system="crm", entity="accounts", key=["accountnumber"])


@pytest.fixture(autouse=True)
def _token(monkeypatch):
    monkeypatch.setenv("DV_TOKEN", TOKEN)
    monkeypatch.setenv("DV_SECRET", SECRET)


def system(sim: DataverseSimulator, **overrides: Any) -> DataverseSystem:
    data: dict[str, Any] = {"kind": "dataverse", "url": sim.url, "auth": {"static_token": "env:DV_TOKEN"}}
    data.update(overrides)
    return DataverseSystem.model_validate(data)


@pytest.fixture
def sim(dataverse_sim: DataverseSimulator) -> DataverseSimulator:  # noqa: F811
    return dataverse_sim


@pytest.fixture
def crm(sim):
    connector = DataverseConnector.from_config("crm", system(sim))
    yield connector
    connector.close()


def seed(sim: DataverseSimulator, n: int, prefix: str = "A") -> list[dict[str, Any]]:
    return [sim.insert("accounts", {"name": f"Account {i}", "accountnumber": f"{prefix}-{i:04d}"}) for i in range(n)]




# ------------------------------------------------------------------------------------------ change tracking


def test_full_read_then_a_delta_with_a_page_boundary_in_the_middle(sim, crm):
    rows = seed(sim, 5)
    pages = read_all(crm, ACCOUNTS_CT, None, 2)
    assert [len(p.records) for p in pages] == [2, 2, 1]
    assert all(p.snapshot for p in pages)
    assert sorted(keys_of(pages)) == sorted(r["accountid"] for r in rows)
    assert [bool(p.position["next_link"]) for p in pages] == [True, True, False]
    assert [p.position["delta_link"] is None for p in pages] == [True, True, False]
    assert "$deltatoken=" in pages[-1].position["delta_link"]
    first = pages[0].records[0]
    assert set(first.values) == {"name", "accountnumber", "accountid", "modifiedon", "versionnumber"}
    assert first.version == f"{first.values['versionnumber']:020d}"
    assert first.changed_at.tzinfo is not None

    sim.update("accounts", rows[1]["accountid"], {"name": "renamed 1"})
    sim.update("accounts", rows[3]["accountid"], {"name": "renamed 3"})
    created = sim.insert("accounts", {"name": "new", "accountnumber": "A-new"})
    sim.delete("accounts", rows[4]["accountid"])
    delta = read_all(crm, ACCOUNTS_CT, pages[-1].position, 2)
    assert [len(p.records) for p in delta] == [2, 2]  # three upserts and a delete: the boundary splits them
    assert not any(p.snapshot for p in delta)
    assert delta[0].position["next_link"] and delta[0].position["delta_link"] is None
    assert delta[1].position["next_link"] is None and delta[1].position["delta_link"]
    records = [r for p in delta for r in p.records]
    assert [(r.key, r.deleted) for r in records] == [
        (rows[1]["accountid"], False), (rows[3]["accountid"], False), (created["accountid"], False),
        (rows[4]["accountid"], True)]
    assert records[0].values["name"] == "renamed 1"

    # A crash after the first delta page: the run resumes from its stored position, not from the start.
    resumed = read_all(crm, ACCOUNTS_CT, json.loads(json.dumps(delta[0].position)), 2)
    assert keys_of(resumed) == keys_of(delta[1:]) and not any(p.snapshot for p in resumed)
    assert read_all(crm, ACCOUNTS_CT, delta[-1].position, 2)[0].records == []


def test_a_deleted_row_is_a_delete_change_that_sorts_after_the_last_version(sim, crm):
    (row,) = seed(sim, 1)
    (page,) = read_all(crm, ACCOUNTS_CT, None, 10)
    seen = page.records[0].version
    sim.delete("accounts", row["accountid"])
    (delta,) = read_all(crm, ACCOUNTS_CT, page.position, 10)
    (gone,) = delta.records
    assert gone.deleted and gone.key == row["accountid"] and gone.values == {}
    assert gone.version > seen and gone.version.endswith("~deleted")


def test_an_empty_delta_still_moves_the_cursor_to_a_fresh_token(sim, crm):
    seed(sim, 2)
    (page,) = read_all(crm, ACCOUNTS_CT, None, 10)
    time.sleep(1.05)  # delta tokens carry the second they were issued
    (empty,) = read_all(crm, ACCOUNTS_CT, page.position, 10)
    assert empty.records == [] and not empty.snapshot
    assert empty.position["delta_link"] and empty.position["delta_link"] != page.position["delta_link"]


def test_a_resumed_full_read_is_not_a_snapshot(sim, crm):
    seed(sim, 5)
    first = read_all(crm, ACCOUNTS_CT, None, 2)
    assert sorted(keys_of(first)) == sorted(set(keys_of(first)))  # one run: the catch-up adds nothing it saw
    rest = read_all(crm, ACCOUNTS_CT, first[0].position, 2)
    # The resumed read ends with the catch-up since the read began: every row (all just written), also the two
    # of the first page, which the engine skips by version.
    assert set(keys_of(first[:1]) + keys_of(rest)) == set(keys_of(first))
    assert not any(p.snapshot for p in rest)  # a partial key set must never drive delete inference


def test_an_expired_delta_token_rebaselines_with_a_full_snapshot_read(sim, crm):
    rows = seed(sim, 4)
    pages = read_all(crm, ACCOUNTS_CT, None, 10)
    sim.delete("accounts", rows[0]["accountid"])
    sim.expire_all_delta_tokens()
    again = read_all(crm, ACCOUNTS_CT, pages[-1].position, 2)
    assert all(p.snapshot for p in again)
    assert again[0].notes == [REBASELINE_NOTE]
    assert sorted(keys_of(again)) == sorted(r["accountid"] for r in rows[1:])  # the delete is the engine's to infer
    assert read_all(crm, ACCOUNTS_CT, again[-1].position, 2)[0].records == []  # and the new token works


def test_select_without_columns_reads_every_column_and_lookups_stay_plain_fields(sim, crm):
    contact = sim.insert("contacts", {"lastname": "Lee", "dualsync_externalid": "C-1"})
    sim.insert("accounts", {"name": "With contact", "accountnumber": "A-1",
                            "primarycontactid@odata.bind": f"/contacts({contact['contactid']})"})
    source = ACCOUNTS_CT.model_copy(update={"select": None})
    (record,) = read_all(crm, source, None, 10)[0].records
    assert record.values["_primarycontactid_value"] == contact["contactid"]
    # The one annotation kept: the table the lookup points to.
    assert record.values["_primarycontactid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "contact"
    assert [name for name in record.values if "@" in name] == [
        "_primarycontactid_value@Microsoft.Dynamics.CRM.lookuplogicalname"]
    assert {"telephone1", "statecode", "creditlimit", "createdon"} <= set(record.values)


def test_a_table_without_change_tracking_is_a_config_error():
    def answer(request: httpx.Request) -> httpx.Response:  # Dataverse ignores the preference: no delta link
        return httpx.Response(200, json={"@odata.context": "x", "value": [{"accountid": "1", "versionnumber": 1}]})

    connector = DataverseConnector("https://org.example", StaticTokenProvider("env:DV_TOKEN"),
                                   transport=httpx.MockTransport(answer))
    with pytest.raises(ConfigError, match="change tracking is not enabled"):
        list(connector.read_changes(ACCOUNTS_CT, None, 10))


# ------------------------------------------------------------------------------------------ watermark


def test_watermark_pages_rows_sharing_a_timestamp_exactly_once_from_any_position(sim, crm):
    rows = seed(sim, 25)  # inserted within a second or two: modifiedon has whole seconds, so most tie
    pages = read_all(crm, ACCOUNTS_WM, None, 10)
    assert [len(p.records) for p in pages] == [10, 10, 5] and all(p.snapshot for p in pages)
    expected = keys_of(pages)
    assert sorted(expected) == sorted(r["accountid"] for r in rows)
    for n, page in enumerate(pages):
        rest = read_all(crm, ACCOUNTS_WM, json.loads(json.dumps(page.position)), 10)
        assert keys_of(pages[: n + 1]) + keys_of(rest) == expected
        assert not any(p.snapshot for p in rest)
    assert read_all(crm, ACCOUNTS_WM, pages[-1].position, 10) == []
    time.sleep(1.05)
    sim.update("accounts", rows[7]["accountid"], {"name": "seven"})
    changed = read_all(crm, ACCOUNTS_WM, pages[-1].position, 10)
    assert keys_of(changed) == [rows[7]["accountid"]] and changed[0].records[0].values["name"] == "seven"


def test_empty_full_watermark_read_is_one_empty_snapshot_page(crm):
    (page,) = read_all(crm, ACCOUNTS_WM, None, 10)
    assert page.records == [] and page.snapshot


def test_a_filter_value_with_a_quote_round_trips(sim, crm):
    # Keyed by an alternate (string) key, so the watermark's tie-break filter carries quoted literals.
    names = ["O'Brien", "D'Arcy", "plain", "it''s", "'lead", "trail'"]
    for i, number in enumerate(names):
        sim.insert("accounts", {"name": f"n{i}", "accountnumber": number})
    source = SourceSpec(system="crm", entity="accounts", key=["accountnumber"], changes="watermark")
    pages = read_all(crm, source, None, 2)
    expected = keys_of(pages)
    assert sorted(expected) == sorted(names)
    for n, page in enumerate(pages):
        assert keys_of(pages[: n + 1]) + keys_of(read_all(crm, source, page.position, 2)) == expected
    found = crm.read_records("accounts", ["accountnumber"], ["O'Brien", "it''s", "nobody's"])
    assert sorted(found) == ["O'Brien", "it''s"] and found["O'Brien"].values["accountnumber"] == "O'Brien"
    assert odata_literal("O'Brien") == "'O''Brien'"


# ------------------------------------------------------------------------------------------ record reads


def test_read_record_and_read_records_by_id_and_by_alternate_key(sim, crm):
    rows = seed(sim, 150)
    record = crm.read_record(ACCOUNTS_CT, rows[3]["accountid"])
    assert record is not None and record.values["accountnumber"] == "A-0003"
    assert set(record.values) == {"name", "accountnumber", "accountid", "modifiedon", "versionnumber"}
    assert crm.read_record(ACCOUNTS_CT, "00000000-0000-0000-0000-000000000001") is None
    upper = rows[5]["accountid"].upper()  # Dataverse matches GUIDs and text without regard to case
    found = crm.read_records("accounts", ["accountid"], [r["accountid"] for r in rows[:120]] + [upper])
    assert len(found) == 121 and found[upper].values["accountnumber"] == "A-0005"
    by_number = crm.read_records("accounts", ["accountnumber"], [f"A-{i:04d}" for i in range(0, 150, 7)] + ["a-0001"])
    assert len(by_number) == 23 and by_number["a-0001"].values["accountnumber"] == "A-0001"
    assert sim.stats.by_kind["query"] >= 3  # 121 keys and 23 keys: chunked $filter queries


# ------------------------------------------------------------------------------------------ writes


def account(number: str, **values: Any) -> WriteOp:
    return WriteOp("upsert", {"accountnumber": number}, {"accountnumber": number, **values})


def test_upsert_by_alternate_key_with_quotes_in_batches_and_alone(sim, crm):
    results = crm.write_batch(ACCOUNTS_BY_NUMBER, [account("O'Brien-1", name="Quote"), account("A-2", name="Two")])
    assert [r.ok for r in results] == [True, True] and results[0].key == "O'Brien-1"
    (alone,) = crm.write_batch(ACCOUNTS_BY_NUMBER, [account("O'Brien-1", name="Quote again")])
    assert alone.ok
    rows = {r["accountnumber"]: r for r in sim.rows("accounts")}
    assert rows["O'Brien-1"]["name"] == "Quote again" and len(rows) == 2
    assert crm.read_records("accounts", ["accountnumber"], ["O'Brien-1"])["O'Brien-1"].values["name"] == "Quote again"
    assert set(sim.last_tags.values()) == {"dualsync"}  # inside the $batch and on the plain request
    # The query by alternate key first reads the table's definition, once, to type its key columns' literals.
    assert sim.stats.by_kind == {"batch": 1, "upsert": 1, "query": 1, "metadata": 1}
    crm.read_records("accounts", ["accountnumber"], ["A-2"])
    assert sim.stats.by_kind == {"batch": 1, "upsert": 1, "query": 2, "metadata": 1}
    (gone,) = crm.write_batch(ACCOUNTS_BY_NUMBER, [WriteOp("delete", {"accountnumber": "O'Brien-1"})])
    assert gone.ok and [r["accountnumber"] for r in sim.rows("accounts")] == ["A-2"]


def test_write_semantics_create_only_update_only_etag_and_delete(sim, crm):
    existing = seed(sim, 2)
    etag = crm.read_records("accounts", ["accountnumber"], ["A-0001"])["A-0001"].etag
    assert etag == f'W/"{existing[1]["versionnumber"]}"'  # rows read carry their ETag, for If-Match
    ops = [
        WriteOp("upsert", {"accountnumber": "A-0000"}, {"name": "dupe"}, create_only=True),
        WriteOp("upsert", {"accountnumber": "A-9"}, {"name": "fresh"}, create_only=True),
        WriteOp("update", {"accountnumber": "A-404"}, {"name": "nobody"}),
        WriteOp("update", {"accountnumber": "A-0000"}, {"name": "updated"}),
        WriteOp("upsert", {"accountnumber": "A-0001"}, {"name": "stale"}, if_match='W/"1"'),
        WriteOp("upsert", {"accountnumber": "A-0001"}, {"name": "current"}, if_match=etag),
        WriteOp("delete", {"accountnumber": "A-gone"}),
        WriteOp("upsert", {"accountnumber": "A/1"}, {"name": "slash"}),
        WriteOp("upsert", {"accountnumber": None}, {"name": "no key"}),
    ]
    results = crm.write_batch(ACCOUNTS_BY_NUMBER, ops)
    assert [r.ok for r in results] == [False, True, False, True, False, True, True, False, False]
    assert "already exists" in str(results[0].error) and results[0].error.reason == Reason.TARGET_REJECTED
    assert "not found" in str(results[2].error) and "A-404" in str(results[2].error)
    assert isinstance(results[0].error, TargetChanged)
    assert isinstance(results[4].error, TargetChanged) and results[4].error.reason == Reason.CONFLICT
    assert "0x80060882" in str(results[4].error)
    assert "Work with alternate keys" in str(results[7].error)
    assert "missing" in str(results[8].error)
    rows = {r["accountnumber"]: r["name"] for r in sim.rows("accounts")}
    assert rows == {"A-0000": "updated", "A-0001": "current", "A-9": "fresh"}


def test_upsert_and_delete_by_primary_id(sim, crm):
    (row,) = seed(sim, 1)
    target = TargetSpec(system="crm", entity="accounts", key=["accountid"])
    new_id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
    results = crm.write_batch(target, [
        WriteOp("upsert", {"accountid": row["accountid"].upper()}, {"accountid": row["accountid"], "name": "by id"}),
        WriteOp("upsert", {"accountid": new_id}, {"name": "created by id"}),
        WriteOp("upsert", {"accountid": "not-a-guid"}, {"name": "x"}),
    ])
    assert [r.ok for r in results] == [True, True, False]
    assert sim.get("accounts", row["accountid"])["name"] == "by id"
    assert sim.get("accounts", new_id)["name"] == "created by id"
    assert crm.write_batch(target, [WriteOp("delete", {"accountid": new_id})])[0].ok
    assert sim.get("accounts", new_id) is None


def test_a_lookup_is_written_with_odata_bind(sim, crm):
    parent = sim.insert("accounts", {"name": "Parent", "accountnumber": "P'1"})
    from shared.engine.mapping import bind_reference

    target = TargetSpec(system="crm", entity="contacts", key=["dualsync_externalid"])
    results = crm.write_batch(target, [
        WriteOp("upsert", {"dualsync_externalid": "C-1"}, {
            "lastname": "Lee",
            "parentcustomerid_account@odata.bind": bind_reference("accounts(accountnumber)", "P'1")}),
        WriteOp("upsert", {"dualsync_externalid": "C-2"}, {
            "lastname": "Kim", "parentcustomerid_account@odata.bind": bind_reference("accounts", parent["accountid"])}),
        WriteOp("upsert", {"dualsync_externalid": "C-3"}, {
            "lastname": "Orphan", "parentcustomerid_account@odata.bind": "/accounts(accountnumber='nobody')"}),
    ])
    assert [r.ok for r in results] == [True, True, False]
    assert "0x80060891" in str(results[2].error)
    contacts = crm.read_records("contacts", ["dualsync_externalid"], ["C-1", "C-2"])
    assert {k: r.values["_parentcustomerid_value"] for k, r in contacts.items()} == {
        "C-1": parent["accountid"], "C-2": parent["accountid"]}


def test_a_failed_whole_batch_gives_every_op_its_error(dataverse_sim_factory):  # noqa: F811
    sim = dataverse_sim_factory()
    crm = DataverseConnector.from_config("crm", system(sim))
    ops = [account(f"A-{i}", name="x") for i in range(5)]
    sim.faults.inject(503)
    results = crm.write_batch(ACCOUNTS_BY_NUMBER, ops)
    assert all(isinstance(r.error, TransientError) for r in results)
    sim.faults.inject(429, retry_after_s=7)  # longer than this connector waits out a throttle itself
    impatient = DataverseConnector.from_config("crm", system(sim, max_throttle_wait_seconds=5))
    results = impatient.write_batch(ACCOUNTS_BY_NUMBER, ops)
    assert all(isinstance(r.error, TransientError) and r.error.retry_after == 7 for r in results)
    impatient.close()
    assert sim.rows("accounts") == []
    assert all(r.ok for r in crm.write_batch(ACCOUNTS_BY_NUMBER, ops))
    crm.close()

    slow = dataverse_sim_factory(latency_ms=400)
    hasty = DataverseConnector.from_config("crm", system(slow, timeout_seconds=0.1))
    results = hasty.write_batch(ACCOUNTS_BY_NUMBER, ops)
    assert all(isinstance(r.error, TransientError) and "no answer within 0.1s" in str(r.error) for r in results)
    with pytest.raises(TransientError):
        list(hasty.read_changes(ACCOUNTS_CT, None, 10))
    hasty.close()

    sim.stop()  # nothing listens any more
    gone = DataverseConnector.from_config("crm", system(sim))
    results = gone.write_batch(ACCOUNTS_BY_NUMBER, ops)
    assert all(isinstance(r.error, TransientError) for r in results)
    with pytest.raises(TransientError):
        gone.read_record(ACCOUNTS_CT, "3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    gone.close()


def test_a_429_on_a_read_is_transient_with_retry_after(sim):
    impatient = DataverseConnector.from_config("crm", system(sim, max_throttle_wait_seconds=0))
    sim.faults.inject(429, retry_after_s=3)
    with pytest.raises(TransientError) as raised:
        list(impatient.read_changes(ACCOUNTS_CT, None, 10))
    assert raised.value.retry_after == 3 and "0x80072322" in str(raised.value)
    with pytest.raises(TransientError) as paused:  # the whole connector waits: nothing is sent meanwhile
        impatient.read_record(ACCOUNTS_CT, "3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    assert "not sent" in str(paused.value) and 2 < paused.value.retry_after <= 3
    assert sim.stats.rejected == {429: 1} and sim.stats.requests == 1
    impatient.close()


def test_403_is_an_auth_error():
    def forbidden(request: httpx.Request) -> httpx.Response:
        error = {"code": "0x80040220", "message": "Principal user is missing prvReadAccount"}
        return httpx.Response(403, json={"error": error})

    connector = DataverseConnector("https://org.example", StaticTokenProvider("env:DV_TOKEN"),
                                   transport=httpx.MockTransport(forbidden))
    with pytest.raises(AuthError, match="prvReadAccount"):
        connector.read_record(ACCOUNTS_CT, "3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    (result,) = connector.write_batch(ACCOUNTS_BY_NUMBER, [account("A-1", name="x")])
    assert isinstance(result.error, AuthError)


class CountingTokens:
    def __init__(self, first: str, fresh: str) -> None:
        self.first, self.fresh = first, fresh
        self.refreshes = 0

    def token(self) -> str:
        return self.fresh if self.refreshes else self.first

    def refresh(self) -> str:
        self.refreshes += 1
        return self.fresh


def test_a_401_refreshes_the_token_once_then_gives_up(dataverse_sim_factory):  # noqa: F811
    sim = dataverse_sim_factory(token_verifier=lambda t: t == "fresh")
    tokens = CountingTokens("stale", "fresh")
    crm = DataverseConnector(sim.url, tokens)
    results = crm.write_batch(ACCOUNTS_BY_NUMBER, [account("A-1", name="a"), account("A-2", name="b")])
    assert [r.ok for r in results] == [True, True]
    assert tokens.refreshes == 1 and sim.stats.rejected[401] == 1
    assert crm.read_record(ACCOUNTS_CT, sim.rows("accounts")[0]["accountid"]) is not None
    assert tokens.refreshes == 1  # the fresh token is used from then on

    refused = DataverseConnector(sim.url, CountingTokens("stale", "also-stale"))
    with pytest.raises(AuthError, match="also after a refresh"):
        list(refused.read_changes(ACCOUNTS_CT, None, 10))
    results = refused.write_batch(ACCOUNTS_BY_NUMBER, [account("A-3", name="c"), account("A-4", name="d")])
    assert all(isinstance(r.error, AuthError) for r in results)
    assert sim.stats.rejected[401] == 1 + 2 + 2  # each refused call: the first try and one retry
    crm.close()
    refused.close()


def test_concurrency_is_capped_per_connector(dataverse_sim_factory):  # noqa: F811
    sim = dataverse_sim_factory(latency_ms=50)
    seed(sim, 3)

    class Gauge(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()
            self.now = self.peak = 0
            self.lock = threading.Lock()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
            try:
                response = self.inner.handle_request(request)
                response.read()
                return response
            finally:
                with self.lock:
                    self.now -= 1

    gauge = Gauge()
    crm = DataverseConnector.from_config("crm", system(sim, max_concurrency=2), transport=gauge)
    ids = [r["accountid"] for r in sim.rows("accounts")]
    threads = [threading.Thread(target=crm.read_record, args=(ACCOUNTS_CT, ids[i % 3])) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert gauge.peak == 2
    crm.close()


# ------------------------------------------------------------------------------------------ through the engine

ERP = sa.MetaData()
sa.Table("customers", ERP, sa.Column("account_number", sa.String(20), primary_key=True),
         sa.Column("name", sa.String(200)), sa.Column("crm_id", sa.String(36)))
sa.Table("erp_customers", ERP, sa.Column("account_number", sa.String(20), primary_key=True),
         sa.Column("name", sa.Text), sa.Column("status", sa.Integer), sa.Column("credit", sa.String(20)),
         sa.Column("modified_at", sa.DateTime))
sa.Table("erp_contacts", ERP, sa.Column("contact_no", sa.String(20), primary_key=True),
         sa.Column("last_name", sa.String(50)), sa.Column("customer_no", sa.String(20)),
         sa.Column("modified_at", sa.DateTime))

ACCOUNTS_TO_ERP = {
    "source": {"system": "crm", "entity": "accounts", "key": "accountid", "changes": "change_tracking",
               "select": ["name", "accountnumber"]},
    "target": {"system": "erp", "entity": "customers", "key": "account_number"},
    "deletes": "delete",
    "fields": [{"from": "accountnumber", "to": "account_number", "required": True},
               {"from": "name", "to": "name"}, {"from": "accountid", "to": "crm_id"}],
}
CUSTOMERS_TO_CRM = {
    "source": {"system": "erp", "entity": "erp_customers", "key": "account_number", "watermark": "modified_at"},
    "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
    "fields": [{"from": "account_number", "to": "accountnumber"}, {"from": "name", "to": "name"},
               {"from": "status", "to": "statecode"}, {"from": "credit", "to": "creditlimit"}],
}
CONTACTS_TO_CRM = {
    "source": {"system": "erp", "entity": "erp_contacts", "key": "contact_no", "watermark": "modified_at"},
    "target": {"system": "crm", "entity": "contacts", "key": "dualsync_externalid"},
    "fields": [{"from": "contact_no", "to": "dualsync_externalid"}, {"from": "last_name", "to": "lastname"},
               {"from": "customer_no", "to": "parentcustomerid_account@odata.bind", "lookup": "customers-to-crm",
                "bind": "accounts(accountnumber)"}],
}


@pytest.fixture
def erp(tmp_path, monkeypatch) -> sa.Engine:
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    monkeypatch.setenv("ERP_URL", url)
    engine = sa.create_engine(url)
    ERP.create_all(engine)
    yield engine
    engine.dispose()


def make_app(tmp_path: Path, sim: DataverseSimulator, flows: dict[str, Any], crm: Any = None,
             **crm_settings: Any) -> SyncApp:
    config = parse_config({
        "systems": {
            "crm": {"kind": "dataverse", "url": sim.url, "auth": {"static_token": "env:DV_TOKEN"}, **crm_settings},
            "erp": {"kind": "sql", "url": "env:ERP_URL"},
        },
        "flows": flows,
    })
    factory = None
    if crm is not None:
        factory = lambda name: crm if name == "crm" else build_connector(name, config.systems[name])  # noqa: E731
    return SyncApp(config=config, state=StateStore(SqliteTables(":memory:")),
                   bus=SqliteBus(tmp_path / "bus.db", lock_duration=30), retry_base=0.01, connector_factory=factory)


def drain(app: SyncApp, timeout: float = 20.0, max_messages: int = 1000,
          log: list[tuple[datetime, list[Outcome]]] | None = None) -> list[Outcome]:
    """Apply everything on the queue, scheduled retries included, until nothing is left."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = app.bus.receive(app.queue, max_messages=max_messages, max_wait=0.1)
        if batch:
            started = datetime.now(UTC)
            done = handle_delivery(app, batch, app.bus.settler(app.queue))
            if log is not None:
                log.append((started, done))
            outcomes += done
            continue
        counts = app.bus.counts(app.queue)
        if counts.active == 0 and counts.scheduled == 0:
            return outcomes
    raise AssertionError(f"the queue did not drain: {app.bus.counts(app.queue)}")


def kinds(outcomes: list[Outcome]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for outcome in outcomes:
        tally[outcome.kind.value] = tally.get(outcome.kind.value, 0) + 1
    return tally


def erp_rows(engine: sa.Engine, table: str = "customers") -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {r[0]: dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))}


def test_expired_token_rebaselines_and_the_engine_infers_the_deletes(tmp_path, sim, erp):
    rows = seed(sim, 10)
    app = make_app(tmp_path, sim, {"accounts-to-erp": ACCOUNTS_TO_ERP})
    first = pull_flow(app, "accounts-to-erp", owner="test")
    assert (first.pulled, first.deletes_inferred) == (10, 0)
    assert kinds(drain(app)) == {"applied": 10}
    assert len(erp_rows(erp)) == 10

    sim.update("accounts", rows[0]["accountid"], {"name": "renamed 0"})
    sim.update("accounts", rows[1]["accountid"], {"name": "renamed 1"})
    sim.delete("accounts", rows[2]["accountid"])
    sim.delete("accounts", rows[3]["accountid"])
    sim.expire_all_delta_tokens()
    second = pull_flow(app, "accounts-to-erp", owner="test")
    assert REBASELINE_NOTE in second.notes
    assert (second.pulled, second.deletes_inferred) == (8, 2)
    outcomes = drain(app)
    # 2 updates + 2 deletes applied; the 6 unchanged rows are re-sent with the versions already applied, so
    # duplicate detection drops them (or, past its window, the version check skips them).
    skipped = [o for o in outcomes if o.kind == Kind.SKIPPED]
    assert kinds(outcomes) == {"applied": 4, **({"skipped": len(skipped)} if skipped else {})}
    assert second.duplicates + len(skipped) == 6
    assert {o.reason for o in skipped} <= {"already_applied"}
    customers = erp_rows(erp)
    assert len(customers) == 8 and "A-0002" not in customers and "A-0003" not in customers
    assert customers["A-0000"]["name"] == "renamed 0"

    # Back on ordinary deltas: the new token works, and a delete read from a delta travels too.
    sim.update("accounts", rows[4]["accountid"], {"name": "renamed 4"})
    sim.delete("accounts", rows[5]["accountid"])
    third = pull_flow(app, "accounts-to-erp", owner="test")
    assert (third.pulled, third.deletes_inferred, third.notes) == (2, 0, [])
    assert kinds(drain(app)) == {"applied": 2}
    customers = erp_rows(erp)
    assert customers["A-0004"]["name"] == "renamed 4" and "A-0005" not in customers
    app.close()


def insert_erp(engine: sa.Engine, table: str, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(ERP.tables[table].insert(), rows)


def test_a_record_restored_with_its_id_and_values_is_written_again(tmp_path, sim, erp):
    [row] = seed(sim, 1)
    app = make_app(tmp_path, sim, {"accounts-to-erp": ACCOUNTS_TO_ERP})
    pull_flow(app, "accounts-to-erp", owner="test")
    drain(app)
    sim.delete("accounts", row["accountid"])
    pull_flow(app, "accounts-to-erp", owner="test")
    assert kinds(drain(app)) == {"applied": 1}
    assert erp_rows(erp) == {}
    # Restored from the recycle bin: the same id, the same values, a new version.
    sim.insert("accounts", {"accountid": row["accountid"], "name": row["name"], "accountnumber": row["accountnumber"]})
    pull_flow(app, "accounts-to-erp", owner="test")
    assert kinds(drain(app)) == {"applied": 1}
    assert erp_rows(erp) == {"A-0000": {"account_number": "A-0000", "name": "Account 0", "crm_id": row["accountid"]}}


def test_a_batch_of_100_with_3_bad_records(tmp_path, sim, erp):
    now = datetime(2026, 1, 1, 12)
    rows = [{"account_number": f"C{i:03d}", "name": f"Customer {i}", "status": i % 2, "credit": None,
             "modified_at": now + timedelta(seconds=i)} for i in range(100)]
    rows[10]["name"] = "N" * 161  # Dataverse's max length for account name is 160
    rows[50]["status"] = 7  # not a statecode option
    rows[90]["credit"] = "lots"  # not a decimal
    insert_erp(erp, "erp_customers", rows)
    app = make_app(tmp_path, sim, {"customers-to-crm": CUSTOMERS_TO_CRM}, initial_batch_size=100)
    assert pull_flow(app, "customers-to-crm", owner="test").pulled == 100
    sim.stats.reset()
    batch = app.bus.receive(app.queue, max_messages=100, max_wait=1)
    assert len(batch) == 100
    outcomes = handle_delivery(app, batch, app.bus.settler(app.queue))
    assert kinds(outcomes) == {"applied": 97, "dead_letter": 3}
    assert sim.stats.requests == 1 and sim.stats.by_kind == {"batch": 1}  # one round trip for 100 writes
    assert sim.stats.batch_operation_count == 100
    assert len(sim.rows("accounts")) == 97
    dead = {o.message.key: o for o in outcomes if o.kind == Kind.DEAD_LETTER}
    assert sorted(dead) == ["C010", "C050", "C090"]
    assert all(o.reason == Reason.TARGET_REJECTED for o in dead.values())
    assert dead["C010"].description == (
        "accounts key C010: 0x80044331 A validation error occurred. The length of the 'name' attribute of the "
        "'account' entity exceeded the maximum allowed length of '160'.")
    assert "0x8004431a" in dead["C050"].description and "Accepted Values: 0,1" in dead["C050"].description
    assert "Cannot convert the literal 'lots'" in dead["C090"].description
    letters = {r.envelope.application_properties["key"]: r for r in app.bus.peek_dead_letters(app.queue)}
    assert sorted(letters) == ["C010", "C050", "C090"]
    assert letters["C090"].dead_letter_description == dead["C090"].description
    assert set(sim.last_tags.values()) == {"dualsync"}
    app.close()


def test_a_429_storm_is_honoured_without_a_dead_letter(tmp_path, sim, erp):
    """The connector waits out Retry-After itself, for all its requests at once: no record is retried."""
    insert_erp(erp, "erp_customers", [
        {"account_number": f"C{i:03d}", "name": f"Customer {i}", "status": 0, "credit": None,
         "modified_at": datetime(2026, 1, 1) + timedelta(seconds=i)} for i in range(20)])
    app = make_app(tmp_path, sim, {"customers-to-crm": CUSTOMERS_TO_CRM})
    pull_flow(app, "customers-to-crm", owner="test")
    sim.faults.inject(429, count=2, retry_after_s=1)  # the next two requests are throttled
    started = time.monotonic()
    outcomes = drain(app)
    assert time.monotonic() - started >= 1  # Retry-After was waited out
    assert sim.stats.rejected[429] == 2
    assert kinds(outcomes) == {"applied": 20}
    assert app.bus.counts(app.queue).dead_letter == 0
    assert len(sim.rows("accounts")) == 20
    app.close()


def test_a_throttle_longer_than_the_connector_waits_is_retried_after_retry_after(tmp_path, sim, erp):
    insert_erp(erp, "erp_customers", [
        {"account_number": f"C{i:03d}", "name": f"Customer {i}", "status": 0, "credit": None,
         "modified_at": datetime(2026, 1, 1) + timedelta(seconds=i)} for i in range(5)])
    app = make_app(tmp_path, sim, {"customers-to-crm": CUSTOMERS_TO_CRM}, max_throttle_wait_seconds=0)
    pull_flow(app, "customers-to-crm", owner="test")
    sim.faults.inject(429, count=1, retry_after_s=1)
    log: list[tuple[datetime, list[Outcome]]] = []
    outcomes = drain(app, log=log)
    retries = [(started, o) for started, done in log for o in done if o.kind == Kind.RETRY]
    assert len(retries) == 5
    for started, outcome in retries:  # backoff base is 0.01 s: only Retry-After can hold them back 1 s
        assert outcome.retry_at >= started + timedelta(seconds=0.99)
        assert "429" in outcome.description
    assert kinds(outcomes) == {"retry": 5, "applied": 5}
    app.close()


def test_lookups_bind_by_alternate_key_through_the_engine(tmp_path, sim, erp):
    insert_erp(erp, "erp_customers", [{"account_number": "P'1", "name": "Parent", "status": 0, "credit": None,
                                       "modified_at": datetime(2026, 1, 1)}])
    insert_erp(erp, "erp_contacts", [{"contact_no": "K-1", "last_name": "Lee", "customer_no": "P'1",
                                      "modified_at": datetime(2026, 1, 1)}])
    app = make_app(tmp_path, sim, {"customers-to-crm": CUSTOMERS_TO_CRM, "contacts-to-crm": CONTACTS_TO_CRM})
    pull_flow(app, "customers-to-crm", owner="test")
    assert kinds(drain(app)) == {"applied": 1}
    pull_flow(app, "contacts-to-crm", owner="test")
    assert kinds(drain(app)) == {"applied": 1}
    (parent,) = sim.rows("accounts")
    (contact,) = sim.rows("contacts")
    assert contact["_parentcustomerid_value"] == parent["accountid"] and contact["dualsync_externalid"] == "K-1"
    app.close()


# ------------------------------------------------------------------------------------------ MSAL and secrets


def msal_system(sim: DataverseSimulator, idp: IdentityProvider, secret_ref: str = "env:DV_SECRET") -> DataverseSystem:
    return system(sim, auth={"tenant_id": idp.tenant_id, "client_id": "dualsync-app", "client_secret": secret_ref,
                             "authority_host": f"https://{idp.host}:{idp.port}"})


def msal_connector(sim, idp, **kwargs) -> DataverseConnector:
    return DataverseConnector.from_config("crm", msal_system(sim, idp, **kwargs),
                                          msal_http_client=idp.msal_http_client(), instance_discovery=False)


def test_msal_acquires_a_token_from_the_identity_provider_and_serves_the_next_from_its_cache(
        dataverse_sim_factory, identity_provider):  # noqa: F811
    idp = identity_provider
    idp.register_client("dualsync-app", SECRET)
    sim = dataverse_sim_factory(token_verifier=lambda t: idp.verify_token(t, audience=sim.url))
    seed(sim, 3)
    crm = msal_connector(sim, idp)
    assert idp.token_requests == 0  # nothing happens before the first call
    assert len(keys_of(read_all(crm, ACCOUNTS_CT, None, 10))) == 3
    assert crm.write_batch(ACCOUNTS_BY_NUMBER, [account("A-1", name="x"), account("A-2", name="y")])[0].ok
    assert idp.token_requests == 1  # the second and third calls were served from MSAL's cache
    assert sim.stats.rejected.get(401, 0) == 0

    # A 401 (e.g. a revoked token) makes MSAL go back to the identity provider exactly once.
    first = idp.issued_tokens[0]
    sim.token_verifier = lambda t: t != first and idp.verify_token(t, audience=sim.url)
    assert crm.read_record(ACCOUNTS_CT, sim.rows("accounts")[0]["accountid"]) is not None
    assert idp.token_requests == 2 and sim.stats.rejected[401] == 1
    crm.close()


def test_a_wrong_secret_is_an_auth_error_that_does_not_echo_it(sim, identity_provider, monkeypatch):  # noqa: F811
    idp = identity_provider
    idp.register_client("dualsync-app", SECRET)
    monkeypatch.setenv("DV_WRONG", "wrong-Secret-Value-99")
    crm = msal_connector(sim, idp, secret_ref="env:DV_WRONG")
    with pytest.raises(AuthError) as raised:
        crm.read_record(ACCOUNTS_CT, "3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    assert "invalid_client" in str(raised.value) and "AADSTS7000215" in str(raised.value)
    assert "wrong-Secret-Value-99" not in str(raised.value) and SECRET not in str(raised.value)
    (result,) = crm.write_batch(ACCOUNTS_BY_NUMBER, [account("A-1", name="x")])
    assert isinstance(result.error, AuthError)
    crm.close()


def test_the_secret_and_the_token_appear_in_no_log_line(tmp_path, dataverse_sim_factory, identity_provider, erp,
                                                        caplog):  # noqa: F811
    for name in ("", "msal", "httpx", "httpcore", "urllib3", "requests", "shared", "dvsim", "sqlalchemy"):
        caplog.set_level(logging.DEBUG, logger=name)
    idp = identity_provider
    idp.register_client("dualsync-app", SECRET)
    sim = dataverse_sim_factory(token_verifier=lambda t: idp.verify_token(t, audience=sim.url))
    rows = seed(sim, 5)
    insert_erp(erp, "erp_customers", [{"account_number": "E-1", "name": "From ERP", "status": 0, "credit": None,
                                       "modified_at": datetime(2026, 1, 1)}])
    crm = msal_connector(sim, idp)
    app = make_app(tmp_path, sim, {"accounts-to-erp": ACCOUNTS_TO_ERP, "customers-to-crm": CUSTOMERS_TO_CRM}, crm=crm)
    assert pull_flow(app, "accounts-to-erp", owner="test").pulled == 5
    assert pull_flow(app, "customers-to-crm", owner="test").pulled == 1
    first = idp.issued_tokens[0]
    sim.token_verifier = lambda t: t != first and idp.verify_token(t, audience=sim.url)  # forces one refresh
    assert kinds(drain(app)) == {"applied": 6}
    sim.update("accounts", rows[0]["accountid"], {"name": "changed"})
    assert pull_flow(app, "accounts-to-erp", owner="test").pulled == 2  # the change, and E-1 written from the ERP
    assert kinds(drain(app)) == {"applied": 2}
    # And a failing login, whose error passes through logs and exceptions too.
    unknown_client = system(sim, auth={"tenant_id": idp.tenant_id, "client_id": "nobody",
                                       "client_secret": "env:DV_SECRET",
                                       "authority_host": f"https://{idp.host}:{idp.port}"})
    bad = DataverseConnector.from_config("crm", unknown_client, msal_http_client=idp.msal_http_client(),
                                         instance_discovery=False)
    with pytest.raises(AuthError) as raised:
        bad.read_record(ACCOUNTS_CT, rows[1]["accountid"])
    logging.getLogger("test").exception("login failed", exc_info=raised.value)
    bad.close()
    app.close()

    assert len(idp.issued_tokens) == 2 and idp.token_requests == 3
    assert len(caplog.records) > 20  # the loggers really were listening (msal, httpx, httpcore, urllib3...)
    assert any(r.name.startswith("msal") for r in caplog.records)
    assert any(r.name.startswith("httpx") for r in caplog.records)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    text = "\n".join(formatter.format(r) for r in caplog.records) + caplog.text
    for secret in [SECRET, *idp.issued_tokens]:
        assert secret not in text
        assert secret[:24] not in text  # not even a prefix
    for value in (repr(crm), repr(crm._tokens), str(raised.value), "".join(traceback.format_exception(raised.value))):
        assert SECRET not in value and all(t not in value for t in idp.issued_tokens)


# ------------------------------------------------------------------------------------------ auth providers


def test_certificate_credentials_reach_msal_in_its_documented_shape(tmp_path, monkeypatch):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dualsync")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(datetime(2025, 1, 1)).not_valid_after(datetime(2035, 1, 1))
            .sign(key, hashes.SHA256()))
    pem = tmp_path / "app.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))
    thumbprint = cert.fingerprint(hashes.SHA1()).hex().upper()
    auth = DataverseAuth(tenant_id="t-1", client_id="c-1", certificate_path=str(pem), certificate_thumbprint=thumbprint)
    provider = token_provider_for(auth, "https://org.example/")
    assert isinstance(provider, ConfidentialClientTokenProvider)
    assert provider.scopes == ["https://org.example/.default"]
    assert provider.authority == "https://login.microsoftonline.com/t-1"
    credential = provider._credential()
    assert credential["thumbprint"] == thumbprint and "PRIVATE KEY-----" in credential["private_key"]
    assert credential["public_certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE" not in repr(provider)
    # The same PEM as a Key Vault reference delivers it: the text of an app setting.
    monkeypatch.setenv("CRM_CERT_PEM", pem.read_text())
    from_setting = token_provider_for(
        DataverseAuth(tenant_id="t-1", client_id="c-1", certificate_pem="env:CRM_CERT_PEM"), "https://org.example/")
    assert from_setting._credential() == {k: v for k, v in credential.items() if k != "thumbprint"}
    with pytest.raises(ValueError, match="never literal"):
        DataverseAuth(tenant_id="t-1", client_id="c-1", certificate_pem=pem.read_text())
    broken = DataverseAuth(tenant_id="t-1", client_id="c-1", certificate_path=str(tmp_path / "missing.pem"),
                           certificate_thumbprint=thumbprint)
    with pytest.raises(ConfigError, match="cannot read certificate_path"):
        token_provider_for(broken, "https://org.example").token()


class FakeManagedIdentityEndpoint:
    """The App Service managed identity endpoint as MSAL calls it (IDENTITY_ENDPOINT + IDENTITY_HEADER)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def get(self, url: str, params: dict[str, Any] | None = None, headers: dict[str, Any] | None = None, **_: Any):
        self.calls.append({"url": url, "params": dict(params or {}), "headers": dict(headers or {})})
        body = {"access_token": f"mi-token-{len(self.calls)}", "token_type": "Bearer", "resource": params["resource"],
                "expires_on": str(int(time.time()) + 3600)}

        class Response:
            status_code = 200
            text = json.dumps(body)
            headers: dict[str, str] = {}

        return Response()

    def post(self, *args: Any, **kwargs: Any):  # pragma: no cover - not used by the App Service flow
        raise AssertionError("unexpected POST")

    def close(self) -> None:
        return None


@pytest.mark.parametrize("client_id", [None, "user-assigned-client"])
def test_managed_identity_tokens_are_cached_and_refreshed_on_demand(monkeypatch, client_id):
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "header-value")
    endpoint = FakeManagedIdentityEndpoint()
    auth = DataverseAuth(managed_identity=True, client_id=client_id)
    provider = token_provider_for(auth, "https://org.example/", http_client=endpoint)
    assert isinstance(provider, ManagedIdentityTokenProvider)
    assert provider.token() == "mi-token-1" and provider.token() == "mi-token-1"
    assert len(endpoint.calls) == 1
    assert endpoint.calls[0]["params"]["resource"] == "https://org.example"
    assert endpoint.calls[0]["params"].get("client_id") == client_id
    assert provider.refresh() == "mi-token-2" and len(endpoint.calls) == 2
    assert provider.token() == "mi-token-2"


MI_CLIENT_ID, MI_OBJECT_ID = "5b2c6a7e-0000-4000-8000-00000000c11d", "0f6d3c1a-0000-4000-8000-00000000b1d0"


@pytest.fixture
def managed_identity(identity_provider, monkeypatch):  # noqa: F811
    """The function app's user-assigned identity behind the platform's managed identity endpoint (loopback)."""
    with ManagedIdentityEndpoint(identity_provider, {MI_CLIENT_ID: MI_OBJECT_ID}) as endpoint:
        monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint.url)
        monkeypatch.setenv("IDENTITY_HEADER", endpoint.header)
        monkeypatch.setenv("AZURE_CLIENT_ID", MI_CLIENT_ID)
        monkeypatch.setenv("CRM_TENANT_ID", identity_provider.tenant_id)
        monkeypatch.setenv("CRM_CLIENT_ID", "dualsync-app")
        yield endpoint


def federated_system(sim: DataverseSimulator, idp: IdentityProvider) -> DataverseSystem:
    """As the deployed flows.yaml has it: every site-specific value an app setting (set by `managed_identity`)."""
    return system(sim, auth={"tenant_id": "env:CRM_TENANT_ID", "client_id": "env:CRM_CLIENT_ID",
                             "federated_identity_client_id": "env:AZURE_CLIENT_ID",
                             "authority_host": f"https://{idp.host}:{idp.port}"})


def test_a_federated_credential_signs_in_as_the_app_with_the_managed_identitys_token(
        dataverse_sim_factory, identity_provider, managed_identity):  # noqa: F811
    idp = identity_provider
    idp.register_federated_client("dualsync-app", subject=MI_OBJECT_ID)  # the app trusts the identity
    sim = dataverse_sim_factory(token_verifier=lambda t: idp.verify_token(t, audience=sim.url))
    seed(sim, 3)
    crm = DataverseConnector.from_config("crm", federated_system(sim, idp), msal_http_client=idp.msal_http_client(),
                                         instance_discovery=False)
    assert len(keys_of(read_all(crm, ACCOUNTS_CT, None, 10))) == 3
    assert crm.write_batch(ACCOUNTS_BY_NUMBER, [account("A-1", name="x")])[0].ok
    # One exchange: the identity's token for api://AzureADTokenExchange became the app's Dataverse token.
    (asked,) = managed_identity.requests
    assert asked["resource"] == "api://AzureADTokenExchange" and asked["client_id"] == MI_CLIENT_ID
    assert idp.token_requests == 1 and idp.token_claims(idp.issued_tokens[0])["appid"] == "dualsync-app"
    # A 401 gets a new Dataverse token; the identity's token is still good and is presented again.
    first = idp.issued_tokens[0]
    sim.token_verifier = lambda t: t != first and idp.verify_token(t, audience=sim.url)
    assert crm.read_record(ACCOUNTS_CT, sim.rows("accounts")[0]["accountid"]) is not None
    assert idp.token_requests == 2 and len(managed_identity.requests) == 1
    crm.close()


def test_an_untrusted_identity_pauses_the_flow_with_the_reason_and_no_token(
        tmp_path, dataverse_sim_factory, identity_provider, managed_identity, erp):  # noqa: F811
    idp = identity_provider  # no federated credential registered on the app
    sim = dataverse_sim_factory(token_verifier=lambda t: idp.verify_token(t, audience=sim.url))
    seed(sim, 2)
    crm = DataverseConnector.from_config("crm", federated_system(sim, idp), msal_http_client=idp.msal_http_client(),
                                         instance_discovery=False)
    with pytest.raises(AuthError) as raised:
        crm.read_record(ACCOUNTS_CT, "3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    assert "invalid_client" in str(raised.value) and "AADSTS70021" in str(raised.value)
    app = make_app(tmp_path, sim, {"accounts-to-erp": ACCOUNTS_TO_ERP}, crm=crm)
    result = pull_flow(app, "accounts-to-erp", owner="test")
    assert result.status == "auth_failed" and "AADSTS70021" in result.error
    cursor = app.state.get_cursor("accounts-to-erp")
    assert cursor.paused and "AADSTS70021" in cursor.paused_reason
    assert len(managed_identity.requests) == 1  # the identity's token was presented, and refused
    for text in (str(raised.value), result.error, cursor.paused_reason):
        assert "eyJ" not in text  # no JWT (the assertion) is ever echoed
    app.close()


def test_the_federated_method_needs_the_app_registration_and_is_one_method():
    with pytest.raises(ValueError, match="tenant_id and client_id"):
        DataverseAuth(federated_identity_client_id="env:AZURE_CLIENT_ID")
    with pytest.raises(ValueError, match="exactly one"):
        DataverseAuth(tenant_id="t", client_id="c", client_secret="env:S", federated_identity_client_id="x")


def test_primary_id_convention():
    assert [primary_id_of(s) for s in ("accounts", "contacts", "salesorders", "invoices", "opportunities",
                                        "customeraddresses", "pricelevels")] == [
        "accountid", "contactid", "salesorderid", "invoiceid", "opportunityid", "customeraddressid", "pricelevelid"]
    assert msal.__version__  # the MSAL this suite exercised


def test_iter_keys_lists_every_addressable_key_in_code_point_order(sim, crm):
    rows = seed(sim, 12)
    sim.insert("accounts", {"name": "no number"})  # no accountnumber: not addressable by that key
    sim.insert("accounts", {"name": "lower", "accountnumber": "a-9999"})
    by_id = list(crm.iter_keys(ACCOUNTS_WM))
    assert by_id == sorted(r["accountid"] for r in sim.rows("accounts")) and len(by_id) == 14
    by_number = list(crm.iter_keys(SourceSpec(system="crm", entity="accounts", key=["accountnumber"])))
    assert by_number == sorted([r["accountnumber"] for r in rows] + ["a-9999"])
