"""A record too large for one Service Bus message never blocks its flow.

ServiceBusBus over the fake SDK client (which enforces the 256 KB Standard-tier limit the way the SDK does), the
claim-check payloads in Azurite's Blob service, the engine's real pull / apply / settle / replay / purge.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from azure.servicebus._common.constants import MAX_BATCH_SIZE_STANDARD
from azure.storage.blob import BlobServiceClient

from shared.app import SyncApp
from shared.bus.claim_check import REF_PROPERTY
from shared.bus.payload_store import BlobPayloadStore
from shared.bus.servicebus import ServiceBusBus
from shared.config import parse_config
from shared.engine.dead_letters import list_dead_letters, purge_dead_letters
from shared.engine.delivery import handle_delivery
from shared.engine.pull import pull_flow
from shared.engine.replay import ReplayFilter, replay_dead_letters
from shared.errors import TransientError
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore
from tests.fakes.memory_connector import MemoryConnector
from tests.fakes.servicebus import fake_service_bus

Q = "dualsync-changes"
MB = 1024 * 1024
CONFIG = {
    "systems": {"crm": {"kind": "sql", "url": "sqlite://"}, "erp": {"kind": "sql", "url": "sqlite://"}},
    "flows": {
        "notes": {
            "source": {"system": "crm", "entity": "notes", "key": "noteid"},
            "target": {"system": "erp", "entity": "notes", "key": "note_no"},
            "max_attempts": 3,
            "fields": [
                {"from": "noteid", "to": "note_no"},
                {"from": "title", "to": "title", "required": True, "max_length": 20},
                {"from": "text", "to": "text"},
            ],
        },
    },
}


@pytest.fixture
def memory():
    return {"crm": MemoryConnector(), "erp": MemoryConnector()}


@pytest.fixture
def container(azurite_blobs):
    name = f"payloads-{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(azurite_blobs).create_container(name)
    return name


def blobs(connection: str, container: str) -> list[str]:
    return [b.name for b in BlobServiceClient.from_connection_string(connection)
            .get_container_client(container).list_blobs()]


def make_app(memory, payloads=None) -> SyncApp:
    client, admin = fake_service_bus()
    admin.create_queue(Q, lock_duration=timedelta(seconds=30), max_delivery_count=5)
    return SyncApp(config=parse_config(CONFIG), state=StateStore(SqliteTables(":memory:")),
                   bus=ServiceBusBus(client, admin=admin, payloads=payloads), queue=Q, retry_base=0.01,
                   connector_factory=lambda name: memory[name])


def apply_all(app: SyncApp) -> list:
    outcomes = []
    while batch := app.bus.receive(Q, max_messages=50, max_wait=0.05):
        outcomes += handle_delivery(app, batch, app.bus.settler(Q))
    return outcomes


def note(memory, key: str, text: str, title: str = "ok") -> None:
    memory["crm"].put("notes", key, {"noteid": key, "title": title, "text": text})


def test_without_a_payload_store_a_too_large_record_is_dead_lettered_and_the_flow_moves_on(memory):
    app = make_app(memory)
    note(memory, "n1", "small")
    note(memory, "big", "x" * MB)
    note(memory, "n2", "small too")

    result = pull_flow(app, "notes")  # raised MessageTooLargeError on every run before

    assert result.pulled == 3
    assert app.state.get_cursor("notes").position == {"version": 3}
    outcomes = apply_all(app)
    assert sorted(o.kind for o in outcomes) == ["applied", "applied", "dead_letter"]
    assert set(memory["erp"].tables["notes"]) == {"n1", "n2"}
    [letter] = list_dead_letters(app)
    assert letter.reason == "PayloadTooLarge" and letter.key == "big" and letter.flow == "notes"
    assert "flow notes record big" in letter.description and "bytes" in letter.description
    assert str(MAX_BATCH_SIZE_STANDARD) in letter.description
    # The next run finds nothing new: nothing is stuck behind the record.
    note(memory, "n3", "later")
    assert pull_flow(app, "notes").pulled == 1
    apply_all(app)
    assert "n3" in memory["erp"].tables["notes"]


def test_a_one_megabyte_record_travels_by_reference_and_arrives_whole(memory, azurite_blobs, container):
    app = make_app(memory, BlobPayloadStore.from_connection_string(azurite_blobs, container))
    text = "".join(chr(0x41 + i % 26) for i in range(MB))
    note(memory, "big", text)
    note(memory, "n1", "small")

    assert pull_flow(app, "notes").pulled == 2

    [stub] = [m for m in app.bus.peek(Q) if m.envelope.application_properties.get("key") == "big"]
    assert len(stub.envelope.body) < 2048 and REF_PROPERTY in stub.envelope.application_properties
    assert len(blobs(azurite_blobs, container)) == 1
    outcomes = apply_all(app)
    assert [o.kind for o in outcomes] == ["applied", "applied"]
    assert memory["erp"].tables["notes"]["big"]["text"] == text
    assert blobs(azurite_blobs, container) == []  # completed for good: the payload is gone too


def test_a_dead_lettered_large_record_keeps_its_payload_until_replayed(memory, azurite_blobs, container):
    app = make_app(memory, BlobPayloadStore.from_connection_string(azurite_blobs, container))
    note(memory, "big", "y" * MB, title="t" * 30)  # too long for the target's title
    pull_flow(app, "notes")
    [outcome] = apply_all(app)
    assert outcome.reason == "ValidationFailed"
    assert len(blobs(azurite_blobs, container)) == 1  # kept while dead-lettered

    note(memory, "big", "z" * MB, title="fixed")
    result = replay_dead_letters(app, ReplayFilter(flow="notes"))

    assert result.replayed == 1
    # the dead-letter copy's payload is released, the replayed copy carries its own
    assert len(blobs(azurite_blobs, container)) == 1
    assert [o.kind for o in apply_all(app)] == ["applied"]
    assert memory["erp"].tables["notes"]["big"]["text"] == "z" * MB
    assert blobs(azurite_blobs, container) == []


def test_retry_clones_carry_their_own_payload_and_nothing_is_left_behind(memory, azurite_blobs, container):
    app = make_app(memory, BlobPayloadStore.from_connection_string(azurite_blobs, container))
    note(memory, "big", "r" * MB)
    pull_flow(app, "notes")
    memory["erp"].fail_next.append(TransientError("503 from the ERP"))

    first = apply_all(app)

    assert [o.kind for o in first] == ["retry", "applied"]
    assert memory["erp"].tables["notes"]["big"]["text"] == "r" * MB
    assert blobs(azurite_blobs, container) == []


def test_purging_a_large_dead_letter_deletes_its_payload(memory, azurite_blobs, container):
    app = make_app(memory, BlobPayloadStore.from_connection_string(azurite_blobs, container))
    note(memory, "big", "p" * MB, title="t" * 30)
    pull_flow(app, "notes")
    apply_all(app)
    assert len(blobs(azurite_blobs, container)) == 1

    assert purge_dead_letters(app, max_wait=0.05).purged == 1

    assert blobs(azurite_blobs, container) == []


def test_a_payload_that_vanished_dead_letters_its_record_instead_of_applying_an_empty_one(
        memory, azurite_blobs, container):
    app = make_app(memory, BlobPayloadStore.from_connection_string(azurite_blobs, container))
    note(memory, "big", "v" * MB)
    pull_flow(app, "notes")
    service = BlobServiceClient.from_connection_string(azurite_blobs).get_container_client(container)
    for name in blobs(azurite_blobs, container):
        service.delete_blob(name)

    [outcome] = apply_all(app)

    assert outcome.kind == "dead_letter" and outcome.reason == "PayloadMissing"
    assert "flow notes record big" in outcome.description
    assert "notes" not in memory["erp"].tables


# -- the apply trigger: the Functions host delivers, the claim check still resolves and releases ---------------
def test_the_extension_mode_trigger_fetches_the_body_and_releases_it_once_completed(
        memory, azurite_blobs, container, monkeypatch):
    import functions.apply
    from functions.apply import build_apply_blueprint
    from tests.unit.test_functions_apply import RecordingActions, host_delivered, user_function

    app = make_app(memory, BlobPayloadStore.from_connection_string(azurite_blobs, container))
    monkeypatch.setattr(functions.apply, "sync_app", lambda: app)
    note(memory, "big", "e" * MB)
    note(memory, "bad", "f" * MB, title="t" * 30)
    pull_flow(app, "notes")
    receiver = app.bus._client.get_queue_receiver(Q)  # noqa: SLF001 - the host's own receiver
    got = receiver.receive_messages(max_message_count=5, max_wait_time=1)
    actions = RecordingActions(receiver, got)

    user_function(build_apply_blueprint("extension"))(messages=host_delivered(got), message_actions=actions)

    assert memory["erp"].tables["notes"]["big"]["text"] == "e" * MB
    assert sorted(e[0] for e in actions.events) == ["complete", "deadletter"]
    assert len(blobs(azurite_blobs, container)) == 1  # the dead letter's body stays
    receiver.close()


def test_the_ledger_mode_trigger_fetches_the_body(memory, azurite_blobs, container, monkeypatch):
    import functions.apply
    from functions.apply import build_apply_blueprint
    from tests.unit.test_functions_apply import user_function

    app = make_app(memory, BlobPayloadStore.from_connection_string(azurite_blobs, container))
    monkeypatch.setattr(functions.apply, "sync_app", lambda: app)
    note(memory, "big", "l" * MB)
    pull_flow(app, "notes")
    [stub] = app.bus.peek(Q)
    host_message = ledger_message(stub.envelope)

    assert user_function(build_apply_blueprint("ledger"))(msg=host_message) is None

    assert memory["erp"].tables["notes"]["big"]["text"] == "l" * MB
    assert blobs(azurite_blobs, container) == []


def ledger_message(envelope):
    from datetime import UTC, datetime

    from azure.functions.servicebus import ServiceBusMessage

    return ServiceBusMessage(
        body=envelope.body, message_id=envelope.message_id, content_type="application/json",
        correlation_id=envelope.correlation_id, label=envelope.subject, subject=envelope.subject,
        application_properties=dict(envelope.application_properties), user_properties={},
        delivery_count=1, enqueued_time_utc=datetime.now(UTC), sequence_number=1, lock_token=str(uuid.uuid4()))
