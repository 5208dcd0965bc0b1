"""An ERP that is an OData v4 service (SAP CAP, started by tests/fixtures/cap.py) feeding the Dataverse simulator
through the embedded runtime: products become accounts, an edit in the ERP follows, nothing is written twice."""

from __future__ import annotations

from decimal import Decimal

import httpx

from dvsim.pytest_fixtures import dataverse_sim  # noqa: F401 - fixture
from shared.app import SyncApp
from shared.config import parse_config
from shared.local_runtime import RunOptions, run_once

FLOW = {
    "source": {"system": "erp", "entity": "Products", "key": "ID", "watermark": "modifiedAt",
               "select": ["name", "price"]},
    "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
    "fields": [{"from": "ID", "to": "accountnumber", "required": True, "max_length": 20},
               {"from": "name", "to": "name", "required": True},
               {"from": "price", "to": "creditlimit", "type": "decimal"}],
}


def test_products_in_an_odata_erp_become_accounts_and_edits_follow(tmp_path, odata_server, dataverse_sim,  # noqa: F811
                                                                      monkeypatch):
    monkeypatch.setenv("DV_TOKEN", "dv-token")
    odata_server.clear("Products")
    odata_server.insert("Products", [{"ID": f"P-{i:03d}", "name": f"Product {i}", "price": i + 0.5}
                                     for i in range(25)] + [{"ID": "P-O'Brien 1", "name": "Odd one", "price": 1}])
    config = parse_config({
        "systems": {
            "erp": {"kind": "odata", "url": odata_server.erp, "page_size": 10},
            "crm": {"kind": "dataverse", "url": dataverse_sim.url, "auth": {"static_token": "env:DV_TOKEN"}},
        },
        "flows": {"products-to-accounts": FLOW},
    })
    app = SyncApp.local(config, tmp_path / "state", retry_base=0.02)
    try:
        tally = run_once(app, RunOptions(drain_bound=5))
        counts = tally.flows["products-to-accounts"]
        assert (counts.pulled, counts.applied, sum(counts.dead_lettered.values())) == (26, 26, 0), counts
        accounts = {row["accountnumber"]: row for row in dataverse_sim.rows("accounts")}
        assert len(accounts) == 26 and accounts["P-007"]["name"] == "Product 7"
        assert Decimal(str(accounts["P-007"]["creditlimit"])) == Decimal("7.5")
        assert accounts["P-O'Brien 1"]["name"] == "Odd one"  # quote and space escaped both ways

        httpx.patch(odata_server.erp + "Products('P-003')", json={"name": "Renamed"},
                    headers={"If-Match": "*"}).raise_for_status()
        again = run_once(app, RunOptions(drain_bound=5)).flows["products-to-accounts"]
        # The look-back reads the rows stamped in the last minute again: dropped as duplicates.
        assert again.applied == 1 and again.duplicates == again.pulled - 1, again
        assert {r["accountnumber"]: r["name"] for r in dataverse_sim.rows("accounts")}["P-003"] == "Renamed"
        quiet = run_once(app, RunOptions(drain_bound=1)).flows["products-to-accounts"]
        assert quiet.applied == 0 and not quiet.dead_lettered and len(dataverse_sim.rows("accounts")) == 26
    finally:
        app.close()
