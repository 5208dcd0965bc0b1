"""Reading: paging, $filter, $orderby, $top, $select, retrieve by id and by alternate key."""

from __future__ import annotations

import httpx
import pytest

from dvsim import DataverseSimulator


def names(resp: httpx.Response) -> list[str]:
    return [row["name"] for row in resp.json()["value"]]


def error(resp: httpx.Response) -> dict:
    return resp.json()["error"]


@pytest.fixture
def accounts(sim: DataverseSimulator) -> dict[str, dict]:
    contact = sim.insert("contacts", {"lastname": "Ng"})
    rows = [
        {"name": "Alpha", "accountnumber": "A-1", "creditlimit": 500.0, "statecode": 0, "telephone1": "555"},
        {"name": "Beta", "accountnumber": "A-2", "creditlimit": 50.0, "statecode": 1, "telephone1": "556"},
        {"name": "Gamma", "accountnumber": "A-3", "creditlimit": 150.0, "statecode": 0},
        {"name": "Delta", "accountnumber": "A-4", "creditlimit": 10.0, "statecode": 0, "telephone1": "557",
         "_primarycontactid_value": contact["contactid"]},
        {"name": "O'Brien Ltd", "accountnumber": "O'B-1", "creditlimit": 1000.0, "statecode": 1},
    ]
    return {r["name"]: sim.insert("accounts", r) for r in rows}


def test_paging_with_maxpagesize_follows_next_links(sim: DataverseSimulator, client: httpx.Client) -> None:
    for i in range(25):
        sim.insert("accounts", {"name": f"Account {i:02d}"})
    prefer = {"Prefer": "odata.maxpagesize=10"}
    first = client.get("accounts", params={"$select": "name", "$orderby": "name"}, headers=prefer)
    assert first.status_code == 200
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=10"
    assert first.headers["OData-Version"] == "4.0"
    body = first.json()
    assert body["@odata.context"] == f"{sim.api}$metadata#accounts(name)"
    assert len(body["value"]) == 10
    assert all(set(row) == {"@odata.etag", "name", "accountid"} for row in body["value"])
    # The skip token is shaped like Dataverse's paging cookie, URL-encoded into the link.
    assert "$skiptoken=%3Ccookie%20pagenumber%3D%222%22" in body["@odata.nextLink"]

    collected = names(first)
    link = body["@odata.nextLink"]
    pages = 1
    while link:
        resp = client.get(link, headers=prefer)
        assert resp.status_code == 200
        collected += names(resp)
        link = resp.json().get("@odata.nextLink")
        pages += 1
    assert pages == 3
    assert collected == [f"Account {i:02d}" for i in range(25)]
    assert sim.stats.by_kind == {"query": 1, "query_next_page": 2}


def test_count(accounts: dict, client: httpx.Client) -> None:
    body = client.get("accounts", params={"$count": "true", "$filter": "statecode eq 0", "$top": "1"}).json()
    assert body["@odata.count"] == 3 and len(body["value"]) == 1


def test_maxpagesize_above_5000_is_ignored(sim: DataverseSimulator, client: httpx.Client) -> None:
    sim.insert("accounts", {"name": "Only"})
    resp = client.get("accounts", headers={"Prefer": "odata.maxpagesize=9000"})
    assert resp.status_code == 200
    assert "Preference-Applied" not in resp.headers


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("creditlimit gt 100 and statecode eq 0", ["Alpha", "Gamma"]),
        ("name eq 'O''Brien Ltd'", ["O'Brien Ltd"]),
        ("name eq 'alpha'", ["Alpha"]),  # case-insensitive, as on SQL Server
        ("(statecode eq 1 or creditlimit le 50) and telephone1 ne null", ["Beta", "Delta"]),
        ("telephone1 eq null", ["Gamma", "O'Brien Ltd"]),
        ("telephone1 ne '555'", ["Beta", "Delta"]),  # ne never matches null
        ("creditlimit ge 150 and creditlimit lt 1000", ["Alpha", "Gamma"]),
        ("not (statecode eq 0)", ["Beta", "O'Brien Ltd"]),
        ("contains(name,'ta')", ["Beta", "Delta"]),
        ("startswith(name,'O''B')", ["O'Brien Ltd"]),
        ("modifiedon ge 2000-01-01T00:00:00Z and accountnumber eq 'A-3'", ["Gamma"]),
        ("100 lt creditlimit and statecode eq 1", ["O'Brien Ltd"]),
    ],
)
def test_filter(accounts: dict, client: httpx.Client, expr: str, expected: list[str]) -> None:
    resp = client.get("accounts", params={"$select": "name", "$filter": expr, "$orderby": "name"})
    assert resp.status_code == 200, resp.text
    assert names(resp) == expected


def test_filter_on_lookup_uses_the_value_property(accounts: dict, client: httpx.Client) -> None:
    contact_id = accounts["Delta"]["_primarycontactid_value"]
    resp = client.get("accounts", params={"$filter": f"_primarycontactid_value eq {contact_id}"})
    assert names(resp) == ["Delta"]
    assert resp.json()["value"][0]["_primarycontactid_value"] == contact_id


def test_orderby_several_fields_and_directions(accounts: dict, client: httpx.Client) -> None:
    resp = client.get("accounts", params={"$select": "name,statecode", "$orderby": "statecode desc,name asc"})
    assert names(resp) == ["Beta", "O'Brien Ltd", "Alpha", "Delta", "Gamma"]
    resp = client.get("accounts", params={"$orderby": "creditlimit desc"})
    assert names(resp) == ["O'Brien Ltd", "Alpha", "Gamma", "Beta", "Delta"]


def test_top_limits_the_total_even_across_pages(accounts: dict, client: httpx.Client) -> None:
    prefer = {"Prefer": "odata.maxpagesize=2"}
    first = client.get("accounts", params={"$top": "3", "$orderby": "name"}, headers=prefer)
    assert names(first) == ["Alpha", "Beta"]
    second = client.get(first.json()["@odata.nextLink"], headers=prefer)
    assert names(second) == ["Delta"]
    assert "@odata.nextLink" not in second.json()


@pytest.mark.parametrize(
    ("params", "status", "code", "message"),
    [
        ({"$filter": "foo eq 1"}, 400, "0x80060888",
         "Could not find a property named 'foo' on type 'Microsoft.Dynamics.CRM.account'."),
        ({"$filter": "statecode eq 'x'"}, 400, "0x80060888",
         "A binary operator with incompatible types was detected. Found operand types 'Edm.Int32' and "
         "'Edm.String' for operator kind 'Equal'."),
        ({"$select": "name,nope"}, 400, "0x80060888",
         "Could not find a property named 'nope' on type 'Microsoft.Dynamics.CRM.account'."),
        ({"$orderby": "nope desc"}, 400, "0x80060888",
         "Could not find a property named 'nope' on type 'Microsoft.Dynamics.CRM.account'."),
    ],
)
def test_query_errors(accounts: dict, client: httpx.Client, params: dict, status: int, code: str, message: str) -> None:
    resp = client.get("accounts", params=params)
    assert resp.status_code == status
    assert error(resp) == {"code": code, "message": message}


def test_filter_syntax_error_and_unsupported_options(client: httpx.Client) -> None:
    resp = client.get("accounts", params={"$filter": "name eq"})
    assert resp.status_code == 400 and error(resp)["message"].startswith("Syntax error")
    resp = client.get("accounts", params={"$expand": "primarycontactid"})
    assert resp.status_code == 400 and "$expand" in error(resp)["message"]


def test_unknown_entity_set_is_404(client: httpx.Client) -> None:
    resp = client.get("widgets")
    assert resp.status_code == 404
    assert error(resp) == {"code": "0x8006088a", "message": "Resource not found for the segment 'widgets'."}


def test_retrieve_by_id_with_etag_and_not_modified(sim: DataverseSimulator, accounts: dict, client: httpx.Client) -> None:
    alpha = accounts["Alpha"]
    resp = client.get(f"accounts({alpha['accountid']})", params={"$select": "name,creditlimit"})
    assert resp.status_code == 200
    body = resp.json()
    etag = f'W/"{alpha["versionnumber"]}"'
    assert body == {
        "@odata.context": f"{sim.api}$metadata#accounts(name,creditlimit)/$entity",
        "@odata.etag": etag,
        "name": "Alpha",
        "creditlimit": 500.0,
        "accountid": alpha["accountid"],
    }
    assert resp.headers["ETag"] == etag
    assert client.get(f"accounts({alpha['accountid']})", headers={"If-None-Match": etag}).status_code == 304


def test_retrieve_missing_id_is_404(client: httpx.Client) -> None:
    missing = "00000000-0000-0000-0000-000000000001"
    resp = client.get(f"accounts({missing})")
    assert resp.status_code == 404
    assert error(resp) == {"code": "0x80040217", "message": f"account With Id = {missing} Does Not Exist"}


def test_retrieve_by_alternate_key_with_quote(accounts: dict, client: httpx.Client) -> None:
    resp = client.get("accounts(accountnumber='O''B-1')", params={"$select": "name"})
    assert resp.status_code == 200
    assert resp.json()["name"] == "O'Brien Ltd"
    # percent-encoded quotes work too, and key lookups are case-insensitive like SQL Server
    assert client.get("accounts(accountnumber=%27o%27%27b-1%27)").json()["name"] == "O'Brien Ltd"


def test_retrieve_by_multi_part_alternate_key(sim: DataverseSimulator, client: httpx.Client) -> None:
    c = sim.insert("contacts", {"firstname": "Ann", "lastname": "O'Hara", "emailaddress1": "ann@example.com"})
    sim.insert("contacts", {"firstname": "Bob", "lastname": "O'Hara", "emailaddress1": "bob@example.com"})
    resp = client.get("contacts(lastname='O''Hara',emailaddress1='ann@example.com')")
    assert resp.status_code == 200
    assert resp.json()["contactid"] == c["contactid"]


def test_alternate_key_errors(accounts: dict, client: httpx.Client) -> None:
    resp = client.get("accounts(accountnumber='nope')")
    assert resp.status_code == 404
    assert error(resp) == {
        "code": "0x80060891",
        "message": "A record with the specified key values does not exist in account entity",
    }
    resp = client.get("accounts(telephone1='555')")  # not an alternate key
    assert resp.status_code == 400
