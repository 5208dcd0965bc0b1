"""Dataverse (the simulator, over loopback HTTP) -> file outbox through the embedded runtime: every run writes
whole CSV files with manifests that, imported in name order as the outbox docstring says, give the ERP the CRM's
rows; and, by a one-way flow back, an export the same as the last is nothing new (never on the bus) while an edit
in it reaches the CRM."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest

from dvsim.pytest_fixtures import dataverse_sim  # noqa: F401
from shared.app import SyncApp
from shared.config import parse_config
from shared.local_runtime import RunOptions, run_once

TOKEN = "static-test-token-files"


@pytest.fixture
def crm_to_files(dataverse_sim, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DV_TOKEN", TOKEN)
    folder = tmp_path / "exchange"
    folder.mkdir()
    app = SyncApp.local(parse_config({
        "systems": {
            "crm": {"kind": "dataverse", "url": dataverse_sim.url, "auth": {"static_token": "env:DV_TOKEN"}},
            "erp": {"kind": "files", "folder": str(folder),
                    "csv": {"delimiter": ";", "decimal_separator": ",",
                            "columns": {"Kundennr": "account_number", "Kredit": "credit_limit"},
                            "types": {"credit_limit": "decimal"}}},
        },
        "flows": {
            "accounts-to-files": {
                "source": {"system": "crm", "entity": "accounts", "key": "accountnumber",
                           "changes": "change_tracking", "select": ["name", "creditlimit"]},
                "target": {"system": "erp", "entity": "customers", "key": "account_number"},
                "deletes": "delete",
                "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"},
                           {"from": "creditlimit", "to": "credit_limit", "type": "decimal"}],
            },
            "files-to-accounts": {
                "source": {"system": "erp", "entity": "customers", "key": "account_number", "changes": "snapshot"},
                "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
                "fields": [{"from": "account_number", "to": "accountnumber"}, {"from": "name", "to": "name"},
                           {"from": "credit_limit", "to": "creditlimit", "type": "decimal"}],
            },
        },
    }), tmp_path / "state", retry_base=0.01)
    yield app, dataverse_sim, folder
    app.close()


def run(app: SyncApp, flow: str = "accounts-to-files"):
    tally = run_once(app, RunOptions(workers=0, drain_bound=1))
    for counts in tally.flows.values():
        assert counts.adds_up() and counts.waiting == 0 and not counts.dead_lettered, tally.flows
    return tally.flows[flow]


def export(folder: Path, table: dict[str, dict], name: str) -> None:
    """The ERP exports its whole table into the inbox (renamed into place once written)."""
    inbox = folder / "inbox" / "customers"
    inbox.mkdir(parents=True, exist_ok=True)
    lines = ["Kundennr;name;Kredit"] + [f"{k};{v['name']};{v['Kredit']}" for k, v in sorted(table.items())]
    (inbox / ".writing").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    (inbox / ".writing").replace(inbox / name)


def import_outbox(outbox: Path, table: dict[str, dict], done: set[str]) -> list[dict]:
    """What the importing ERP does: each CSV whose manifest is there and matches, in name order, once."""
    manifests = []
    for manifest_path in sorted(outbox.glob("*.manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        data = (outbox / manifest["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest["sha256"]
        if manifest["file"] in done:
            continue
        done.add(manifest["file"])
        manifests.append(manifest)
        for row in csv.DictReader(io.StringIO(data.decode(manifest["encoding"])), delimiter=";"):
            key = row.pop("Kundennr")
            if row.pop("operation") == "delete":
                table.pop(key, None)
            else:
                table[key] = {**table.get(key, {}), **row}
    return manifests


def test_crm_changes_reach_the_erp_as_whole_files_with_manifests(crm_to_files):
    app, sim, folder = crm_to_files
    ids = {n: sim.insert("accounts", {"accountnumber": n, "name": f"Account {n}", "creditlimit": 1000.5})["accountid"]
           for n in ("A-1", "A-2", "A-3")}
    assert run(app).applied == 3
    outbox = folder / "outbox" / "customers"
    erp: dict[str, dict] = {}
    done: set[str] = set()
    first = import_outbox(outbox, erp, done)
    assert [(m["rows"], m["upsert"], m["delete"]) for m in first] == [(3, 3, 0)]
    assert erp == {n: {"name": f"Account {n}", "Kredit": "1000,5"} for n in ("A-1", "A-2", "A-3")}

    sim.update("accounts", ids["A-2"], {"name": "Renamed"})
    sim.delete("accounts", ids["A-3"])
    assert run(app).applied == 2
    second = import_outbox(outbox, erp, done)
    assert [(m["rows"], m["upsert"], m["delete"]) for m in second] == [(2, 1, 1)]
    assert erp == {"A-1": {"name": "Account A-1", "Kredit": "1000,5"}, "A-2": {"name": "Renamed", "Kredit": "1000,5"}}
    assert not list(outbox.glob(".*")), "no temporary file is left behind"
    assert run(app).pulled == 0 and import_outbox(outbox, erp, done) == []

    # The ERP's export of what it imported goes back one way (files cannot be in a pair: a file cannot say
    # whether a row is still as it was read). Its rows are new to that flow; the CRM is told what it holds.
    export(folder, erp, "export-001.csv")
    assert run(app, "files-to-accounts").pulled == 2
    assert [sim.get("accounts", ids[n])["name"] for n in ("A-1", "A-2")] == ["Account A-1", "Renamed"]
    # The same rows exported again are nothing new: none goes on the bus.
    export(folder, erp, "export-002.csv")
    assert run(app, "files-to-accounts").pulled == 0
    assert app.state.recent_runs("files-to-accounts", limit=1)[0]["unchanged"] == 2
    # An edit in the ERP travels to the CRM, and only that row.
    erp["A-1"]["Kredit"] = "2000"
    export(folder, erp, "export-003.csv")
    back = run(app, "files-to-accounts")
    assert back.pulled == 1 and back.applied == 1
    assert sim.get("accounts", ids["A-1"])["creditlimit"] == 2000
    assert sorted(p.name.split("~")[1] for p in (folder / "archive" / "customers").iterdir()) == [
        "export-001.csv", "export-002.csv", "export-003.csv"]
