"""Message bus port: Service Bus semantics (peek-lock, delivery count, dead-letter queue, scheduled
delivery, duplicate detection by message_id) that the SQLite bus mirrors for the embedded runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from shared.messages import Envelope

if TYPE_CHECKING:
    from shared.bus.claim_check import ClaimCheck


# Marks a change held back because its flow is paused (see shared/engine/held_changes.py). A bus that can
# make them due again when the flow resumes offers `release_held(queue, flow) -> int`.
HELD_PROPERTY = "held"


@dataclass
class Received:
    """A message held under a peek-lock (or browsed from the DLQ)."""

    envelope: Envelope
    delivery_count: int
    enqueued_at: datetime
    sequence_number: int
    lock_token: str = ""
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    # The SDK object or row id the implementation needs to settle it.
    handle: Any = None


@dataclass
class QueueCounts:
    active: int
    scheduled: int
    dead_letter: int


class CountsUnavailable(Exception):
    """The bus cannot tell how many messages a queue holds (on Service Bus the administration API needs the
    Manage right); the message says why. Status shows such counts as unknown rather than failing."""


class Settler(Protocol):
    """Settles messages one delivery at a time; the apply trigger and the local worker both use it."""

    def complete(self, messages: Sequence[Received]) -> None: ...

    def abandon(self, message: Received) -> None: ...

    def dead_letter(self, message: Received, reason: str, description: str) -> None: ...


class MessageBus(Protocol):
    # Carries a message too large for the bus by reference (shared/bus/claim_check.py). ``receive`` resolves
    # it; messages delivered by the Functions host go through ``claims.resolve_all`` and ``claims.settler``.
    claims: ClaimCheck

    def send(self, queue: str, envelopes: Sequence[Envelope]) -> int | None:
        """Send (or schedule, per envelope.scheduled_enqueue_time_utc) in batches; a message_id seen within
        the duplicate-detection window is dropped silently, as Service Bus does. Returns how many were
        enqueued when the bus can tell (the embedded one can; Service Bus cannot), else None."""
        ...

    def receive(self, queue: str, max_messages: int = 100, max_wait: float = 1.0) -> list[Received]:
        """Peek-lock up to max_messages. A message whose delivery count would pass the queue's max
        delivery count is moved to the DLQ with reason MaxDeliveryCountExceeded instead."""
        ...

    def settler(self, queue: str) -> Settler: ...

    def peek(self, queue: str, max_messages: int = 100, from_sequence: int = 0) -> list[Received]:
        """Browse the queue (active and scheduled, oldest first) without locking anything."""
        ...

    def peek_dead_letters(self, queue: str, max_messages: int = 100, from_sequence: int = 0) -> list[Received]: ...

    def receive_dead_letters(self, queue: str, max_messages: int = 100, max_wait: float = 1.0) -> list[Received]: ...

    def complete_dead_letters(self, queue: str, messages: Sequence[Received]) -> None: ...

    def counts(self, queue: str) -> QueueCounts:
        """Raises CountsUnavailable when the bus cannot read them."""
        ...

    def close(self) -> None: ...
