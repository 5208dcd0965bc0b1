"""ServiceBusBus beyond the bus contract: the SDK mapping, batching, secrets and threads.

Runs against tests/fakes/servicebus.py, which takes the real ServiceBusMessage / ServiceBusMessageBatch objects
the bus builds and returns real ServiceBusReceivedMessage objects (bytes-keyed application properties, zero-based
delivery count), so what is asserted here is what the SDK would hand the bus.
"""

from __future__ import annotations

import math
import threading
import traceback
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import (
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus._common.constants import (
    _X_OPT_ENQUEUED_TIME,
    _X_OPT_SEQUENCE_NUMBER,
    MAX_BATCH_SIZE_STANDARD,
)
from azure.servicebus._pyamqp.message import Header, Properties
from azure.servicebus._pyamqp.message import Message as AmqpMessage
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError, MessageSizeExceededError

from shared.bus import servicebus as sb
from shared.bus.servicebus import MessageTooLargeError, ServiceBusBus, decode_properties, to_service_bus_message
from shared.errors import ConfigError, LockLostError
from shared.messages import ChangeMessage, Envelope, to_envelope
from shared.ports.bus import CountsUnavailable
from tests.fakes.servicebus import fake_service_bus

Q = "dualsync-changes"
SECRET = "Zm9vYmFyU2VjcmV0S2V5VmFsdWU0Mg=="


@pytest.fixture
def fake():
    client, admin = fake_service_bus(lock_duration=30.0, max_delivery_count=3)
    admin.create_queue(Q, lock_duration=timedelta(seconds=30), max_delivery_count=3)
    return client, admin


@pytest.fixture
def bus(fake):
    client, admin = fake
    bus = ServiceBusBus(client, admin=admin)
    yield bus
    bus.close()


def env(i: int | str, body: bytes | None = None, **kw) -> Envelope:
    return Envelope(
        message_id=f"m-{i}", body=body if body is not None else f'{{"n": "{i}"}}'.encode(), subject="flow-a",
        correlation_id="run-1", application_properties={"flow": "flow-a", "key": str(i), "attempt": 1}, **kw,
    )


def drain(bus, want: int, *, max_wait: float = 0.2) -> list:
    got: list = []
    while len(got) < want:
        batch = bus.receive(Q, max_messages=500, max_wait=max_wait)
        if not batch:
            break
        got += batch
    return got


# -- envelope -> ServiceBusMessage ---------------------------------------------------------------------
def test_envelope_maps_to_every_service_bus_message_property():
    due = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    change = ChangeMessage(flow="accounts-to-customers", op="upsert", source_system="crm", entity="accounts",
                           key="A-1", version="42", changed_at=datetime(2030, 1, 1, tzinfo=UTC), attempt=2,
                           correlation_id="run-7")
    envelope = to_envelope(change, scheduled_at=due)

    msg = to_service_bus_message(envelope)

    assert isinstance(msg, ServiceBusMessage)
    assert b"".join(msg.body) == envelope.body
    assert msg.message_id == "accounts-to-customers:A-1:42:r2"
    assert msg.subject == "accounts-to-customers"
    assert msg.correlation_id == "run-7"
    assert msg.content_type == "application/json"
    assert msg.application_properties == {
        "flow": "accounts-to-customers", "entity": "accounts", "key": "A-1", "op": "upsert", "attempt": 2,
        "version": "42",
    }
    assert msg.scheduled_enqueue_time_utc == due


def test_empty_fields_are_left_unset_and_naive_schedule_is_utc():
    msg = to_service_bus_message(
        Envelope(message_id="x", body=b"{}", content_type="", scheduled_enqueue_time_utc=datetime(2030, 1, 1))
    )
    assert (msg.subject, msg.correlation_id, msg.content_type, msg.application_properties) == (None,) * 4
    assert msg.scheduled_enqueue_time_utc == datetime(2030, 1, 1, tzinfo=UTC)


def test_what_arrives_is_what_was_sent(bus, fake):
    client, _ = fake
    bus.send(Q, [env(7)])
    with client.get_queue_receiver(Q) as raw:  # look at the SDK object itself
        [msg] = raw.peek_messages(1, sequence_number=1)
    assert isinstance(msg, ServiceBusReceivedMessage)
    assert (msg.message_id, msg.subject, msg.correlation_id, msg.content_type) == (
        "m-7", "flow-a", "run-1", "application/json")
    assert b"".join(msg.body) == b'{"n": "7"}'
    # as from the real service: bytes keys, bytes string values, ints stay ints
    assert msg.application_properties == {b"flow": b"flow-a", b"key": b"7", b"attempt": 1}


# -- received application properties ---------------------------------------------------------------
def test_bytes_keyed_application_properties_are_decoded(bus):
    bus.send(Q, [env(1)])
    [got] = drain(bus, 1)
    assert got.envelope.application_properties == {"flow": "flow-a", "key": "1", "attempt": 1}
    assert all(isinstance(k, str) for k in got.envelope.application_properties)
    assert isinstance(got.envelope.application_properties["attempt"], int)


def test_hand_built_received_message_like_the_sdk_tests_build_them():
    # As azure-servicebus's own tests do: a pyamqp Message wrapped in ServiceBusReceivedMessage(frame=...).
    lock = uuid.uuid4()
    amqp = AmqpMessage(
        header=Header(delivery_count=2),
        message_annotations={_X_OPT_SEQUENCE_NUMBER: 17, _X_OPT_ENQUEUED_TIME: 1_700_000_000_000},
        properties=Properties(message_id=b"m-9", subject=b"flow-b", correlation_id=b"run-2",
                              content_type=b"application/json"),
        application_properties={b"flow": b"flow-b", b"attempt": 3, b"ratio": 0.5, b"ok": True, b"none": None},
        data=[b'{"n":', b' 9}'],
    )
    msg = ServiceBusReceivedMessage(amqp, ServiceBusReceiveMode.PEEK_LOCK, frame=(0, 1, lock.bytes_le),
                                    receiver=None)

    received = sb.to_received(msg, handle=None)

    assert received.envelope.message_id == "m-9"
    assert received.envelope.body == b'{"n": 9}'
    assert (received.envelope.subject, received.envelope.correlation_id) == ("flow-b", "run-2")
    assert received.envelope.application_properties == {"flow": "flow-b", "attempt": 3, "ratio": "0.5", "ok": "True"}
    assert received.delivery_count == 3  # the SDK's 2 prior deliveries + this one
    assert received.sequence_number == 17
    assert received.enqueued_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert received.lock_token == str(lock)


def test_decode_properties_handles_str_keys_and_strips_dead_letter_fields():
    props = {"plain": "v", b"k": b"v", b"DeadLetterReason": b"X", b"DeadLetterErrorDescription": b"Y", b"n": 5}
    assert decode_properties(props, strip=sb._DEAD_LETTER_PROPERTIES) == {"plain": "v", "k": "v", "n": 5}


# -- batching ----------------------------------------------------------------------------------------
def test_5000_one_kb_messages_are_split_into_batches_under_256_kb(bus, fake):
    client, admin = fake
    envelopes = [env(i, body=(b'{"pad": "' + b"x" * 1000 + b'"}')) for i in range(5000)]

    bus.send(Q, envelopes)

    sends = [s for s in client.broker.sends if s.queue == Q]
    assert sum(s.count for s in sends) == 5000
    assert all(s.size_in_bytes <= MAX_BATCH_SIZE_STANDARD for s in sends)
    total = sum(s.size_in_bytes for s in sends)
    # packed: as few batches as the limit allows (one extra at most for the packing remainder)
    assert math.ceil(total / MAX_BATCH_SIZE_STANDARD) <= len(sends) <= math.ceil(total / MAX_BATCH_SIZE_STANDARD) + 1
    assert len(sends) >= 20
    assert admin.get_queue_runtime_properties(Q).active_message_count == 5000
    got = drain(bus, 5000)
    assert sorted(m.envelope.message_id for m in got) == sorted(f"m-{i}" for i in range(5000))


def test_a_message_over_the_limit_travels_as_a_condemned_stub_without_a_payload_store(bus, fake):
    client, _ = fake
    huge = env("huge", body=b"x" * (MAX_BATCH_SIZE_STANDARD + 1))

    bus.send(Q, [env(1), huge, env(2)])

    got = {m.envelope.message_id: m for m in drain(bus, 3)}
    assert set(got) == {"m-1", "m-huge", "m-2"}
    props = got["m-huge"].envelope.application_properties
    assert props["dead_letter_reason"] == "PayloadTooLarge" and props["payload_bytes"] == MAX_BATCH_SIZE_STANDARD + 1
    assert "no payload store is configured" in props["dead_letter_description"]
    assert len(got["m-huge"].envelope.body) < 100


def test_a_message_that_cannot_fit_even_by_reference_names_its_message_id_and_nothing_is_sent(bus, fake):
    client, _ = fake
    props = {"flow": "f", "key": "k" * MAX_BATCH_SIZE_STANDARD}
    huge = env("huge").model_copy(update={"application_properties": props})

    with pytest.raises(MessageTooLargeError) as caught:
        bus.send(Q, [env(1), huge, env(2)])

    assert "m-huge" in str(caught.value)
    assert caught.value.message_id == "m-huge" and caught.value.limit == MAX_BATCH_SIZE_STANDARD
    assert isinstance(caught.value, ValueError)
    assert client.broker.sends == []


def test_a_message_just_under_the_limit_travels_alone(bus, fake):
    client, _ = fake
    pad = b"p" * 1024
    bus.send(Q, [env(1, body=pad), env("big", body=b"x" * (MAX_BATCH_SIZE_STANDARD - 1024)), env(2, body=pad)])
    assert [s.count for s in client.broker.sends] == [1, 1, 1]
    assert len(drain(bus, 3)) == 3


def test_the_fake_enforces_the_sdk_size_rules(fake):
    client, _ = fake
    with client.get_queue_sender(Q) as sender:
        with pytest.raises(ValueError):
            sender.create_message_batch(max_size_in_bytes=MAX_BATCH_SIZE_STANDARD + 1)
        with pytest.raises(MessageSizeExceededError):
            sender.send_messages(ServiceBusMessage(b"x" * (MAX_BATCH_SIZE_STANDARD + 1)))
        with pytest.raises(MessageSizeExceededError):  # a list must fit one batch, as in the SDK
            sender.send_messages([ServiceBusMessage(b"x" * 100_000) for _ in range(3)])


# -- settlement ----------------------------------------------------------------------------------------
def test_delivery_count_is_one_based_while_the_sdk_is_zero_based(bus, fake):
    bus.send(Q, [env(1)])
    [got] = drain(bus, 1)
    assert got.handle.message.delivery_count == 0  # what the Python SDK reports on a first delivery
    assert got.delivery_count == 1
    bus.settler(Q).abandon(got)
    [again] = drain(bus, 1)
    assert (again.handle.message.delivery_count, again.delivery_count) == (1, 2)
    bus.settler(Q).complete([again])


def test_settling_twice_is_a_lost_lock(bus):
    bus.send(Q, [env(1)])
    [got] = drain(bus, 1)
    bus.settler(Q).complete([got])
    with pytest.raises(LockLostError) as caught:
        bus.settler(Q).complete([got])
    assert isinstance(caught.value.__cause__.__cause__, MessageAlreadySettled)


def test_complete_settles_what_it_can_and_names_what_it_could_not(bus, fake):
    client, _ = fake
    bus.send(Q, [env(1), env(2)])
    got = sorted(drain(bus, 2), key=lambda r: r.envelope.message_id)
    bus.settler(Q).complete([got[0]])
    with pytest.raises(LockLostError, match="m-1"):
        bus.settler(Q).complete(got)  # m-1 already settled, m-2 still completes
    assert bus.counts(Q).active == 0


def test_a_message_received_on_one_thread_settles_from_another(bus):
    bus.send(Q, [env(1)])
    box: list = []
    t = threading.Thread(target=lambda: box.extend(drain(bus, 1)))
    t.start()
    t.join()
    bus.settler(Q).complete(box)
    assert bus.counts(Q).active == 0


def test_dead_letter_reason_is_surfaced_not_left_in_properties(bus, fake):
    client, _ = fake
    bus.send(Q, [env(1)])
    [got] = drain(bus, 1)
    bus.settler(Q).dead_letter(got, "ValidationFailed", "record 1: name too long")
    with client.get_queue_receiver(Q, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as raw:
        [msg] = raw.peek_messages(1, sequence_number=1)
    assert msg.application_properties[b"DeadLetterReason"] == b"ValidationFailed"
    assert (msg.dead_letter_reason, msg.dead_letter_error_description) == (
        "ValidationFailed", "record 1: name too long")
    [dead] = bus.peek_dead_letters(Q)
    assert (dead.dead_letter_reason, dead.dead_letter_description) == ("ValidationFailed", "record 1: name too long")
    assert dead.envelope.application_properties == {"flow": "flow-a", "key": "1", "attempt": 1}
    assert dead.lock_token == ""
    with pytest.raises(ValueError, match="peeked"):
        bus.complete_dead_letters(Q, [dead])


def test_max_delivery_count_dead_letters_with_the_service_description(bus):
    bus.send(Q, [env(1)])
    for _ in range(3):
        [m] = drain(bus, 1)
        bus.settler(Q).abandon(m)
    [dead] = bus.peek_dead_letters(Q)
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert dead.dead_letter_description == "Message could not be consumed after 3 delivery attempts."


def test_peek_pages_by_sequence_number_like_the_sdk(bus, fake):
    client, _ = fake
    bus.send(Q, [env(i) for i in range(5)])
    for m in drain(bus, 5):
        bus.settler(Q).dead_letter(m, "X", "y")
    first = bus.peek_dead_letters(Q, max_messages=2)
    rest = bus.peek_dead_letters(Q, max_messages=10, from_sequence=first[-1].sequence_number + 1)
    assert [m.envelope.message_id for m in first + rest] == [f"m-{i}" for i in range(5)]
    assert len(bus.peek_dead_letters(Q)) == 5  # from the start again, whatever this receiver peeked before
    # the SDK's own default, which the bus must not rely on: sequence_number=0 continues after the last seen
    with client.get_queue_receiver(Q, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as raw:
        assert len(raw.peek_messages(10)) == 5
        assert raw.peek_messages(10) == []


def test_the_fake_reports_lock_loss_and_double_settlement_as_the_sdk_does(fake):
    client, _ = fake
    client.broker.create_queue("short", lock_duration=0.2)
    with client.get_queue_sender("short") as sender, client.get_queue_receiver("short") as receiver:
        sender.send_messages(ServiceBusMessage(b"a", message_id="a"))
        [msg] = receiver.receive_messages(1, max_wait_time=1)
        assert isinstance(msg.lock_token, uuid.UUID)
        assert msg.locked_until_utc > datetime.now(UTC)
        threading.Event().wait(0.3)
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(msg)
        [again] = receiver.receive_messages(1, max_wait_time=1)
        receiver.complete_message(again)
        with pytest.raises(MessageAlreadySettled):
            receiver.complete_message(again)


def test_scheduled_message_counts_and_state(bus, fake):
    client, admin = fake
    bus.send(Q, [env("later", scheduled_enqueue_time_utc=datetime.now(UTC) + timedelta(minutes=5))])
    counts = bus.counts(Q)
    assert (counts.active, counts.scheduled, counts.dead_letter) == (0, 1, 0)
    assert bus.receive(Q, max_messages=1, max_wait=0.1) == []


# -- configuration and secrets ------------------------------------------------------------------------
def _assert_secret_absent(exc: BaseException, conn: str) -> None:
    rendered = "".join(traceback.format_exception(exc))
    for text in (str(exc), repr(exc), rendered):
        assert conn not in text and SECRET not in text


@pytest.mark.parametrize("conn", [
    f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey={SECRET}",  # no key name
    f"garbage;{SECRET}",
    f"Endpoint=sb://ns/;SharedAccessKeyName=Root;SharedAccessKey={SECRET};SharedAccessSignature=sig",
])
def test_a_bad_connection_string_never_appears_in_the_error(conn):
    with pytest.raises(ConfigError) as caught:
        ServiceBusBus.from_settings({"ServiceBusConnection": conn})
    assert "ServiceBusConnection" in str(caught.value)
    _assert_secret_absent(caught.value, conn)


def test_an_sdk_error_that_quotes_the_string_is_redacted(monkeypatch):
    conn = f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={SECRET}"

    def boom(value, **_):
        raise ValueError(f"cannot use {value}")

    monkeypatch.setattr(sb.ServiceBusClient, "from_connection_string", boom)
    with pytest.raises(ConfigError) as caught:
        ServiceBusBus.from_settings({"ServiceBusConnection": conn})
    _assert_secret_absent(caught.value, conn)
    assert caught.value.__context__ is None and caught.value.__cause__ is None


def test_a_good_connection_string_builds_a_bus_without_showing_it():
    conn = f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={SECRET}"
    bus = ServiceBusBus.from_settings({"ServiceBusConnection": conn})
    try:
        assert bus._admin is not None
        assert SECRET not in repr(bus) and "ns.servicebus.windows.net" in repr(bus)
    finally:
        bus.close()


def test_no_setting_is_a_clear_config_error():
    with pytest.raises(ConfigError) as caught:
        ServiceBusBus.from_settings({})
    assert "ServiceBusConnection" in str(caught.value)
    assert "ServiceBusConnection__fullyQualifiedNamespace" in str(caught.value)


def test_namespace_setting_uses_the_user_assigned_identity(monkeypatch):
    import azure.identity

    used: list = []

    class Recorder:
        def __init__(self, **kw):
            used.append((type(self).__name__, kw))

        def get_token(self, *scopes, **kw):  # pragma: no cover - never called offline
            raise AssertionError

    monkeypatch.setattr(azure.identity, "ManagedIdentityCredential", type("ManagedIdentityCredential", (Recorder,), {}))
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", type("DefaultAzureCredential", (Recorder,), {}))

    bus = ServiceBusBus.from_settings({
        "ServiceBusConnection__fullyQualifiedNamespace": "sb://ns.servicebus.windows.net/",
        "AZURE_CLIENT_ID": "0000-client",
    })
    assert used == [("ManagedIdentityCredential", {"client_id": "0000-client"})]
    assert bus._client.fully_qualified_namespace == "ns.servicebus.windows.net"
    bus.close()

    used.clear()
    ServiceBusBus.from_settings({"ServiceBusConnection__fullyQualifiedNamespace": "ns.servicebus.windows.net"}).close()
    assert used == [("DefaultAzureCredential", {})]


def test_counts_it_cannot_read_are_unavailable_with_the_reason(fake):
    client, admin = fake
    bus = ServiceBusBus(client)
    with pytest.raises(CountsUnavailable, match="no Service Bus administration client"):
        bus.counts(Q)
    bus.close()
    admin.refuse_manage = True  # Data Sender + Receiver only: the administration API answers 401
    bus = ServiceBusBus(client, admin=admin)
    with pytest.raises(CountsUnavailable, match=r"\(401\).*Manage right.*Azure Service Bus Data Owner on the queue"):
        bus.counts(Q)


def test_close_closes_handlers_and_the_bus(bus, fake):
    client, _ = fake
    bus.send(Q, [env(1)])
    drain(bus, 1)
    handlers = list(client._handlers)
    bus.close()
    assert handlers and all(h._shutdown.is_set() for h in handlers)
    assert client._closed
    with pytest.raises(RuntimeError, match="closed"):
        bus.send(Q, [env(2)])
    bus.close()  # idempotent


# -- threads ------------------------------------------------------------------------------------------
def test_eight_threads_sending_through_one_bus_deliver_every_message_once(bus, fake):
    client, _ = fake
    per_thread, chunk = 250, 25
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def sender(t: int) -> None:
        try:
            start.wait()
            for base in range(0, per_thread, chunk):
                bus.send(Q, [env(f"{t}-{i}") for i in range(base, base + chunk)])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []  # the fake raises if two threads ever use one ServiceBusSender at once
    assert len([s for s in client.broker.sends if s.queue == Q]) == 8 * per_thread // chunk
    got = drain(bus, 8 * per_thread)
    ids = [m.envelope.message_id for m in got]
    assert len(ids) == len(set(ids)) == 8 * per_thread
    assert set(ids) == {f"m-{t}-{i}" for t in range(8) for i in range(per_thread)}


def test_the_fake_catches_a_sender_shared_without_a_lock(fake):
    client, _ = fake
    sender = client.get_queue_sender(Q)
    inside, release = threading.Event(), threading.Event()
    real_enqueue = client.broker.enqueue

    def slow_enqueue(queue, messages):
        inside.set()
        release.wait(5)
        return real_enqueue(queue, messages)

    client.broker.enqueue = slow_enqueue
    first = threading.Thread(target=sender.send_messages, args=(ServiceBusMessage(b"a", message_id="a"),))
    first.start()
    assert inside.wait(5)
    try:
        with pytest.raises(RuntimeError, match="not thread-safe"):
            sender.send_messages(ServiceBusMessage(b"b", message_id="b"))
    finally:
        release.set()
        first.join()


# -- the live contract harness, exercised offline so it does not rot -----------------------------------------
def test_live_harness_reads_the_queue_drains_it_and_isolates_message_ids(monkeypatch):
    import azure.servicebus
    import azure.servicebus.management

    from tests.fakes import servicebus as fakes

    client, admin = fake_service_bus()
    monkeypatch.setattr(azure.servicebus.ServiceBusClient, "from_connection_string",
                        classmethod(lambda cls, conn, **kw: client))
    monkeypatch.setattr(azure.servicebus.management.ServiceBusAdministrationClient, "from_connection_string",
                        classmethod(lambda cls, conn, **kw: admin))
    conn = f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={SECRET}"

    # a missing queue is created with contract-friendly settings
    first = fakes.live_contract_bus(conn, "live-q", drain_wait=0.1)
    assert first.contract == {"lock_duration": 5.0, "max_delivery_count": 3, "queue": "live-q"}
    later = datetime.now(UTC) + timedelta(hours=1)
    first.send("live-q", [env(1), env(2), env("later", scheduled_enqueue_time_utc=later)])
    got = sorted(first.receive("live-q", max_messages=10, max_wait=0.5), key=lambda r: r.envelope.message_id)
    assert [r.envelope.message_id for r in got] == ["m-1", "m-2"]  # prefix stripped on the way back
    first.settler("live-q").dead_letter(got[0], "X", "y")
    first.settler("live-q").abandon(got[1])

    second = fakes.live_contract_bus(conn, "live-q", drain_wait=0.1)  # drains active, scheduled and DLQ leftovers
    assert second.counts("live-q") == sb.QueueCounts(active=0, scheduled=0, dead_letter=0)
    second.send("live-q", [env(1)])  # same id as before, but not a duplicate for the live queue
    [again] = second.receive("live-q", max_messages=10, max_wait=0.5)
    assert again.envelope.message_id == "m-1"
    second.settler("live-q").complete([again])
    second.close()


def test_live_harness_refuses_a_queue_without_duplicate_detection(monkeypatch):
    import azure.servicebus.management

    from tests.fakes import servicebus as fakes

    client, admin = fake_service_bus()
    admin.create_queue("plain", requires_duplicate_detection=False)
    monkeypatch.setattr(azure.servicebus.management.ServiceBusAdministrationClient, "from_connection_string",
                        classmethod(lambda cls, conn, **kw: admin))
    with pytest.raises(RuntimeError, match="requires_duplicate_detection"):
        fakes.live_contract_bus("Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b", "plain")
