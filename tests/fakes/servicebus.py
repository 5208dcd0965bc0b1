"""An in-memory fake of the azure-servicebus client boundary, faithful where the bus relies on it.

It offers the subset of ``ServiceBusClient`` that shared/bus/servicebus.py uses and speaks the SDK's real types:

* senders accept real ``ServiceBusMessage`` / ``ServiceBusMessageBatch`` objects (or a list, as the SDK does),
  batches come from ``create_message_batch()`` capped at 256 KB (Standard tier); the broker stores each message
  as its encoded AMQP payload (``PyamqpTransport.encode_message``), exactly the bytes the SDK would put on the
  wire;
* receivers hand back real ``ServiceBusReceivedMessage`` objects, built the way the SDK builds them: the stored
  payload is decoded with pyamqp's ``decode_payload`` (so application properties come back with **bytes keys**
  and bytes string values, as from the real service), broker annotations are added
  (``x-opt-sequence-number``, ``x-opt-enqueued-time``, ``x-opt-locked-until``, ``x-opt-message-state``), the
  AMQP header carries the delivery count (prior unsuccessful deliveries: 0 on the first receive, like the real
  SDK), dead-lettered messages carry ``DeadLetterReason`` / ``DeadLetterErrorDescription`` application
  properties, and the lock token is the transfer frame's delivery tag. Received messages are constructed like
  ``PyamqpTransport.build_received_message`` (``frame=``, ``receiver=``); peeked ones like
  ``PyamqpTransport.parse_received_message`` (``is_peeked_message=True``).

Broker semantics: peek-lock with a lock duration (expired lock -> ``MessageLockLostError`` on settle, the
delivery count goes up and the message is receivable again), abandon, max delivery count -> DLQ with reason
``MaxDeliveryCountExceeded``, dead-letter with reason/description, scheduled enqueue time, duplicate detection
by message_id within a window, settle twice -> ``MessageAlreadySettled``, settle a peeked message ->
``ValueError``, ``peek_messages(sequence_number=0)`` continues after the receiver's last seen sequence number
(as the SDK does). Everything is in memory and guarded by one lock.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.servicebus import (
    ServiceBusMessage,
    ServiceBusMessageBatch,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus._common.constants import (
    _X_OPT_ENQUEUED_TIME,
    _X_OPT_LOCKED_UNTIL,
    _X_OPT_SEQUENCE_NUMBER,
    MAX_BATCH_SIZE_STANDARD,
    MESSAGE_STATE_NAME,
    PROPERTIES_DEAD_LETTER_ERROR_DESCRIPTION,
    PROPERTIES_DEAD_LETTER_REASON,
)
from azure.servicebus._common.utils import transform_outbound_messages
from azure.servicebus._pyamqp._decode import decode_payload
from azure.servicebus._pyamqp.message import Header
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageSizeExceededError,
)
from azure.servicebus.management import QueueProperties, QueueRuntimeProperties
from azure.servicebus.management._generated.models import MessageCountDetails, QueueDescription

MAX_DELIVERY_EXCEEDED = "MaxDeliveryCountExceeded"
_SCHEDULED, _ACTIVE = 2, 0


@dataclass
class SendCall:
    """One ``send_messages`` call that reached the broker (for tests that count batches)."""

    queue: str
    count: int
    size_in_bytes: int


@dataclass
class _Stored:
    seq: int
    message_id: str | None
    payload: bytes  # the encoded AMQP message as sent
    enqueued_at: float
    due_at: float
    failed_deliveries: int = 0  # AMQP header delivery-count: prior unsuccessful deliveries
    lock_token: uuid.UUID | None = None
    locked_until: float = 0.0
    lock_owner: Any = None
    dead_reason: str | None = None
    dead_description: str | None = None


@dataclass
class _Queue:
    name: str
    lock_duration: float
    max_delivery_count: int
    duplicate_window: float
    requires_duplicate_detection: bool
    active: dict[int, _Stored] = field(default_factory=dict)  # insertion order == sequence order
    dead: dict[int, _Stored] = field(default_factory=dict)
    seen_ids: dict[str, float] = field(default_factory=dict)  # message_id -> expiry


class FakeBroker:
    """The namespace's state, shared by a client and its admin client. One lock guards everything."""

    def __init__(
        self,
        *,
        lock_duration: float = 60.0,
        max_delivery_count: int = 10,
        duplicate_window: float = 600.0,
        max_message_size: int = MAX_BATCH_SIZE_STANDARD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.defaults = {
            "lock_duration": lock_duration,
            "max_delivery_count": max_delivery_count,
            "duplicate_window": duplicate_window,
            "requires_duplicate_detection": True,
        }
        self.max_message_size = max_message_size
        self.clock = clock
        self.cond = threading.Condition(threading.RLock())
        self.queues: dict[str, _Queue] = {}
        self.sends: list[SendCall] = []
        self._seq = itertools.count(1)
        self._delivery_ids = itertools.count(1)

    # -- entities --------------------------------------------------------------------------------
    def queue(self, name: str) -> _Queue:
        with self.cond:
            q = self.queues.get(name)
            if q is None:  # auto-created with the namespace defaults, for convenience
                q = self.queues[name] = _Queue(name, **self.defaults)  # type: ignore[arg-type]
            return q

    def create_queue(self, name: str, **props: Any) -> _Queue:
        with self.cond:
            if name in self.queues:
                raise ResourceExistsError(f"queue {name} already exists")
            settings = dict(self.defaults)
            for key in ("lock_duration", "duplicate_window"):
                if isinstance(props.get(key), timedelta):
                    props[key] = props[key].total_seconds()
            if isinstance(props.get("duplicate_detection_history_time_window"), timedelta):
                settings["duplicate_window"] = props.pop("duplicate_detection_history_time_window").total_seconds()
            settings.update({k: v for k, v in props.items() if k in settings and v is not None})
            q = self.queues[name] = _Queue(name, **settings)  # type: ignore[arg-type]
            return q

    # -- time-driven transitions -----------------------------------------------------------------
    def _sweep(self, q: _Queue, now: float) -> None:
        """Expire locks: the delivery failed, so its count goes up (and may dead-letter the message)."""
        for stored in list(q.active.values()):
            if stored.lock_token is not None and stored.locked_until <= now:
                self._unlock(stored)
                stored.failed_deliveries += 1
                self._maybe_exhausted(q, stored)
        for stored in q.dead.values():
            if stored.lock_token is not None and stored.locked_until <= now:
                self._unlock(stored)
                stored.failed_deliveries += 1
        for mid, expiry in list(q.seen_ids.items()):
            if expiry <= now:
                del q.seen_ids[mid]

    @staticmethod
    def _unlock(stored: _Stored) -> None:
        stored.lock_token, stored.locked_until, stored.lock_owner = None, 0.0, None

    def _maybe_exhausted(self, q: _Queue, stored: _Stored) -> None:
        if stored.failed_deliveries >= q.max_delivery_count:
            self._dead_letter(
                q, stored, MAX_DELIVERY_EXCEEDED,
                f"Message could not be consumed after {q.max_delivery_count} delivery attempts.",
            )

    @staticmethod
    def _dead_letter(q: _Queue, stored: _Stored, reason: str | None, description: str | None) -> None:
        FakeBroker._unlock(stored)
        del q.active[stored.seq]
        stored.dead_reason, stored.dead_description = reason, description
        q.dead[stored.seq] = stored

    # -- operations the handlers call ------------------------------------------------------------
    def enqueue(self, queue: str, messages: list[ServiceBusMessage]) -> list[int]:
        """Atomically enqueue what one send_messages call carried; duplicates are dropped silently.
        Returns the sequence numbers assigned."""
        encoded = [bytes(PyamqpTransport.encode_message(m)) for m in messages]
        with self.cond:
            q = self.queue(queue)
            now = self.clock()
            self._sweep(q, now)
            self.sends.append(SendCall(queue, len(messages), sum(len(e) for e in encoded)))
            assigned: list[int] = []
            for message, payload in zip(messages, encoded, strict=True):
                mid = message.message_id
                if q.requires_duplicate_detection and mid is not None:
                    if mid in q.seen_ids:
                        continue
                    q.seen_ids[mid] = now + q.duplicate_window
                scheduled = message.scheduled_enqueue_time_utc
                due = scheduled.timestamp() if isinstance(scheduled, datetime) else now
                seq = next(self._seq)
                q.active[seq] = _Stored(seq, mid, payload, enqueued_at=now, due_at=due)
                assigned.append(seq)
            self.cond.notify_all()
            return assigned

    def cancel_scheduled(self, queue: str, sequence_numbers: Iterable[int]) -> None:
        with self.cond:
            q = self.queue(queue)
            for seq in sequence_numbers:
                stored = q.active.get(seq)
                if stored is not None and stored.due_at > self.clock():
                    del q.active[seq]

    def lock_batch(self, queue: str, dead: bool, max_count: int, owner: Any, delete: bool) -> list[tuple]:
        with self.cond:
            q = self.queue(queue)
            now = self.clock()
            self._sweep(q, now)
            pool = q.dead if dead else q.active
            out = []
            for stored in list(pool.values()):
                if len(out) >= max_count:
                    break
                if stored.lock_token is not None or stored.due_at > now:
                    continue
                if delete:  # RECEIVE_AND_DELETE
                    del pool[stored.seq]
                    out.append((stored, None, next(self._delivery_ids), now))
                    continue
                stored.lock_token = uuid.uuid4()
                stored.locked_until = now + q.lock_duration
                stored.lock_owner = owner
                out.append((stored, stored.lock_token, next(self._delivery_ids), now))
            return out

    def peek(self, queue: str, dead: bool, from_sequence: int, max_count: int) -> list[_Stored]:
        with self.cond:
            q = self.queue(queue)
            self._sweep(q, self.clock())
            pool = q.dead if dead else q.active
            # The service browses in sequence-number order, whatever order messages entered the pool.
            return sorted((s for s in pool.values() if s.seq >= from_sequence), key=lambda s: s.seq)[:max_count]

    def settle(self, queue: str, dead: bool, token: uuid.UUID, action: str, reason: Any = None, desc: Any = None):
        with self.cond:
            q = self.queue(queue)
            now = self.clock()
            self._sweep(q, now)
            pool = q.dead if dead else q.active
            stored = next((s for s in pool.values() if s.lock_token == token), None)
            if stored is None or stored.locked_until <= now:
                raise MessageLockLostError(
                    message="The lock supplied is invalid. Either the lock expired, or the message has already "
                    "been removed from the queue."
                )
            if action == "complete":
                del pool[stored.seq]
            elif action == "abandon":
                self._unlock(stored)
                stored.failed_deliveries += 1
                if not dead:
                    self._maybe_exhausted(q, stored)
            elif action == "dead_letter":
                if dead:  # dead-lettering a DLQ message is not allowed by the service
                    raise ValueError("cannot dead-letter a message received from a dead-letter queue")
                self._dead_letter(q, stored, reason, desc)
            elif action == "renew":
                stored.locked_until = now + q.lock_duration
                return stored.locked_until
            self.cond.notify_all()
            return None

    def runtime_counts(self, queue: str) -> tuple[int, int, int]:
        with self.cond:
            q = self.queue(queue)
            now = self.clock()
            self._sweep(q, now)
            scheduled = sum(1 for s in q.active.values() if s.due_at > now)
            return len(q.active) - scheduled, scheduled, len(q.dead)


# -- the client boundary ---------------------------------------------------------------------------
class _Handler:
    def __init__(self, client: FakeServiceBusClient, queue_name: str) -> None:
        self._client = client
        self._broker = client.broker
        self.entity_name = queue_name
        self.fully_qualified_namespace = client.fully_qualified_namespace
        self._shutdown = threading.Event()
        self._in_use = threading.Lock()

    def _exclusive(self, operation: str) -> Any:
        """The SDK's senders and receivers are not thread-safe: two threads inside one handler at once is a bug
        in the caller, which this fake reports instead of silently tolerating."""
        handler = self

        class _Guard:
            def __enter__(self) -> None:
                if not handler._in_use.acquire(blocking=False):
                    raise RuntimeError(
                        f"{type(handler).__name__}.{operation} called while another thread is using the same "
                        "handler: ServiceBusSender/ServiceBusReceiver are not thread-safe"
                    )

            def __exit__(self, *_: Any) -> None:
                handler._in_use.release()

        return _Guard()

    def _check_live(self) -> None:
        if self._shutdown.is_set() or self._client._closed:
            raise ValueError(
                "The handler has already been shutdown. Please use ServiceBusClient to create a new instance."
            )

    def close(self) -> None:
        self._shutdown.set()

    def __enter__(self):
        self._check_live()
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


class FakeServiceBusSender(_Handler):
    max_batch_size = MAX_BATCH_SIZE_STANDARD

    def create_message_batch(self, max_size_in_bytes: int | None = None) -> ServiceBusMessageBatch:
        with self._exclusive("create_message_batch"):
            return self._create_batch(max_size_in_bytes)

    def _create_batch(self, max_size_in_bytes: int | None = None) -> ServiceBusMessageBatch:
        self._check_live()
        limit = self._broker.max_message_size
        if max_size_in_bytes and max_size_in_bytes > limit:
            raise ValueError(
                f"Max message size: {max_size_in_bytes} is too large, acceptable max batch size is: {limit} bytes."
            )
        return ServiceBusMessageBatch(max_size_in_bytes=max_size_in_bytes or limit, amqp_transport=PyamqpTransport)

    def send_messages(self, message: Any, *, timeout: float | None = None, **_: Any) -> None:
        with self._exclusive("send_messages"):
            self._send(message, timeout)

    def _send(self, message: Any, timeout: float | None) -> list[int]:
        self._check_live()
        if timeout is not None and timeout <= 0:
            raise ValueError("The timeout must be greater than 0.")
        limit = self._broker.max_message_size
        if isinstance(message, ServiceBusMessageBatch):
            if message.size_in_bytes > limit:
                raise MessageSizeExceededError(message=f"batch of {message.size_in_bytes} bytes exceeds {limit}")
            outgoing = list(message._messages)  # noqa: SLF001 - what the SDK puts on the wire
        else:
            converted = transform_outbound_messages(
                message, ServiceBusMessage, PyamqpTransport.to_outgoing_amqp_message
            )
            if isinstance(converted, list):  # the SDK packs a list into one batch, or fails
                batch = self._create_batch()
                batch._from_list(converted)  # noqa: SLF001 - raises MessageSizeExceededError when too big
                outgoing = list(batch._messages)  # noqa: SLF001
            else:
                size = PyamqpTransport.get_message_encoded_size(converted._message)  # noqa: SLF001
                if size > limit:
                    raise MessageSizeExceededError(
                        message=f"Message of {size} bytes exceeds the link's max message size {limit}"
                    )
                outgoing = [converted]
        return self._broker.enqueue(self.entity_name, outgoing) if outgoing else []

    def schedule_messages(self, messages: Any, schedule_time_utc: datetime, **_: Any) -> list[int]:
        self._check_live()
        items = messages if isinstance(messages, list) else [messages]
        for m in items:
            m.scheduled_enqueue_time_utc = schedule_time_utc
        with self._exclusive("schedule_messages"):
            return self._send(items, None)

    def cancel_scheduled_messages(self, sequence_numbers: int | list[int], **_: Any) -> None:
        self._check_live()
        seqs = [sequence_numbers] if isinstance(sequence_numbers, int) else list(sequence_numbers)
        self._broker.cancel_scheduled(self.entity_name, seqs)


class FakeServiceBusReceiver(_Handler):
    def __init__(
        self,
        client: FakeServiceBusClient,
        queue_name: str,
        *,
        sub_queue: ServiceBusSubQueue | str | None = None,
        receive_mode: ServiceBusReceiveMode | str = ServiceBusReceiveMode.PEEK_LOCK,
        max_wait_time: float | None = None,
        prefetch_count: int = 0,
        **_: Any,
    ) -> None:
        super().__init__(client, queue_name)
        if prefetch_count < 0 or prefetch_count > 50000:
            raise ValueError("prefetch_count must be an integer between 0 and 50000 inclusive.")
        if max_wait_time is not None and max_wait_time <= 0:
            raise ValueError("The max_wait_time must be greater than 0.")
        self._dead = sub_queue is not None and ServiceBusSubQueue(sub_queue) == ServiceBusSubQueue.DEAD_LETTER
        self._receive_mode = ServiceBusReceiveMode(receive_mode)
        self._max_wait_time = max_wait_time
        self._prefetch_count = prefetch_count
        self._last_received_sequenced_number: int | None = None
        self.session = None  # not a session receiver (ServiceBusReceivedMessage consults this)

    # -- receive / peek ----------------------------------------------------------------------------
    def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> list[ServiceBusReceivedMessage]:
        with self._exclusive("receive_messages"):
            return self._receive(max_message_count, max_wait_time)

    def _receive(self, max_message_count: int | None, max_wait_time: float | None) -> list[ServiceBusReceivedMessage]:
        self._check_live()
        if max_wait_time is not None and max_wait_time <= 0:
            raise ValueError("The max_wait_time must be greater than 0.")
        if max_message_count is not None and max_message_count <= 0:
            raise ValueError("The max_message_count must be greater than 0")
        count = max_message_count or self._prefetch_count
        if not count:
            return []
        wait = max_wait_time if max_wait_time is not None else (self._max_wait_time or 60.0)
        deadline = time.monotonic() + wait
        delete = self._receive_mode == ServiceBusReceiveMode.RECEIVE_AND_DELETE
        broker = self._broker
        while True:
            got = broker.lock_batch(self.entity_name, self._dead, count, self, delete)
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                break
            with broker.cond:  # woken by a send; wake up anyway for scheduled messages and lock expiry
                broker.cond.wait(min(remaining, 0.05))
        messages = [self._build(stored, token, delivery_id, now) for stored, token, delivery_id, now in got]
        if messages:
            self._last_received_sequenced_number = messages[-1].sequence_number
        return messages

    def peek_messages(
        self, max_message_count: int = 1, *, sequence_number: int = 0, timeout: float | None = None, **_: Any
    ) -> list[ServiceBusReceivedMessage]:
        with self._exclusive("peek_messages"):
            return self._peek(max_message_count, sequence_number, timeout)

    def _peek(
        self, max_message_count: int, sequence_number: int, timeout: float | None
    ) -> list[ServiceBusReceivedMessage]:
        self._check_live()
        if timeout is not None and timeout <= 0:
            raise ValueError("The timeout must be greater than 0.")
        if not sequence_number:  # the SDK continues after the last message this receiver saw
            last = self._last_received_sequenced_number
            sequence_number = last + 1 if last else 1
        if int(max_message_count) < 0:
            raise ValueError("max_message_count must be 1 or greater.")
        peeked = self._broker.peek(self.entity_name, self._dead, sequence_number, max(int(max_message_count), 1))
        messages = [self._build(stored, None, None, self._broker.clock(), peeked=True) for stored in peeked]
        if messages:
            self._last_received_sequenced_number = messages[-1].sequence_number
        return messages

    def _build(
        self, stored: _Stored, token: uuid.UUID | None, delivery_id: int | None, now: float, *, peeked: bool = False
    ) -> ServiceBusReceivedMessage:
        wire = decode_payload(memoryview(stored.payload))
        annotations = dict(wire.message_annotations or {})
        annotations[_X_OPT_SEQUENCE_NUMBER] = stored.seq
        annotations[_X_OPT_ENQUEUED_TIME] = int(stored.enqueued_at * 1000)
        if stored.locked_until:
            annotations[_X_OPT_LOCKED_UNTIL] = int(stored.locked_until * 1000)
        annotations[MESSAGE_STATE_NAME] = _SCHEDULED if stored.due_at > now else _ACTIVE
        app = dict(wire.application_properties or {})
        if stored.dead_reason is not None:
            app[PROPERTIES_DEAD_LETTER_REASON] = stored.dead_reason.encode()
        if stored.dead_description is not None:
            app[PROPERTIES_DEAD_LETTER_ERROR_DESCRIPTION] = stored.dead_description.encode()
        header = wire.header or Header()
        wire = wire._replace(
            header=header._replace(delivery_count=stored.failed_deliveries),
            message_annotations=annotations,
            application_properties=app or None,
        )
        if peeked:  # as PyamqpTransport.parse_received_message builds peeked messages
            return ServiceBusReceivedMessage(
                wire, lock_token=None, receiver=self, is_peeked_message=True, amqp_transport=PyamqpTransport
            )
        # as PyamqpTransport.build_received_message: the transfer frame's delivery tag is the lock token
        frame = (0, delivery_id, token.bytes_le if token else None)
        return ServiceBusReceivedMessage(
            message=wire, receive_mode=self._receive_mode, receiver=self, frame=frame, amqp_transport=PyamqpTransport
        )

    # -- settlement (mirrors ServiceBusReceiver._settle_message_with_retry) --------------------------
    def _settle(self, message: Any, action: str, reason: Any = None, description: Any = None) -> Any:
        with self._exclusive(action):
            return self._settle_unguarded(message, action, reason, description)

    def _settle_unguarded(self, message: Any, action: str, reason: Any, description: Any) -> Any:
        self._check_live()
        if not isinstance(message, ServiceBusReceivedMessage):
            raise TypeError("Parameter 'message' must be of type ServiceBusReceivedMessage")
        if message._is_peeked_message:  # noqa: SLF001
            raise ValueError(
                f"The operation {action} is not supported for peeked messages."
                "Only messages received using receive methods in PEEK_LOCK mode can be settled."
            )
        if self._receive_mode == ServiceBusReceiveMode.RECEIVE_AND_DELETE:
            raise ValueError(f"The operation {action} is not supported in 'RECEIVE_AND_DELETE' receive mode.")
        if message._settled:  # noqa: SLF001
            raise MessageAlreadySettled(action=action)
        if message._receiver is not self:  # noqa: SLF001
            raise ValueError(f"cannot {action} a message on a receiver other than the one that received it")
        if message._lock_expired:  # noqa: SLF001 - the SDK's client-side check
            raise MessageLockLostError(message="The lock on the message lock has expired.")
        result = self._broker.settle(self.entity_name, self._dead, message.lock_token, action, reason, description)
        if action != "renew":
            message._settled = True  # noqa: SLF001
        return result

    def complete_message(self, message: ServiceBusReceivedMessage) -> None:
        self._settle(message, "complete")

    def abandon_message(self, message: ServiceBusReceivedMessage) -> None:
        self._settle(message, "abandon")

    def dead_letter_message(
        self, message: ServiceBusReceivedMessage, reason: str | None = None, error_description: str | None = None
    ) -> None:
        self._settle(message, "dead_letter", reason, error_description)

    def renew_message_lock(self, message: ServiceBusReceivedMessage, **_: Any) -> datetime:
        until = self._settle(message, "renew")
        message._expiry = datetime.fromtimestamp(until, UTC)  # noqa: SLF001
        return message._expiry  # noqa: SLF001


class FakeServiceBusClient:
    """Stands in for ``azure.servicebus.ServiceBusClient``: same handler factories, same types."""

    def __init__(self, broker: FakeBroker | None = None, **broker_kwargs: Any) -> None:
        self.broker = broker or FakeBroker(**broker_kwargs)
        self.fully_qualified_namespace = "fake.servicebus.windows.net"
        self._closed = False
        self._handlers: list[_Handler] = []
        self._lock = threading.Lock()

    def _track(self, handler: _Handler) -> Any:
        with self._lock:
            if self._closed:
                raise ValueError("The client has been closed.")
            self._handlers.append(handler)
        return handler

    def get_queue_sender(self, queue_name: str, **_: Any) -> FakeServiceBusSender:
        return self._track(FakeServiceBusSender(self, queue_name))

    def get_queue_receiver(
        self,
        queue_name: str,
        *,
        sub_queue: ServiceBusSubQueue | str | None = None,
        receive_mode: ServiceBusReceiveMode | str = ServiceBusReceiveMode.PEEK_LOCK,
        max_wait_time: float | None = None,
        prefetch_count: int = 0,
        **kwargs: Any,
    ) -> FakeServiceBusReceiver:
        return self._track(
            FakeServiceBusReceiver(
                self, queue_name, sub_queue=sub_queue, receive_mode=receive_mode,
                max_wait_time=max_wait_time, prefetch_count=prefetch_count, **kwargs,
            )
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            handlers, self._handlers = self._handlers, []
        for handler in handlers:
            handler.close()

    def __enter__(self) -> FakeServiceBusClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


class FakeServiceBusAdministrationClient:
    """Stands in for ``ServiceBusAdministrationClient``; returns the SDK's own property models.

    ``refuse_manage = True`` plays an identity without the Manage right (Azure Service Bus Data Sender and
    Receiver only): the service answers the management (ATOM) endpoint with 401, the generated client maps it to
    ``ClientAuthenticationError`` and the SDK's ``_handle_response_error`` re-raises it as a plain
    ``HttpResponseError`` carrying the response, which is what the caller sees."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.refuse_manage = False

    def _authorize(self, queue_name: str) -> None:
        if self.refuse_manage:
            raise HttpResponseError(
                message=f"Unauthorized access. 'Manage,EntityRead' claim(s) are required to perform this operation. "
                        f"Resource: 'sb://{self.broker.queue(queue_name).name}'.",
                response=_Refused(401, "Unauthorized"),
            )

    def _known(self, name: str) -> _Queue:
        q = self.broker.queues.get(name)
        if q is None:
            raise ResourceNotFoundError(f"queue {name} not found")
        return q

    def get_queue_runtime_properties(self, queue_name: str, **_: Any) -> QueueRuntimeProperties:
        self._authorize(queue_name)
        self._known(queue_name)
        active, scheduled, dead = self.broker.runtime_counts(queue_name)
        internal = QueueDescription(
            message_count=active + scheduled + dead,
            message_count_details=MessageCountDetails(
                active_message_count=active, scheduled_message_count=scheduled, dead_letter_message_count=dead,
                transfer_message_count=0, transfer_dead_letter_message_count=0,
            ),
        )
        return QueueRuntimeProperties._from_internal_entity(queue_name, internal)  # noqa: SLF001

    def get_queue(self, queue_name: str, **_: Any) -> QueueProperties:
        self._authorize(queue_name)
        q = self._known(queue_name)
        internal = QueueDescription(
            lock_duration=timedelta(seconds=q.lock_duration),
            max_delivery_count=q.max_delivery_count,
            requires_duplicate_detection=q.requires_duplicate_detection,
            duplicate_detection_history_time_window=timedelta(seconds=q.duplicate_window),
            requires_session=False,
        )
        return QueueProperties._from_internal_entity(queue_name, internal)  # noqa: SLF001

    def create_queue(self, queue_name: str, **props: Any) -> QueueProperties:
        self.broker.create_queue(queue_name, **props)
        return self.get_queue(queue_name)

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeServiceBusAdministrationClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


@dataclass
class _Refused:
    """The parts of an HTTP response ``HttpResponseError`` reads."""

    status_code: int
    reason: str

    def text(self) -> str:
        return ""


def fake_service_bus(**broker_kwargs: Any) -> tuple[FakeServiceBusClient, FakeServiceBusAdministrationClient]:
    """A client and an admin client over one fresh in-memory namespace."""
    broker = FakeBroker(**broker_kwargs)
    return FakeServiceBusClient(broker), FakeServiceBusAdministrationClient(broker)


# -- live Service Bus, for the contract suite ------------------------------------------------------
class NamespacedBus:
    """Wraps a bus so one test's message ids cannot collide with another's in the queue's duplicate-detection
    history: a live queue remembers ``m-1`` from the previous test for the whole window (10 minutes by default)
    and would drop it silently. Ids are prefixed on send and the prefix is removed from what comes back;
    everything else goes straight to the wrapped bus."""

    def __init__(self, inner: Any, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix

    def _strip(self, received: list[Any]) -> list[Any]:
        import dataclasses

        out = []
        for r in received:
            mid = r.envelope.message_id
            envelope = r.envelope.model_copy(update={"message_id": mid.removeprefix(self.prefix)})
            out.append(dataclasses.replace(r, envelope=envelope))
        return out

    def send(self, queue: str, envelopes: Any) -> None:
        self.inner.send(queue, [e.model_copy(update={"message_id": self.prefix + e.message_id}) for e in envelopes])

    def receive(self, queue: str, max_messages: int = 100, max_wait: float = 1.0) -> list[Any]:
        return self._strip(self.inner.receive(queue, max_messages, max_wait))

    def receive_dead_letters(self, queue: str, max_messages: int = 100, max_wait: float = 1.0) -> list[Any]:
        return self._strip(self.inner.receive_dead_letters(queue, max_messages, max_wait))

    def peek_dead_letters(self, queue: str, max_messages: int = 100, from_sequence: int = 0) -> list[Any]:
        return self._strip(self.inner.peek_dead_letters(queue, max_messages, from_sequence))

    def settler(self, queue: str) -> Any:
        return self.inner.settler(queue)

    @property
    def claims(self) -> Any:
        return self.inner.claims

    def complete_dead_letters(self, queue: str, messages: Any) -> None:
        self.inner.complete_dead_letters(queue, messages)

    def counts(self, queue: str) -> Any:
        return self.inner.counts(queue)

    def close(self) -> None:
        self.inner.close()


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    import isodate  # azure-servicebus depends on it

    return isodate.parse_duration(value).total_seconds()


def drain_live_queue(client: Any, queue: str, lock_duration: float, wait: float = 1.0) -> None:
    """Empty a live queue and its DLQ: delete what is receivable, cancel what is scheduled, and wait out
    locks a previous test left behind (bounded by the lock duration)."""
    from azure.servicebus import ServiceBusMessageState

    deadline = time.monotonic() + lock_duration + 20
    delete = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    with (
        client.get_queue_sender(queue) as sender,
        client.get_queue_receiver(queue, receive_mode=delete) as active,
        client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, receive_mode=delete) as dlq,
    ):
        while True:
            for receiver in (active, dlq):
                while receiver.receive_messages(max_message_count=250, max_wait_time=wait):
                    pass
            left = active.peek_messages(250, sequence_number=1)
            scheduled = [m.sequence_number for m in left if m.state == ServiceBusMessageState.SCHEDULED]
            if scheduled:
                sender.cancel_scheduled_messages(scheduled)
            if not left and not dlq.peek_messages(1, sequence_number=1):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not drain live queue {queue}: {len(left)} message(s) still locked")
            time.sleep(wait)


def live_contract_bus(connection: str, queue: str, *, drain_wait: float = 1.0) -> NamespacedBus:
    """A ServiceBusBus on a real namespace for the contract suite, with ``contract`` read from the queue.
    A missing queue is created with contract-friendly settings (5 s lock, 3 deliveries, duplicate detection)."""
    from azure.servicebus import ServiceBusClient
    from azure.servicebus.management import ServiceBusAdministrationClient

    from shared.bus.servicebus import ServiceBusBus

    admin = ServiceBusAdministrationClient.from_connection_string(connection)
    try:
        props = admin.get_queue(queue)
    except ResourceNotFoundError:
        props = admin.create_queue(
            queue, lock_duration=timedelta(seconds=5), max_delivery_count=3, requires_duplicate_detection=True,
            duplicate_detection_history_time_window=timedelta(minutes=10),
        )
    problems = []
    if not props.requires_duplicate_detection:
        problems.append("requires_duplicate_detection is off (it can only be set when the queue is created)")
    if props.requires_session:
        problems.append("it requires sessions")
    if problems:
        admin.close()
        raise RuntimeError(f"live contract queue {queue!r} cannot run the bus contract: {'; '.join(problems)}")
    lock_duration = _seconds(props.lock_duration)
    client = ServiceBusClient.from_connection_string(connection)
    drain_live_queue(client, queue, lock_duration, drain_wait)
    bus = NamespacedBus(ServiceBusBus(client, admin=admin), prefix=f"t{uuid.uuid4().hex[:8]}:")
    bus.contract = {  # type: ignore[attr-defined]
        "lock_duration": lock_duration, "max_delivery_count": props.max_delivery_count, "queue": queue,
    }
    return bus
