"""Claim check: a message too large for the bus travels by reference, so one big record never blocks a flow.

Service Bus Standard takes at most 256 KB per message, headers and application properties included (the SDK
refuses a larger one with MessageSizeExceededError); the SQLite bus enforces the same limit, so the embedded
runtime is no more forgiving than Azure. Both buses call this module at the same four points:

* ``check_in`` (send): a message that would not fit has its body put in the payload store under a name of its
  own, and travels as a *stub*: the same ChangeMessage with an empty payload (so status, the dead-letter list and
  replay, which need only flow, key and version, work on it as on any message) plus application properties
  ``payload_ref`` (the name) and ``payload_bytes``. Without a payload store, or when storing fails for good, the
  stub has no reference and is condemned (``dead_letter_reason=PayloadTooLarge``, a description naming flow,
  record and size): apply dead-letters it, the flow's cursor moves on, and ``dualsync replay`` sends the record
  again once a store is configured (replay re-reads the source, so the stub's missing payload does not matter).
* ``resolve`` (receive): the stored body replaces the stub's. A stub is sent condemned as ``PayloadNotFetched``
  and only a successful resolve lifts that verdict, so a receiver that skipped this step dead-letters the
  message instead of applying an empty payload. A body that is gone becomes ``PayloadMissing``.
* ``release`` (completion for good: applied, skipped, a retry clone sent, or a dead letter completed by replay
  or purge): the stored body is deleted. A dead-lettered or abandoned message keeps it.

Every copy owns its body. Names derive from the message_id, and every re-send (retry clone, deferred copy,
replay) gets a new message_id and is stored again when sent, so releasing one copy never takes another's body:
no reference counting. A pull that re-sends the same message_id (after a crash) writes the same name again; its
duplicate is dropped by duplicate detection and the one stored body serves the message that was kept. Deleting
happens only after a completion succeeded: when in doubt a body is left behind, never removed early. (The one
body left behind for good: a re-send dropped by Service Bus after its first copy was already completed. The
SQLite bus knows which sends it dropped and releases those; Service Bus does not say.)

Transient store failures (throttling, 5xx, timeouts) raise PayloadStoreError: a pull fails this run and tries
again on the next; a receive abandons what it took, so the messages come back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from shared.bus.payload_store import PayloadStore, PayloadStoreError
from shared.errors import Reason
from shared.messages import VERDICT_DESCRIPTION, VERDICT_REASON, Envelope, parse_body
from shared.ports.bus import Received, Settler

_LOG = logging.getLogger(__name__)

# Service Bus Standard's maximum message size (the SDK's MAX_BATCH_SIZE_STANDARD); Premium allows more, and the
# Service Bus bus then takes the limit its sender reports instead.
MAX_MESSAGE_BYTES = 256 * 1024
REF_PROPERTY = "payload_ref"
SIZE_PROPERTY = "payload_bytes"
MAX_DESCRIPTION = 4096
# AMQP framing around the fields message_size() counts: measured at about 70 bytes for a ChangeMessage with its six
# application properties; the margin keeps the estimate an upper bound for any message we send.
_FRAME_BYTES = 512
_PROPERTY_BYTES = 16


class MessageTooLargeError(ValueError):
    """One message does not fit in a bus message on its own, even as a claim-check stub."""

    def __init__(self, message_id: str, size: int | None, limit: int) -> None:
        size_text = f"{size} bytes encoded" if size is not None else "too large"
        super().__init__(
            f"message {message_id!r} is {size_text}; it does not fit in one message on the bus "
            f"(limit {limit} bytes): shrink its payload"
        )
        self.message_id = message_id
        self.size = size
        self.limit = limit


def message_size(envelope: Envelope) -> int:
    """An upper bound of the message's encoded size on Service Bus: what the SQLite bus holds messages to."""
    props = sum(len(str(k).encode()) + len(str(v).encode()) + _PROPERTY_BYTES
                for k, v in envelope.application_properties.items())
    fields = (envelope.message_id, envelope.subject, envelope.correlation_id, envelope.content_type)
    return len(envelope.body) + sum(len(f.encode()) for f in fields) + props + _FRAME_BYTES


def payload_name(queue: str, message_id: str) -> str:
    """Where a message's body is stored: one name per queue and message_id, safe as a blob and a file name."""
    folder = re.sub(r"[^A-Za-z0-9._-]", "_", queue) or "queue"
    return f"{folder}/{hashlib.sha256(message_id.encode()).hexdigest()}"


class ClaimCheck:
    """The claim check of one bus; ``store`` None means "no payload store": too large is dead-lettered."""

    def __init__(self, store: PayloadStore | None = None) -> None:
        self.store = store

    # -- send ------------------------------------------------------------------------------------------
    def check_in(self, queue: str, envelopes: Sequence[Envelope], fits: Callable[[Envelope], bool],
                 limit: int) -> list[Envelope]:
        return [e if fits(e) else self._by_reference(queue, e, limit) for e in envelopes]

    def _by_reference(self, queue: str, envelope: Envelope, limit: int) -> Envelope:
        what = _record(envelope)
        size = message_size(envelope)
        too_large = f"{what}: the message is about {size} bytes, over the bus's limit of {limit} bytes"
        if self.store is None:
            return _stub(envelope, Reason.PAYLOAD_TOO_LARGE,
                         f"{too_large}, and no payload store is configured (PAYLOAD_BLOB_ENDPOINT or "
                         "PAYLOAD_BLOB_CONNECTION): replay it once one is")
        name = payload_name(queue, envelope.message_id)
        try:
            self.store.put(name, envelope.body)
        except PayloadStoreError as exc:
            if exc.transient:
                raise
            return _stub(envelope, Reason.PAYLOAD_TOO_LARGE,
                         f"{too_large}, and storing it by reference failed: {exc}; replay it once the store works")
        return _stub(envelope, Reason.PAYLOAD_NOT_FETCHED,
                     f"{what}: its {len(envelope.body)}-byte body travels by reference ({name}) and was not fetched "
                     "from the payload store before apply", ref=name)

    # -- receive ---------------------------------------------------------------------------------------
    def resolve(self, received: Received) -> Received:
        """The message as it was sent, its body fetched from the store; unchanged when it carries none."""
        props = received.envelope.application_properties
        name = props.get(REF_PROPERTY)
        if not name or self.store is None or props.get(VERDICT_REASON) != Reason.PAYLOAD_NOT_FETCHED:
            return received
        try:
            body = self.store.get(str(name))
        except PayloadStoreError as exc:
            if exc.transient:
                raise
            return _condemned(received, Reason.PAYLOAD_MISSING,
                              f"{_record(received.envelope)}: its body ({name}) cannot be read: {exc}")
        if body is None:
            return _condemned(received, Reason.PAYLOAD_MISSING,
                              f"{_record(received.envelope)}: its body ({name}) is no longer in the payload store "
                              "(already applied once, or removed); replay it to send the current record")
        kept = {k: v for k, v in props.items() if k not in (VERDICT_REASON, VERDICT_DESCRIPTION)}
        envelope = received.envelope.model_copy(update={"body": body, "application_properties": kept})
        return dataclasses.replace(received, envelope=envelope)

    def resolve_all(self, messages: Sequence[Received], on_failure: Callable[[Received], None]) -> list[Received]:
        """Resolve a delivered batch; after a transient failure every message goes to ``on_failure`` (abandon)
        and the error is raised, so nothing stays locked for its whole lock duration."""
        try:
            return [self.resolve(m) for m in messages]
        except PayloadStoreError:
            for message in messages:
                try:
                    on_failure(message)
                except Exception as exc:  # noqa: BLE001 - the lock expires anyway; the store error matters
                    _LOG.warning("could not abandon message %s: %s", message.envelope.message_id, type(exc).__name__)
            raise

    # -- settle ----------------------------------------------------------------------------------------
    def release(self, messages: Sequence[Received]) -> None:
        """Delete the stored bodies of messages completed for good. A failure leaves a body behind (logged)."""
        if self.store is None:
            return
        for message in messages:
            name = message.envelope.application_properties.get(REF_PROPERTY)
            if not name:
                continue
            try:
                self.store.delete(str(name))
            except PayloadStoreError as exc:
                _LOG.warning("payload %s of message %s was left in the store: %s", name,
                             message.envelope.message_id, exc)

    def settler(self, inner: Settler) -> Settler:
        return _ReleasingSettler(inner, self)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


class _ReleasingSettler:
    """A Settler that releases the stored bodies of the messages it completed (only once that succeeded)."""

    def __init__(self, inner: Settler, claims: ClaimCheck) -> None:
        self._inner = inner
        self._claims = claims

    def complete(self, messages: Sequence[Received]) -> None:
        self._inner.complete(messages)
        self._claims.release(messages)

    def abandon(self, message: Received) -> None:
        self._inner.abandon(message)

    def dead_letter(self, message: Received, reason: str, description: str) -> None:
        self._inner.dead_letter(message, reason, description)


def _record(envelope: Envelope) -> str:
    props = envelope.application_properties
    flow = props.get("flow", envelope.subject) or "?"
    return f"flow {flow} record {props.get('key', '?')} version {props.get('version', '?')}"


def _stub(envelope: Envelope, reason: str, description: str, *, ref: str | None = None) -> Envelope:
    props = {**envelope.application_properties, SIZE_PROPERTY: len(envelope.body)}
    if VERDICT_REASON not in props:  # a message sent condemned (initial sync's verdicts) keeps its own verdict
        props |= {VERDICT_REASON: str(reason), VERDICT_DESCRIPTION: description[:MAX_DESCRIPTION]}
    if ref is not None:
        props[REF_PROPERTY] = ref
    return envelope.model_copy(update={"body": _without_payload(envelope.body), "application_properties": props})


def _condemned(received: Received, reason: str, description: str) -> Received:
    props = {**received.envelope.application_properties, VERDICT_REASON: str(reason),
             VERDICT_DESCRIPTION: description[:MAX_DESCRIPTION]}
    envelope = received.envelope.model_copy(update={"application_properties": props})
    return dataclasses.replace(received, envelope=envelope)


def _without_payload(body: bytes) -> bytes:
    try:
        message = parse_body(body)
    except (ValidationError, ValueError):
        return b"{}"
    return message.model_copy(update={"payload": {}}).model_dump_json().encode()
