"""The OData connector against recorded answers, for what the CAP server in tests/integration/test_odata_connector.py
does not do: delta links (`odata.track-changes`) with both deleted-entity forms, a refused delta link, 429 with
Retry-After, 503, timeouts, a lost answer, 413, a multipart-only `$batch`, F&O's `cross-company` option, 7-digit
timestamps and case-insensitive keys, non-ASCII keys, and bearer tokens (MSAL's own code against dvsim's identity
provider on loopback). Each answer is shaped as the OData v4 JSON format (and Dataverse / F&O) documents it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from dvsim.pytest_fixtures import identity_provider  # noqa: F401 - fixture
from shared.config import SourceSpec, TargetSpec, parse_config
from shared.connectors.odata.auth import ConfidentialClientTokenProvider, ManagedIdentityTokenProvider
from shared.connectors.odata.batch import BatchRequest, multipart_batch
from shared.connectors.odata.client import BearerCredentials
from shared.connectors.odata.connector import REBASELINE_NOTE, OdataConnector
from shared.connectors.odata.literals import key_predicate, odata_literal, parse_key_predicate, query_value
from shared.connectors.odata_settings import OdataSystem
from shared.errors import ConfigError, TransientError, UnsafeLinkError
from shared.ports.connector import WriteOp

ROOT = "https://erp.example/data/"
METADATA = b"""<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">
 <edmx:DataServices>
  <Schema Namespace="Microsoft.Dynamics.DataEntities" xmlns="http://docs.oasis-open.org/odata/ns/edm">
   <EntityType Name="ReleasedProduct">
    <Key><PropertyRef Name="dataAreaId"/><PropertyRef Name="ItemNumber"/></Key>
    <Property Name="dataAreaId" Type="Edm.String" Nullable="false" MaxLength="4"/>
    <Property Name="ItemNumber" Type="Edm.String" Nullable="false" MaxLength="20"/>
    <Property Name="Name" Type="Edm.String"/>
    <Property Name="Qty" Type="Edm.Int32"/>
    <Property Name="ModifiedDateTime" Type="Edm.DateTimeOffset"/>
   </EntityType>
   <EntityContainer Name="Container">
    <EntitySet Name="ReleasedProducts" EntityType="Microsoft.Dynamics.DataEntities.ReleasedProduct"/>
   </EntityContainer>
  </Schema>
 </edmx:DataServices>
</edmx:Edmx>"""
SOURCE = SourceSpec(system="erp", entity="ReleasedProducts", key=["dataAreaId", "ItemNumber"],
                    watermark="ModifiedDateTime", changes="change_tracking")
TARGET = TargetSpec(system="erp", entity="ReleasedProducts", key=["dataAreaId", "ItemNumber"])
DATE = "Mon, 02 Dec 2024 10:00:00 GMT"


def row(item: str, stamp: str = "2024-12-01T09:00:00Z", company: str = "usmf") -> dict[str, Any]:
    return {"@odata.etag": f'W/"{item}-1"', "dataAreaId": company, "ItemNumber": item, "Name": item, "Qty": 1,
            "ModifiedDateTime": stamp}


class Service:
    """Answers by a handler per request; records every request."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("$metadata"):
            return httpx.Response(200, content=METADATA, headers={"content-type": "application/xml"})
        return self.handler(request)

    def connector(self, **options: Any) -> OdataConnector:
        system = OdataSystem.model_validate({"kind": "odata", "url": ROOT, **options})
        return OdataConnector.from_config("erp", system, transport=httpx.MockTransport(self))


def answer(body: dict[str, Any], status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers={"date": DATE, **headers})


def test_delta_links_carry_changes_and_both_deleted_entity_forms():
    delta = ROOT + "ReleasedProducts?$deltatoken=abc"

    def handler(request: httpx.Request) -> httpx.Response:
        assert "odata.track-changes" in request.headers["prefer"]
        if "$skiptoken" in str(request.url):
            return answer({"value": [row("B")], "@odata.deltaLink": "ReleasedProducts?$deltatoken=abc"})
        if "$deltatoken" in str(request.url):
            return answer({"value": [
                row("A", "2024-12-02T09:59:00Z"),
                {"@removed": {"reason": "deleted"}, "@odata.id": "ReleasedProducts(dataAreaId='usmf',ItemNumber='B')"},
                {"@odata.context": "$metadata#ReleasedProducts/$deletedEntity", "@id":
                 ROOT + "ReleasedProducts(dataAreaId='demf',ItemNumber='O''Hara')", "reason": "deleted"},
                {"@removed": {"reason": "changed"}, "@odata.id": "ReleasedProducts(dataAreaId='usmf',ItemNumber='C')"},
            ], "@odata.deltaLink": delta + "2"})
        assert request.url.params["cross-company"] == "true"  # links are followed as given; the first read asks
        return answer({"value": [row("A")], "@odata.nextLink": ROOT + "ReleasedProducts?$skiptoken=opaque%2B1"})

    service = Service(handler)
    erp = service.connector(query_options={"cross-company": "true"})
    pages = list(erp.read_changes(SOURCE, None, 100))
    assert [[r.key for r in p.records] for p in pages] == [['["usmf","A"]'], ['["usmf","B"]']]
    assert all(p.snapshot for p in pages)
    assert pages[0].position == {"next_link": ROOT + "ReleasedProducts?$skiptoken=opaque%2B1", "delta_link": None}
    assert pages[1].position == {"next_link": None, "delta_link": delta}  # relative link resolved

    (changes,) = list(erp.read_changes(SOURCE, json.loads(json.dumps(pages[1].position)), 100))
    assert not changes.snapshot and changes.position["delta_link"] == delta + "2"
    updated, *deletes = changes.records
    assert (updated.key, updated.deleted, updated.version) == ('["usmf","A"]', False, "2024-12-02T09:59:00.000000")
    assert [(d.key, d.deleted) for d in deletes] == [('["usmf","B"]', True), ('["demf","O\'Hara"]', True)]
    assert all(d.version == "2024-12-02T10:00:00.000000~deleted" > updated.version for d in deletes)
    assert changes.notes == ["1 removed rows skipped: not deleted (reason changed) or without a key"]
    erp.close()


def test_a_refused_delta_link_reads_everything_again_and_a_service_without_tracking_is_a_config_error():
    tracked = {"on": True}

    def handler(request: httpx.Request) -> httpx.Response:
        if "$deltatoken" in str(request.url):
            return answer({"error": {"code": "0x80044352", "message": "token expired"}}, 410)
        if tracked["on"]:
            return answer({"value": [row("A")], "@odata.deltaLink": ROOT + "ReleasedProducts?$deltatoken=new"})
        return answer({"value": [row("A")]})

    erp = Service(handler).connector()
    (page,) = list(erp.read_changes(SOURCE, {"next_link": None, "delta_link": ROOT + "ReleasedProducts?$deltatoken=old"},
                                    10))
    assert page.snapshot and page.notes[0].startswith(REBASELINE_NOTE)
    assert page.position["delta_link"].endswith("$deltatoken=new")
    tracked["on"] = False
    with pytest.raises(ConfigError, match="does not track changes"):
        list(erp.read_changes(SOURCE, None, 10))
    erp.close()


def test_a_next_link_elsewhere_never_receives_the_token(monkeypatch):
    monkeypatch.setenv("ERP_TOKEN", "tok-123")
    service = Service(lambda request: answer({"value": [row("A")],
                                              "@odata.nextLink": "https://evil.example/data/ReleasedProducts?p=2"}))
    erp = service.connector(auth={"static_token": "env:ERP_TOKEN"})
    with pytest.raises(UnsafeLinkError) as raised:
        list(erp.read_changes(SOURCE, None, 10))
    assert "tok-123" not in str(raised.value)
    assert {r.url.host for r in service.requests} == {"erp.example"}
    assert all(r.headers["authorization"] == "Bearer tok-123" for r in service.requests)
    erp.close()


def test_throttling_waits_for_retry_after_and_faults_are_transient():
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return answer({"error": {"code": "429", "message": "slow down"}}, 429, **{"retry-after": "0.2"})
        if calls["n"] == 2:
            return answer({"value": [row("A")], "@odata.deltaLink": ROOT + "ReleasedProducts?$deltatoken=1"})
        if calls["n"] == 3:
            return answer({"error": {"code": "503", "message": "maintenance"}}, 503, **{"retry-after": "120"})
        raise httpx.ReadTimeout("no answer", request=request)

    erp = Service(handler).connector()
    (page,) = list(erp.read_changes(SOURCE, None, 10))  # the 429 was waited out, then the read went on
    assert len(page.records) == 1 and calls["n"] == 2
    with pytest.raises(TransientError) as unavailable:
        list(erp.read_changes(SOURCE, None, 10))
    assert unavailable.value.retry_after == 120
    with pytest.raises(TransientError, match="no answer"):
        list(erp.read_changes(SOURCE, None, 10))
    erp.close()


def test_a_429_beyond_the_wait_allowed_is_handed_to_the_engine():
    service = Service(lambda request: answer({"error": {"message": "busy"}}, 429, **{"retry-after": "300"}))
    erp = service.connector(max_throttle_wait_seconds=1)
    (result,) = erp.write_batch(TARGET, [WriteOp("upsert", {"dataAreaId": "usmf", "ItemNumber": "A"}, {"Qty": 2})])
    assert isinstance(result.error, TransientError) and result.error.retry_after == 300
    erp.close()


def test_a_multipart_only_service_gets_multipart_and_answers_map_back_by_content_id():
    existing = {"A": row("A")}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return answer({"value": list(existing.values())})
        assert request.headers["content-type"].startswith("multipart/mixed; boundary=")
        body = request.content.decode()
        assert "PATCH ReleasedProducts(dataAreaId='usmf',ItemNumber='A') HTTP/1.1" in body
        assert "If-Match: W/\"A-1\"" in body and "POST ReleasedProducts HTTP/1.1" in body
        parts = [  # answered out of order: mapped back by Content-ID
            "--r\r\nContent-Type: application/http\r\nContent-ID: 2\r\n\r\nHTTP/1.1 201 Created\r\nETag: W/\"B-1\"\r\n\r\n{}",
            "--r\r\nContent-Type: application/http\r\nContent-ID: 1\r\n\r\nHTTP/1.1 204 No Content\r\nETag: W/\"A-2\"\r\n\r\n",
            "--r--\r\n"]
        return httpx.Response(200, content="\r\n".join(parts).encode(), headers={"content-type": "multipart/mixed; boundary=r"})

    erp = Service(handler).connector(batch_format="multipart")
    ops = [WriteOp("upsert", {"dataAreaId": "usmf", "ItemNumber": "A"}, {"Qty": 2}),
           WriteOp("upsert", {"dataAreaId": "usmf", "ItemNumber": "B"}, {"Qty": "3"})]
    results = erp.write_batch(TARGET, ops)
    assert [(r.ok, r.etag) for r in results] == [(True, 'W/"A-2"'), (True, 'W/"B-1"')]
    erp.close()


def test_a_service_without_etags_is_patched_with_if_match_star():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return answer({"value": [{k: v for k, v in row("A").items() if k != "@odata.etag"}]})
        assert request.headers["if-match"] == "*"
        return httpx.Response(204)

    erp = Service(handler).connector(etags=False)
    assert erp.write_batch(TARGET, [WriteOp("upsert", {"dataAreaId": "usmf", "ItemNumber": "A"}, {"Qty": 2})])[0].ok
    erp.close()


def test_literals_are_escaped_for_odata_and_for_the_url():
    assert odata_literal("O'Hara") == "'O''Hara'"
    assert query_value("Name eq 'a+b/c#d%e?f&g é'") == "Name%20eq%20'a%2Bb%2Fc%23d%25e%3Ff%26g%20%C3%A9'"
    predicate = key_predicate("ReleasedProducts", [("dataAreaId", "'usmf'"), ("ItemNumber", "'a+/#%?é''x'")])
    assert predicate == "ReleasedProducts(dataAreaId='usmf',ItemNumber='a%2B%2F%23%25%3F%C3%A9''x')"
    assert parse_key_predicate(predicate) == {"dataAreaId": "usmf", "ItemNumber": "a+/#%?é'x"}
    assert parse_key_predicate("Products('a,b=c')") == "a,b=c"

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return answer({"value": []})

    erp = Service(handler).connector()
    assert erp.read_records("ReleasedProducts", ["dataAreaId", "ItemNumber"], ['["usmf","Ü+1"]']) == {}
    query = seen[-1].split("?", 1)[1]
    assert "%C3%9C%2B1" in query and "+" not in query and unquote(query).count("'Ü+1'") == 1
    erp.close()


def test_bearer_auth_asks_msal_for_the_configured_scope(monkeypatch):
    monkeypatch.setenv("ERP_SECRET", "s3cret-value")
    system = OdataSystem.model_validate({"kind": "odata", "url": "https://contoso.operations.dynamics.com/data/",
                                         "auth": {"tenant_id": "t", "client_id": "c", "client_secret": "env:ERP_SECRET"}})
    credentials = OdataConnector.from_config("erp", system)._http.credentials
    assert isinstance(credentials, BearerCredentials)
    provider = credentials.tokens
    assert isinstance(provider, ConfidentialClientTokenProvider)
    assert provider.scopes == ["https://contoso.operations.dynamics.com/.default"]
    bc = OdataSystem.model_validate({"kind": "odata", "url": "https://api.businesscentral.dynamics.com/v2.0/t/api/v2.0/",
                                     "auth": {"managed_identity": True,
                                              "scope": "https://api.businesscentral.dynamics.com/.default"}})
    identity = OdataConnector.from_config("erp", bc)._http.credentials.tokens
    assert isinstance(identity, ManagedIdentityTokenProvider)
    assert identity.resource == "https://api.businesscentral.dynamics.com"
    assert "s3cret-value" not in repr(credentials)


def test_config_refuses_a_literal_password_and_half_basic_auth():
    with pytest.raises(ConfigError, match="env:NAME"):
        parse_config({"systems": {"erp": {"kind": "odata", "url": ROOT, "auth": {"username": "u", "password": "pw"}}},
                      "flows": {}})
    with pytest.raises(ConfigError, match="env:NAME"):
        parse_config({"systems": {"erp": {"kind": "odata", "url": "https://u:pw@erp.example/data/"}}, "flows": {}})
    with pytest.raises(ConfigError, match="both username and password"):
        parse_config({"systems": {"erp": {"kind": "odata", "url": ROOT, "auth": {"username": "u"}}}, "flows": {}})


def test_a_service_without_etags_cannot_be_a_pairs_target():
    def config(etags: bool) -> dict[str, Any]:
        flow = {"pair": "p", "fields": [{"from": "id", "to": "id"}]}
        return {"systems": {"erp": {"kind": "odata", "url": ROOT, "etags": etags},
                            "db": {"kind": "sql", "url": "sqlite://"}},
                "flows": {"out": {**flow, "source": {"system": "erp", "entity": "A", "key": "id", "watermark": "m"},
                                  "target": {"system": "db", "entity": "a", "key": "id"}},
                          "back": {**flow, "source": {"system": "db", "entity": "a", "key": "id"},
                                   "target": {"system": "erp", "entity": "A", "key": "id"}}}}

    parse_config(config(etags=True))
    with pytest.raises(ConfigError) as raised:
        parse_config(config(etags=False))
    assert raised.value.problems == [
        ("flows.back.pair: a pair writes a row only if it is still as read, and system 'erp' (kind odata) has no "
         "conditional writes (it supports: none); make this flow one-way")]
    assert OdataConnector(ROOT, etags=False).capabilities.conditional_writes is None  # what apply asks


def test_multipart_bodies_and_json_batch_answers_round_trip():
    body, content_type = multipart_batch([BatchRequest("DELETE", "Products('a')", {"If-Match": "*"})], "b1")
    assert content_type == "multipart/mixed; boundary=b1"
    assert body.startswith(b"--b1\r\nContent-Type: application/http\r\n") and body.endswith(b"--b1--\r\n")


def test_a_create_without_an_answer_is_read_back_and_never_posted_twice():
    rows: dict[str, dict[str, Any]] = {}
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return answer({"value": list(rows.values())})
        sent.append(request.method)
        if request.method == "POST":  # the service commits, and the answer is lost
            rows["A"] = row("A")
            raise httpx.ReadTimeout("no answer", request=request)
        assert request.headers["if-match"] == 'W/"A-1"'
        return httpx.Response(204, headers={"etag": 'W/"A-2"'})

    erp = Service(handler).connector()
    (result,) = erp.write_batch(TARGET, [WriteOp("upsert", {"dataAreaId": "usmf", "ItemNumber": "A"}, {"Qty": 5})])
    assert result.ok and result.etag == 'W/"A-2"'
    assert sent == ["POST", "PATCH"]  # the second decision saw the row the lost answer had created
    erp.close()


def test_a_batch_too_large_is_split_until_it_fits():
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return answer({"value": []})
        if not request.url.path.endswith("$batch"):  # one op goes as a plain request
            sizes.append(1)
            return httpx.Response(201, headers={"etag": 'W/"1"'})
        batch = json.loads(request.content)["requests"]
        sizes.append(len(batch))
        if len(batch) > 2:
            return httpx.Response(413, text="Request Entity Too Large")
        return answer({"responses": [{"id": r["id"], "status": 201, "headers": {"etag": 'W/"1"'}} for r in batch]})

    erp = Service(handler).connector(batch_size=8)
    ops = [WriteOp("upsert", {"dataAreaId": "usmf", "ItemNumber": f"I{i}"}, {"Qty": i}) for i in range(6)]
    results = erp.write_batch(TARGET, ops)
    assert all(r.ok for r in results) and [r.key for r in results] == [f'["usmf","I{i}"]' for i in range(6)]
    assert sizes == [6, 3, 1, 2, 3, 1, 2]
    erp.close()


def test_seven_digit_timestamps_page_on_without_rereading_a_page():
    stamp = "2024-12-01T09:00:00.1234567Z"  # F&O keeps 7 digits; Python's datetime only 6
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        condition = request.url.params["$filter"]
        seen.append(condition)
        if request.url.path.endswith("/$count"):
            return httpx.Response(200, text="0")
        if condition.endswith("ne null"):
            return answer({"value": [row("A", stamp), row("B", stamp)], "@odata.nextLink": "x"})
        assert f"ModifiedDateTime eq {stamp}" in condition  # the service's own literal, every digit
        return answer({"value": [row("C", stamp)]})

    erp = Service(handler).connector()
    source = SOURCE.model_copy(update={"changes": "watermark"})
    pages = list(erp.read_changes(source, None, 2))
    assert [[r.key for r in p.records] for p in pages] == [['["usmf","A"]', '["usmf","B"]'], ['["usmf","C"]']]
    assert len(seen) == 3  # the $count of null watermarks, then two pages
    erp.close()


def test_a_key_answered_in_another_case_is_found_and_binds_pass_through():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return answer({"value": [row("ABC")]})
        assert json.loads(request.content) == {"Qty": 1, "Vendor@odata.bind": "Vendors('V1')"}
        return httpx.Response(204)

    erp = Service(handler).connector()
    found = erp.read_records("ReleasedProducts", ["dataAreaId", "ItemNumber"], ['["usmf","abc"]'])
    assert list(found) == ['["usmf","abc"]'] and found['["usmf","abc"]'].values["ItemNumber"] == "ABC"
    op = WriteOp("upsert", {"dataAreaId": "usmf", "ItemNumber": "abc"}, {"Qty": 1, "Vendor@odata.bind": "Vendors('V1')"})
    assert erp.write_batch(TARGET, [op])[0].ok  # PATCHed, not POSTed: the row exists
    erp.close()


def test_client_credentials_through_msal_reach_the_service_and_are_refreshed_once_after_a_401(
        identity_provider, monkeypatch):  # noqa: F811
    idp = identity_provider
    idp.register_client("erp-app", "app-secret-1")
    monkeypatch.setenv("ERP_SECRET", "app-secret-1")
    refused: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        if not idp.verify_token(token, audience="https://erp.example") or token in refused:
            return httpx.Response(401)
        return answer({"value": [row("A")], "@odata.deltaLink": ROOT + "ReleasedProducts?$deltatoken=1"})

    service = Service(handler)
    erp = OdataConnector.from_config("erp", OdataSystem.model_validate({
        "kind": "odata", "url": ROOT, "auth": {"tenant_id": idp.tenant_id, "client_id": "erp-app",
                                               "client_secret": "env:ERP_SECRET",
                                               "authority_host": f"https://{idp.host}:{idp.port}"}}),
        transport=httpx.MockTransport(service), msal_http_client=idp.msal_http_client(), instance_discovery=False)
    assert len(next(iter(erp.read_changes(SOURCE, None, 10))).records) == 1
    assert len(next(iter(erp.read_changes(SOURCE, None, 10))).records) == 1
    assert idp.token_requests == 1  # MSAL's cache served the second read
    refused.append(idp.issued_tokens[0])  # revoked: a 401, one new token, the read goes on
    assert len(next(iter(erp.read_changes(SOURCE, None, 10))).records) == 1
    assert idp.token_requests == 2
    erp.close()
