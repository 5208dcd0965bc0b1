"""Where Dataverse is stricter, or more lenient, than a naive simulator: polymorphic lookups and their
annotation, per-table change tracking, lookup columns in alternate keys, status reason pairs, business-required
columns, key-form entity ids, activity ids, unreadable delta tokens."""

from __future__ import annotations

import httpx

from dvsim import DataverseSimulator

LOGICAL = "@Microsoft.Dynamics.CRM.lookuplogicalname"
ANNOTATIONS = 'odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname"'


def test_a_customer_lookup_points_at_an_account_or_a_contact_and_says_which(sim: DataverseSimulator,
                                                                           client: httpx.Client) -> None:
    account = sim.insert("accounts", {"name": "Contoso"})
    parent = sim.insert("contacts", {"lastname": "Parent"})
    assert client.post("contacts", json={"lastname": "Of account", "parentcustomerid_account@odata.bind":
                                         f"/accounts({account['accountid']})"}).status_code == 204
    assert client.post("contacts", json={"lastname": "Of contact", "parentcustomerid_contact@odata.bind":
                                         f"/contacts({parent['contactid']})"}).status_code == 204
    # The navigation property names the table: a contact bound through the account property is refused.
    wrong = client.post("contacts", json={"lastname": "Wrong", "parentcustomerid_account@odata.bind":
                                          f"/contacts({parent['contactid']})"})
    assert wrong.status_code == 400

    query = {"$select": "lastname,_parentcustomerid_value", "$filter": "_parentcustomerid_value ne null",
             "$orderby": "lastname"}
    plain = client.get("contacts", params=query).json()["value"]
    assert all(not any("@Microsoft" in k for k in row) for row in plain)  # only when asked for
    annotated = client.get("contacts", params=query, headers={"Prefer": ANNOTATIONS})
    rows = {r["lastname"]: r for r in annotated.json()["value"]}
    assert rows["Of account"]["_parentcustomerid_value"] == account["accountid"]
    assert rows["Of account"]["_parentcustomerid_value" + LOGICAL] == "account"
    assert rows["Of contact"]["_parentcustomerid_value"] == parent["contactid"]
    assert rows["Of contact"]["_parentcustomerid_value" + LOGICAL] == "contact"
    assert ANNOTATIONS in annotated.headers["Preference-Applied"]


def test_asking_for_annotations_on_a_change_tracking_read_keeps_the_delta_link_on_the_last_page(
        sim: DataverseSimulator, client: httpx.Client) -> None:
    # A reported Dataverse issue (MicrosoftDocs/powerapps-docs#439, formatted values on 8.2) lost the delta
    # link when annotations were included; the lookuplogicalname annotation must not.
    account = sim.insert("accounts", {"name": "Contoso"})
    for i in range(5):
        sim.insert("contacts", {"lastname": f"C{i}", "parentcustomerid_account@odata.bind":
                                f"/accounts({account['accountid']})"})
    prefer = {"Prefer": f"odata.track-changes,odata.maxpagesize=2,{ANNOTATIONS}"}
    page = client.get("contacts", params={"$select": "lastname,_parentcustomerid_value"}, headers=prefer).json()
    pages = [page]
    while "@odata.nextLink" in pages[-1]:
        pages.append(client.get(pages[-1]["@odata.nextLink"], headers=prefer).json())
    assert len(pages) == 3 and "@odata.deltaLink" in pages[-1]
    assert all(r["_parentcustomerid_value" + LOGICAL] == "account" for p in pages for r in p["value"])
    sim.insert("contacts", {"lastname": "late", "parentcustomerid_account@odata.bind":
                            f"/accounts({account['accountid']})"})
    delta = client.get(pages[-1]["@odata.deltaLink"], headers=prefer).json()
    assert [r["_parentcustomerid_value" + LOGICAL] for r in delta["value"]] == ["account"]
    assert "@odata.deltaLink" in delta


def test_a_table_without_change_tracking_answers_a_plain_query(sim: DataverseSimulator,
                                                               client: httpx.Client) -> None:
    for i in range(3):
        sim.insert("pricelevels", {"name": f"P{i}"})
    first = client.get("pricelevels", headers={"Prefer": "odata.track-changes,odata.maxpagesize=2"})
    assert first.status_code == 200
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=2"  # track-changes not applied
    body = first.json()
    assert "@odata.nextLink" in body and "@odata.deltaLink" not in body
    last = client.get(body["@odata.nextLink"], headers={"Prefer": "odata.track-changes,odata.maxpagesize=2"})
    assert "@odata.deltaLink" not in last.json() and "@odata.nextLink" not in last.json()
    assert len(last.json()["value"]) == 1


def test_an_alternate_key_on_a_lookup_column_takes_a_bare_guid(sim: DataverseSimulator,
                                                               client: httpx.Client) -> None:
    contact = sim.insert("contacts", {"lastname": "Lee"})
    cid = contact["contactid"]
    bare = client.patch(f"dualsync_contactroles(_dualsync_contactid_value={cid},dualsync_role='owner')",
                        json={"dualsync_note": "first"})
    assert bare.status_code == 204, bare.text
    (row,) = sim.rows("dualsync_contactroles")
    assert row["_dualsync_contactid_value"] == cid and row["dualsync_role"] == "owner"
    assert bare.headers["OData-EntityId"] == (
        f"{sim.api}dualsync_contactroles(_dualsync_contactid_value={cid},dualsync_role='owner')")
    quoted = client.patch(f"dualsync_contactroles(_dualsync_contactid_value='{cid}',dualsync_role='owner')",
                          json={"dualsync_note": "second"})
    assert quoted.status_code == 400
    assert "Edm.Guid" in quoted.json()["error"]["message"]
    assert sim.rows("dualsync_contactroles")[0]["dualsync_note"] == "first"


def test_an_upsert_by_alternate_key_answers_its_entity_id_in_key_form(sim: DataverseSimulator,
                                                                       client: httpx.Client) -> None:
    resp = client.patch("accounts(accountnumber='O''Neil-1')", json={"name": "O'Neil"})
    assert resp.status_code == 204
    assert resp.headers["OData-EntityId"] == f"{sim.api}accounts(accountnumber='O''Neil-1')"
    by_id = client.post("accounts", json={"name": "posted"})
    assert by_id.headers["OData-EntityId"].startswith(f"{sim.api}accounts(") and "=" not in \
        by_id.headers["OData-EntityId"]


def test_business_required_columns_are_not_enforced_by_the_web_api(sim: DataverseSimulator,
                                                                   client: httpx.Client) -> None:
    assert client.post("accounts", json={"accountnumber": "R-1"}).status_code == 204
    (row,) = sim.rows("accounts")
    assert row["name"] is None
    assert client.patch(f"accounts({row['accountid']})", json={"name": None}).status_code == 204


def test_statecode_and_statuscode_must_be_a_valid_pair(sim: DataverseSimulator, client: httpx.Client) -> None:
    created = client.post("accounts", json={"name": "A"}, headers={"Prefer": "return=representation"}).json()
    assert (created["statecode"], created["statuscode"]) == (0, 1)
    url = f"accounts({created['accountid']})"
    assert client.patch(url, json={"statecode": 1}).status_code == 204
    assert (sim.get("accounts", created["accountid"])["statuscode"]) == 2  # the state's default reason
    bad = client.patch(url, json={"statecode": 0, "statuscode": 2})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"].startswith("2 is not a valid status code for state code accountState.0")
    assert client.patch(url, json={"statuscode": 1}).status_code == 400  # still inactive: 1 is an active reason


def test_orders_and_invoices_are_created_in_their_default_state(sim: DataverseSimulator,
                                                                client: httpx.Client) -> None:
    order = client.post("salesorders", json={"ordernumber": "O-1", "statecode": 3, "statuscode": 100001},
                        headers={"Prefer": "return=representation"})
    assert order.status_code == 201
    assert (order.json()["statecode"], order.json()["statuscode"]) == (0, 1)
    invoice = client.patch("invoices(invoicenumber='I-1')", json={"statecode": 2},
                           headers={"Prefer": "return=representation"})
    assert (invoice.json()["statecode"], invoice.json()["statuscode"]) == (0, 1)
    # An existing order moves on with an update.
    moved = client.patch(f"salesorders({order.json()['salesorderid']})", json={"statecode": 3, "statuscode": 100001})
    assert moved.status_code == 204


def test_an_activity_table_is_keyed_by_activityid_and_its_regarding_lookup_is_polymorphic(
        sim: DataverseSimulator, client: httpx.Client) -> None:
    contact = sim.insert("contacts", {"lastname": "Lee"})
    resp = client.post("tasks", json={"subject": "Call", "regardingobjectid_contact_task@odata.bind":
                                      f"/contacts({contact['contactid']})"},
                       headers={"Prefer": f"return=representation,{ANNOTATIONS}"})
    assert resp.status_code == 201
    task = resp.json()
    assert "activityid" in task and "taskid" not in task
    assert task["_regardingobjectid_value" + LOGICAL] == "contact"
    assert (task["statecode"], task["statuscode"]) == (0, 2)


def test_an_unreadable_delta_token_is_a_400(sim: DataverseSimulator, client: httpx.Client) -> None:
    resp = client.get("accounts", params={"$deltatoken": "not-a-token"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "0x80060888"
