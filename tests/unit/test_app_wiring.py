"""SyncApp.from_settings: the app settings choose the stores, the queue and the retry limit."""

from __future__ import annotations

from demo.sample_data import FLOWS_YAML
from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import load_config
from shared.state.sqlite_tables import SqliteTables


def test_embedded_backends_and_settings(tmp_path, monkeypatch):
    flows = tmp_path / "flows.yaml"
    flows.write_text(FLOWS_YAML)
    monkeypatch.setenv("DUALSYNC_CONFIG", str(flows))
    monkeypatch.setenv("STATE_SQLITE_PATH", str(tmp_path / "s" / "state.db"))
    monkeypatch.setenv("BUS_SQLITE_PATH", str(tmp_path / "b" / "bus.db"))
    monkeypatch.setenv("APPLY_QUEUE", "orders-queue")
    monkeypatch.setenv("MAX_ATTEMPTS", "3")
    app = SyncApp.from_settings()
    try:
        assert isinstance(app.state.tables, SqliteTables) and isinstance(app.bus, SqliteBus)
        assert (app.queue, app.max_attempts) == ("orders-queue", 3)
        assert set(app.config.flows) == set(load_config(flows).flows)
        assert (tmp_path / "s" / "state.db").exists() and (tmp_path / "b" / "bus.db").exists()
        # records too large for one message keep their bodies beside the queue file
        assert app.bus.claims.store.root == tmp_path / "b" / "payloads"
    finally:
        app.close()


def test_service_bus_carries_large_records_through_the_blob_settings(tmp_path, monkeypatch):
    flows = tmp_path / "flows.yaml"
    flows.write_text(FLOWS_YAML)
    monkeypatch.setenv("DUALSYNC_CONFIG", str(flows))
    monkeypatch.setenv("STATE_SQLITE_PATH", str(tmp_path / "state.db"))
    monkeypatch.setenv("BUS_BACKEND", "servicebus")
    monkeypatch.setenv("ServiceBusConnection__fullyQualifiedNamespace", "ns.servicebus.windows.net")
    monkeypatch.setenv("PAYLOAD_BLOB_ENDPOINT", "https://acct.blob.core.windows.net/")
    monkeypatch.setenv("PAYLOAD_BLOB_CONTAINER", "big-bodies")
    app = SyncApp.from_settings()
    try:
        assert "acct.blob.core.windows.net/big-bodies" in repr(app.bus.claims.store)
    finally:
        app.close()
