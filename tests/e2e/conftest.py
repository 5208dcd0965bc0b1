from __future__ import annotations

import pytest

from demo import sample_data
from shared.app import SyncApp
from shared.config import load_config


@pytest.fixture
def sample(tmp_path, monkeypatch):
    """Builds sample databases of a given size and returns (app, crm_url, erp_url)."""
    apps = []

    def build(accounts: int = 2000, contacts: int = 3000, bad: bool = True, retry_base: float = 0.02):
        crm_url, erp_url = sample_data.build(tmp_path / "data", accounts, contacts, with_bad_rows=bad)
        monkeypatch.setenv("CRM_DB_URL", crm_url)
        monkeypatch.setenv("ERP_DB_URL", erp_url)
        flows = sample_data.write_flows(tmp_path)
        app = SyncApp.local(load_config(flows), tmp_path / "state", retry_base=retry_base)
        apps.append(app)
        return app, crm_url, erp_url

    yield build
    for app in apps:
        app.close()
