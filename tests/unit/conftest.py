from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import parse_config
from shared.engine.delivery import handle_delivery
from shared.messages import ChangeMessage, Envelope, to_envelope
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore
from tests.fakes.memory_connector import MemoryConnector

CONFIG = {
    "systems": {"crm": {"kind": "sql", "url": "sqlite://"}, "erp": {"kind": "sql", "url": "sqlite://"}},
    "flows": {
        "accounts": {
            "source": {"system": "crm", "entity": "accounts", "key": "accountid"},
            "target": {"system": "erp", "entity": "customers", "key": "account_number"},
            "deletes": "deactivate",
            "max_attempts": 3,
            "missing_reference_attempts": 2,
            "fields": [
                {"from": "accountnumber", "to": "account_number", "required": True},
                {"from": "name", "to": "name", "required": True, "max_length": 10},
                {"from": "statecode", "to": "status", "map": {0: "active", 1: "inactive"}},
                {"from": "creditlimit", "to": "credit_limit", "type": "decimal"},
            ],
        },
        "contacts": {
            "source": {"system": "crm", "entity": "contacts", "key": "contactid"},
            "target": {"system": "erp", "entity": "contacts", "key": "contact_no"},
            "deletes": "delete",
            "missing_reference_attempts": 2,
            "fields": [
                {"from": "contactid", "to": "contact_no"},
                {"from": "lastname", "to": "last_name", "required": True},
                {"from": "parent", "to": "customer_no", "lookup": "accounts"},
            ],
        },
    },
}


@pytest.fixture
def memory():
    return {"crm": MemoryConnector(), "erp": MemoryConnector()}


@pytest.fixture
def app(tmp_path, memory):
    sync = SyncApp(config=parse_config(CONFIG), state=StateStore(SqliteTables(":memory:")),
                   bus=SqliteBus(tmp_path / "bus.db", lock_duration=30), retry_base=0.01,
                   connector_factory=lambda name: memory[name])
    yield sync
    sync.close()


def change(key: str, version: int, flow: str = "accounts", op: str = "upsert", attempt: int = 1,
           **payload) -> ChangeMessage:
    return ChangeMessage(flow=flow, op=op, source_system="crm", entity=flow, key=key, version=f"{version:020d}",
                         changed_at=datetime.now(UTC), payload=payload, attempt=attempt)


def account(key: str, version: int, name: str = "Acme", number: str | None = None, **extra) -> ChangeMessage:
    return change(key, version, accountnumber=number or f"N-{key}", name=name, statecode=0, **extra)


def deliver(app: SyncApp, *messages: ChangeMessage, raw: list[bytes] | None = None):
    # Unique ids: these tests redeliver on purpose, which duplicate detection would otherwise drop.
    envelopes = [to_envelope(m, message_id=f"{m.message_id()}#{uuid.uuid4().hex[:8]}") for m in messages]

    envelopes += [Envelope(message_id=f"raw-{i}", body=b) for i, b in enumerate(raw or [])]
    app.bus.send(app.queue, envelopes)
    received = app.bus.receive(app.queue, max_messages=len(envelopes), max_wait=1)
    assert len(received) == len(envelopes)
    return handle_delivery(app, received, app.bus.settler(app.queue))
