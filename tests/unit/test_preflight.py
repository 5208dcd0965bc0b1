"""shared.engine.preflight over the in-memory connector: which names each change mode reads, what a target
write needs, the nearest name, and a system that cannot be reached (its secret never in the finding)."""

from __future__ import annotations

import pytest

from shared.config import parse_config
from shared.engine.preflight import has_errors, preflight
from shared.names import nearest
from shared.ports.connector import ColumnInfo, EntitySchema
from tests.fakes.memory_connector import MemoryConnector

SECRET = "pa55-w0rd-Secret-91"


def config(source: dict | None = None, fields: list | None = None, **flow):
    return parse_config({
        "systems": {"crm": {"kind": "sql", "url": "env:CRM_URL"}, "erp": {"kind": "sql", "url": "sqlite://"}},
        "flows": {"f": {"source": {"system": "crm", "entity": "accounts", "key": "id", **(source or {})},
                        "target": {"system": "erp", "entity": "customers", "key": "number"},
                        "fields": fields or [{"from": "id", "to": "number"}, {"from": "name", "to": "name"}],
                        **flow}}})


@pytest.fixture
def systems(monkeypatch):
    monkeypatch.setenv("CRM_URL", f"postgresql://sync:{SECRET}@db/crm")
    crm, erp = MemoryConnector(), MemoryConnector()
    crm.declare("accounts", "id", "name", "modified_at", "sync_status", "sync_error", "rowver")
    erp.declare("customers", "number", "name", "status")
    return {"crm": crm, "erp": erp}


def problems(cfg, systems, **kwargs) -> dict[str, str | None]:
    return {f.field: f.nearest for f in preflight(cfg, systems.__getitem__, **kwargs)}


def test_nearest_prefers_the_same_letters_then_the_closest():
    assert nearest("Name", ["name", "names"]) == "name"
    assert nearest("creditlimt", ["credit_limit", "creditlimit"]) == "creditlimit"
    assert nearest("zzz", ["name"]) is None


def test_a_clean_flow_has_no_findings(systems):
    assert preflight(config(), systems.__getitem__) == []


@pytest.mark.parametrize(("source", "expected"), [
    ({"watermark": "modifed_at"}, {"source.watermark": "modified_at"}),
    ({"changes": "status_flag", "status_field": "sync_state", "version": "row_ver"},
     {"source.status_field": "sync_status", "source.version": "rowver"}),
    ({"changes": "xact_id"}, {"source.xact_column": None}),
    ({"key": ["ID"]}, {"source.key[0]": "id"}),
    ({"select": ["nmae", "name"]}, {"source.select[0]": "name"}),
])
def test_every_column_a_change_mode_reads_is_checked(systems, source, expected):
    assert problems(config(source), systems) == expected


def test_every_column_a_write_needs_is_checked(systems):
    cfg = config(fields=[{"from": "id", "to": "number"}, {"from": "name", "to": "nmae"},
                         {"from": "id", "to": "parent_id"}],
                 deletes="deactivate")
    systems["erp"].declared["customers"].discard("status")
    assert problems(cfg, systems) == {"fields[1].to": "name", "fields[2].to": None, "target.deactivate_field": None}


def test_a_missing_entity_names_the_entities_that_exist(systems):
    cfg = config()
    systems["crm"].declared["acounts"] = systems["crm"].declared.pop("accounts")
    [finding] = preflight(cfg, systems.__getitem__)
    assert (finding.field, finding.nearest, finding.existing) == ("source.entity", "acounts", ("acounts",))


def test_an_unset_reference_is_a_finding_and_its_system_is_not_opened(systems, monkeypatch):
    monkeypatch.delenv("CRM_URL")
    opened = []
    findings = preflight(config(), lambda name: opened.append(name) or systems[name])
    assert [(f.field, f.problem) for f in findings] == [
        ("systems.crm.url", "environment variable CRM_URL is not set (referenced as env:CRM_URL)")]
    assert opened == ["erp"] and has_errors(findings)


def test_a_system_that_cannot_be_reached_is_one_finding_without_its_secret(systems):
    def connect(name):
        if name == "crm":
            raise OSError(f"connection to postgresql://sync:{SECRET}@db/crm refused")
        return systems[name]

    [finding] = preflight(config(), connect)
    assert finding.system == "crm" and finding.flow is None
    assert finding.line() == "systems.crm: cannot connect: OSError: connection to *** refused"


def test_only_the_named_flows_and_their_systems_are_checked(systems):
    cfg = parse_config({**config().model_dump(by_alias=True, exclude_unset=True), "systems": {
        **config().model_dump(by_alias=True, exclude_unset=True)["systems"], "spare": {"kind": "sql", "url": "env:NOT_SET_ANYWHERE"}}})
    assert preflight(cfg, systems.__getitem__, ["f"]) == []
    assert [f.field for f in preflight(cfg, systems.__getitem__)] == ["systems.spare.url"]


class Described:
    """A connector that reports column lengths, and one that cannot describe at all."""

    def __init__(self, schema: EntitySchema | None) -> None:
        self.schema = schema

    def describe(self, entity: str) -> EntitySchema | None:
        return self.schema

    def change_time_column(self, source: object) -> None:
        return None


def test_a_max_length_beyond_the_column_is_a_warning_and_undescribed_systems_are_skipped(systems):
    narrow = EntitySchema("customers", True, (ColumnInfo("number", "VARCHAR(20)", max_length=20),
                                              ColumnInfo("name", "VARCHAR(10)", max_length=10)))
    cfg = config(fields=[{"from": "id", "to": "number"}, {"from": "name", "to": "name", "max_length": 50}])
    findings = preflight(cfg, {"crm": Described(None), "erp": Described(narrow)}.__getitem__)
    [warning] = findings
    assert warning.severity == "warning" and warning.field == "fields[1].max_length" and not has_errors(findings)
