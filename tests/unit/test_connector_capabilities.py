"""What a connector can do is declared (`Capabilities`), found through the registry by kind, and a flow that
asks for more is refused when the flows file is loaded: by `validate` and `run` alike, before anything
connects."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shared.cli import app as cli
from shared.config import ConfigError, parse_config
from shared.connectors import registry
from shared.connectors.dataverse import DataverseConnector
from shared.connectors.sql import SqlConnector

DATAVERSE = {"kind": "dataverse", "url": "https://x.crm.dynamics.com", "auth": {"static_token": "env:DV_TOKEN"}}


def flows(source: dict[str, Any], *, erp: str = "sqlite://", target: dict[str, Any] | None = None,
          fields: list[dict[str, Any]] | None = None, **flow: Any) -> dict[str, Any]:
    return {
        "systems": {"crm": DATAVERSE, "erp": {"kind": "sql", "url": erp}},
        "flows": {"f": {"source": {"entity": "a", "key": "id", **source},
                        "target": target or {"system": "crm", "entity": "accounts", "key": "accountnumber"},
                        "fields": fields or [{"from": "id", "to": "accountnumber"}], **flow}},
    }


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    return raised.value.problems


def test_an_unsupported_change_mode_is_refused_naming_flow_setting_and_what_is_supported():
    (problem,) = problems(flows({"system": "erp", "changes": "change_tracking"}))
    assert problem == ("flows.f.source.changes: system 'erp' (kind sql) cannot read changes as 'change_tracking'; "
                       "it supports: status_flag, watermark")
    (problem,) = problems(flows({"system": "crm", "changes": "status_flag"},
                                target={"system": "erp", "entity": "b", "key": "id"},
                                fields=[{"from": "accountid", "to": "id"}]))
    assert problem.startswith("flows.f.source.changes: system 'crm' (kind dataverse) cannot read changes as "
                              "'status_flag'; it supports: change_tracking, watermark")
    (problem,) = problems(flows({"system": "erp", "changes": "snapshot"}))
    assert "cannot read changes as 'snapshot'" in problem


def test_xact_id_depends_on_the_dialect_where_the_url_tells(monkeypatch):
    source = {"system": "erp", "changes": "xact_id"}
    (problem,) = problems(flows(source))
    assert "kind sql) cannot read changes as 'xact_id'" in problem
    parse_config(flows(source, erp="postgresql+psycopg://sync@db/erp"))
    monkeypatch.delenv("ERP_DB_URL", raising=False)
    parse_config(flows(source, erp="env:ERP_DB_URL"))  # unknown until it connects: the connector refuses it then
    monkeypatch.setenv("ERP_DB_URL", "sqlite:///erp.db")
    assert problems(flows(source, erp="env:ERP_DB_URL"))
    assert "xact_id" not in SqlConnector("sqlite://").capabilities.change_modes
    assert "xact_id" in SqlConnector("postgresql+psycopg://u@127.0.0.1:1/x").capabilities.change_modes


def test_status_flag_settings_need_a_source_whose_reads_are_acknowledged():
    parse_config(flows({"system": "erp", "changes": "status_flag", "status_field": "flag"}))
    (problem,) = problems(flows({"system": "erp", "changes": "watermark", "reason_field": "why"}))
    assert problem == ("flows.f.source.reason_field: only a source whose reads are acknowledged uses it; "
                       "system 'erp' (kind sql) acknowledges reads as: status_flag")


def test_deletes_need_a_source_that_reports_them_or_a_reconciliation():
    source = {"system": "erp", "changes": "status_flag"}
    (problem,) = problems(flows(source, deletes="delete"))
    assert problem.startswith("flows.f.deletes: system 'erp' (kind sql) reports no deletes when read as "
                              "'status_flag' (it does as: watermark)")
    parse_config(flows(source, deletes="delete", reconcile="0 0 * * * *"))
    parse_config(flows({"system": "erp"}, deletes="deactivate"))  # a watermark's full reads find them


def test_reference_binds_need_a_target_that_resolves_them():
    parse_config(flows({"system": "erp"}, fields=[
        {"from": "id", "to": "accountnumber"}, {"from": "c", "to": "primarycontactid@odata.bind", "bind": "contacts"}]))
    (problem,) = problems(flows({"system": "crm"}, target={"system": "erp", "entity": "b", "key": "id"}, fields=[
        {"from": "accountid", "to": "id"}, {"from": "c", "to": "contact@odata.bind", "bind": "contacts"}]))
    assert problem.startswith("flows.f.fields[1].bind: system 'erp' (kind sql) cannot write lookups as references")


def test_a_pair_needs_conditional_writes_on_both_targets(monkeypatch):
    data = flows({"system": "erp"}, pair="p")
    data["flows"]["g"] = {"source": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
                          "target": {"system": "erp", "entity": "a", "key": "id"}, "pair": "p",
                          "fields": [{"from": "accountnumber", "to": "id"}]}
    parse_config(data)
    monkeypatch.setattr(SqlConnector, "capabilities", replace(SqlConnector.capabilities, conditional_writes=None))
    (problem,) = problems(data)
    assert problem.startswith("flows.g.pair: a pair writes a row only if it is still as read, and system 'erp' "
                              "(kind sql) has no conditional writes")


def test_validate_and_run_refuse_it_with_exit_2(tmp_path: Path):
    path = tmp_path / "flows.yaml"
    path.write_text(json.dumps(flows({"system": "erp", "changes": "change_tracking"})))
    for args in (["validate", str(path)], ["run", "--once", "--config", str(path), "--workdir", str(tmp_path)]):
        result = CliRunner().invoke(cli, args, env={"COLUMNS": "200"})
        assert result.exit_code == 2, result.output
        shown = " ".join(result.output.split())
        assert "flows.f.source.changes" in shown and "it supports: status_flag, watermark" in shown
    assert not (tmp_path / "state.db").exists()  # refused before anything ran


def test_every_registered_kind_is_in_the_flows_schema_and_builds_its_connector():
    schema = json.loads(CliRunner().invoke(cli, ["schema"]).output)
    kinds = {d["properties"]["kind"]["const"] for d in schema["$defs"].values() if "kind" in d.get("properties", {})}
    assert kinds == set(registry.KINDS) == {"dataverse", "files", "odata", "sql"}
    assert registry.connector_class("dataverse") is DataverseConnector
    config = parse_config(flows({"system": "erp"}))
    connector = registry.build_connector("erp", config.systems["erp"])
    try:
        assert isinstance(connector, SqlConnector)
        assert connector.capabilities == registry.capabilities_of(config.systems["erp"])
    finally:
        connector.close()
    problem = problems({"systems": {"x": {"kind": "sap", "url": "u"}}, "flows": {}})[0]
    assert problem == ("systems.x: Input tag 'sap' found using 'kind' does not match any of the expected tags: "
                       "'dataverse', 'files', 'odata', 'sql'")


_PLUGIN = """
import json, sys
from shared.connectors import registry
registry.KINDS["echo"] = registry.Kind("tests.unit.plugin_kind_settings:EchoSystem",
                                       "tests.unit.plugin_kind:EchoConnector")
from shared.config import ConfigError, Config, parse_config
flows = {"systems": {"files": {"kind": "echo", "label": "inbox"}, "erp": {"kind": "sql", "url": "sqlite://"}},
         "flows": {"f": {"source": {"system": "files", "entity": "a", "key": "id", "changes": "snapshot"},
                         "target": {"system": "erp", "entity": "b", "key": "id"}, "fields": [{"from": "id", "to": "id"}]}}}
config = parse_config(flows)
connector = registry.build_connector("files", config.systems["files"])
flows["flows"]["f"]["source"]["changes"] = "watermark"
try:
    parse_config(flows)
    refused = []
except ConfigError as exc:
    refused = exc.problems
kinds = sorted(d["properties"]["kind"]["const"] for d in Config.model_json_schema()["$defs"].values()
               if "kind" in d.get("properties", {}))
print(json.dumps({"connector": connector.name, "kinds": kinds, "refused": refused,
                  "loaded": sorted(m for m in sys.modules if m.startswith("shared.connectors."))}))
"""


def test_a_kind_registered_outside_shared_joins_the_flows_file_schema_validation_and_factory():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _PLUGIN], cwd=root, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["connector"] == "files:inbox" and seen["kinds"] == ["dataverse", "echo", "files", "odata", "sql"]
    assert seen["refused"] == [("flows.f.source.changes: system 'files' (kind echo) cannot read changes as "
                                "'watermark'; it supports: snapshot")]
    # Only the connectors a flow uses are loaded; every kind's settings are (the flows model needs them).
    assert "shared.connectors.dataverse" not in seen["loaded"] and "shared.connectors.sql" in seen["loaded"]
