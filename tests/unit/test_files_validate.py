"""What `validate` lets a flow ask of a files system: what its connector declares (`FilesConnector.capabilities`),
checked when the flows file is loaded, before anything connects; and what `dualsync check` compares a flow's
fields with: the header of the entity's latest export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.config import ConfigError, parse_config
from shared.connectors import registry
from shared.connectors.files.connector import FilesConnector
from shared.engine.preflight import preflight
from tests.fakes.memory_connector import MemoryConnector

SYSTEMS = {"erp": {"kind": "files", "folder": "/x"}, "crm": {"kind": "sql", "url": "sqlite://"}}


def flow(changes: str = "snapshot", **extra: Any) -> dict[str, Any]:
    return {"source": {"system": "erp", "entity": "customers", "key": "id", "changes": changes},
            "target": {"system": "crm", "entity": "accounts", "key": "id"}, "fields": [{"from": "id", "to": "id"}],
            **extra}


def problems(flows: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        parse_config({"systems": SYSTEMS, "flows": flows})
    return refused.value.problems


def test_the_registry_knows_the_files_kind():
    system = parse_config({"systems": SYSTEMS, "flows": {"a": flow()}}).systems["erp"]
    assert registry.connector_class("files") is FilesConnector
    assert registry.capabilities_of(system).change_modes == {"snapshot"}


def test_a_files_source_is_read_as_snapshot_only():
    assert problems({"a": flow("watermark")}) == [
        "flows.a.source.changes: system 'erp' (kind files) cannot read changes as 'watermark'; it supports: snapshot"]


def test_deletes_of_a_files_source_are_found_from_what_an_export_lacks():
    parse_config({"systems": SYSTEMS, "flows": {"a": flow(deletes="delete")}})


def test_a_files_target_takes_no_pair_and_no_reference_binds():
    back = {"source": {"system": "crm", "entity": "accounts", "key": "id"},
            "target": {"system": "erp", "entity": "customers", "key": "id"},
            "fields": [{"from": "id", "to": "id"}, {"from": "owner", "to": "owner@odata.bind", "bind": "users"}]}
    found = problems({"a": flow(pair="p"), "b": {**back, "pair": "p"}})
    assert any(p.startswith("flows.b.fields[1].bind: system 'erp' (kind files) cannot write lookups") for p in found)
    assert any(p.startswith("flows.b.pair: a pair writes a row only if it is still as read, and system 'erp' "
                            "(kind files) has no conditional writes") for p in found)


def test_one_flow_per_inbox_entity():
    parse_config({"systems": SYSTEMS, "flows": {"a": flow()}})
    assert problems({"a": flow(), "b": flow()}) == [
        ("flows.b.source: flow a reads erp customers already; one flow per entity, since a read consumes what it "
        "read (an inbox file is archived)")]


def test_check_names_a_field_the_latest_export_lacks_and_the_nearest_it_has(tmp_path: Path):
    folder = tmp_path / "exchange"
    systems = {**SYSTEMS, "erp": {"kind": "files", "folder": str(folder)}}
    config = parse_config({"systems": systems, "flows": {"a": flow(fields=[
        {"from": "id", "to": "id"}, {"from": "nmae", "to": "name"}])}})
    crm = MemoryConnector()
    crm.declare("accounts", "id", "name")
    folder.mkdir()
    connectors = {"crm": crm, "erp": registry.build_connector("erp", config.systems["erp"])}
    assert preflight(config, connectors.__getitem__) == []  # no export yet: nothing to compare with
    (folder / "inbox" / "customers").mkdir(parents=True)
    (folder / "inbox" / "customers" / "e1.csv").write_text("id,name,city\n1,a,b\n")
    [finding] = preflight(config, connectors.__getitem__)
    assert (finding.path, finding.nearest) == ("flows.a.fields[1].from", "name")
    assert finding.existing == ("id", "name", "city")
