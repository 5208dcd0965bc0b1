"""The operator's commands on the embedded runtime: run, status, dead letters, pause/resume, replay."""

from __future__ import annotations

import json

from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from demo import sample_data
from shared.cli import app as cli


def test_operator_walkthrough(tmp_path, monkeypatch):
    crm_url, erp_url = sample_data.build(tmp_path / "data", accounts=300, contacts=200)
    monkeypatch.setenv("CRM_DB_URL", crm_url)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    flows = sample_data.write_flows(tmp_path)
    common = ["--config", str(flows), "--workdir", str(tmp_path / "state")]
    runner = CliRunner()

    ran = runner.invoke(cli, ["run", "--once", "--retry-base", "0.02", "--drain-bound", "10", *common])
    assert ran.exit_code == 0, ran.output
    assert "accounts-to-customers" in ran.output and "yes" in ran.output

    status = json.loads(runner.invoke(cli, ["status", "--json", *common]).output)
    flows_by_name = {f["flow"]: f for f in status["flows"]}
    assert status["dead_letter"] == 7
    assert flows_by_name["accounts-to-customers"]["dead_letters"] == {"MappingFailed": 1, "ValidationFailed": 3}
    assert flows_by_name["accounts-to-customers"]["last_run"]["pulled"] == 300

    listed = runner.invoke(cli, ["dead-letters", "list", "--flow", "contacts-to-erp", *common])
    assert "con-0000005" in listed.output and "MissingReference" in listed.output

    assert runner.invoke(cli, ["pause", "accounts-to-customers", *common]).exit_code == 0
    paused = json.loads(runner.invoke(cli, ["status", "--json", *common]).output)
    assert next(f for f in paused["flows"] if f["flow"] == "accounts-to-customers")["paused"]
    assert runner.invoke(cli, ["pause", "no-such-flow", *common]).exit_code == 2
    assert runner.invoke(cli, ["resume", "accounts-to-customers", *common]).exit_code == 0

    dry = runner.invoke(cli, ["replay", "--dry-run", "--reason", "ValidationFailed", *common])
    assert "matched 5, would replay 5" in dry.output

    # Fix one record at the source, replay just that one, and run again.
    engine = create_engine(crm_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE accounts SET name = 'Short name' WHERE accountid = 'acc-0000003'"))
    engine.dispose()
    replayed = runner.invoke(cli, ["replay", "--key", "acc-0000003", *common])
    assert "matched 1, replayed 1" in replayed.output
    again = runner.invoke(cli, ["run", "--once", "--retry-base", "0.02", "--drain-bound", "1", *common])
    assert again.exit_code == 0
    erp = create_engine(erp_url)
    with erp.connect() as conn:
        assert conn.execute(text("SELECT name FROM customers WHERE crm_id = 'acc-0000003'")).scalar() == "Short name"
    erp.dispose()
    assert json.loads(runner.invoke(cli, ["status", "--json", *common]).output)["dead_letter"] == 6

    nothing = runner.invoke(cli, ["conflicts", "resolve", "acc-0000001", "--take", "crm", *common])
    assert nothing.exit_code == 2 and "no open conflict for record acc-0000001" in nothing.output

    refused = runner.invoke(cli, ["dead-letters", "purge", *common])
    assert refused.exit_code == 2
    purged = runner.invoke(cli, ["dead-letters", "purge", "--yes", "--flow", "contacts-to-erp", *common])
    assert "purged 3" in purged.output
