"""`dualsync check` and the checks `dualsync run` makes before it starts: a flows file that names a column
the database does not have, or an `env:` reference nobody set, is refused before anything is read or
written (real SQLite databases, the CLI runner and a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from demo import sample_data
from shared.cli import app as cli

ROOT = Path(__file__).resolve().parents[2]


def _setup(tmp_path, monkeypatch, flows_yaml: str = sample_data.FLOWS_YAML) -> tuple[list[str], str, str]:
    crm_url, erp_url = sample_data.build(tmp_path / "data", accounts=20, contacts=10, with_bad_rows=False)
    monkeypatch.setenv("CRM_DB_URL", crm_url)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    flows = tmp_path / "flows.yaml"
    flows.write_text(flows_yaml, encoding="utf-8")
    return ["--config", str(flows), "--workdir", str(tmp_path / "state")], crm_url, erp_url


def _run(args: list[str]):
    return CliRunner().invoke(cli, ["run", "--once", "--workers", "0", "--retry-base", "0.01",
                                    "--drain-bound", "1", *args])


def _credit_limits(erp_url: str) -> dict[str, object]:
    engine = create_engine(erp_url)
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT account_number, credit_limit FROM customers")).all())
    engine.dispose()
    return rows


def test_a_typo_in_from_is_caught_before_it_writes_null_into_existing_rows(tmp_path, monkeypatch):
    args, crm_url, erp_url = _setup(tmp_path, monkeypatch)
    assert _run(args).exit_code == 0
    before = _credit_limits(erp_url)
    assert len(before) == 20 and all(v is not None for v in before.values())

    flows = Path(args[1])
    flows.write_text(sample_data.FLOWS_YAML.replace("from: creditlimit,", "from: creditlimt,"), encoding="utf-8")
    crm = create_engine(crm_url)
    with crm.begin() as conn:  # every account changes, so a run would send them all again
        conn.execute(text("UPDATE accounts SET modifiedon = '2026-02-01 00:00:00'"))
    crm.dispose()

    checked = CliRunner().invoke(cli, ["check", "--config", str(flows)])
    assert checked.exit_code == 2, checked.output
    assert "accounts-to-customers" in checked.output and "fields[3].from" in checked.output
    assert "'creditlimt'" in checked.output and "did you mean 'creditlimit'" in checked.output

    refused = _run(args)
    assert refused.exit_code == 2, refused.output
    assert "did you mean 'creditlimit'" in refused.output
    assert _credit_limits(erp_url) == before


def test_a_wrong_to_is_caught_instead_of_dead_lettering_every_record(tmp_path, monkeypatch):
    bad = sample_data.FLOWS_YAML.replace("to: credit_limit,", "to: creditlimit,")
    args, _, erp_url = _setup(tmp_path, monkeypatch, bad)
    refused = _run(args)
    assert refused.exit_code == 2, refused.output
    assert "fields[3].to" in refused.output and "did you mean 'credit_limit'" in refused.output
    assert _credit_limits(erp_url) == {}
    assert not Path(args[args.index("--workdir") + 1]).exists()  # refused before anything was queued or made


def test_an_unset_env_reference_is_found_at_start_with_exit_2(tmp_path, monkeypatch):
    args, crm_url, _ = _setup(tmp_path, monkeypatch)
    monkeypatch.delenv("ERP_DB_URL")
    refused = _run(args)
    assert refused.exit_code == 2, refused.output
    assert "systems.erp.url" in refused.output and "ERP_DB_URL is not set" in refused.output
    assert not Path(args[args.index("--workdir") + 1]).exists()  # refused before anything was pulled or made

    alone = subprocess.run([sys.executable, "-m", "shared.cli", "run", "--once", "--config", args[1],
                            "--workdir", str(tmp_path / "fresh")], cwd=ROOT, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "CRM_DB_URL": crm_url},
                           capture_output=True, text=True, check=False)
    assert alone.returncode == 2 and "ERP_DB_URL is not set" in alone.stderr and "Traceback" not in alone.stderr
    assert not (tmp_path / "fresh").exists()  # a refused run creates no state


def test_check_as_a_subprocess_prints_json_and_exits_0_when_clean(tmp_path, monkeypatch):
    args, crm_url, erp_url = _setup(tmp_path, monkeypatch)
    env = {"PATH": "/usr/bin:/bin", "CRM_DB_URL": crm_url, "ERP_DB_URL": erp_url}
    clean = subprocess.run([sys.executable, "-m", "shared.cli", "check", "--json", "--config", args[1]],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout) == {"ok": True, "findings": []}

    Path(args[1]).write_text(sample_data.FLOWS_YAML.replace("from: lastname,", "from: last_name,"), encoding="utf-8")
    broken = subprocess.run([sys.executable, "-m", "shared.cli", "check", "--json", "--flow", "contacts-to-erp",
                             "--config", args[1]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    assert broken.returncode == 2
    [finding] = json.loads(broken.stdout)["findings"]
    assert finding["flow"] == "contacts-to-erp" and finding["field"] == "fields[2].from"
    assert finding["nearest"] == "lastname" and "emailaddress1" in finding["existing"]
