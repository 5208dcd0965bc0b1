"""Offline checks of infra/ (no Bicep compiler here): the templates parsed with pycep, and one checkov run."""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


@cache
def template(relative: str) -> dict[str, Any]:
    """One .bicep file under infra/, parsed by pycep into its JSON form."""
    from pycep import BicepParser

    return BicepParser().parse(file_path=INFRA / relative)


def bicep_files() -> list[str]:
    return sorted(str(p.relative_to(INFRA)) for p in INFRA.rglob("*.bicep"))


@pytest.fixture(scope="session")
def checkov_report() -> dict[str, Any]:
    """checkov's JSON report for infra/ (Bicep only), run once per session."""
    if not CHECKOV.exists():
        pytest.fail(
            f"{CHECKOV.relative_to(ROOT)} is missing: run `make test`, which installs checkov from "
            "requirements-checkov.txt into its own venv"
        )
    command = [str(CHECKOV), "--directory", str(INFRA), "--framework", "bicep", "--output", "json", "--skip-download"]
    # --skip-download: no call home for guidelines (this machine and CI have no network but package registries).
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    # 0: no failed checks, 1: failed checks. Anything else is checkov itself failing. Note that a template
    # checkov cannot parse is NOT an error exit: it is counted in the report, which the tests inspect.
    if done.returncode not in (0, 1):
        pytest.fail(f"checkov exited {done.returncode}:\n{done.stderr[-4000:]}")
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON report:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    reports = report if isinstance(report, list) else [report]
    bicep = [r for r in reports if r.get("check_type") == "bicep"]
    if len(bicep) != 1:
        pytest.fail(f"expected one bicep report from checkov, got {[r.get('check_type') for r in reports]}")
    return bicep[0]
