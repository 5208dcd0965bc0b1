"""The OData connector against a real OData v4 server: SAP CAP (`@sap/cds` 9 with `@cap-js/sqlite`, from npm),
started once per session on loopback by `tests/fixtures/cap.py` with the model in `tests/fixtures/odata_server/`.

What CAP shows here: server-driven paging with an offset `$skiptoken` (relative next links), `managed`
timestamps shared by the rows of one transaction, ETags (`@odata.etag`: 428 without If-Match, 412 on a stale
one), no upsert (a POST of an existing key is a 500), JSON and multipart `$batch`, composite keys, basic
authentication. What it does not do, covered in `tests/unit/test_odata_protocol.py` against recorded answers:
delta links (`odata.track-changes`) and both deleted-entity forms, 429 / Retry-After, 503, timeouts,
multipart-only services, F&O's 7-digit timestamps and case-insensitive keys, `cross-company` (CAP ignores custom
query options), non-ASCII keys (CAP dies of them, see ODD) and Entra ID tokens (MSAL against dvsim's identity
provider)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from shared.config import SourceSpec, TargetSpec
from shared.connectors import build_connector
from shared.connectors.odata.connector import OdataConnector
from shared.connectors.odata.literals import moment
from shared.connectors.odata_settings import OdataSystem
from shared.errors import AuthError, Reason, TargetChanged, UnsafeLinkError
from shared.ports.connector import WriteOp
from tests.contracts.connector_helpers import keys_of, read_all
from tests.fixtures.cap import stored

PRODUCTS = SourceSpec(system="erp", entity="Products", key=["ID"], watermark="modifiedAt")
PRODUCTS_TARGET = TargetSpec(system="erp", entity="Products", key=["ID"])
PRICES = SourceSpec(system="erp", entity="Prices", key=["dataAreaId", "ItemNumber"], watermark="modifiedAt")
# Every character a URL or an OData literal gives a meaning to. Not non-ASCII: CAP 9 puts a created key raw into
# its Location header and dies of it (node's ERR_INVALID_CHAR); tests/unit/test_odata_protocol.py covers it.
ODD = "A+b/c#d%e?f &g='h'"


@pytest.fixture
def server(odata_server):
    odata_server.clear("Products")
    odata_server.clear("Prices")
    return odata_server


def connector(server, **options: Any) -> OdataConnector:
    transport = options.pop("_t", None)
    data = {"kind": "odata", "url": server.erp, **options}
    return OdataConnector.from_config("erp", OdataSystem.model_validate(data), transport=transport)


class Meddling(httpx.BaseTransport):
    """A real transport that runs `before(request)` first, for one request matching `when`: another writer
    acting between the connector's read and its write."""

    def __init__(self, when: Callable[[httpx.Request], bool], before: Callable[[], None]) -> None:
        self.inner = httpx.HTTPTransport()
        self.when, self.before, self.done = when, before, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.done and self.when(request):
            self.done = True
            self.before()
        return self.inner.handle_request(request)


def _writes(request: httpx.Request) -> bool:
    return request.method in ("POST", "PATCH")


def test_rows_of_one_transaction_share_a_timestamp_and_page_exactly_once(server):
    body = {"requests": [{"id": str(i), "atomicityGroup": "g", "method": "POST", "url": "Products",
                          "headers": {"content-type": "application/json"}, "body": {"ID": f"T{i:02d}"}}
                         for i in range(8)]}
    httpx.post(server.erp + "$batch", json=body).raise_for_status()
    stamps = {row["modifiedAt"] for row in server.rows("Products", "ID")}
    assert len(stamps) == 1  # one transaction, one timestamp: every page boundary falls inside a tie
    erp = connector(server)
    exact = PRODUCTS.model_copy(update={"lookback_seconds": 0})  # the look-back (below) would read the tie again
    pages = read_all(erp, exact, None, 2)
    assert keys_of(pages) == [f"T{i:02d}" for i in range(8)]
    assert [len(p.records) for p in pages] == [2, 2, 2, 2] and all(p.snapshot for p in pages)
    for n, page in enumerate(pages):  # a crash after any page resumes without a loss or a repeat
        assert keys_of(pages[: n + 1]) + keys_of(read_all(erp, exact, page.position, 2)) == keys_of(pages)
    assert read_all(erp, exact, pages[-1].position, 2) == []
    erp.close()


def test_a_row_changed_while_a_read_pages_is_neither_lost_nor_doubled(server):
    # CAP's skiptoken is an offset: following it after a row of page 1 moved to the end would skip a row.
    server.insert("Products", [{"ID": f"R{i}", "name": "x"} for i in range(7)])
    erp = connector(server)
    pages = erp.read_changes(PRODUCTS, None, 10)  # CAP pages by 3 whatever is asked
    first = next(pages)
    assert keys_of([first]) == ["R0", "R1", "R2"]
    assert erp.write_batch(PRODUCTS_TARGET, [WriteOp("upsert", {"ID": "R1"}, {"name": "moved"})])[0].ok
    rest = list(pages)
    assert keys_of(rest) == ["R3", "R4", "R5", "R6", "R1"]
    assert rest[-1].records[-1].values["name"] == "moved"
    erp.close()


def test_a_row_committed_after_newer_rows_were_read_is_read_by_the_look_back(server):
    # CAP stamps modifiedAt when a transaction begins: a long one commits its row after newer rows were read.
    server.insert("Products", [{"ID": "N1", "name": "x"}, {"ID": "N2", "name": "x"}])
    erp = connector(server)
    first = read_all(erp, PRODUCTS, None, 10)
    position = first[-1].position
    began = moment(position["watermark"]) - timedelta(seconds=5)
    server.load("Products", [{"ID": "LATE", "name": "slow transaction", "modifiedAt": stored(began)}])
    blind = read_all(erp, PRODUCTS.model_copy(update={"lookback_seconds": 0}), position, 10)
    assert keys_of(blind) == []  # what a keyset read alone would do: the row is behind the position
    again = read_all(erp, PRODUCTS, position, 10)
    assert keys_of(again) == ["LATE", "N1", "N2"]  # N1, N2 again at their versions: skipped by apply
    assert [r.version for r in again[0].records[1:]] == [r.version for r in first[0].records]
    assert again[-1].position["read_at"] >= position["read_at"]
    erp.close()


def test_keys_with_url_and_literal_characters_round_trip(server):
    erp = connector(server)
    ops = [WriteOp("upsert", {"ID": ODD}, {"name": "odd é€", "price": Decimal("99999999.99")}),
           WriteOp("upsert", {"ID": "plain"}, {"name": "plain"})]
    assert [r.ok for r in erp.write_batch(PRODUCTS_TARGET, ops)] == [True, True]
    assert server.rows("Products", "ID")[0]["ID"] == ODD  # stored as sent: no `+` read as a space
    record = erp.read_record(PRODUCTS, ODD)
    assert record is not None and record.values["price"] == Decimal("99999999.99") and record.etag
    assert sorted(erp.read_records("Products", ["ID"], [ODD, "plain", "none'"])) == [ODD, "plain"]
    assert list(erp.iter_keys(PRODUCTS)) == sorted([ODD, "plain"])
    (updated,) = erp.write_batch(PRODUCTS_TARGET, [WriteOp("upsert", {"ID": ODD}, {"name": "still odd"})])
    assert updated.ok and updated.etag != record.etag
    assert erp.write_batch(PRODUCTS_TARGET, [WriteOp("delete", {"ID": ODD})])[0].ok
    assert erp.read_record(PRODUCTS, ODD) is None
    erp.close()


def test_composite_keys_read_and_write_with_a_company_option(server):
    erp = connector(server, query_options={"cross-company": "true"})
    target = TargetSpec(system="erp", entity="Prices", key=["dataAreaId", "ItemNumber"])
    ops = [WriteOp("upsert", {"dataAreaId": c, "ItemNumber": n}, {"amount": Decimal(i)})
           for i, (c, n) in enumerate([("usmf", "A'1"), ("usmf", "B/2"), ("demf", "A'1")])]
    assert [r.key for r in erp.write_batch(target, ops)] == ['["usmf","A\'1"]', '["usmf","B/2"]', '["demf","A\'1"]']
    pages = read_all(erp, PRICES, None, 10)  # CAP pages Prices by 2
    assert [len(p.records) for p in pages] == [2, 1]
    assert sorted(keys_of(pages)) == ['["demf","A\'1"]', '["usmf","A\'1"]', '["usmf","B/2"]']
    again = erp.write_batch(target, [WriteOp("update", {"dataAreaId": "demf", "ItemNumber": "A'1"},
                                             {"amount": Decimal("7.50")})])
    assert again[0].ok
    found = erp.read_record(PRICES, '["demf","A\'1"]')
    assert found is not None and found.values["amount"] == Decimal("7.5")
    erp.close()


def test_a_create_that_collides_with_a_concurrent_create_becomes_an_update(server):
    # Between the connector's read (no row) and its POST another writer creates the key: CAP answers 500.
    erp_transport = Meddling(_writes, lambda: server.insert("Products", [{"ID": "C1", "name": "theirs"}]))
    erp = connector(server, _t=erp_transport)
    ops = [WriteOp("upsert", {"ID": "C1"}, {"name": "ours"}), WriteOp("upsert", {"ID": "C2"}, {"name": "new"})]
    results = erp.write_batch(PRODUCTS_TARGET, ops)
    assert erp_transport.done and [r.ok for r in results] == [True, True]
    assert {r["ID"]: r["name"] for r in server.rows("Products", "ID")} == {"C1": "ours", "C2": "new"}
    # A create-only op meeting the same race is the engine's to decide again (TargetChanged).
    only = Meddling(_writes, lambda: server.insert("Products", [{"ID": "C3", "name": "theirs"}]))
    erp_only = connector(server, _t=only)
    (result,) = erp_only.write_batch(PRODUCTS_TARGET, [WriteOp("upsert", {"ID": "C3"}, {"name": "x"},
                                                               create_only=True)])
    assert isinstance(result.error, TargetChanged) and "already exists" in str(result.error)
    erp.close()
    erp_only.close()


def test_if_match_carries_the_etag_and_a_lost_race_is_decided_again(server):
    server.insert("Products", [{"ID": "E1", "name": "v1"}, {"ID": "E2", "name": "v1"}])
    erp = connector(server)
    read = erp.read_records("Products", ["ID"], ["E1", "E2"])

    def someone_writes() -> None:
        httpx.patch(server.erp + "Products('E1')", json={"name": "theirs"},
                    headers={"If-Match": "*"}).raise_for_status()

    # A plain upsert whose ETag went stale between the connector's read and its PATCH (412): read again, written.
    racing = connector(server, _t=Meddling(_writes, someone_writes))
    (plain,) = racing.write_batch(PRODUCTS_TARGET, [WriteOp("upsert", {"ID": "E1"}, {"name": "ours"})])
    assert plain.ok and server.rows("Products", "ID")[0]["name"] == "ours"
    # The engine's own ETag (the row as it read it) is stale now: TargetChanged, nothing written.
    (guarded,) = erp.write_batch(PRODUCTS_TARGET, [WriteOp("update", {"ID": "E1"}, {"name": "late"},
                                                           if_match=read["E1"].etag)])
    assert isinstance(guarded.error, TargetChanged) and guarded.error.reason == Reason.CONFLICT
    (fresh,) = erp.write_batch(PRODUCTS_TARGET, [WriteOp("update", {"ID": "E2"}, {"name": "v2"},
                                                         if_match=read["E2"].etag)])
    assert fresh.ok
    assert [r["name"] for r in server.rows("Products", "ID")] == ["ours", "v2"]
    erp.close()
    racing.close()


@pytest.mark.parametrize("batch_format", ["json", "multipart"])
def test_batch_results_map_back_to_their_records(server, batch_format):
    server.insert("Products", [{"ID": "B1", "name": "old"}])
    erp = connector(server, batch_format=batch_format, batch_size=3)
    ops = [WriteOp("upsert", {"ID": f"B{i}"}, {"name": f"n{i}"}) for i in range(1, 6)]
    ops.insert(2, WriteOp("upsert", {"ID": "B9"}, {"name": "x" * 101}))  # refused by the property's length
    ops.append(WriteOp("update", {"ID": "B404"}, {"name": "gone"}))
    results = erp.write_batch(PRODUCTS_TARGET, ops)
    assert [r.ok for r in results] == [True, True, False, True, True, True, False]
    assert [r.key for r in results] == ["B1", "B2", "B9", "B3", "B4", "B5", "B404"]
    assert "101 characters" in str(results[2].error) and "not found" in str(results[6].error)
    assert all(r.etag for r in results if r.ok)
    assert {r["ID"]: r["name"] for r in server.rows("Products", "ID")} == {f"B{i}": f"n{i}" for i in range(1, 6)}
    erp.close()


def test_basic_auth_and_credentials_only_for_the_service(server, monkeypatch):
    server.insert("Products", [{"ID": "S1", "name": "secret"}])
    monkeypatch.setenv("ERP_ODATA_PASSWORD", "sync-pw")
    monkeypatch.setenv("ERP_ODATA_WRONG", "not-it")
    secure = build_connector("erp", OdataSystem.model_validate({"kind": "odata", "url": server.secure, "auth": {
        "username": "sync", "password": "env:ERP_ODATA_PASSWORD"}}))  # as registered in KINDS
    assert secure.read_record(PRODUCTS, "S1").values["name"] == "secret"
    # A stored link to anywhere else never receives the credentials.
    foreign = {"next_link": "http://127.0.0.2:9/odata/v4/secure/Products?$skiptoken=3", "delta_link": None}
    with pytest.raises(UnsafeLinkError):
        list(secure.read_changes(PRODUCTS.model_copy(update={"changes": "change_tracking"}), foreign, 10))
    secure.close()
    for auth in ({"username": "sync", "password": "env:ERP_ODATA_WRONG"}, {}):
        system = OdataSystem.model_validate({"kind": "odata", "url": server.secure, "auth": auth})
        refused = OdataConnector.from_config("erp", system)
        with pytest.raises(AuthError) as raised:
            refused.read_record(PRODUCTS, "S1")
        assert "not-it" not in str(raised.value) and "sync-pw" not in str(raised.value)
        refused.close()


def test_a_service_without_change_tracking_says_so(server):
    erp = connector(server)
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="does not track changes"):
        list(erp.read_changes(PRODUCTS.model_copy(update={"changes": "change_tracking"}), None, 10))
    erp.close()
