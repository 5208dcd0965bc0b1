"""The JSON Schema of the flows file (editor hover help) and `dualsync init`'s commented flows file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml
from typer.testing import CliRunner

from demo import sample_data
from shared.cli import app as cli

ROOT = Path(__file__).resolve().parents[2]


def _emitted_schema() -> dict:
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0
    return json.loads(result.output)


def _undescribed(node: object, path: str = "#") -> list[str]:
    """Every property, in every object schema anywhere in `node`, that has no description."""
    missing: list[str] = []
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            if not (isinstance(prop, dict) and prop.get("description")):
                missing.append(f"{path}/properties/{name}")
        for key, value in node.items():
            missing += _undescribed(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            missing += _undescribed(value, f"{path}/{i}")
    return missing


def test_every_key_of_the_schema_has_a_description():
    schema = _emitted_schema()
    assert {"DataverseAuth", "DataverseSystem", "SqlSystem", "SourceSpec", "TargetSpec", "FieldMap", "Flow"} <= set(
        schema["$defs"])  # the walk reaches every model, not just the top
    assert _undescribed(schema) == []
    assert "NCRONTAB" in schema["$defs"]["Flow"]["properties"]["schedule"]["description"]


def test_the_schema_accepts_real_flows_files_and_names_a_typo():
    schema = _emitted_schema()
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(sample_data.FLOWS_YAML))
    broken = yaml.safe_load(sample_data.FLOWS_YAML.replace("watermark: modifiedon", "watermrk: modifiedon"))
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(broken))
    assert errors and "watermrk" in errors[0].message


def test_init_writes_a_commented_file_that_validates_and_checks(tmp_path, monkeypatch):
    crm_url, erp_url = sample_data.build(tmp_path / "data", accounts=5, contacts=0, with_bad_rows=False)
    path = tmp_path / "flows.yaml"
    written = CliRunner().invoke(cli, ["init", str(path)])
    assert written.exit_code == 0, written.output
    text = path.read_text()
    assert text.count("\n#") + text.count("  # ") >= 20  # commented: most keys say what they do
    schema = json.loads((tmp_path / "flows.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(text))

    assert CliRunner().invoke(cli, ["validate", str(path)]).exit_code == 0
    env = {"PATH": "/usr/bin:/bin", "CRM_DB_URL": crm_url, "ERP_DB_URL": erp_url}
    checked = subprocess.run([sys.executable, "-m", "shared.cli", "check", "--config", str(path)], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
    monkeypatch.setenv("CRM_DB_URL", crm_url)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    ran = CliRunner().invoke(cli, ["run", "--once", "--workers", "0", "--config", str(path),
                                   "--workdir", str(tmp_path / "state")])
    assert ran.exit_code == 0, ran.output


def test_init_refuses_to_overwrite_unless_forced(tmp_path):
    path = tmp_path / "flows.yaml"
    path.write_text("mine")
    refused = CliRunner().invoke(cli, ["init", str(path)])
    assert refused.exit_code == 2 and "--force" in refused.output
    assert path.read_text() == "mine"
    assert CliRunner().invoke(cli, ["init", "--force", str(path)]).exit_code == 0
    assert path.read_text().startswith("# yaml-language-server")
