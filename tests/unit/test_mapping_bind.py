"""`bind:` on a field map: a looked-up key becomes a Dataverse `@odata.bind` reference."""

from __future__ import annotations

import pytest

from shared.config import parse_config
from shared.engine.mapping import bind_reference, lookup_requests, map_record
from shared.errors import ConfigError, MissingReferenceError, PermanentError, Reason

GUID = "6F9619FF-8B86-D011-B42D-00C04FC964FF"


def config(bind: str, to: str = "parentcustomerid_account@odata.bind"):
    return parse_config({
        "systems": {"erp": {"kind": "sql", "url": "sqlite://"},
                    "crm": {"kind": "dataverse", "url": "https://org.example", "auth": {"static_token": "env:T"}}},
        "flows": {
            "customers": {
                "source": {"system": "erp", "entity": "customers", "key": "no"},
                "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
                "fields": [{"from": "no", "to": "accountnumber"}],
            },
            "contacts": {
                "source": {"system": "erp", "entity": "contacts", "key": "no"},
                "target": {"system": "crm", "entity": "contacts", "key": "dualsync_externalid"},
                "fields": [{"from": "no", "to": "dualsync_externalid"},
                           {"from": "customer", "to": to, "lookup": "customers", "bind": bind}],
            },
        },
    })


def test_bind_by_alternate_key_doubles_quotes():
    flow = config("accounts(accountnumber)").flows["contacts"]
    values = map_record("contacts", flow, "K1", {"no": "K1", "customer": "c-1"}, {("customers", "c-1"): "O'Neil"})
    assert values == {"dualsync_externalid": "K1",
                      "parentcustomerid_account@odata.bind": "/accounts(accountnumber='O''Neil')"}


def test_bind_by_primary_id_is_a_bare_guid():
    flow = config("accounts").flows["contacts"]
    values = map_record("contacts", flow, "K1", {"no": "K1", "customer": "c-1"}, {("customers", "c-1"): GUID})
    assert values["parentcustomerid_account@odata.bind"] == f"/accounts({GUID.lower()})"


def test_bind_to_a_primary_id_that_is_not_a_guid_is_a_mapping_error():
    flow = config("accounts").flows["contacts"]
    with pytest.raises(PermanentError) as raised:
        map_record("contacts", flow, "K1", {"no": "K1", "customer": "c-1"}, {("customers", "c-1"): "A-1"})
    assert raised.value.reason == Reason.MAPPING_FAILED
    message = str(raised.value)
    assert "field parentcustomerid_account@odata.bind (from customer)" in message and "GUID" in message


def test_empty_lookup_stays_empty_and_a_missing_parent_still_waits():
    flow = config("accounts(accountnumber)").flows["contacts"]
    assert map_record("contacts", flow, "K1", {"no": "K1", "customer": None}, {})[
        "parentcustomerid_account@odata.bind"] is None
    with pytest.raises(MissingReferenceError):
        map_record("contacts", flow, "K1", {"no": "K1", "customer": "c-9"}, {})


def test_multi_part_alternate_key():
    assert bind_reference("contacts(lastname,emailaddress1)", '["Lee","lee@example.com"]') == (
        "/contacts(lastname='Lee',emailaddress1='lee@example.com')")


def test_bind_config_is_checked():
    with pytest.raises(ConfigError, match="bind needs a 'to' of the form"):
        config("accounts", to="parent_id")
    with pytest.raises(ConfigError, match="bind"):
        config("accounts(accountnumber")


def test_a_lookup_column_in_a_bind_key_is_a_bare_guid():
    assert bind_reference("dualsync_contactroles(_dualsync_contactid_value,dualsync_role)",
                          f'["{GUID}","owner"]') == (
        f"/dualsync_contactroles(_dualsync_contactid_value={GUID.lower()},dualsync_role='owner')")
    with pytest.raises(ValueError, match="not a GUID"):
        bind_reference("dualsync_contactroles(_dualsync_contactid_value,dualsync_role)", '["C-1","owner"]')


def polymorphic(**field):
    return parse_config({
        "systems": {"erp": {"kind": "sql", "url": "sqlite://"},
                    "crm": {"kind": "dataverse", "url": "https://org.example", "auth": {"static_token": "env:T"}}},
        "flows": {
            "customers": {"source": {"system": "erp", "entity": "customers", "key": "no"},
                          "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
                          "fields": [{"from": "no", "to": "accountnumber"}]},
            "people": {"source": {"system": "erp", "entity": "people", "key": "no"},
                       "target": {"system": "crm", "entity": "contacts", "key": "dualsync_externalid"},
                       "fields": [{"from": "no", "to": "dualsync_externalid"},
                                  {"from": "parent", "to": "parentcustomerid_{table}@odata.bind",
                                   "lookup": {"account": "customers", "contact": "people"},
                                   "bind": {"account": "accounts(accountnumber)",
                                            "contact": "contacts(dualsync_externalid)"}, **field}]},
        },
    })


def test_a_polymorphic_lookup_binds_through_the_property_of_the_table_it_points_to():
    flow = polymorphic(table_from="kind").flows["people"]
    lookups = {("customers", "c-1"): "A-1", ("people", "p-1"): "K-1"}
    as_account = map_record("people", flow, "K2", {"no": "K2", "parent": "c-1", "kind": "account"}, lookups)
    assert as_account["parentcustomerid_account@odata.bind"] == "/accounts(accountnumber='A-1')"
    assert "parentcustomerid_contact@odata.bind" not in as_account
    as_contact = map_record("people", flow, "K2", {"no": "K2", "parent": "p-1", "kind": "Contact"}, lookups)
    assert as_contact["parentcustomerid_contact@odata.bind"] == "/contacts(dualsync_externalid='K-1')"
    cleared = map_record("people", flow, "K2", {"no": "K2", "parent": None, "kind": None}, lookups)
    assert cleared == {"dualsync_externalid": "K2", "parentcustomerid_account@odata.bind": None,
                       "parentcustomerid_contact@odata.bind": None}


def test_a_polymorphic_lookup_to_a_table_it_does_not_map_is_a_mapping_error_naming_it():
    flow = polymorphic(table_from="kind").flows["people"]
    with pytest.raises(PermanentError) as raised:
        map_record("people", flow, "K2", {"no": "K2", "parent": "x", "kind": "lead"}, {})
    assert raised.value.reason == Reason.MAPPING_FAILED
    assert "points to a lead" in str(raised.value) and "account, contact" in str(raised.value)
    with pytest.raises(PermanentError, match="kind is empty"):
        map_record("people", flow, "K2", {"no": "K2", "parent": "x", "kind": None}, {})


def test_the_table_defaults_to_dataverses_lookuplogicalname_annotation():
    flow = polymorphic().flows["people"]
    payload = {"no": "K2", "parent": "p-1", "parent@Microsoft.Dynamics.CRM.lookuplogicalname": "contact"}
    assert lookup_requests(flow, payload) == [("people", "p-1")]
    assert map_record("people", flow, "K2", payload, {("people", "p-1"): "K-1"})[
        "parentcustomerid_contact@odata.bind"] == "/contacts(dualsync_externalid='K-1')"


def test_a_polymorphic_lookup_is_checked():
    with pytest.raises(ConfigError, match=r"\{table\}"):
        polymorphic(to="parentcustomerid_account@odata.bind")
    with pytest.raises(ConfigError, match="different tables"):
        polymorphic(lookup={"account": "customers"})
    with pytest.raises(ConfigError, match="unknown flow 'nobody'"):
        polymorphic(lookup={"account": "customers", "contact": "nobody"})
