"""`dualsync check` against Dataverse: the simulator's table definitions (`EntityDefinitions`, real HTTP on
loopback) name what a flow may read (a lookup as `_x_value`) and write (a lookup only by binding a
navigation property); an unreachable system is one finding that names it and never its secret."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from demo import sample_data
from dvsim.pytest_fixtures import dataverse_sim  # noqa: F401
from shared.cli import app as cli
from shared.config import parse_config
from shared.connectors import build_connector
from shared.engine.preflight import preflight

TOKEN = "static-preflight-token-93ab"

FLOWS = """\
systems:
  crm: {{kind: dataverse, url: "{url}", auth: {{static_token: "env:DV_TOKEN"}}}}
  erp: {{kind: sql, url: "env:ERP_DB_URL"}}
flows:
  accounts-to-customers:
    source: {{system: crm, entity: accounts, key: accountid, changes: change_tracking, select: [name, accountnumber, {select}, _primarycontactid_value]}}
    target: {{system: erp, entity: customers, key: account_number}}
    fields:
      - {{from: accountnumber, to: account_number}}
      - {{from: {name_from}, to: name}}
      - {{from: _primarycontactid_value, to: crm_id}}
  customers-to-accounts:
    source: {{system: erp, entity: customers, key: account_number, watermark: account_number}}
    target: {{system: crm, entity: {target_entity}, key: accountnumber}}
    fields:
      - {{from: account_number, to: accountnumber}}
      - {{from: name, to: {name_to}}}
      - {{from: crm_id, to: "primarycontactid@odata.bind", bind: contacts}}
  people-to-contacts:
    source: {{system: erp, entity: contacts, key: contact_no, watermark: contact_no}}
    target: {{system: crm, entity: contacts, key: dualsync_externalid}}
    fields:
      - {{from: contact_no, to: dualsync_externalid}}
      - {{from: customer_no, to: "parentcustomerid_{{table}}@odata.bind", table_from: first_name,
         bind: {{account: accounts, contactx: contacts}}}}
"""


@pytest.fixture
def erp(tmp_path, monkeypatch):
    _, erp_url = sample_data.build(tmp_path / "data", accounts=0, contacts=0, with_bad_rows=False)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    monkeypatch.setenv("DV_TOKEN", TOKEN)
    create_engine(erp_url).dispose()
    return erp_url


def _check(tmp_path, text: str) -> tuple[int, dict]:
    path = tmp_path / "flows.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(cli, ["check", "--json", "--config", str(path)])
    return result.exit_code, json.loads(result.stdout)


def test_the_simulator_serves_table_definitions(dataverse_sim):  # noqa: F811
    with httpx.Client(base_url=dataverse_sim.api, headers={"Authorization": "Bearer x"}) as client:
        answer = client.get("EntityDefinitions", params={
            "$filter": "EntitySetName eq 'contacts'", "$select": "LogicalName",
            "$expand": "Attributes($select=LogicalName,AttributeType),ManyToOneRelationships"}).json()
        [contact] = answer["value"]
        assert contact["LogicalName"] == "contact" and "EntitySetName" not in contact
        types = {a["LogicalName"]: a["AttributeType"] for a in contact["Attributes"]}
        assert types["parentcustomerid"] == "Customer" and types["contactid"] == "Uniqueidentifier"
        navs = {r["ReferencingEntityNavigationPropertyName"] for r in contact["ManyToOneRelationships"]}
        assert navs == {"parentcustomerid_account", "parentcustomerid_contact"}
        keyed = client.get("EntityDefinitions(LogicalName='account')", params={"$select": "EntitySetName"})
        assert keyed.json()["EntitySetName"] == "accounts"
        assert client.get("EntityDefinitions(LogicalName='nope')").status_code == 404
        assert client.get("EntityDefinitions", params={"$filter": "startswith(LogicalName,'a')"}).status_code == 400


def test_a_clean_pair_passes(tmp_path, erp, dataverse_sim):  # noqa: F811
    code, report = _check(tmp_path, FLOWS.format(
        url=dataverse_sim.url, select="telephone1", name_from="name", target_entity="accounts", name_to="name")
        .replace("contactx", "contact"))
    assert (code, report) == (0, {"ok": True, "findings": []})


def test_names_that_dataverse_does_not_have_are_found_with_the_nearest(tmp_path, erp, dataverse_sim):  # noqa: F811
    code, report = _check(tmp_path, FLOWS.format(
        url=dataverse_sim.url, select="Name", name_from="Name", target_entity="accounts",
        name_to="primarycontactid"))
    assert code == 2
    found = {(f["flow"], f["field"]): f for f in report["findings"]}
    assert found["accounts-to-customers", "source.select[2]"]["nearest"] == "name"
    assert found["accounts-to-customers", "fields[1].from"]["nearest"] == "name"
    # A lookup is written only by binding its navigation property, never by its own name.
    assert found["customers-to-accounts", "fields[1].to"]["name"] == "primarycontactid"
    bind = found["people-to-contacts", "fields[1].to"]
    assert bind["name"] == "parentcustomerid_contactx" and bind["nearest"] == "parentcustomerid_contact"
    assert len(report["findings"]) == 4


def test_a_missing_entity_names_the_nearest_entity_set(tmp_path, erp, dataverse_sim):  # noqa: F811
    code, report = _check(tmp_path, FLOWS.format(
        url=dataverse_sim.url, select="telephone1", name_from="name", target_entity="acounts", name_to="name")
        .replace("contactx", "contact"))
    assert code == 2
    [finding] = report["findings"]
    assert (finding["field"], finding["nearest"]) == ("target.entity", "accounts")


def test_an_unreachable_system_is_one_finding_without_its_secret(tmp_path, erp):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = parse_config({
        "systems": {"crm": {"kind": "dataverse", "url": f"http://127.0.0.1:{port}", "timeout_seconds": 2,
                            "auth": {"static_token": "env:DV_TOKEN"}},
                    "erp": {"kind": "sql", "url": "env:ERP_DB_URL"}},
        "flows": {"f": {"source": {"system": "crm", "entity": "accounts", "key": "accountid"},
                        "target": {"system": "erp", "entity": "customers", "key": "account_number"},
                        "fields": [{"from": "accountnumber", "to": "account_number"}]}}})
    findings = preflight(config, lambda name: build_connector(name, config.systems[name]))
    [finding] = findings
    assert finding.system == "crm" and finding.flow is None and finding.problem.startswith("cannot connect")
    assert TOKEN not in finding.line()


def test_the_demo_flows_check_clean_against_the_simulator(tmp_path):
    from demo import story

    demo = story.setup(tmp_path / "demo")
    try:
        # Lookups read as _x_value, binds to standard and custom tables, alternate keys, system columns.
        assert preflight(demo.app.config, demo.app.connector) == []
    finally:
        demo.close()
