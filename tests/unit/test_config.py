"""The flows file: every error reported with its path; secrets only as references."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
        "systems.crm.auth.client_secret: secrets must be references of the form env:NAME",
        "systems.erp.url: a database URL with a password must be given as env:NAME",
        ("flows.accounts-to-customers.source.changes: Input should be 'change_tracking', 'watermark', "
         "'status_flag', 'xact_id' or 'snapshot'"),
        "flows.accounts-to-customers.schedule: schedule must be a 6-field NCRONTAB expression",
        "flows.accounts-to-customers.colour: unknown key 'colour'; allowed: source, target, schedule,",
        "flows.accounts-to-customers.fields[0].max_length: Input should be greater than or equal to 1",
        "flows.accounts-to-customers.fields[2].map: Input should be a valid dictionary",
    ):
        assert expected in problems
    assert "hunter2" not in problems and "pa55" not in problems
    assert "Value error" not in problems and "Extra inputs" not in problems
    assert f"{path}:10: flows.accounts-to-customers.colour: unknown key" in problems  # where it is written
    assert f"{path}:14: flows.accounts-to-customers.fields[2].map:" in problems
    assert f"{path}:2: systems.crm.auth.client_secret:" in problems


def test_cross_reference_errors_name_their_line_too(tmp_path):
    path = tmp_path / "flows.yaml"
    path.write_text(FLOWS_YAML.replace("lookup: accounts-to-customers", "lookup: accounts-to-customer"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}:30: flows.contacts-to-erp.fields[4].lookup: unknown flow 'accounts-to-customer'"]


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


def _validate(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["validate", str(path)])
    return result.exit_code, " ".join(result.output.split())  # rich may wrap a long line anywhere


def test_an_unknown_key_lists_the_allowed_keys_and_the_nearest(tmp_path):
    path = tmp_path / "flows.yaml"
    path.write_text(FLOWS_YAML.replace("watermark: modifiedon}", "watermrk: modifiedon}", 1)
                    .replace("max_length: 20}", "max_lenght: 20}"))
    code, output = _validate(path)
    assert code == 2
    assert ("flows.accounts-to-customers.source.watermrk: unknown key 'watermrk' (did you mean 'watermark'?); "
            "allowed: system, entity, key, changes, watermark,") in output
    assert "fields[0].max_lenght: unknown key 'max_lenght' (did you mean 'max_length'?)" in output


def test_yaml_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "flows.yaml"
    path.write_text("systems:\n  crm: {kind: sql, url: x}\nflows:\n  a: {source: [oops}\n")
    code, output = _validate(path)
    assert code == 2 and f"{path}:4:" in output and "not valid YAML" in output
    run = subprocess.run([sys.executable, "-m", "shared.cli", "validate", str(path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=60, check=False)
    assert run.returncode == 2 and f"{path}:4:" in " ".join(run.stderr.split())
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(("text", "expected"), [
    ("", "empty; a flows file has systems: and flows:"),
    ("# only a comment\n", "empty; a flows file has systems: and flows:"),
    ("systems: {erp: {kind: sql, url: 'sqlite://'}}\nflows: {}\n", "flows: no flows: a flows file needs at least one"),
])
def test_an_empty_file_or_no_flows_is_an_error(tmp_path, text, expected):
    path = tmp_path / "flows.yaml"
    path.write_text(text)
    code, output = _validate(path)
    assert code == 2 and expected in output


def test_square_brackets_in_what_is_printed_are_kept(tmp_path):
    path = tmp_path / "[bold]flows.yaml"
    odd_key = "  accounts-to-customers:\n    '[red]x[/red]': 1\n"
    path.write_text(FLOWS_YAML.replace("  accounts-to-customers:\n", odd_key))
    code, output = _validate(path)
    assert code == 2 and "unknown key '[red]x[/red]'" in output
    path.write_text(FLOWS_YAML)
    assert _validate(path) == (0, f"ok {path}: 2 systems, 2 flows")


def test_errors_that_teach_from_a_subprocess(tmp_path):
    path = tmp_path / "flows.yaml"
    path.write_text(FLOWS_YAML.replace("    page_size: 1000\n", "    page_sise: 1000\n    '[b]note[/b]': x\n", 1))
    run = subprocess.run([sys.executable, "-m", "shared.cli", "validate", str(path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=60, check=False)
    output = " ".join(run.stderr.split())
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"{path}:11: flows.accounts-to-customers.page_sise: unknown key 'page_sise' (did you mean 'page_size'?)" \
        in output
    assert f"{path}:12: flows.accounts-to-customers.[b]note[/b]: unknown key '[b]note[/b]'" in output
