"""The Dataverse connector against the simulator where it is as strict as Dataverse: polymorphic lookups, writes
made during a full change-tracking read, change tracking judged on the last page, stored links the service
refuses, lookup columns in alternate keys, activity tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from dvsim import DataverseSimulator
from dvsim.pytest_fixtures import dataverse_sim, dataverse_sim_factory  # noqa: F401
from shared.config import SourceSpec, TargetSpec
from shared.connectors.dataverse import REBASELINE_NOTE, UNUSABLE_LINK_NOTE, DataverseConnector
from shared.engine.pull import pull_flow
from shared.errors import ConfigError
from shared.ports.connector import WriteOp
from tests.contracts.connector_helpers import keys_of, read_all
from tests.integration.test_dataverse_connector import _token, drain, kinds, make_app, system  # noqa: F401

LOGICAL = "@Microsoft.Dynamics.CRM.lookuplogicalname"
CONTACTS_CT = SourceSpec(system="crm", entity="contacts", key=["contactid"], changes="change_tracking",
                         select=["lastname", "_parentcustomerid_value"])
ACCOUNTS_CT = SourceSpec(system="crm", entity="accounts", key=["accountid"], changes="change_tracking",
                         select=["name", "accountnumber"])


@pytest.fixture
def sim(dataverse_sim: DataverseSimulator) -> DataverseSimulator:  # noqa: F811
    return dataverse_sim


def connector(sim: DataverseSimulator) -> DataverseConnector:
    return DataverseConnector.from_config("crm", system(sim))


@pytest.fixture
def crm(sim):
    c = connector(sim)
    yield c
    c.close()


# ------------------------------------------------------------------------------------------ polymorphic lookups


def test_every_read_says_which_table_a_lookup_points_to(sim, crm):
    account = sim.insert("accounts", {"name": "Contoso"})
    parent = sim.insert("contacts", {"lastname": "Parent", "parentcustomerid_account@odata.bind":
                                     f"/accounts({account['accountid']})"})
    child = sim.insert("contacts", {"lastname": "Child", "parentcustomerid_contact@odata.bind":
                                    f"/contacts({parent['contactid']})"})
    tables = {r.key: r.values.get("_parentcustomerid_value" + LOGICAL)
              for p in read_all(crm, CONTACTS_CT, None, 1) for r in p.records}
    assert tables == {parent["contactid"]: "account", child["contactid"]: "contact"}
    watermark = CONTACTS_CT.model_copy(update={"changes": "watermark"})
    assert {r.key: r.values.get("_parentcustomerid_value" + LOGICAL)
            for p in read_all(crm, watermark, None, 10) for r in p.records} == tables
    assert crm.read_record(CONTACTS_CT, child["contactid"]).values["_parentcustomerid_value" + LOGICAL] == "contact"


ERP = sa.MetaData()
sa.Table("erp_customers", ERP, sa.Column("account_number", sa.String(20), primary_key=True),
         sa.Column("name", sa.Text), sa.Column("modified_at", sa.DateTime))
sa.Table("erp_people", ERP, sa.Column("person_no", sa.String(20), primary_key=True),
         sa.Column("last_name", sa.String(50)), sa.Column("parent_no", sa.String(20)),
         sa.Column("parent_type", sa.String(10)), sa.Column("modified_at", sa.DateTime))
sa.Table("people", ERP, sa.Column("person_no", sa.String(20), primary_key=True),
         sa.Column("last_name", sa.String(50)), sa.Column("parent_no", sa.String(40)),
         sa.Column("parent_type", sa.String(10)))
sa.Table("customers", ERP, sa.Column("account_number", sa.String(20), primary_key=True),
         sa.Column("name", sa.Text))

CUSTOMERS_TO_CRM = {
    "source": {"system": "erp", "entity": "erp_customers", "key": "account_number", "watermark": "modified_at"},
    "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
    "fields": [{"from": "account_number", "to": "accountnumber"}, {"from": "name", "to": "name"}],
}
PEOPLE_TO_CRM = {
    "source": {"system": "erp", "entity": "erp_people", "key": "person_no", "watermark": "modified_at"},
    "target": {"system": "crm", "entity": "contacts", "key": "dualsync_externalid"},
    "fields": [{"from": "person_no", "to": "dualsync_externalid"}, {"from": "last_name", "to": "lastname"},
               {"from": "parent_no", "to": "parentcustomerid_{table}@odata.bind", "table_from": "parent_type",
                "lookup": {"account": "customers-to-crm", "contact": "people-to-crm"},
                "bind": {"account": "accounts(accountnumber)", "contact": "contacts(dualsync_externalid)"}}],
}


@pytest.fixture
def erp(tmp_path, monkeypatch) -> sa.Engine:
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    monkeypatch.setenv("ERP_URL", url)
    engine = sa.create_engine(url)
    ERP.create_all(engine)
    yield engine
    engine.dispose()


def insert_erp(engine: sa.Engine, table: str, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(ERP.tables[table].insert(), rows)


def test_a_contact_whose_parent_is_a_contact_is_bound_through_the_contact_property(tmp_path, sim, erp):
    at = datetime(2026, 1, 1)
    insert_erp(erp, "erp_customers", [{"account_number": "C-1", "name": "Contoso", "modified_at": at}])
    insert_erp(erp, "erp_people", [
        {"person_no": "P-1", "last_name": "Boss", "parent_no": "C-1", "parent_type": "account", "modified_at": at},
        {"person_no": "P-2", "last_name": "Aide", "parent_no": "P-1", "parent_type": "contact", "modified_at": at}])
    app = make_app(tmp_path, sim, {"customers-to-crm": CUSTOMERS_TO_CRM, "people-to-crm": PEOPLE_TO_CRM})
    pull_flow(app, "customers-to-crm", owner="test")
    assert kinds(drain(app)) == {"applied": 1}
    pull_flow(app, "people-to-crm", owner="test")
    assert kinds(drain(app)).get("applied") == 2
    (account,) = sim.rows("accounts")
    contacts = {r["dualsync_externalid"]: r for r in sim.rows("contacts")}
    assert contacts["P-1"]["_parentcustomerid_value"] == account["accountid"]
    assert contacts["P-2"]["_parentcustomerid_value"] == contacts["P-1"]["contactid"]
    with httpx.Client(base_url=sim.api, headers={"Authorization": "Bearer x", "Prefer":
                      'odata.include-annotations="*"'}) as client:
        row = client.get(f"contacts({contacts['P-2']['contactid']})").json()
    assert row["_parentcustomerid_value" + LOGICAL] == "contact"
    app.close()


def test_a_crm_lookup_finds_its_parent_through_the_flow_of_the_table_it_points_to(tmp_path, sim, erp):
    account = sim.insert("accounts", {"name": "Contoso", "accountnumber": "C-1"})
    boss = sim.insert("contacts", {"lastname": "Boss", "dualsync_externalid": "P-1",
                                   "parentcustomerid_account@odata.bind": f"/accounts({account['accountid']})"})
    sim.insert("contacts", {"lastname": "Aide", "dualsync_externalid": "P-2",
                            "parentcustomerid_contact@odata.bind": f"/contacts({boss['contactid']})"})
    flows = {
        "accounts-to-erp": {
            "source": {"system": "crm", "entity": "accounts", "key": "accountid", "changes": "change_tracking",
                       "select": ["name", "accountnumber"]},
            "target": {"system": "erp", "entity": "customers", "key": "account_number"},
            "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"}]},
        "contacts-to-erp": {
            "source": {"system": "crm", "entity": "contacts", "key": "contactid", "changes": "change_tracking",
                       "select": ["lastname", "dualsync_externalid", "_parentcustomerid_value"]},
            "target": {"system": "erp", "entity": "people", "key": "person_no"},
            "fields": [{"from": "dualsync_externalid", "to": "person_no"}, {"from": "lastname", "to": "last_name"},
                       {"from": "_parentcustomerid_value", "to": "parent_no",
                        "lookup": {"account": "accounts-to-erp", "contact": "contacts-to-erp"}},
                       {"from": "_parentcustomerid_value" + LOGICAL, "to": "parent_type"}]},
    }
    app = make_app(tmp_path, sim, flows)
    pull_flow(app, "accounts-to-erp", owner="test")
    drain(app)
    pull_flow(app, "contacts-to-erp", owner="test")
    assert kinds(drain(app)).get("applied") == 2
    with erp.connect() as conn:
        people = {r.person_no: r for r in conn.execute(sa.select(ERP.tables["people"]))}
    assert (people["P-1"].parent_no, people["P-1"].parent_type) == ("C-1", "account")
    assert (people["P-2"].parent_no, people["P-2"].parent_type) == ("P-1", "contact")
    app.close()


# ------------------------------------------------------------------------------------------ full reads


def test_changes_made_while_a_full_read_runs_are_pulled(sim, crm):
    rows = [sim.insert("accounts", {"name": f"A{i}", "accountnumber": f"N-{i}"}) for i in range(5)]
    pages = crm.read_changes(ACCOUNTS_CT, None, 2)
    first = next(pages)
    assert keys_of([first]) == [rows[0]["accountid"], rows[1]["accountid"]]
    sim.update("accounts", rows[0]["accountid"], {"name": "read, then renamed"})
    sim.update("accounts", rows[4]["accountid"], {"name": "renamed before it was read"})
    rest = list(pages)
    delta = read_all(crm, ACCOUNTS_CT, rest[-1].position, 2)
    seen: dict[str, list[str]] = {}
    for page in [first, *rest, *delta]:
        for record in page.records:
            seen.setdefault(record.key, []).append(record.values["name"])
    assert seen[rows[0]["accountid"]][-1] == "read, then renamed"
    assert seen[rows[4]["accountid"]][-1] == "renamed before it was read"
    # Rows the read returned at their current version are not sent again.
    assert all(len(names) == len(set(names)) for names in seen.values())
    assert seen[rows[1]["accountid"]] == ["A1"]


# ------------------------------------------------------------------------------------------ tracking off / on


def test_change_tracking_is_judged_by_the_last_page_not_by_preference_applied(dataverse_sim_factory):  # noqa: F811
    sim = dataverse_sim_factory(echo_track_changes=False)
    for i in range(3):
        sim.insert("accounts", {"name": f"A{i}"})
    crm = connector(sim)
    try:
        pages = read_all(crm, ACCOUNTS_CT, None, 2)
        assert len(pages) == 2 and pages[-1].position["delta_link"]
        for i in range(3):
            sim.insert("pricelevels", {"name": f"P{i}"})
        untracked = SourceSpec(system="crm", entity="pricelevels", key=["pricelevelid"], changes="change_tracking")
        with pytest.raises(ConfigError, match="change tracking is not enabled"):
            list(crm.read_changes(untracked, None, 2))
    finally:
        crm.close()


def test_a_stored_delta_link_the_service_cannot_read_rebaselines(sim, crm):
    rows = [sim.insert("accounts", {"name": f"A{i}"}) for i in range(3)]
    pages = read_all(crm, ACCOUNTS_CT, None, 10)
    link = pages[-1].position["delta_link"]
    broken = {"next_link": None, "delta_link": link.split("$deltatoken=")[0] + "$deltatoken=0000%21garbage"}
    again = read_all(crm, ACCOUNTS_CT, broken, 10)
    assert all(p.snapshot for p in again)
    assert again[0].notes[0].startswith(UNUSABLE_LINK_NOTE) and "0x80060888" in again[0].notes[0]
    assert sorted(keys_of(again)) == sorted(r["accountid"] for r in rows)
    sim.expire_all_delta_tokens()
    assert read_all(crm, ACCOUNTS_CT, again[-1].position, 10)[0].notes == [REBASELINE_NOTE]


# ------------------------------------------------------------------------------------------ keys and ids


def test_an_alternate_key_with_a_lookup_column_is_addressed_by_a_bare_guid(sim, crm):
    contact = sim.insert("contacts", {"lastname": "Lee"})
    target = TargetSpec(system="crm", entity="dualsync_contactroles", key=["_dualsync_contactid_value", "dualsync_role"])
    key = {"_dualsync_contactid_value": contact["contactid"].upper(), "dualsync_role": "owner"}
    (result,) = crm.write_batch(target, [WriteOp(kind="upsert", key=key, values={"dualsync_note": "first"})])
    assert result.ok, result.error
    (row,) = sim.rows("dualsync_contactroles")
    assert row["_dualsync_contactid_value"] == contact["contactid"] and row["dualsync_note"] == "first"
    results = crm.write_batch(target, [WriteOp(kind="upsert", key=key, values={"dualsync_note": "again"}),
                                       WriteOp(kind="upsert", key={**key, "dualsync_role": "deputy"}, values={})])
    assert all(r.ok for r in results), [r.error for r in results]
    assert len(sim.rows("dualsync_contactroles")) == 2


def test_an_activity_table_is_keyed_by_activityid(sim, crm):
    tasks = SourceSpec(system="crm", entity="tasks", key=["activityid"], changes="change_tracking")
    target = TargetSpec(system="crm", entity="tasks", key=["activityid"])
    task_id = "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    (result,) = crm.write_batch(target, [WriteOp(kind="upsert", key={"activityid": task_id}, values={"subject": "Call"})])
    assert result.ok, result.error
    pages = read_all(crm, tasks, None, 10)
    assert keys_of(pages) == [task_id]
    sim.delete("tasks", task_id)
    (gone,) = [r for p in read_all(crm, tasks, pages[-1].position, 10) for r in p.records]
    assert gone.deleted and gone.key == task_id  # a delete names the row by its primary id


@pytest.mark.parametrize(("status", "code", "rebaselines"), [
    (400, "0x80044352", True), (400, "0x80060888", True), (404, "0x8006088a", True), (410, "", True),
    (429, "0x80072322", False), (503, "0x80040216", False)])
def test_a_client_error_to_a_stored_delta_link_rebaselines_and_a_transient_one_does_not(status, code, rebaselines):
    from shared.connectors.odata.auth import StaticTokenProvider
    from shared.errors import TransientError

    base = "https://org.example/api/data/v9.2/"

    def answer(request: httpx.Request) -> httpx.Response:
        if "$deltatoken" in str(request.url):
            return httpx.Response(status, json={"error": {"code": code, "message": "refused"}},
                                  headers={"Retry-After": "1"})
        if "modifiedon ge" in request.url.params.get("$filter", ""):
            return httpx.Response(200, json={"value": []})
        return httpx.Response(200, json={"value": [{"accountid": "a1", "versionnumber": 5, "name": "A"}],
                                         "@odata.deltaLink": base + "accounts?$deltatoken=9%2101%2f01%2f2026"})

    crm = DataverseConnector("https://org.example", StaticTokenProvider("env:DV_TOKEN"),
                             transport=httpx.MockTransport(answer))
    position = {"next_link": None, "delta_link": base + "accounts?$deltatoken=1%2101%2f01%2f2026"}
    if rebaselines:
        (page,) = list(crm.read_changes(ACCOUNTS_CT, position, 10))
        assert page.snapshot and [r.key for r in page.records] == ["a1"]
    else:
        with pytest.raises(TransientError):
            list(crm.read_changes(ACCOUNTS_CT, position, 10))
