"""The MessageBus port on Azure Service Bus (azure-servicebus 7.x, pyamqp transport).

Semantics come from the service itself: peek-lock with the queue's lock duration, delivery count, max delivery
count -> DLQ (``MaxDeliveryCountExceeded``), dead-letter with reason and description, scheduled delivery via
``scheduled_enqueue_time_utc`` on a normally sent message, duplicate detection by message_id (the queue must be
created with ``requires_duplicate_detection``). The SQLite bus (shared/bus/sqlite_bus.py) mirrors them locally.

Threading: ``ServiceBusSender`` and ``ServiceBusReceiver`` are *not* thread-safe (the SDK documents that
handlers must not be shared between threads without synchronisation). This bus is shared by the engine's worker
threads, so:

* one sender per queue, cached, and every batch build + send on it runs under that sender's lock;
* one receiver per (queue, sub-queue, thread), cached, each with its own lock; a message is settled on the
  receiver that received it (kept in ``Received.handle``), under that receiver's lock, from whatever thread.

Mapping differences the port hides:

* The Python SDK reports the AMQP header's delivery-count, i.e. *prior* unsuccessful deliveries (0 on the first
  receive; the SDK's own live tests assert ``delivery_count == 0``). The port counts deliveries the way Service
  Bus / .NET do (1 on the first receive), so ``Received.delivery_count = msg.delivery_count + 1`` for what this
  bus receives. A message the Functions host delivers through the settlement extension is different: the host
  received it with the .NET SDK, which stores the count 1-based in the message's header, and hands the worker
  that raw AMQP message, so its count is taken as is (``from_host``).
* Received application properties come back with ``bytes`` keys and ``bytes`` string values; they are decoded
  to ``str`` (ints stay ints).

A message too large for the queue (256 KB on Standard, headers and properties included; the limit the sender's
link reports) travels by reference through the claim check (shared/bus/claim_check.py): its body goes to Blob
Storage (``PAYLOAD_BLOB_ENDPOINT`` / ``PAYLOAD_BLOB_CONNECTION``), or, with no store, it becomes a stub that
apply dead-letters as PayloadTooLarge. ``receive`` fetches bodies; the apply trigger does it through ``claims``.

What it cannot mirror: a receiver that dies holding messages (a crashed or recycled Functions host) leaves their
locks to expire, and Service Bus counts each such expiry as a failed delivery; it cannot tell a dead receiver
from a failed one. So crashes count towards maxDeliveryCount here, bounded per crash by the trigger's batch
(``maxMessageBatchSize``). The SQLite bus knows when a holder died and gives the delivery back.

The connection string is a secret: it is never logged, never put in an exception, and errors raised while
parsing it are replaced (``from None``) by one that names the setting only.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError
from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusMessageBatch,
    ServiceBusMessageState,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    SessionLockLostError,
)

from shared.bus.claim_check import ClaimCheck, MessageTooLargeError
from shared.bus.payload_store import BlobPayloadStore, PayloadStore
from shared.errors import ConfigError, LockLostError
from shared.messages import Envelope, bounded_id
from shared.ports.bus import HELD_PROPERTY, CountsUnavailable, QueueCounts, Received, Settler
from shared.settings import setting

_LOG = logging.getLogger(__name__)

# Application properties Service Bus adds to a dead-lettered message; surfaced as Received fields instead.
_DEAD_LETTER_PROPERTIES = ("DeadLetterReason", "DeadLetterErrorDescription")
# Errors that mean "this delivery can no longer be settled": someone else may hold the message now.
_LOCK_ERRORS = (MessageLockLostError, SessionLockLostError, MessageNotFoundError, MessageAlreadySettled)


@dataclass
class _Handler:
    """A cached sender or receiver and the lock that serialises every call on it."""

    sdk: Any
    lock: threading.Lock


@dataclass
class _Delivery:
    """What ``Received.handle`` holds: the SDK message and the receiver that must settle it."""

    receiver: _Handler
    message: ServiceBusReceivedMessage


class ServiceBusBus:
    def __init__(self, client: ServiceBusClient, *, admin: Any = None, payloads: PayloadStore | None = None) -> None:
        self._client = client
        self._admin = admin
        self.claims = ClaimCheck(payloads)
        self._limits: dict[str, int] = {}  # queue -> max message size its sender's link reports
        self._lock = threading.Lock()  # guards the two caches below, never held during I/O
        self._senders: dict[str, _Handler] = {}
        self._receivers: dict[tuple[str, str, int], _Handler] = {}
        self._closed = False

    def __repr__(self) -> str:  # never show the client: its config may carry credentials
        return f"ServiceBusBus(namespace={getattr(self._client, 'fully_qualified_namespace', '?')!r})"

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, environ: Mapping[str, str] | None = None) -> ServiceBusBus:
        """Build from app settings: ``ServiceBusConnection`` (a connection string) or
        ``ServiceBusConnection__fullyQualifiedNamespace`` with Entra ID (``ManagedIdentityCredential`` for the
        user-assigned identity in ``AZURE_CLIENT_ID`` when set, else ``DefaultAzureCredential``)."""
        env = dict(environ) if environ is not None else None
        payloads = BlobPayloadStore.from_settings(env)
        conn = setting("ServiceBusConnection", env)
        if conn:
            return cls._from_connection_string(conn, payloads)
        namespace = setting("ServiceBusConnection__fullyQualifiedNamespace", env)
        if namespace:
            return cls._from_namespace(namespace, setting("AZURE_CLIENT_ID", env), payloads)
        raise ConfigError(
            [
                "BUS_BACKEND=servicebus needs app setting ServiceBusConnection (connection string) or "
                "ServiceBusConnection__fullyQualifiedNamespace (identity-based access); neither is set"
            ]
        )

    @classmethod
    def _from_connection_string(cls, conn: str, payloads: PayloadStore | None = None) -> ServiceBusBus:
        from azure.servicebus.management import ServiceBusAdministrationClient

        try:
            client = ServiceBusClient.from_connection_string(conn)
            admin = ServiceBusAdministrationClient.from_connection_string(conn)
        except Exception as exc:  # noqa: BLE001 - replaced by an error that cannot leak the secret
            detail = f"{type(exc).__name__}: {_redact(str(exc), conn)}"
        else:
            return cls(client, admin=admin, payloads=payloads)
        # Raised outside the except block so the original (which may quote the string) is not even chained.
        raise ConfigError(
            [
                f"ServiceBusConnection: not a usable Service Bus connection string ({detail}); expected "
                "Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=...;SharedAccessKey=... "
                "(value not shown)"
            ]
        )

    @classmethod
    def _from_namespace(cls, namespace: str, client_id: str | None,
                        payloads: PayloadStore | None = None) -> ServiceBusBus:
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
        from azure.servicebus.management import ServiceBusAdministrationClient

        host = namespace.strip()
        if "//" in host:
            host = host.split("//", 1)[1]
        host = host.split("/", 1)[0]
        if not host:
            raise ConfigError(["ServiceBusConnection__fullyQualifiedNamespace: empty namespace"])
        credential = ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()
        client = ServiceBusClient(host, credential)
        admin = ServiceBusAdministrationClient(host, credential)
        return cls(client, admin=admin, payloads=payloads)

    # -- handler caches -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("ServiceBusBus is closed")

    def _sender(self, queue: str) -> _Handler:
        with self._lock:
            self._check_open()
            handler = self._senders.get(queue)
            if handler is None:
                handler = self._senders[queue] = _Handler(self._client.get_queue_sender(queue), threading.Lock())
            return handler

    def _receiver(self, queue: str, dead_letter: bool) -> _Handler:
        key = (queue, "dlq" if dead_letter else "", threading.get_ident())
        with self._lock:
            self._check_open()
            handler = self._receivers.get(key)
            if handler is None:
                kwargs: dict[str, Any] = {"receive_mode": ServiceBusReceiveMode.PEEK_LOCK}
                if dead_letter:
                    kwargs["sub_queue"] = ServiceBusSubQueue.DEAD_LETTER
                handler = self._receivers[key] = _Handler(
                    self._client.get_queue_receiver(queue, **kwargs), threading.Lock()
                )
            return handler

    # -- sending --------------------------------------------------------------------------------
    def send(self, queue: str, envelopes: Sequence[Envelope]) -> None:
        """Send in as few SDK batches as fit (256 KB each on Standard); a scheduled envelope carries
        ``scheduled_enqueue_time_utc``, which is how the service schedules a normally sent message.

        A message too large to travel alone goes by reference (the claim check, see the module docstring); one
        that does not fit even then (a stub cannot shrink its properties) raises MessageTooLargeError naming it,
        before anything of this call is sent (the check is exact for any message near the limit). A failure
        while sending later batches leaves the earlier ones sent: re-sending the call is safe, duplicate
        detection drops what arrived."""
        if not envelopes:
            return
        handler = self._sender(queue)
        limit = self._limit(queue, handler)
        envelopes = self.claims.check_in(queue, envelopes, lambda e: self._fits_alone(e, limit), limit)
        messages = [to_service_bus_message(e) for e in envelopes]
        with handler.lock:
            sender = handler.sdk
            batch = sender.create_message_batch()
            limit = batch.max_size_in_bytes
            for envelope, message in zip(envelopes, messages, strict=True):
                if _rough_size(envelope) > limit - _ROUGH_MARGIN and not self._try_add(
                    ServiceBusMessageBatch(max_size_in_bytes=limit), message
                ):
                    raise MessageTooLargeError(envelope.message_id, _encoded_size(message), limit)
            for envelope, message in zip(envelopes, messages, strict=True):
                if self._try_add(batch, message):
                    continue
                if len(batch) == 0:
                    raise MessageTooLargeError(envelope.message_id, _encoded_size(message), limit)
                sender.send_messages(batch)
                batch = sender.create_message_batch()
                if not self._try_add(batch, message):
                    raise MessageTooLargeError(envelope.message_id, _encoded_size(message), limit)
            if len(batch):
                sender.send_messages(batch)

    def _limit(self, queue: str, handler: _Handler) -> int:
        limit = self._limits.get(queue)
        if limit is None:
            with handler.lock:
                limit = self._limits[queue] = handler.sdk.create_message_batch().max_size_in_bytes
        return limit

    def _fits_alone(self, envelope: Envelope, limit: int) -> bool:
        if _rough_size(envelope) <= limit - _ROUGH_MARGIN:
            return True
        return self._try_add(ServiceBusMessageBatch(max_size_in_bytes=limit), to_service_bus_message(envelope))

    @staticmethod
    def _try_add(batch: ServiceBusMessageBatch, message: ServiceBusMessage) -> bool:
        try:
            batch.add_message(message)
        except (MessageSizeExceededError, ValueError):  # MessageSizeExceededError is a ValueError too
            return False
        return True

    # -- receiving ------------------------------------------------------------------------------
    def receive(self, queue: str, max_messages: int = 100, max_wait: float = 1.0) -> list[Received]:
        got = self._receive(queue, max_messages, max_wait, dead_letter=False)
        return self.claims.resolve_all(got, _ServiceBusSettler().abandon)

    def receive_dead_letters(self, queue: str, max_messages: int = 100, max_wait: float = 1.0) -> list[Received]:
        return self._receive(queue, max_messages, max_wait, dead_letter=True)

    def _receive(self, queue: str, max_messages: int, max_wait: float, dead_letter: bool) -> list[Received]:
        if max_messages <= 0:
            return []
        handler = self._receiver(queue, dead_letter)
        with handler.lock:
            got = handler.sdk.receive_messages(max_message_count=max_messages, max_wait_time=max(max_wait, 0.01))
        return [to_received(m, _Delivery(handler, m), dead_letter=dead_letter) for m in got]

    def peek(self, queue: str, max_messages: int = 100, from_sequence: int = 0) -> list[Received]:
        return self._peek(queue, max_messages, from_sequence, dead_letter=False)

    def peek_dead_letters(self, queue: str, max_messages: int = 100, from_sequence: int = 0) -> list[Received]:
        return self._peek(queue, max_messages, from_sequence, dead_letter=True)

    def _peek(self, queue: str, max_messages: int, from_sequence: int, dead_letter: bool) -> list[Received]:
        if max_messages <= 0:
            return []
        handler = self._receiver(queue, dead_letter=dead_letter)
        # sequence_number=0 would make the SDK continue after the *last message this receiver saw*; browsing
        # must start where the caller says (Service Bus sequence numbers start at 1).
        with handler.lock:
            got = handler.sdk.peek_messages(max_message_count=max_messages, sequence_number=max(from_sequence, 1))
        return [to_received(m, None, dead_letter=dead_letter, peeked=True) for m in got]

    def release_held(self, queue: str, flow: str, page: int = 250) -> int:
        """Make `flow`'s changes held for a pause due now. A scheduled message's time cannot be changed: each is
        sent again now (a new message_id, so duplicate detection keeps it), then the scheduled ones are cancelled
        by sequence number. A crash in between leaves duplicates that apply's version check drops."""
        handler = self._receiver(queue, dead_letter=False)
        held: list[ServiceBusReceivedMessage] = []
        sequence = 1
        while True:
            with handler.lock:
                got = handler.sdk.peek_messages(max_message_count=page, sequence_number=sequence)
            if not got:
                break
            held += [m for m in got if m.state == ServiceBusMessageState.SCHEDULED and _is_held(m, flow)]
            sequence = (got[-1].sequence_number or 0) + 1
        if not held:
            return 0
        copies = []
        for m in held:
            envelope = to_received(m, None, peeked=True).envelope
            copies.append(envelope.model_copy(update={"message_id": bounded_id(f"{envelope.message_id}:r")}))
        self.send(queue, copies)
        sender = self._sender(queue)
        with sender.lock:
            sender.sdk.cancel_scheduled_messages([m.sequence_number for m in held])
        return len(held)

    # -- settling -------------------------------------------------------------------------------
    def settler(self, queue: str) -> Settler:
        return self.claims.settler(_ServiceBusSettler())

    def complete_dead_letters(self, queue: str, messages: Sequence[Received]) -> None:
        _settle_all(messages, "complete")
        self.claims.release(messages)

    # -- inspection -----------------------------------------------------------------------------
    def counts(self, queue: str) -> QueueCounts:
        """From the administration API, which needs the Manage right on the queue (Azure Service Bus Data Owner;
        Data Sender and Receiver are not enough). Refused or failing, it raises CountsUnavailable saying why."""
        if self._admin is None:
            raise CountsUnavailable("no Service Bus administration client to read queue counts with")
        try:
            props = self._admin.get_queue_runtime_properties(queue)
        except HttpResponseError as exc:
            if exc.status_code in (401, 403):
                raise CountsUnavailable(
                    f"Service Bus refused to read the counts of queue {queue} ({exc.status_code}): the administration "
                    "API needs the Manage right, i.e. the role Azure Service Bus Data Owner on the queue"
                ) from None
            raise CountsUnavailable(f"Service Bus could not read the counts of queue {queue}: "
                                    f"{type(exc).__name__} ({exc.status_code})") from exc
        except AzureError as exc:  # no token, no connection
            raise CountsUnavailable(f"could not read the counts of queue {queue}: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from exc
        return QueueCounts(
            active=props.active_message_count or 0,
            scheduled=props.scheduled_message_count or 0,
            dead_letter=props.dead_letter_message_count or 0,
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            handlers = [*self._senders.values(), *self._receivers.values()]
            self._senders.clear()
            self._receivers.clear()
        for handler in handlers:
            with handler.lock:
                _quietly(handler.sdk.close)
        if self._admin is not None and hasattr(self._admin, "close"):
            _quietly(self._admin.close)
        _quietly(self.claims.close)
        _quietly(self._client.close)


class _ServiceBusSettler:
    """Settles on the receiver that received each message (from ``Received.handle``)."""

    def complete(self, messages: Sequence[Received]) -> None:
        _settle_all(messages, "complete")

    def abandon(self, message: Received) -> None:
        _settle_one(message, "abandon")

    def dead_letter(self, message: Received, reason: str, description: str) -> None:
        _settle_one(message, "dead_letter", reason=reason, description=description)


def _settle_one(message: Received, action: str, *, reason: str = "", description: str = "") -> None:
    delivery = message.handle
    if not isinstance(delivery, _Delivery):
        raise ValueError(
            f"message {message.envelope.message_id} was not received under a peek-lock by ServiceBusBus "
            "(peeked messages cannot be settled)"
        )
    receiver, msg = delivery.receiver, delivery.message
    try:
        with receiver.lock:
            if action == "complete":
                receiver.sdk.complete_message(msg)
            elif action == "abandon":
                receiver.sdk.abandon_message(msg)
            else:
                receiver.sdk.dead_letter_message(msg, reason=reason, error_description=description)
    except _LOCK_ERRORS as exc:
        raise LockLostError(
            f"lock lost on message {message.envelope.message_id} (seq {message.sequence_number}): "
            f"{type(exc).__name__}"
        ) from exc


def _settle_all(messages: Sequence[Received], action: str) -> None:
    """Service Bus settles one delivery at a time, so this is not all-or-nothing like the SQLite bus: every
    message that can be settled is, then one LockLostError names those that could not."""
    lost: list[str] = []
    first: LockLostError | None = None
    for message in messages:
        try:
            _settle_one(message, action)
        except LockLostError as exc:
            lost.append(message.envelope.message_id)
            first = first or exc
    if first is not None:
        raise LockLostError(f"lock lost on {len(lost)} message(s): {', '.join(lost)}") from first


# -- mapping ---------------------------------------------------------------------------------------
def to_service_bus_message(envelope: Envelope) -> ServiceBusMessage:
    """Envelope -> ServiceBusMessage with every property the operator filters on in Service Bus Explorer."""
    return ServiceBusMessage(
        envelope.body,
        message_id=envelope.message_id,
        subject=envelope.subject or None,
        correlation_id=envelope.correlation_id or None,
        content_type=envelope.content_type or None,
        application_properties=dict(envelope.application_properties) or None,
        scheduled_enqueue_time_utc=_as_utc(envelope.scheduled_enqueue_time_utc),
    )


def from_host(msg: ServiceBusReceivedMessage) -> Received:
    """A message the Functions host delivered through the settlement extension; it settles only through the
    extension's message actions, so the SDK message itself is the handle. Its header's delivery count is the
    .NET SDK's, already 1-based (see the module docstring)."""
    return to_received(msg, msg, counted_from=1)


def to_received(
    msg: ServiceBusReceivedMessage, handle: Any, *, dead_letter: bool = False, peeked: bool = False,
    counted_from: int = 0,
) -> Received:
    """``counted_from``: what the header's delivery count is on a first delivery (0 from the Python SDK)."""
    strip = _DEAD_LETTER_PROPERTIES if dead_letter else ()
    envelope = Envelope(
        message_id=_text(msg.message_id),
        body=_body_bytes(msg),
        subject=_text(msg.subject),
        correlation_id=_text(msg.correlation_id),
        content_type=_text(msg.content_type),
        application_properties=decode_properties(msg.application_properties, strip=strip),
    )
    return Received(
        envelope=envelope,
        # Port: this delivery's number, as Service Bus counts (1 on the first delivery).
        delivery_count=max((msg.delivery_count or 0) + 1 - counted_from, 1),
        enqueued_at=msg.enqueued_time_utc or datetime.now(UTC),
        sequence_number=msg.sequence_number or 0,
        lock_token="" if peeked or msg.lock_token is None else str(msg.lock_token),
        dead_letter_reason=msg.dead_letter_reason if dead_letter else None,
        dead_letter_description=msg.dead_letter_error_description if dead_letter else None,
        handle=handle,
    )


def _is_held(msg: ServiceBusReceivedMessage, flow: str) -> bool:
    props = decode_properties(msg.application_properties)
    return _text(msg.subject) == flow and HELD_PROPERTY in props


def decode_properties(props: Mapping[Any, Any] | None, *, strip: Sequence[str] = ()) -> dict[str, str | int]:
    """Received application properties have bytes keys and (for strings) bytes values: decode them."""
    out: dict[str, str | int] = {}
    for key, value in (props or {}).items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes | bytearray) else str(key)
        if name in strip:
            continue
        if isinstance(value, bytes | bytearray):
            out[name] = bytes(value).decode("utf-8", "replace")
        elif isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
        elif isinstance(value, str):
            out[name] = value
        elif value is None:
            continue
        else:  # bool, float, UUID, datetime, ...: keep them readable
            out[name] = str(value)
    return out


def _body_bytes(msg: ServiceBusMessage) -> bytes:
    body = msg.body
    if body is None:
        return b""
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if msg.body_type == AmqpMessageBodyType.DATA:
        return b"".join(bytes(chunk) for chunk in body)
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body, default=lambda v: v.decode() if isinstance(v, bytes) else str(v)).encode()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # A naive datetime is taken as UTC (the envelope's field is named ..._utc).
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Encoded size is at least the raw bytes below; AMQP framing adds a few hundred bytes at most for our messages.
_ROUGH_MARGIN = 8 * 1024


def _rough_size(envelope: Envelope) -> int:
    props = sum(len(str(k)) + len(str(v)) for k, v in envelope.application_properties.items())
    return (
        len(envelope.body) + len(envelope.message_id) + len(envelope.subject) + len(envelope.correlation_id)
        + len(envelope.content_type) + props
    )


def _encoded_size(message: ServiceBusMessage) -> int | None:
    try:
        from azure.servicebus._transport._pyamqp_transport import PyamqpTransport

        outgoing = PyamqpTransport.to_outgoing_amqp_message(message.raw_amqp_message)
        return PyamqpTransport.get_message_encoded_size(outgoing)
    except Exception:  # noqa: BLE001 - the size is only for the error text
        return None


def _redact(text: str, conn: str) -> str:
    """Remove the connection string and every value in it (key, key name, endpoint) from a message."""
    text = text.replace(conn, "***")
    for part in conn.split(";"):
        value = part.partition("=")[2].strip()
        if len(value) >= 3:
            text = text.replace(value, "***")
    return text


def _quietly(fn: Any) -> None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - closing must not mask the caller's error
        _LOG.debug("ignoring error while closing a Service Bus handler: %s", type(exc).__name__)
