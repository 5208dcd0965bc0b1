"""The claim check's edges: the size estimate, store failures, verdicts it must not override, orphans."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from azure.servicebus import ServiceBusMessageBatch
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport

from shared.bus.claim_check import MAX_MESSAGE_BYTES, REF_PROPERTY, message_size
from shared.bus.payload_store import BlobPayloadStore, FilePayloadStore, PayloadStoreError
from shared.bus.servicebus import to_service_bus_message
from shared.bus.sqlite_bus import SqliteBus
from shared.engine.verdicts import condemned
from shared.errors import ConfigError
from shared.messages import ChangeMessage, to_envelope

Q = "dualsync-changes"


def change(key: str, size: int, **kw) -> ChangeMessage:
    return ChangeMessage(flow="notes", op="upsert", source_system="crm", entity="notes", key=key, version="7",
                         changed_at=datetime(2030, 1, 1, tzinfo=UTC), payload={"text": "x" * size}, **kw)


def files(root) -> list:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize("size", [0, 1000, 200_000, 262_000])
@pytest.mark.parametrize("scheduled", [False, True])
def test_message_size_is_never_below_what_service_bus_counts(size, scheduled):
    """So the SQLite bus, which holds messages to message_size(), is never more lenient than Service Bus."""
    envelope = to_envelope(change("k" * 100, size, correlation_id="c" * 32),
                           scheduled_at=datetime(2030, 1, 1, tzinfo=UTC) if scheduled else None)
    message = to_service_bus_message(envelope)
    batch = ServiceBusMessageBatch(max_size_in_bytes=10 * MAX_MESSAGE_BYTES, amqp_transport=PyamqpTransport)
    batch.add_message(message)
    assert batch.size_in_bytes <= message_size(envelope) <= batch.size_in_bytes + 1024


class FlakyStore:
    def __init__(self, transient: bool) -> None:
        self.transient = transient

    def put(self, name, data):
        raise PayloadStoreError("cannot store payload blob x (503)" if self.transient else "denied (403)",
                                transient=self.transient)

    def get(self, name):
        raise PayloadStoreError("cannot read payload blob x (503)", transient=True)

    def delete(self, name):
        return None

    def close(self):
        return None


def test_a_transient_store_failure_fails_the_send_and_sends_nothing(tmp_path):
    bus = SqliteBus(tmp_path / "bus.db", payloads=FlakyStore(transient=True))
    with pytest.raises(PayloadStoreError, match="503"):
        bus.send(Q, [to_envelope(change("small", 10)), to_envelope(change("big", MAX_MESSAGE_BYTES))])
    assert bus.counts(Q).active == 0


def test_a_permanent_store_failure_sends_the_record_as_payload_too_large_naming_the_error(tmp_path):
    bus = SqliteBus(tmp_path / "bus.db", payloads=FlakyStore(transient=False))
    bus.send(Q, [to_envelope(change("big", MAX_MESSAGE_BYTES))])
    [got] = bus.receive(Q, max_wait=0)
    props = got.envelope.application_properties
    assert props["dead_letter_reason"] == "PayloadTooLarge"
    assert "flow notes record big version 7" in props["dead_letter_description"]
    assert "denied (403)" in props["dead_letter_description"]


def test_a_transient_failure_fetching_a_body_gives_the_messages_back_and_raises(tmp_path):
    bus = SqliteBus(tmp_path / "bus.db", lock_duration=30, payloads=FilePayloadStore(tmp_path / "p"))
    bus.send(Q, [to_envelope(change("big", MAX_MESSAGE_BYTES)), to_envelope(change("small", 1))])
    bus.claims.store = FlakyStore(transient=True)
    with pytest.raises(PayloadStoreError):
        bus.receive(Q, max_wait=0)
    bus.claims.store = FilePayloadStore(tmp_path / "p")
    got = bus.receive(Q, max_wait=0)  # not held for the 30 s lock
    assert len(got) == 2 and {m.delivery_count for m in got} == {2}


def test_a_condemned_message_too_large_keeps_its_own_verdict(tmp_path):
    bus = SqliteBus(tmp_path / "bus.db", payloads=FilePayloadStore(tmp_path / "p"))
    bus.send(Q, [condemned(change("dup", MAX_MESSAGE_BYTES), "AmbiguousMatch", "two customers match")])
    [got] = bus.receive(Q, max_wait=0)
    props = got.envelope.application_properties
    assert props["dead_letter_reason"] == "AmbiguousMatch" and props["dead_letter_description"] == "two customers match"
    bus.settler(Q).dead_letter(got, "AmbiguousMatch", "two customers match")
    bus.complete_dead_letters(Q, bus.receive_dead_letters(Q, max_wait=0))
    assert files(tmp_path / "p") == []


def test_a_dropped_duplicate_leaves_no_body_behind(tmp_path):
    bus = SqliteBus(tmp_path / "bus.db", payloads=FilePayloadStore(tmp_path / "p"))
    big = to_envelope(change("big", MAX_MESSAGE_BYTES))
    bus.send(Q, [big])
    bus.send(Q, [big])  # a re-send while the first is queued: one body serves both
    assert len(files(tmp_path / "p")) == 1
    [got] = bus.receive(Q, max_wait=0)
    bus.settler(Q).complete([got])
    assert files(tmp_path / "p") == []
    assert bus.send(Q, [big]) == 0  # a re-send after the first was applied: dropped, and its body with it
    assert files(tmp_path / "p") == []


def test_a_message_with_a_reference_but_no_store_on_the_receiving_side_is_never_applied_empty(tmp_path):
    sender = SqliteBus(tmp_path / "bus.db", payloads=FilePayloadStore(tmp_path / "p"))
    sender.send(Q, [to_envelope(change("big", MAX_MESSAGE_BYTES))])
    [got] = SqliteBus(tmp_path / "bus.db").receive(Q, max_wait=0)
    props = got.envelope.application_properties
    assert props["dead_letter_reason"] == "PayloadNotFetched" and REF_PROPERTY in props
    assert "flow notes record big" in props["dead_letter_description"]


def test_the_file_store_keeps_names_inside_its_folder(tmp_path):
    store = FilePayloadStore(tmp_path / "p")
    with pytest.raises(ValueError, match="leaves"):
        store.put("../escape", b"x")
    store.put("q/a", b"body")
    assert store.get("q/a") == b"body" and store.get("q/b") is None
    store.delete("q/a")
    store.delete("q/a")
    assert store.get("q/a") is None


def test_blob_store_settings():
    assert BlobPayloadStore.from_settings({}) is None
    store = BlobPayloadStore.from_settings({"PAYLOAD_BLOB_ENDPOINT": "https://acct.blob.core.windows.net/"})
    assert "acct.blob.core.windows.net/dualsync-payloads" in repr(store)
    secret = "c2VjcmV0LWtleS12YWx1ZQ=="
    with pytest.raises(ConfigError) as caught:
        BlobPayloadStore.from_settings({"PAYLOAD_BLOB_CONNECTION": f"AccountKey={secret};nonsense"})
    assert secret not in str(caught.value) and caught.value.__cause__ is None
