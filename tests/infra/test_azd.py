"""`azd up` deploys an app that works: azure.yaml's hooks, run here as azd runs them (sh, from anywhere)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.infra.conftest import INFRA, ROOT
from tests.infra.test_bicep_structure import MAIN, decorators, module_params, template

AZURE = yaml.safe_load((ROOT / "azure.yaml").read_text())
HOOK_SHELLS = {"sh", "pwsh"}  # the shells azd's schema allows


@pytest.mark.parametrize("event", ["prepackage", "postdown"])
def test_azure_yaml_hooks_name_scripts_that_exist_for_both_platforms(event):
    hook = AZURE["hooks"][event]
    for platform, suffix in (("posix", ".sh"), ("windows", ".ps1")):
        entry = hook[platform]
        assert entry["shell"] in HOOK_SHELLS and entry["continueOnError"] is False
        script = ROOT / entry["run"]
        assert script.suffix == suffix and script.is_file(), entry["run"]
    assert os.access(ROOT / hook["posix"]["run"], os.X_OK)


def _project(tmp_path: Path, flows: str | None) -> Path:
    """A project directory as azd sees it: the hook scripts, and a flows.yaml (or none)."""
    project = tmp_path / "project"
    (project / "scripts" / "azd").mkdir(parents=True)
    for script in (ROOT / "scripts" / "azd").glob("*.sh"):
        shutil.copy2(script, project / "scripts" / "azd" / script.name)
    if flows is not None:
        (project / "flows.yaml").write_text(flows)
    return project


def _run_hook(project: Path, event: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    script = project / AZURE["hooks"][event]["posix"]["run"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "DUALSYNC_PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["sh", str(script)], cwd=cwd or project, env=environment, capture_output=True, text=True,
                          timeout=120)


def test_the_prepackage_hook_validates_the_flows_file_that_ships(tmp_path):
    sample = (ROOT / "flows.yaml").read_text()
    project = _project(tmp_path, sample)
    done = _run_hook(project, "prepackage", cwd=tmp_path)  # wherever azd starts it
    assert done.returncode == 0, done.stderr
    assert "ok flows.yaml: 2 systems, 2 flows" in done.stdout

    broken = sample.replace("required: true, max_length: 20", "required: true, max_lenght: 20")
    (project / "flows.yaml").write_text(broken)
    done = _run_hook(project, "prepackage")
    assert done.returncode == 1
    assert "max_lenght" in done.stdout + done.stderr and "nothing was packaged" in done.stderr


def test_the_prepackage_hook_ships_the_file_the_user_points_to(tmp_path):
    project = _project(tmp_path, "# the sample\n")
    mine = project / "config" / "prod-flows.yaml"
    mine.parent.mkdir()
    mine.write_text((ROOT / "flows.yaml").read_text().replace("contacts-to-erp", "contacts-to-the-erp"))
    done = _run_hook(project, "prepackage", {"DUALSYNC_FLOWS_FILE": "config/prod-flows.yaml"})
    assert done.returncode == 0, done.stderr
    assert (project / "flows.yaml").read_text() == mine.read_text()

    done = _run_hook(project, "prepackage", {"DUALSYNC_FLOWS_FILE": "config/missing.yaml"})
    assert done.returncode == 1 and "not found" in done.stderr


def test_the_prepackage_hook_refuses_a_project_without_a_flows_file(tmp_path):
    done = _run_hook(_project(tmp_path, None), "prepackage")
    assert done.returncode == 1 and "flows file 'flows.yaml' not found" in done.stderr


def test_the_deployed_sample_refers_only_to_what_the_deployment_sets():
    from shared.config import load_config

    config = load_config(ROOT / "flows.yaml")
    auth = config.systems["crm"].auth
    assert auth.federated_identity_client_id == "env:AZURE_CLIENT_ID"  # secretless by default
    assert (auth.tenant_id, auth.client_id) == ("env:CRM_TENANT_ID", "env:CRM_CLIENT_ID")
    assert config.systems["crm"].url == "env:CRM_URL"


def _fake_azd(tmp_path: Path) -> tuple[dict[str, str], Path]:
    calls = tmp_path / "azd-calls.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    azd = bin_dir / "azd"
    azd.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    azd.chmod(azd.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, calls


def test_after_azd_down_the_next_up_gets_a_fresh_key_vault_name(tmp_path):
    env, calls = _fake_azd(tmp_path)
    project = _project(tmp_path, None)
    for _ in range(2):
        done = _run_hook(project, "postdown", env)
        assert done.returncode == 0, done.stderr
    first, second = calls.read_text().splitlines()
    suffixes = []
    for call in (first, second):
        command, variable, suffix = call.rsplit(" ", 2)
        assert (command, variable) == ("env set", "DUALSYNC_VAULT_SUFFIX")
        assert re.fullmatch(r"[0-9a-f]{6}", suffix)
        suffixes.append(suffix)
    assert suffixes[0] != suffixes[1]
    # ... which main.parameters.json hands to the template, whose vault name takes it and stays a valid name.
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert parameters["keyVaultSuffix"]["value"] == "${DUALSYNC_VAULT_SUFFIX}"
    assert decorators(MAIN, "keyVaultSuffix")["max_length"] == 6
    assert template(MAIN)["parameters"]["keyVaultSuffix"]["default"] == ""
    assert module_params("keyVault")["name"] == "keyVaultName"
    name = template(MAIN)["variables"]["keyVaultName"]["value"]
    assert "keyVaultSuffix" in json.dumps(name)
    assert len("kv-") + 13 + len("-") + 6 <= 24  # uniqueString() is 13 characters; a vault name at most 24
