"""Writes: create, upsert by id and by alternate key, conditional headers, lookup binds, validation, tags."""

from __future__ import annotations

import uuid

import httpx
import pytest

from dvsim import DataverseSimulator

MISSING = "00000000-0000-0000-0000-0000000000aa"


def error(resp: httpx.Response) -> dict:
    return resp.json()["error"]


def created_id(sim: DataverseSimulator, resp: httpx.Response, set_name: str) -> str:
    url = resp.headers["OData-EntityId"]
    assert url.startswith(f"{sim.api}{set_name}(") and url.endswith(")")
    key = url[len(f"{sim.api}{set_name}(") : -1]
    if "=" not in key:
        return key
    # An upsert by alternate key answers in key form: find the record it names.
    entity = sim.schema.entity(set_name)
    from dvsim.odata_query import parse_key_predicate
    found = sim.store.find_by_key(entity, sim.web_api._key_values(entity, parse_key_predicate(entity, key)))
    assert found is not None
    return found


def test_create_returns_204_and_entity_id(sim: DataverseSimulator, client: httpx.Client) -> None:
    resp = client.post("accounts", json={"name": "Contoso", "creditlimit": 1000})
    assert resp.status_code == 204
    assert resp.content == b""
    new_id = created_id(sim, resp, "accounts")
    row = sim.get("accounts", new_id)
    assert row is not None and row["name"] == "Contoso" and row["creditlimit"] == 1000.0
    assert row["statecode"] == 0  # default
    assert row["modifiedon"].endswith("Z") and row["versionnumber"] > 0


def test_create_with_representation_returns_201(sim: DataverseSimulator, client: httpx.Client) -> None:
    resp = client.post(
        "accounts", params={"$select": "name,accountnumber"}, json={"name": "Fabrikam", "accountnumber": "F-1"},
        headers={"Prefer": "return=representation"},
    )
    assert resp.status_code == 201
    assert resp.headers["Preference-Applied"] == "return=representation"
    body = resp.json()
    new_id = created_id(sim, resp, "accounts")
    version = sim.get("accounts", new_id)["versionnumber"]
    assert body == {
        "@odata.context": f"{sim.api}$metadata#accounts(name,accountnumber)/$entity",
        "@odata.etag": f'W/"{version}"',
        "name": "Fabrikam",
        "accountnumber": "F-1",
        "accountid": new_id,
    }


def test_create_with_client_supplied_id_and_duplicates(sim: DataverseSimulator, client: httpx.Client) -> None:
    rid = str(uuid.uuid4())
    assert client.post("accounts", json={"accountid": rid, "name": "A", "accountnumber": "K-1"}).status_code == 204
    assert sim.get("accounts", rid)["name"] == "A"
    dup_id = client.post("accounts", json={"accountid": rid, "name": "B"})
    assert dup_id.status_code == 412
    dup_key = client.post("accounts", json={"name": "C", "accountnumber": "k-1"})  # keys are case-insensitive
    assert dup_key.status_code == 412
    assert error(dup_key)["code"] == "0x80060892"


def test_upsert_by_alternate_key_with_quote(sim: DataverseSimulator, client: httpx.Client) -> None:
    url = "accounts(accountnumber='O''Neil-1')"
    first = client.patch(url, json={"name": "O'Neil"}, params={"tag": "dualsync"})
    assert first.status_code == 204
    rid = created_id(sim, first, "accounts")
    row = sim.get("accounts", rid)
    assert row["accountnumber"] == "O'Neil-1" and row["name"] == "O'Neil"

    second = client.patch(url, json={"name": "O'Neil & Sons"}, headers={"Prefer": "return=representation"})
    assert second.status_code == 200  # an update with representation
    assert second.json()["name"] == "O'Neil & Sons"
    assert [r["accountid"] for r in sim.rows("accounts")] == [rid]
    assert sim.get("accounts", rid)["versionnumber"] > row["versionnumber"]
    assert ("accounts", rid) not in sim.last_tags  # the last write carried no tag


def test_upsert_by_id_creates_with_that_id(sim: DataverseSimulator, client: httpx.Client) -> None:
    rid = str(uuid.uuid4())
    resp = client.patch(f"accounts({rid})", json={"name": "By id"}, headers={"Prefer": "return=representation"})
    assert resp.status_code == 201
    assert resp.json()["accountid"] == rid


def test_if_none_match_star_is_create_only(sim: DataverseSimulator, client: httpx.Client) -> None:
    url = "accounts(accountnumber='C-1')"
    assert client.patch(url, json={"name": "First"}, headers={"If-None-Match": "*"}).status_code == 204
    resp = client.patch(url, json={"name": "Second"}, headers={"If-None-Match": "*"})
    assert resp.status_code == 412
    assert error(resp) == {"code": "0x80040237", "message": "A record with matching key values already exists."}
    assert sim.rows("accounts")[0]["name"] == "First"


def test_if_match_star_is_update_only(sim: DataverseSimulator, client: httpx.Client) -> None:
    resp = client.patch(f"accounts({MISSING})", json={"name": "x"}, headers={"If-Match": "*"})
    assert resp.status_code == 404
    assert error(resp) == {"code": "0x80040217", "message": f"account With Id = {MISSING} Does Not Exist"}
    resp = client.patch("accounts(accountnumber='U-1')", json={"name": "x"}, headers={"If-Match": "*"})
    assert resp.status_code == 404
    assert error(resp)["message"] == "A record with the specified key values does not exist in account entity"
    assert sim.rows("accounts") == []
    existing = sim.insert("accounts", {"name": "Old", "accountnumber": "U-1"})
    resp = client.patch("accounts(accountnumber='U-1')", json={"name": "New"}, headers={"If-Match": "*"})
    assert resp.status_code == 204
    assert sim.get("accounts", existing["accountid"])["name"] == "New"


def test_optimistic_concurrency_on_update_and_delete(sim: DataverseSimulator, client: httpx.Client) -> None:
    row = sim.insert("accounts", {"name": "V1"})
    url = f"accounts({row['accountid']})"
    etag = client.get(url).json()["@odata.etag"]
    sim.update("accounts", row["accountid"], {"name": "changed elsewhere"})
    stale = client.patch(url, json={"name": "mine"}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert error(stale) == {
        "code": "0x80060882",
        "message": "The version of the existing record doesn't match the RowVersion property provided.",
    }
    assert client.delete(url, headers={"If-Match": etag}).status_code == 412
    current = client.get(url).json()["@odata.etag"]
    assert client.patch(url, json={"name": "mine"}, headers={"If-Match": current}).status_code == 204
    newest = client.get(url).json()["@odata.etag"]
    assert client.delete(url, headers={"If-Match": newest}).status_code == 204
    assert client.get(url).status_code == 404


def test_lookup_bind_by_id_and_by_alternate_key(sim: DataverseSimulator, client: httpx.Client) -> None:
    acct = sim.insert("accounts", {"name": "Parent", "accountnumber": "P'1"})
    by_id = client.post(
        "contacts", json={"lastname": "Ng", "parentcustomerid_account@odata.bind": f"/accounts({acct['accountid']})"}
    )
    assert by_id.status_code == 204
    by_key = client.post(
        "contacts", json={"lastname": "Li", "parentcustomerid_account@odata.bind": "/accounts(accountnumber='P''1')"}
    )
    assert by_key.status_code == 204
    for resp in (by_id, by_key):
        contact = client.get(f"contacts({created_id(sim, resp, 'contacts')})").json()
        assert contact["_parentcustomerid_value"] == acct["accountid"]
    # A null bind clears the lookup.
    cid = created_id(sim, by_id, "contacts")
    assert client.patch(f"contacts({cid})", json={"parentcustomerid_account@odata.bind": None}).status_code == 204
    assert sim.get("contacts", cid)["_parentcustomerid_value"] is None


def test_bind_to_missing_record_is_400(sim: DataverseSimulator, client: httpx.Client) -> None:
    resp = client.post("contacts", json={"lastname": "Ng", "parentcustomerid_account@odata.bind": f"/accounts({MISSING})"})
    assert resp.status_code == 400
    assert error(resp) == {"code": "0x80040217", "message": f"account With Id = {MISSING} Does Not Exist"}
    resp = client.post("contacts", json={"lastname": "Ng", "parentcustomerid_account@odata.bind": "/accounts(accountnumber='X')"})
    assert resp.status_code == 400
    assert error(resp) == {
        "code": "0x80060891",
        "message": "A record with the specified key values does not exist in account entity",
    }
    resp = client.post("contacts", json={"lastname": "Ng", "parentcustomerid_account@odata.bind": f"/contacts({MISSING})"})
    assert resp.status_code == 400
    assert sim.rows("contacts") == []


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        ({"name": "x" * 161}, "0x80044331",
         "A validation error occurred.  The length of the 'name' attribute of the 'account' entity exceeded the "
         "maximum allowed length of '160'."),
        ({"name": "ok", "statecode": 7}, "0x8004431a",
         "A validation error occurred. The value 7 of 'statecode' on record of type 'account' is outside the "
         "valid range. Accepted Values: 0,1"),
        ({"name": "ok", "statecode": "active"}, "0x80048d19",
         "Error identified in Payload provided by the user for Entity :'accounts', For more information on this "
         "error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  "
         "InnerException : Microsoft.OData.ODataException: Cannot convert the literal 'active' to the expected "
         "type 'Edm.Int32'."),
        ({"name": "ok", "foo": 1}, "0x80048d19",
         "Error identified in Payload provided by the user for Entity :'accounts', For more information on this "
         "error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  "
         "InnerException : Microsoft.OData.ODataException: The property 'foo' does not exist on type "
         "'Microsoft.Dynamics.CRM.account'. Make sure to only use property names that are defined by the type or "
         "mark the type as open type."),
    ],
)
def test_validation_errors(sim: DataverseSimulator, client: httpx.Client, payload: dict, code: str, message: str) -> None:
    resp = client.post("accounts", json=payload)
    assert resp.status_code == 400
    assert resp.headers["Content-Type"] == "application/json; odata.metadata=minimal"
    assert error(resp) == {"code": code, "message": message}
    assert sim.rows("accounts") == []


def test_validation_on_update(sim: DataverseSimulator, client: httpx.Client) -> None:
    row = sim.insert("accounts", {"name": "ok"})
    url = f"accounts({row['accountid']})"
    assert client.patch(url, json={"accountnumber": "x" * 21}).json()["error"]["code"] == "0x80044331"
    assert client.patch(url, json={"telephone1": "555"}).status_code == 204  # partial update keeps name
    assert sim.get("accounts", row["accountid"])["name"] == "ok"


def test_tag_is_recorded_per_write(sim: DataverseSimulator, client: httpx.Client) -> None:
    resp = client.post("accounts", params={"tag": "dualsync"}, json={"name": "Tagged"})
    rid = created_id(sim, resp, "accounts")
    assert sim.last_tags[("accounts", rid)] == "dualsync"
    client.patch(f"accounts({rid})", params={"tag": "other"}, json={"name": "Tagged 2"})
    assert sim.last_tags[("accounts", rid)] == "other"
    client.delete(f"accounts({rid})", params={"tag": "dualsync"})
    assert sim.last_tags[("accounts", rid)] == "dualsync"  # deletes keep their tag too


def test_every_write_advances_version_and_modifiedon(sim: DataverseSimulator, client: httpx.Client) -> None:
    resp = client.post("accounts", json={"name": "A"})
    rid = created_id(sim, resp, "accounts")
    v1 = sim.get("accounts", rid)["versionnumber"]
    client.patch(f"accounts({rid})", json={"name": "B"})
    row = sim.get("accounts", rid)
    assert row["versionnumber"] > v1
    assert row["modifiedon"] >= row["createdon"]
    assert client.delete(f"accounts({MISSING})").status_code == 404


def test_malformed_body_is_400(client: httpx.Client) -> None:
    resp = client.post("accounts", content=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "0x80048d19"
