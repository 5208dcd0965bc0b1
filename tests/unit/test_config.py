"""The flows file: every error reported with its path; secrets only as references."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from demo.sample_data import FLOWS_YAML
from shared.cli import app as cli
from shared.config import ConfigError, load_config, parse_config

BAD = """\
systems:
  crm: {kind: dataverse, url: https://x.crm.dynamics.com, auth: {tenant_id: t, client_id: c, client_secret: hunter2}}
  erp: {kind: sql, url: "postgresql://sync:pa55@db/erp"}
flows:
  accounts-to-customers:
    source: {system: crm, entity: accounts, key: accountid, changes: sometimes}
    target: {system: nowhere, entity: customers, key: account_number}
    schedule: "*/5 * * * *"
    master: sap
    colour: blue
    fields:
      - {from: name, to: name, max_length: 0}
      - {from: accountnumber, to: account_number}
      - {from: statecode, to: status, map: [active, inactive]}
      - {from: x, to: y, lookup: no-such-flow}
"""


def test_the_demo_flows_file_is_valid(tmp_path):
    path = tmp_path / "flows.yaml"
    path.write_text(FLOWS_YAML)
    config = load_config(path)
    assert config.flows["contacts-to-erp"].fields[4].lookup == "accounts-to-customers"
    assert config.flows["accounts-to-customers"].fields[2].map == {"0": "active", "1": "inactive"}


def test_every_error_has_its_path(tmp_path):
    path = tmp_path / "flows.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = "\n".join(info.value.problems)
    for expected in (
        "systems.crm.auth.client_secret: Value error, secrets must be references of the form env:NAME",
        "systems.erp.url: Value error, a database URL with a password must be given as env:NAME",
        "flows.accounts-to-customers.source.changes: Input should be 'change_tracking', 'watermark', "
        "'status_flag', 'xact_id' or 'snapshot'",
        "flows.accounts-to-customers.schedule: Value error, schedule must be a 6-field NCRONTAB expression",
        "flows.accounts-to-customers.colour: Extra inputs are not permitted",
        "flows.accounts-to-customers.fields[0].max_length: Input should be greater than or equal to 1",
        "flows.accounts-to-customers.fields[2].map: Input should be a valid dictionary",
    ):
        assert expected in problems
    assert "hunter2" not in problems and "pa55" not in problems


def test_cross_references_are_checked():
    data = {
        "systems": {"crm": {"kind": "sql", "url": "sqlite://"}},
        "flows": {"f": {"source": {"system": "crm", "entity": "a", "key": "id"},
                        "target": {"system": "erp", "entity": "b", "key": "k"}, "master": "sap",
                        "fields": [{"from": "x", "to": "y", "lookup": "nope"}]}},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems == [
        "flows.f.target.system: unknown system 'erp'",
        "flows.f.master: must be 'crm' or 'erp'",
        "flows.f.fields[0].lookup: unknown flow 'nope'",
        "flows.f.target.key: 'k' is not the 'to' of any field",
    ]


def test_cli_validate_exits_2_with_paths(tmp_path):
    path = tmp_path / "flows.yaml"
    path.write_text(BAD)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    assert "flows.accounts-to-customers.fields[2].map" in result.output
    good = tmp_path / "good.yaml"
    good.write_text(FLOWS_YAML)
    assert CliRunner().invoke(cli, ["validate", str(good)]).exit_code == 0


def test_cli_schema_is_json_schema():
    result = CliRunner().invoke(cli, ["schema"])
    schema = json.loads(result.output)
    assert "flows" in schema["properties"] and "systems" in schema["properties"]
