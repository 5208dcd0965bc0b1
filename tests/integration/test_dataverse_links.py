"""The bearer token stays home: links from responses and from stored cursors are followed only inside the
configured organization's Web API, and a paging loop cannot run forever.

A second HTTP server on loopback (another port = another origin) plays the attacker: it records every request
and the Authorization header it came with. The organization is the Dataverse simulator over real HTTP.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dvsim import DataverseSimulator
from dvsim.pytest_fixtures import dataverse_sim  # noqa: F401
from shared.config import DataverseSystem, SourceSpec
from shared.connectors.dataverse import DataverseConnector
UnsafeLinkError = Exception

TOKEN = "link-test-token-91c2"
ACCOUNTS_CT = SourceSpec(system="crm", entity="accounts", key=["accountid"], changes="change_tracking",
                         select=["name", "accountnumber"])
ACCOUNTS_WM = SourceSpec(system="crm", entity="accounts", key=["accountid"], changes="watermark")


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DV_TOKEN", TOKEN)


class _Collector(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = b'{"value": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def attacker() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Handler", (_Collector,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _connector(sim: DataverseSimulator, **overrides: Any) -> DataverseConnector:
    data: dict[str, Any] = {"kind": "dataverse", "url": sim.url, "auth": {"static_token": "env:DV_TOKEN"}}
    data.update(overrides)
    return DataverseConnector.from_config("crm", DataverseSystem.model_validate(data))


@pytest.mark.parametrize("where", ["next_link", "delta_link"])
def test_a_stored_link_to_another_origin_is_refused_and_gets_no_token(dataverse_sim, attacker, where):  # noqa: F811
    origin, seen = attacker
    crm = _connector(dataverse_sim)
    try:
        with pytest.raises(UnsafeLinkError) as caught:
            list(crm.read_changes(ACCOUNTS_CT, {where: f"{origin}/api/data/v9.2/accounts?$deltatoken=1"}, 100))
    finally:
        crm.close()
    assert seen == []
    assert "127.0.0.1" in str(caught.value) and TOKEN not in str(caught.value)


@pytest.mark.parametrize("link", [
    "{org}/api/data/v9.1/accounts",  # another API version's path
    "{org}/other/accounts",
    "{org}/api/data/v9.2/../../../evil",
    "{org_https}/api/data/v9.2/accounts",  # the scheme is part of the origin
    "//{host_port}/api/data/v9.2/accounts",
    "{org_userinfo}/api/data/v9.2/accounts",
])
def test_links_outside_the_api_path_or_origin_are_refused(dataverse_sim, link):  # noqa: F811
    org = dataverse_sim.url.rstrip("/")
    scheme, _, host_port = org.partition("://")
    tampered = link.format(org=org, org_https=f"https://{host_port}", host_port=host_port,
                           org_userinfo=f"{scheme}://user@{host_port}")
    crm = _connector(dataverse_sim)
    try:
        with pytest.raises(UnsafeLinkError):
            list(crm.read_changes(ACCOUNTS_CT, {"next_link": tampered}, 100))
    finally:
        crm.close()


def _tampering_transport(sim: DataverseSimulator, rewrite: Any) -> httpx.BaseTransport:
    """Real HTTP to the simulator, with every JSON answer passed through `rewrite` (a tampered response)."""
    inner = httpx.HTTPTransport()

    class Tamper(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = inner.handle_request(request)
            response.read()
            if not response.headers.get("content-type", "").startswith("application/json"):
                return response
            data = rewrite(request, response.json())
            return httpx.Response(response.status_code, headers={k: v for k, v in response.headers.items()
                                                                 if k.lower() != "content-length"}, json=data)

    return Tamper()


def test_a_tampered_next_link_in_a_response_never_receives_the_token(dataverse_sim, attacker):  # noqa: F811
    origin, seen = attacker
    for i in range(3):
        dataverse_sim.insert("accounts", {"name": f"A{i}", "accountnumber": f"N-{i}"})

    def rewrite(request: httpx.Request, data: dict[str, Any]) -> dict[str, Any]:
        if "@odata.nextLink" in data:
            data["@odata.nextLink"] = f"{origin}/api/data/v9.2/accounts?page=2"
        return data

    system = DataverseSystem.model_validate(
        {"kind": "dataverse", "url": dataverse_sim.url, "auth": {"static_token": "env:DV_TOKEN"}})
    crm = DataverseConnector.from_config("crm", system, transport=_tampering_transport(dataverse_sim, rewrite))
    try:
        with pytest.raises(UnsafeLinkError):
            list(crm.read_changes(ACCOUNTS_WM, None, 1))
    finally:
        crm.close()
    assert seen == []


def test_a_next_link_pointing_to_itself_stops_with_a_clear_error(dataverse_sim):  # noqa: F811
    for i in range(3):
        dataverse_sim.insert("accounts", {"name": f"A{i}", "accountnumber": f"N-{i}"})
    calls = 0

    def rewrite(request: httpx.Request, data: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls > 50:
            raise AssertionError("the client kept following a link that loops")
        data["@odata.nextLink"] = str(request.url)
        data.pop("@odata.deltaLink", None)
        return data

    system = DataverseSystem.model_validate(
        {"kind": "dataverse", "url": dataverse_sim.url, "auth": {"static_token": "env:DV_TOKEN"}})
    crm = DataverseConnector.from_config("crm", system, transport=_tampering_transport(dataverse_sim, rewrite))
    try:
        with pytest.raises(UnsafeLinkError, match="repeats"):
            list(crm.read_changes(ACCOUNTS_CT, None, 1))
        with pytest.raises(UnsafeLinkError, match="repeats"):
            crm.read_records("accounts", ["accountnumber"], ["N-0"])
    finally:
        crm.close()


def test_a_change_read_stops_after_the_page_cap_and_the_next_run_resumes(dataverse_sim):  # noqa: F811
    for i in range(7):
        dataverse_sim.insert("accounts", {"name": f"A{i}", "accountnumber": f"N-{i}"})
    crm = _connector(dataverse_sim, max_pages_per_run=3)
    try:
        first = list(crm.read_changes(ACCOUNTS_CT, None, 2))
        assert len(first) == 3 and first[-1].position["next_link"]
        assert any("page cap" in note for note in first[-1].notes)
        rest = list(crm.read_changes(ACCOUNTS_CT, first[-1].position, 2))
    finally:
        crm.close()
    keys = [r.key for page in first + rest for r in page.records]
    # The resumed run ends the full read by re-reading what changed since it began (here: every row, all just
    # written); the engine skips those already pulled at the same version.
    assert len(set(keys)) == 7 and set(r.key for page in rest for r in page.records) == set(keys)
    assert rest[-1].position["delta_link"]


def test_an_answer_larger_than_the_cap_is_refused_while_it_streams(dataverse_sim):  # noqa: F811
    from shared.errors import PermanentError

    for i in range(40):
        dataverse_sim.insert("accounts", {"name": "x" * 100, "accountnumber": f"N-{i}"})
    crm = _connector(dataverse_sim, max_response_mb=1)
    crm.max_response_bytes = 2000  # one page of 40 rows is far larger
    try:
        with pytest.raises(PermanentError, match="larger than the limit"):
            list(crm.read_changes(ACCOUNTS_WM, None, 100))
        crm.max_response_bytes = 10_000_000
        assert sum(len(p.records) for p in crm.read_changes(ACCOUNTS_WM, None, 100)) == 40
    finally:
        crm.close()
