"""The operator's commands on the embedded runtime: run, status, dead letters, pause/resume, replay."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from demo import sample_data
from shared.cli import app as cli


def sample_workdir(tmp_path, monkeypatch, contacts: int) -> tuple[str, str, Path, list[str]]:
    """The sample databases (300 accounts) and flows file: both URLs, the flows file, the common options."""
    crm_url, erp_url = sample_data.build(tmp_path / "data", accounts=300, contacts=contacts)
    monkeypatch.setenv("CRM_DB_URL", crm_url)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    flows = sample_data.write_flows(tmp_path)
    return crm_url, erp_url, flows, ["--config", str(flows), "--workdir", str(tmp_path / "state")]


def test_operator_walkthrough(tmp_path, monkeypatch):
    crm_url, erp_url, _, common = sample_workdir(tmp_path, monkeypatch, contacts=200)
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


def test_listings_print_the_admin_apis_json_refuse_unknown_filters_and_fit_80_columns(tmp_path, monkeypatch):
    from shared.admin_access import OPERATOR, Principal
    from shared.admin_api import ApiRequest, handle
    from shared.app import SyncApp
    from shared.config import load_config

    _, _, flows, common = sample_workdir(tmp_path, monkeypatch, contacts=20)
    runner = CliRunner()
    assert runner.invoke(cli, ["run", "--once", "--retry-base", "0.02", "--drain-bound", "10", *common]).exit_code == 0

    listed = runner.invoke(cli, ["dead-letters", "list", "--json", *common])
    assert listed.exit_code == 0
    sync = SyncApp.local(load_config(flows), tmp_path / "state")
    try:
        answer = handle(lambda: sync, ApiRequest("GET", "dead-letters", caller=lambda: Principal("t", frozenset({OPERATOR}))),
                        lambda app, job: job)
    finally:
        sync.close()
    assert answer.status == 200 and json.loads(listed.output) == json.loads(answer.body)
    letter = next(d for d in json.loads(listed.output)["dead_letters"] if d["reason"] == "ValidationFailed")
    assert letter["field"] and letter["rule"] and letter["record"] == letter["key"]

    for command in (["dead-letters", "list", "--flow", "accounts-to-customer"], ["replay", "--flow", "nope"],
                    ["conflicts", "list", "--flow", "nope"], ["requests", "list", "--flow", "nope"],
                    ["dead-letters", "purge", "--yes", "--flow", "nope"]):
        refused = runner.invoke(cli, [*command, *common])
        assert refused.exit_code == 2 and "accounts-to-customers" in refused.output, command
    refused = runner.invoke(cli, ["dead-letters", "list", "--reason", "ValidationFaild", *common])
    assert refused.exit_code == 2 and "ValidationFailed" in refused.output

    import shared.cli.common

    monkeypatch.setattr(shared.cli.common.console, "width", 80)
    narrow = runner.invoke(cli, ["dead-letters", "list", *common])
    assert narrow.exit_code == 0 and max(len(line) for line in narrow.output.splitlines()) <= 80
    assert "accounts-to-customers" in narrow.output and "ValidationFailed" in narrow.output
    assert "MissingReference" in narrow.output and "contacts-to-erp" in narrow.output

    replayed = runner.invoke(cli, ["replay", "--dry-run", "--reason", "ValidationFailed", "--json", *common])
    assert replayed.exit_code == 0 and json.loads(replayed.output)["dry_run"] is True
    assert json.loads(runner.invoke(cli, ["conflicts", "list", "--json", *common]).output) == {"conflicts": []}
