"""`make demo` headless: the seeds' story with every count asserted."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from demo import __main__ as demo_main
from demo import story as st
from shared.cli import app as cli


@pytest.fixture
def story(tmp_path):
    s = st.run(tmp_path / "demo")
    yield s
    s.close()


def counts(tally, flow):
    c = tally.flows[flow]
    return c.pulled, c.applied, dict(c.skipped), dict(c.dead_lettered), c.waiting


def test_the_whole_story(story):
    first = story.first
    assert counts(first, "accounts-to-customers") == (st.ACCOUNTS, st.ACCOUNTS, {}, {}, 0)
    assert counts(first, "contacts-to-erp") == (st.CONTACTS, st.CONTACTS, {}, {}, 0)
    assert counts(first, "orders-to-erp") == (st.ORDERS, st.ORDERS, {}, {}, 0)
    assert counts(first, "products-to-crm") == (st.PRODUCTS, st.PRODUCTS, {}, {}, 0)
    assert counts(first, "pricelists-to-crm") == (3, 3, {}, {}, 0)
    assert counts(first, "glaccounts-to-crm") == (len(st.GL_CODES), len(st.GL_CODES), {}, {}, 0)
    assert counts(first, "invoices-to-crm") == (2000, 1990, {}, {"MissingReference": 10}, 0)
    assert all(c.adds_up() for c in first.flows.values())

    dead = {key: (reason, description) for flow, key, reason, description in story.dead_letters}
    assert set(dead) == set(st.BAD_GL_INVOICES) | set(st.BAD_CUSTOMER_INVOICES)
    for key, code in st.BAD_GL_INVOICES.items():
        assert dead[key][0] == "MissingReference"
        assert f"record {key}: field dualsync_glaccountid@odata.bind (from gl_account): parent '{code}'" in dead[key][1]
    for key, customer in st.BAD_CUSTOMER_INVOICES.items():
        assert f"record {key}: field customerid_account@odata.bind (from customer_no): parent '{customer}'" in dead[key][1]

    assert counts(story.master_data, "glaccounts-to-crm") == (2, 2, {}, {}, 0)
    assert counts(story.master_data, "accounts-to-customers") == (3, 3, {}, {}, 0)
    # The ERP stamps every row we wrote; the reverse flow recognises them all as our own echoes.
    assert counts(story.master_data, "customers-to-accounts") == (st.ACCOUNTS, 0, {"echo": st.ACCOUNTS}, {}, 0)
    assert (story.replay.matched, story.replay.replayed, story.replay.left) == (10, 10, 0)
    invoices = story.after_replay.flows["invoices-to-crm"]
    assert (invoices.backlog, invoices.applied, sum(invoices.dead_lettered.values())) == (10, 10, 0)

    numbers = st.crm_invoice_numbers(story)
    assert len(numbers) == len(set(numbers)) == 2000
    assert story.app.bus.counts(story.app.queue).dead_letter == 0

    final = st.customer_5(story)
    assert final["crm_name"] == final["erp_name"] == story.conflict["crm_name"]  # the master wins the name
    assert final["crm_phone"] == final["erp_phone"] == story.conflict["erp_phone"]  # the ERP's phone is merged
    assert story.conflict_runs[0].flows["accounts-to-customers"].conflicts == 1
    last = story.conflict_runs[-1]
    assert sum(c.applied for c in last.flows.values()) == 0  # settled: only echoes come back

    # What `make demo` prints: each step as the command that does it, and the command to try next.
    report = _printed(lambda: demo_main.report(story))
    assert report.count("$ dualsync run --once --config flows.yaml --workdir state") == 4
    assert "$ dualsync dead-letters list" in report and "$ dualsync replay" in report
    assert all(f"invoices-to-crm {key} MissingReference" in report for key in dead)
    ran = json.loads(_cli(["runs", "--json", "--busy", "--flow", "invoices-to-crm"], story.work).output)["runs"]
    # One pull sent the 2,000 invoices: 10 were dead-lettered, then replayed after the fix and applied.
    assert [(r["pulled"], r["applied"], r["dead_lettered"]) for r in ran] == [(2000, 2000, 10)]


def _printed(show) -> str:
    recording = Console(record=True, width=80, file=io.StringIO())
    original, demo_main.console = demo_main.console, recording
    try:
        show()
    finally:
        demo_main.console = original
    return recording.export_text()


def _cli(args: list[str], work):
    return CliRunner().invoke(cli, [*args, "--config", str(work / "flows.yaml"), "--workdir", str(work / "state")])
