"""On Azure: a CSV lands in a files inbox container (Azurite Blob here), Event Grid tells the `files_arrived`
function, which pulls the flows that read it; applied, its rows reach the target, and the file is archived."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import azure.functions as func
import pytest
from sqlalchemy import create_engine, text

from shared.app import SyncApp
from shared.config import parse_config
from shared.connectors.files.arrivals import blob_of_subject, flows_reading
from shared.local_runtime import RunOptions, run_once
from tests.unit.test_function_app import indexed


def event(subject: str, event_type: str = "Microsoft.Storage.BlobCreated") -> func.EventGridEvent:
    return func.EventGridEvent(id=uuid.uuid4().hex, data={}, topic="storage", subject=subject,
                               event_type=event_type, event_time=datetime.now(UTC), data_version="1")


@pytest.fixture
def on_blob(azurite_blobs, tmp_path, monkeypatch):
    monkeypatch.setenv("FILES_BLOB", azurite_blobs)
    inbox = f"erp-in-{uuid.uuid4().hex[:8]}"
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT)"))
    app = SyncApp.local(parse_config({
        "systems": {"erp": {"kind": "files", "blob_connection": "env:FILES_BLOB", "inbox": inbox,
                            "archive": f"{inbox}-archive", "outbox": f"{inbox}-out"},
                    "crm": {"kind": "sql", "url": db_url}},
        "flows": {"customers-in": {
            "source": {"system": "erp", "entity": "customers", "key": "id", "changes": "snapshot"},
            "target": {"system": "crm", "entity": "customers", "key": "id"},
            "fields": [{"from": "id", "to": "id"}, {"from": "name", "to": "name"}]}},
    }), tmp_path / "state", retry_base=0.01)
    import functions.files

    monkeypatch.setattr(functions.files, "sync_app", lambda: app)
    yield app, inbox, engine
    app.close()
    engine.dispose()


def test_a_file_that_lands_is_pulled_at_once_applied_and_archived(on_blob):
    app, inbox, engine = on_blob
    storage = app.connector("erp").storage
    storage.write(inbox, "customers/2026-12-01.csv", iter([b"id,name\r\n1,Ada\r\n2,Grace\r\n"]))
    handler = indexed()["files_arrived"].get_user_function()  # as the Functions host indexed it
    handler(event=event(f"/blobServices/default/containers/{inbox}-archive/blobs/customers/x.csv"))
    assert app.bus.counts(app.queue).active == 0  # not an inbox: nothing pulled
    handler(event=event(f"/blobServices/default/containers/{inbox}/blobs/customers/2026-12-01.csv",
                        "Microsoft.Storage.BlobDeleted"))
    assert app.bus.counts(app.queue).active == 0  # not a new file
    handler(event=event(f"/blobServices/default/containers/{inbox}/blobs/customers/2026-12-01.csv"))
    assert app.bus.counts(app.queue).active == 2
    assert app.state.get_cursor("customers-in").last_run["pulled"] == 2
    tally = run_once(app, RunOptions(workers=0, drain_bound=1))
    assert tally.flows["customers-in"].applied == 2
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT id, name FROM customers")).all()) == [("1", "Ada"), ("2", "Grace")]
    assert storage.files(inbox, "customers/") == []
    assert [f.name.split("~")[1] for f in storage.files(f"{inbox}-archive", "customers/")] == ["2026-12-01.csv"]


def test_which_flows_read_a_blob(on_blob):
    app, inbox, _ = on_blob
    assert blob_of_subject(f"/blobServices/default/containers/{inbox}/blobs/customers/a/b.csv") == (
        inbox, "customers/a/b.csv")
    assert blob_of_subject("/subscriptions/x/resourceGroups/y") is None
    assert flows_reading(app.config, inbox, "customers/new.csv") == ["customers-in"]
    assert flows_reading(app.config, inbox, "customers/new.txt") == []
    assert flows_reading(app.config, inbox, "orders/new.csv") == []
    assert flows_reading(app.config, "elsewhere", "customers/new.csv") == []
