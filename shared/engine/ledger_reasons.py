"""Dead letters as every reader sees them: with the reason dualsync gave, in either settlement mode.

In ``SETTLEMENT_MODE=ledger`` the apply trigger cannot dead-letter a message itself: it writes the reason and
description to the failure ledger (state table ``failures``, keyed by queue and message id, with the sequence
number of the delivery it condemned) and fails the invocation until Service Bus moves the message to the
dead-letter queue after maxDeliveryCount, where it carries ``MaxDeliveryCountExceeded``. Reading the dead-letter queue through ``peek_dead_letters`` /
``receive_dead_letters`` here puts the ledger's reason and description back on such a message, so status, the
dead-letter list, purge and replay (and their filters by reason) see exactly what extension mode would have set.
A MaxDeliveryCountExceeded without a ledger entry (a crash loop, lost locks) stays what Service Bus said.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from shared.app import SyncApp
from shared.ports.bus import Received

MAX_DELIVERY_EXCEEDED = "MaxDeliveryCountExceeded"


def condemns(failure: dict[str, Any], received: Received) -> bool:
    """Whether a ledger entry is the verdict on this delivery: one recorded for this very enqueued message (same
    sequence number), or one recorded before sending (a condemned message's verdict, for every delivery)."""
    sequence = failure.get("sequence_number")
    return sequence is None or not received.sequence_number or sequence == received.sequence_number


def with_ledger_reasons(app: SyncApp, letters: Sequence[Received]) -> list[Received]:
    out = []
    for letter in letters:
        if letter.dead_letter_reason == MAX_DELIVERY_EXCEEDED:
            failure = app.state.get_failure(app.queue, letter.envelope.message_id)
            if failure is not None and condemns(failure, letter):
                letter = dataclasses.replace(letter, dead_letter_reason=str(failure["reason"]),
                                             dead_letter_description=str(failure.get("description", "")))
        out.append(letter)
    return out


def peek_dead_letters(app: SyncApp, max_messages: int = 100, from_sequence: int = 0) -> list[Received]:
    return with_ledger_reasons(app, app.bus.peek_dead_letters(app.queue, max_messages=max_messages,
                                                              from_sequence=from_sequence))


def receive_dead_letters(app: SyncApp, max_messages: int = 100, max_wait: float = 1.0) -> list[Received]:
    return with_ledger_reasons(app, app.bus.receive_dead_letters(app.queue, max_messages=max_messages,
                                                                 max_wait=max_wait))
