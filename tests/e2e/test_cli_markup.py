"""Text in square brackets (a flow name, a record key, a reason) is printed as it is: rich markup never eats
it (CLI runner over real SQLite databases)."""

from __future__ import annotations

from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from demo import sample_data
from shared.cli import app as cli

FLOW = "accounts-[bold]to[/bold]-customers"


def test_flow_names_and_record_keys_in_brackets_survive_every_listing(tmp_path, monkeypatch):
    crm_url, erp_url = sample_data.build(tmp_path / "data", accounts=30, contacts=15)
    engine = create_engine(crm_url)
    with engine.begin() as conn:  # a key that looks like markup, on a row that fails validation
        conn.execute(text("UPDATE accounts SET accountid = '[red]acc-3' WHERE accountid = 'acc-0000003'"))
    engine.dispose()
    monkeypatch.setenv("CRM_DB_URL", crm_url)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    flows = tmp_path / "flows.yaml"
    flows.write_text(sample_data.FLOWS_YAML.replace("lookup: accounts-to-customers", f"lookup: '{FLOW}'")
                     .replace("accounts-to-customers:", f"'{FLOW}':"), encoding="utf-8")
    common = ["--config", str(flows), "--workdir", str(tmp_path / "state")]
    runner = CliRunner()

    ran = runner.invoke(cli, ["run", "--once", "--workers", "0", "--retry-base", "0.01", "--drain-bound", "1",
                              *common])
    assert ran.exit_code == 0, ran.output
    assert FLOW in ran.output
    assert FLOW in runner.invoke(cli, ["status", *common]).output
    listed = runner.invoke(cli, ["dead-letters", "list", "--flow", FLOW, *common]).output
    assert "[red]acc-3" in listed and FLOW in listed
    assert runner.invoke(cli, ["pause", FLOW, *common]).output.strip() == f"{FLOW} paused"
    paused = runner.invoke(cli, ["status", *common]).output
    assert "paused by operator" in paused
    unknown = runner.invoke(cli, ["pause", "[bold]nope", *common])
    assert unknown.exit_code == 2 and "no flow named '[bold]nope'" in unknown.output
