"""`resync`: one record re-read and re-sent, forced; and the CLI for resync, reconcile and initial sync."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from demo import sample_data
from shared.cli import app as cli
from shared.engine.delivery import handle_delivery
from shared.engine.resync import RecordNotFoundError, resync
from shared.errors import ConfigError
from shared.messages import parse_body
from tests.unit.conftest import account, deliver


def _received(app):
    return app.bus.receive(app.queue, max_messages=10, max_wait=0.2)


def test_resync_sends_the_current_record_forced_with_a_new_id_each_time(app, memory):
    memory["crm"].put("accounts", "a1", {"accountid": "a1", "accountnumber": "N-a1", "name": "Acme", "statecode": 0})
    version = f"{memory['crm'].versions[('accounts', 'a1')]:020d}"
    deliver(app, account("a1", memory["crm"].versions[("accounts", "a1")], number="N-a1"))
    memory["erp"].tables["customers"]["N-a1"]["name"] = "edited"  # someone edits the target by hand

    first, second = resync(app, "accounts", "a1"), resync(app, "accounts", "a1")

    assert first.message_id != second.message_id and first.version == version
    received = _received(app)
    assert len(received) == 2
    message = parse_body(received[0].envelope.body)
    assert (message.op, message.key, message.version, message.force, message.payload["name"]) == (
        "upsert", "a1", version, True, "Acme")
    outcomes = handle_delivery(app, received, app.bus.settler(app.queue))
    assert "applied" in {o.kind.value for o in outcomes}  # the version was applied before: force overrides
    assert memory["erp"].tables["customers"]["N-a1"]["name"] == "Acme"


def test_resync_of_a_missing_record_or_flow_says_which(app):
    with pytest.raises(RecordNotFoundError, match="flow accounts: record 'nope' not found in crm accounts"):
        resync(app, "accounts", "nope")
    with pytest.raises(ConfigError, match="no flow named 'nothing'"):
        resync(app, "nothing", "a1")
    assert app.bus.counts(app.queue).active == 0


# -- the CLI over the SQLite sample databases ---------------------------------------------------------

FLOW = "accounts-to-customers"


@pytest.fixture
def sample(tmp_path, monkeypatch):
    crm_url, erp_url = sample_data.build(tmp_path / "data", accounts=30, contacts=0, with_bad_rows=False)
    monkeypatch.setenv("CRM_DB_URL", crm_url)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    flows = sample_data.write_flows(tmp_path)
    deletes = "    deletes: deactivate\n"
    flows.write_text(flows.read_text().replace(deletes, deletes + "    match_on: [account_number]\n", 1))
    erp = sa.create_engine(erp_url)
    rows = [{"account_number": f"C{i:06d}", "name": f"Customer {i} Ltd", "status": ("active", "inactive")[i % 2],
             "credit_limit": (1000 + i) / 4, "crm_id": sample_data.account_id(i)} for i in range(30)]
    rows[7]["name"] = "Renamed in the ERP"
    rows.append({**rows[5], "account_number": "c000005"})  # a second ERP customer that matches account 5
    with erp.begin() as conn:
        conn.execute(sa.insert(sample_data.erp_customers), rows)
    erp.dispose()
    return {"config": str(flows), "workdir": str(tmp_path / "work"), "crm": crm_url, "erp": erp_url}


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, " ".join(result.output.split())  # as read, whatever width the terminal wraps at


def test_cli_initial_sync_reconcile_and_resync(sample):
    options = ["--config", sample["config"], "--workdir", sample["workdir"]]
    code, out = _run("initial-sync", FLOW, *options)
    assert code == 0, out
    assert f"{FLOW}: matched 29 (of which 1 sent to align values), created 0, ambiguous 1" in out
    assert "AmbiguousMatch: flow accounts-to-customers record acc-0000005" in out

    crm = sa.create_engine(sample["crm"])
    with crm.begin() as conn:
        conn.execute(sa.delete(sample_data.crm_accounts).where(
            sample_data.crm_accounts.c.accountid.in_([sample_data.account_id(i) for i in (2, 3, 4)])))
    crm.dispose()
    code, out = _run("reconcile", FLOW, *options)
    assert code == 0, out
    assert f"{FLOW}: scanned 27 source keys, 29 linked, sent 3 deletes" in out

    code, out = _run("resync", FLOW, sample_data.account_id(1), *options)
    assert code == 0, out
    assert f"{FLOW} {sample_data.account_id(1)}: sent version" in out and ":resync-" in out
    code, out = _run("resync", FLOW, sample_data.account_id(2), *options)
    assert code == 1 and "record 'acc-0000002' not found in crm accounts" in out


def test_cli_initial_sync_needs_match_on(sample):
    code, out = _run("initial-sync", "contacts-to-erp", "--config", sample["config"], "--workdir", sample["workdir"])
    assert code == 2 and "match_on" in out  # a config problem: exit 2, as `dualsync validate` does
