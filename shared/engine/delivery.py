"""One Service Bus delivery as the apply trigger sees it -> apply -> settle through a Settler.

The trigger adapters only build a `Received` and a `Settler`; everything else is here, so the same
path runs under the Functions host, the local runtime and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.app import SyncApp
from shared.engine.apply import apply_batch
from shared.engine.outcome import Outcome
from shared.engine.settle import settle
from shared.ports.bus import Received, Settler


class DeadLetterViaLedger(Exception):
    """Raised to make the host abandon: for plans without settlement, the reason waits in the ledger
    until maxDeliveryCount moves the message to the DLQ."""


def handle_delivery(app: SyncApp, received: Sequence[Received], settler: Settler) -> list[Outcome]:
    outcomes = apply_batch(app, received)
    settle(app, settler, outcomes)
    return outcomes


class LedgerSettler:
    """Settlement for the plain trigger (auto-complete): completion is the host's; a dead-letter is
    written to the failure ledger and the function then raises so the message is not completed."""

    def __init__(self, app: SyncApp) -> None:
        self.app = app
        self.dead: list[str] = []

    def complete(self, messages: Sequence[Received]) -> None:
        return None  # the host completes when the function returns

    def abandon(self, message: Received) -> None:
        self.dead.append(message.envelope.message_id)

    def dead_letter(self, message: Received, reason: str, description: str) -> None:
        self.app.state.record_failure(self.app.queue, message.envelope.message_id, reason, description)
        self.dead.append(message.envelope.message_id)


def handle_with_ledger(app: SyncApp, received: Received) -> list[Outcome]:
    """A message the ledger already condemned is not applied again: it is only walked to the DLQ."""
    known = app.state.get_failure(app.queue, received.envelope.message_id)
    if known is not None:
        raise DeadLetterViaLedger(f"{known['reason']}: {known['description']}")
    settler = LedgerSettler(app)
    outcomes = handle_delivery(app, [received], settler)
    if settler.dead:
        failure = app.state.get_failure(app.queue, received.envelope.message_id) or {}
        raise DeadLetterViaLedger(f"{failure.get('reason', 'abandoned')}: {failure.get('description', '')}")
    return outcomes
