"""What the operator reads: output that fits 80 columns, the run history, --json, --version, -v, unknown flows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from demo import sample_data
from shared.cli import app as cli

LONG = "customer-accounts-from-the-crm-to-the-erp-nightly"  # longer than any column 80 columns leave


@pytest.fixture
def long_flows(tmp_path, monkeypatch):
    """The sample flows under long names, run once; returns the common arguments."""
    crm_url, erp_url = sample_data.build(tmp_path / "data", accounts=60, contacts=40)
    monkeypatch.setenv("CRM_DB_URL", crm_url)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    flows = sample_data.write_flows(tmp_path)
    flows.write_text(flows.read_text().replace("accounts-to-customers", LONG), encoding="utf-8")
    return ["--config", str(flows), "--workdir", str(tmp_path / "state")]


def _run(args: list[str]):
    return CliRunner().invoke(cli, ["run", "--once", "--workers", "0", "--retry-base", "0.02", "--drain-bound", "5",
                                    *args])


def test_at_80_columns_flow_names_and_reasons_are_never_cut(long_flows, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    ran = _run(long_flows)
    assert ran.exit_code == 0, ran.output
    status = CliRunner().invoke(cli, ["status", *long_flows])
    for output in (ran.output, status.output):
        lines = output.splitlines()
        assert max(len(line) for line in lines) <= 80
        assert any(line.strip() == LONG or line.split()[0] == LONG for line in lines if line.strip()), output
        for reason in ("ValidationFailed", "MappingFailed", "MissingReference"):
            assert re.search(rf"\b{reason}\b", output), (reason, output)
        assert "…" not in output
    assert "cursor" not in status.output and "watermark" not in status.output  # the raw cursor: --json only
    assert re.search(r"\b\d\d-\d\d \d\d:\d\d:\d\d\b", status.output)  # a short timestamp
    cursor = json.loads(CliRunner().invoke(cli, ["status", "--json", *long_flows]).output)["flows"][0]["cursor"]
    assert cursor


def test_runs_lists_what_each_run_did_also_as_json(long_flows):
    assert _run(long_flows).exit_code == 0
    runs = json.loads(CliRunner().invoke(cli, ["runs", "--json", "--busy", "--flow", LONG, *long_flows]).output)["runs"]
    assert len(runs) == 1
    run = runs[0]
    assert (run["flow"], run["kind"], run["pulled"], run["applied"], run["dead_lettered"]) == (LONG, "pull", 60, 56, 4)
    assert run["error"] is None and run["started_at"] <= run["finished_at"]
    assert _run(long_flows).exit_code == 0
    busy = json.loads(CliRunner().invoke(cli, ["runs", "--json", "--busy", *long_flows]).output)["runs"]
    assert sorted(r["flow"] for r in busy) == sorted([LONG, "contacts-to-erp"])  # the second run found nothing new
    one = json.loads(CliRunner().invoke(cli, ["runs", "--json", "--limit", "1", "--flow", LONG, *long_flows]).output)
    assert len(one["runs"]) == 1
    listed = CliRunner().invoke(cli, ["runs", "--busy", *long_flows])
    assert listed.exit_code == 0 and LONG in listed.output and "dead-lettered 4" in " ".join(listed.output.split())


@pytest.mark.parametrize("command", [["status"], ["runs"], ["pause", "nope"], ["resume", "nope"],
                                     ["reconcile", "nope"], ["resync", "nope", "k1"], ["initial-sync", "nope"],
                                     ["replay"]])
def test_an_unknown_flow_is_an_error_naming_the_flows(long_flows, command):
    Path(long_flows[-1]).mkdir()
    args = [*command, "--flow", "nope"] if len(command) == 1 else command
    done = CliRunner().invoke(cli, [*args, *long_flows])
    assert done.exit_code == 2, done.output
    assert "no flow named 'nope'" in done.output and LONG in done.output and "contacts-to-erp" in done.output


def test_version():
    done = CliRunner().invoke(cli, ["--version"])
    assert done.exit_code == 0 and re.fullmatch(r"dualsync \d+\.\d+\.\d+\S*\n", done.output)


def test_verbose_shows_each_retry_with_its_reason(long_flows, tmp_path):
    quiet = CliRunner().invoke(cli, ["run", "--once", "--workers", "1", "--retry-base", "0.02", "--drain-bound", "5",
                                     *long_flows])
    assert quiet.exit_code == 0 and "retry " not in quiet.output
    # The same data from scratch, with -v: contact con-0000005's parent is missing, so it is retried.
    loud = CliRunner().invoke(cli, ["-v", "run", "--once", "--workers", "1", "--retry-base", "0.02", "--drain-bound",
                                    "5", "--config", long_flows[1], "--workdir", str(tmp_path / "again")])
    assert loud.exit_code == 0, loud.output
    flat = " ".join(loud.output.split())
    assert "retry con-0000005: MissingReference" in flat  # from the apply worker process, at INFO


@pytest.mark.parametrize("command", [[], ["run"], ["status"], ["runs"], ["replay"]])
def test_help_shows_examples_that_fit_80_columns(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    shown = CliRunner().invoke(cli, [*command, "--help"])
    assert shown.exit_code == 0
    examples = shown.output[shown.output.index("Examples:"):].splitlines()[1:]
    commands = [line.strip() for line in examples if line.strip().startswith("dualsync")]
    assert commands and all(len(line) <= 80 for line in examples)
    assert not command or any(c.split()[1:2] == command or c.split()[1:3] == ["-v", *command] for c in commands)


def test_runs_shows_the_timer_pulls_with_what_became_of_their_changes(long_flows, tmp_path):
    """On Azure nothing runs a whole sync: pulls are timer runs and apply is continuous. The history is the same."""
    from shared.app import SyncApp
    from shared.config import load_config
    from shared.engine.pull import pull_flow

    app = SyncApp.local(load_config(Path(long_flows[1])), tmp_path / "state")  # as the timer pulls on Azure
    try:
        pull_flow(app, "contacts-to-erp")
    finally:
        app.close()
    runs = json.loads(CliRunner().invoke(cli, ["runs", "--json", "--flow", "contacts-to-erp", *long_flows]).output)
    assert [(r["kind"], r["pulled"], r["applied"]) for r in runs["runs"]] == [("pull", 40, 0)]
