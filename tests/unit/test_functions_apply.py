"""The `apply` trigger in both settlement modes, invoked the way the host invokes it, asserting the settlement
decision for each outcome.

extension mode: the host hands the function SDK ``ServiceBusReceivedMessage`` objects decoded by the extension
from the raw AMQP message and lock token it sends (``host_delivered`` builds exactly that input from a message the
fake Service Bus really delivered), plus ``ServiceBusMessageActions``, which settles by lock token over gRPC
(``RecordingActions`` settles by lock token on the fake receiver and records every call).

ledger mode: the plain trigger's ``azure.functions.ServiceBusMessage``; the host completes when the function
returns and abandons when it raises.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, List  # noqa: UP035 - the annotation the trigger uses

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage
from azure.servicebus import ServiceBusReceivedMessage as SdkReceivedMessage
from azure.servicebus._pyamqp._encode import encode_payload
from azure.servicebus._pyamqp.types import TYPE, VALUE, AMQPTypes
from azurefunctions.extensions.base import Datum
from azurefunctions.extensions.bindings.servicebus import ServiceBusConverter, ServiceBusReceivedMessage
from azurefunctions.extensions.bindings.servicebus.serviceBusMessageActions import SettlementError

import functions.apply
from functions.apply import build_apply_blueprint
from shared.app import SyncApp
from shared.bus.servicebus import ServiceBusBus
from shared.config import parse_config
from shared.engine.delivery import DeadLetterViaLedger, handle_with_actions
from shared.errors import AuthError, PermanentError, Reason, TransientError
from shared.messages import ChangeMessage, Envelope, to_envelope
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore
from tests.fakes.servicebus import fake_service_bus
from tests.unit.conftest import CONFIG, account, change

QUEUE = "dualsync-changes"

# -- what the host hands the function --------------------------------------------------------------------------

_TIMESTAMPS = (b"x-opt-enqueued-time", b"x-opt-locked-until", b"x-opt-scheduled-enqueue-time")


def host_delivered(messages: Sequence[SdkReceivedMessage]) -> list[SdkReceivedMessage]:
    """The extension's own decoding of a batch (``cardinality=many``): the host sends each delivery as model
    binding data whose content is the lock token, ``x-opt-lock-token`` and the raw AMQP message; the worker hands
    the collection to ``ServiceBusConverter.decode``, which returns azure-servicebus ``ServiceBusReceivedMessage``
    objects without a receiver (so they can only be settled through ``ServiceBusMessageActions``)."""
    items = [SimpleNamespace(version="1.0", source="AzureServiceBusReceivedMessage",
                             content_type="application/octet-stream", content=_content(m)) for m in messages]
    data = Datum(SimpleNamespace(model_binding_data=items), "collection_model_binding_data")
    return ServiceBusConverter.decode(data, trigger_metadata={}, pytype=List[ServiceBusReceivedMessage])


def _content(message: SdkReceivedMessage) -> bytes:
    wire = message._message  # noqa: SLF001 - the pyamqp message as received, broker annotations included
    annotations = {
        k: ({TYPE: AMQPTypes.timestamp, VALUE: v} if k in _TIMESTAMPS else
            {TYPE: AMQPTypes.long, VALUE: v} if isinstance(v, int) and not isinstance(v, bool) else v)
        for k, v in (wire.message_annotations or {}).items()
    }
    payload = bytes(encode_payload(bytearray(), wire._replace(message_annotations=annotations)))
    return uuid.UUID(str(message.lock_token)).bytes_le + b"x-opt-lock-token" + payload


class RecordingActions:
    """Stands in for ``ServiceBusMessageActions``: settles by lock token (as the host's settlement service does)
    on the receiver that holds the delivery, records every call in ``events``, and wraps failures in the
    extension's own ``SettlementError``."""

    def __init__(self, receiver: Any, delivered: Sequence[SdkReceivedMessage], events: list | None = None) -> None:
        self.receiver = receiver
        self.by_token = {str(m.lock_token): m for m in delivered}
        self.events: list[tuple[str, ...]] = events if events is not None else []
        self.fail_on: set[str] = set()  # methods that raise, to test settlement failures

    def _held(self, method: str, message: Any) -> SdkReceivedMessage:
        token = str(message.lock_token)
        if method in self.fail_on:
            raise SettlementError(method, f"Failed to {method} message {token}", RuntimeError("host unreachable"))
        if token not in self.by_token:
            raise SettlementError(method, f"Failed to {method} message {token}", KeyError(token))
        return self.by_token[token]

    def complete(self, message: Any) -> None:
        self.events.append(("complete", message.message_id))
        self.receiver.complete_message(self._held("complete", message))

    def abandon(self, message: Any) -> None:
        self.events.append(("abandon", message.message_id))
        self.receiver.abandon_message(self._held("abandon", message))

    def deadletter(self, message: Any, deadletter_reason: str | None = None,
                   deadletter_error_description: str | None = None) -> None:
        self.events.append(("deadletter", message.message_id, deadletter_reason, deadletter_error_description))
        self.receiver.dead_letter_message(self._held("deadletter", message), reason=deadletter_reason,
                                          error_description=deadletter_error_description)


class SpyBus:
    """The app's bus with every send recorded in the same event list as the settlement calls."""

    def __init__(self, inner: Any, events: list) -> None:
        self.inner, self.events = inner, events

    def send(self, queue: str, envelopes: Sequence[Envelope]) -> Any:
        for e in envelopes:
            self.events.append(("send", e.message_id, e.scheduled_enqueue_time_utc))
        return self.inner.send(queue, envelopes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def user_function(bp: func.Blueprint, name: str = "apply"):
    app = func.FunctionApp()
    app.register_functions(bp)
    return {f.get_function_name(): f for f in app.get_functions()}[name].get_user_function()


# -- extension mode ---------------------------------------------------------------------------------------------


class Harness:
    def __init__(self, memory: dict) -> None:
        self.client, self.admin = fake_service_bus()
        self.admin.create_queue(QUEUE, lock_duration=timedelta(seconds=30), max_delivery_count=5,
                                requires_duplicate_detection=True)
        self.events: list[tuple] = []
        self.bus = ServiceBusBus(self.client, admin=self.admin)
        self.app = SyncApp(config=parse_config(CONFIG), state=StateStore(SqliteTables(":memory:")),
                           bus=SpyBus(self.bus, self.events), queue=QUEUE, retry_base=0.01,
                           connector_factory=lambda name: memory[name])
        self.receiver = self.client.get_queue_receiver(QUEUE)
        self.apply = user_function(build_apply_blueprint("extension"))

    def send(self, *messages: ChangeMessage, raw: Sequence[bytes] = ()) -> None:
        envelopes = [to_envelope(m, message_id=f"{m.message_id()}#{uuid.uuid4().hex[:6]}") for m in messages]
        envelopes += [Envelope(message_id=f"raw-{i}", body=b) for i, b in enumerate(raw)]
        self.bus.send(QUEUE, envelopes)

    def deliver(self, *messages: ChangeMessage, raw: Sequence[bytes] = ()) -> RecordingActions:
        """Send, let the fake Service Bus deliver them, and invoke the trigger as the host would."""
        self.send(*messages, raw=raw)
        got = self.receiver.receive_messages(max_message_count=len(messages) + len(raw), max_wait_time=1)
        assert len(got) == len(messages) + len(raw)
        self.events.clear()
        actions = RecordingActions(self.receiver, got, self.events)
        self.apply(messages=host_delivered(got), message_actions=actions)
        return actions

    def settled(self, kind: str) -> list[tuple]:
        return [e for e in self.events if e[0] == kind]

    def counts(self):
        return self.bus.counts(QUEUE)

    def close(self) -> None:
        self.receiver.close()
        self.app.close()


@pytest.fixture
def h(memory, monkeypatch):
    harness = Harness(memory)
    monkeypatch.setattr(functions.apply, "sync_app", lambda: harness.app)
    yield harness
    harness.close()


def test_host_delivered_messages_are_what_the_extension_decodes():
    client, admin = fake_service_bus()
    admin.create_queue(QUEUE)
    ServiceBusBus(client).send(QUEUE, [to_envelope(account("a1", 1))])
    with client.get_queue_receiver(QUEUE) as receiver:
        [got] = receiver.receive_messages(1, max_wait_time=1)
        [decoded] = host_delivered([got])
    assert type(decoded) is SdkReceivedMessage and decoded._receiver is None  # noqa: SLF001
    assert decoded.lock_token == got.lock_token and decoded.sequence_number == got.sequence_number
    assert decoded.message_id == got.message_id and decoded.subject == "accounts"
    assert decoded.application_properties[b"flow"] == b"accounts"  # bytes keys, as the real SDK returns them
    assert decoded.body_type == "data" and b"".join(decoded.body) == b"".join(got.body)


def test_applied_and_skipped_messages_are_completed(h, memory):
    h.deliver(account("a1", 1))
    assert [e[0] for e in h.events] == ["complete"]
    assert memory["erp"].tables["customers"]["N-a1"]["name"] == "Acme"
    h.deliver(account("a1", 1))  # redelivered copy: already applied
    assert [e[0] for e in h.events] == ["complete"]
    assert memory["erp"].writes == 1
    counts = h.counts()
    assert (counts.active, counts.scheduled, counts.dead_letter) == (0, 0, 0)


def test_a_batch_is_written_in_one_target_call_and_every_message_settled(h, memory):
    h.deliver(*[account(f"a{i}", 1) for i in range(20)])
    assert len(h.settled("complete")) == 20 and memory["erp"].writes == 1
    assert len(memory["erp"].tables["customers"]) == 20


def test_transient_failure_schedules_the_clone_first_then_completes(h, memory):
    memory["erp"].fail_next.append(TransientError("503 Service Unavailable", retry_after=2))
    h.deliver(account("a1", 1))
    kinds = [e[0] for e in h.events]
    assert kinds == ["send", "complete"], "the clone must be on the bus before the original completes"
    _, clone_id, due = h.events[0]
    assert clone_id == "accounts:a1:00000000000000000001:r1t1"  # Retry-After: throttled, not an attempt spent
    assert due >= datetime.now(UTC) + timedelta(seconds=1)  # never sooner than Retry-After
    counts = h.counts()
    assert (counts.active, counts.scheduled, counts.dead_letter) == (0, 1, 0)


def test_permanent_failure_is_dead_lettered_with_reason_and_description(h, memory):
    h.deliver(account("a1", 1, name="x" * 50))
    [(_, _, reason, description)] = h.settled("deadletter")
    assert reason == "ValidationFailed"
    assert "record a1" in description and "field name" in description
    assert not h.settled("complete")
    [dead] = h.bus.peek_dead_letters(QUEUE)
    assert (dead.dead_letter_reason, dead.dead_letter_description) == (reason, description)
    assert "customers" not in memory["erp"].tables or not memory["erp"].tables["customers"]


def test_malformed_body_is_dead_lettered(h):
    h.deliver(raw=[b"{not json"])
    [(_, message_id, reason, description)] = h.settled("deadletter")
    assert (message_id, reason) == ("raw-0", "MalformedMessage") and "raw-0" in description


def test_auth_failure_defers_a_copy_pauses_the_flow_and_completes(h, memory):
    memory["erp"].fail_next.append(AuthError("401 Unauthorized"))
    h.deliver(account("a1", 1))
    assert [e[0] for e in h.events] == ["send", "complete"]
    assert ":p" in h.events[0][1] and h.events[0][2] > datetime.now(UTC) + timedelta(minutes=4)
    cursor = h.app.state.get_cursor("accounts")
    assert cursor.paused and "401" in cursor.paused_reason
    counts = h.counts()
    assert (counts.active, counts.scheduled, counts.dead_letter) == (0, 1, 0)


def test_mixed_batch_settles_each_message_by_its_outcome(h, memory):
    memory["erp"].fail_keys["N-bad"] = TransientError("timeout")
    h.deliver(account("ok", 1), account("bad", 1), account("long", 1, name="x" * 50), raw=[b"[]"])
    completed = {e[1].split("#")[0] for e in h.settled("complete")}
    assert completed == {"accounts:ok:00000000000000000001", "accounts:bad:00000000000000000001"}
    assert sorted(e[2] for e in h.settled("deadletter")) == ["MalformedMessage", "ValidationFailed"]
    assert [e[1] for e in h.events if e[0] == "send"] == ["accounts:bad:00000000000000000001:r2"]
    first_complete = next(i for i, e in enumerate(h.events) if e[0] == "complete")
    assert h.events.index(next(e for e in h.events if e[0] == "send")) < first_complete


def test_unexpected_error_abandons_every_message_and_raises(h, memory):
    memory["erp"].fail_next.append(RuntimeError("bug in a connector"))
    with pytest.raises(RuntimeError, match="bug in a connector"):
        h.deliver(account("a1", 1), account("a2", 1))
    assert [e[0] for e in h.events] == ["abandon", "abandon"]
    # Back on the queue at once, one delivery used up.
    again = h.receiver.receive_messages(max_message_count=2, max_wait_time=1)
    assert len(again) == 2 and all(m.delivery_count == 1 for m in again)


def test_settlement_failure_abandons_the_rest_and_raises(h):
    h.send(account("a1", 1), account("a2", 1))
    got = h.receiver.receive_messages(max_message_count=2, max_wait_time=1)
    actions = RecordingActions(h.receiver, got, h.events)
    actions.fail_on.add("complete")
    with pytest.raises(Exception, match="could not complete 2 message"):
        h.apply(messages=host_delivered(got), message_actions=actions)
    assert [e[0] for e in h.events] == ["complete", "complete", "abandon", "abandon"]


def test_no_sync_app_abandons_the_batch_and_raises(h, monkeypatch):
    def broken():
        raise FileNotFoundError("flows.yaml")

    monkeypatch.setattr(functions.apply, "sync_app", broken)
    with pytest.raises(FileNotFoundError):
        h.deliver(account("a1", 1))
    assert [e[0] for e in h.events] == ["abandon"]


def test_a_single_message_is_handled_like_a_batch_of_one(h):
    h.send(account("a1", 1))
    [got] = h.receiver.receive_messages(max_message_count=1, max_wait_time=1)
    actions = RecordingActions(h.receiver, [got], h.events)
    [outcome] = handle_with_actions(h.app, host_delivered([got])[0], actions)
    assert outcome.kind == "applied" and [e[0] for e in h.events] == ["complete"]


# -- ledger mode ------------------------------------------------------------------------------------------------


def host_message(message: ChangeMessage, delivery_count: int = 1, sequence_number: int = 1) -> ServiceBusMessage:
    """A redelivery keeps its sequence number; the same message sent again (same message_id) gets a new one."""
    envelope = to_envelope(message)
    return ServiceBusMessage(
        body=envelope.body, message_id=envelope.message_id, content_type="application/json",
        correlation_id=envelope.correlation_id, label=envelope.subject, subject=envelope.subject,
        application_properties=dict(envelope.application_properties), user_properties={},
        delivery_count=delivery_count, enqueued_time_utc=datetime.now(UTC), sequence_number=sequence_number,
        lock_token=str(uuid.uuid4()),
    )


@pytest.fixture
def ledger(app, monkeypatch):
    monkeypatch.setattr(functions.apply, "sync_app", lambda: app)
    return user_function(build_apply_blueprint("ledger"))


def test_ledger_applied_returns_so_the_host_completes(ledger, app, memory):
    assert ledger(msg=host_message(account("a1", 1))) is None
    assert memory["erp"].tables["customers"]["N-a1"]["name"] == "Acme"


def test_ledger_skipped_returns(ledger, app, memory):
    ledger(msg=host_message(account("a1", 1)))
    ledger(msg=host_message(account("a1", 1), delivery_count=2))
    assert memory["erp"].writes == 1


def test_ledger_transient_schedules_the_clone_and_returns(ledger, app, memory):
    memory["erp"].fail_next.append(TransientError("503"))
    ledger(msg=host_message(account("a1", 1)))
    assert app.bus.counts(app.queue).scheduled == 1


def test_ledger_permanent_records_the_reason_and_raises_until_the_dlq_takes_it(ledger, app, memory):
    bad = host_message(account("a1", 1, name="x" * 50))
    with pytest.raises(DeadLetterViaLedger, match="ValidationFailed: flow accounts record a1: field name"):
        ledger(msg=bad)
    assert app.state.get_failure(app.queue, bad.message_id)["reason"] == "ValidationFailed"
    memory["erp"].writes = 0
    with pytest.raises(DeadLetterViaLedger, match="ValidationFailed"):
        ledger(msg=host_message(account("a1", 1, name="x" * 50), delivery_count=2))
    assert memory["erp"].writes == 0  # a condemned message is walked to the DLQ, not applied again


def test_ledger_a_fixed_record_sent_again_is_applied_not_condemned_again(ledger, app, memory):
    memory["erp"].fail_keys["N-a1"] = PermanentError(Reason.TARGET_REJECTED, "customers key N-a1: rejected")
    first = host_message(account("a1", 1), sequence_number=5)
    with pytest.raises(DeadLetterViaLedger, match="TargetRejected"):
        ledger(msg=first)
    with pytest.raises(DeadLetterViaLedger, match="TargetRejected"):  # its redeliveries walk on to the DLQ
        ledger(msg=host_message(account("a1", 1), delivery_count=2, sequence_number=5))
    # The cause is fixed and the same version is sent again (a resync, a re-pull past the duplicate detection
    # window): the same message_id, a new delivery. It is applied, and the ledger forgets the old failure.
    del memory["erp"].fail_keys["N-a1"]
    ledger(msg=host_message(account("a1", 1), sequence_number=9))
    assert memory["erp"].tables["customers"]["N-a1"]["name"] == "Acme"
    assert app.state.get_failure(app.queue, first.message_id) is None


def test_ledger_malformed_message_raises_with_its_reason(ledger):
    msg = ServiceBusMessage(body=b"{oops", message_id="m1", application_properties={}, user_properties={})
    with pytest.raises(DeadLetterViaLedger, match="MalformedMessage"):
        ledger(msg=msg)


def test_ledger_auth_failure_defers_pauses_and_returns(ledger, app, memory):
    memory["erp"].fail_next.append(AuthError("403 Forbidden"))
    ledger(msg=host_message(account("a1", 1)))
    assert app.state.get_cursor("accounts").paused
    assert app.bus.counts(app.queue).scheduled == 1


def test_ledger_unexpected_error_raises_so_the_host_abandons(ledger, memory):
    memory["erp"].fail_next.append(RuntimeError("bug"))
    with pytest.raises(RuntimeError, match="bug"):
        ledger(msg=host_message(change("a1", 1, accountnumber="N1", name="n", statecode=0)))


def test_unknown_settlement_mode_fails_the_indexing():
    with pytest.raises(ValueError, match="SETTLEMENT_MODE='auto'"):
        build_apply_blueprint("auto")
