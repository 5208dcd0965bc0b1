"""One Service Bus delivery as the apply trigger sees it -> apply -> settle through a Settler.

The trigger adapters only hand over what the host delivered; everything else is here, so the same path runs
under the Functions host, the local runtime and the tests. Two ways to settle, chosen by SETTLEMENT_MODE:

* ``extension``: the Service Bus settlement extension (``ServiceBusMessageActions``) completes, abandons and
  dead-letters each delivery itself -> ``handle_with_actions`` / ``ActionsSettler``.
* ``ledger``: the plain trigger with auto-complete, for plans without the extension: a dead-letter reason is
  recorded in the failure ledger and the function raises until maxDeliveryCount moves the message to the DLQ
  -> ``handle_with_ledger`` / ``LedgerSettler``. A verdict holds for one enqueued message, named by its
  message_id and sequence number (its redeliveries keep the sequence number; the same message_id sent again
  later, after the cause was fixed, gets a new one and is applied), and is cleared when that message_id
  succeeds.

Nothing here imports azure.functions: the settlement actions are duck-typed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from shared.app import SyncApp
from shared.engine.apply import apply_batch
from shared.engine.outcome import Outcome
from shared.engine.settle import settle
from shared.errors import Reason
from shared.ports.bus import Received, Settler

_LOG = logging.getLogger("dualsync.apply")


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
        self.app.state.record_failure(self.app.queue, message.envelope.message_id, reason, description,
                                      message.sequence_number)
        self.dead.append(message.envelope.message_id)


def _condemns(failure: dict[str, Any], received: Received) -> bool:
    """Whether a ledger entry is the verdict on this delivery: one recorded for this very enqueued message (same
    sequence number), or one recorded before sending (a condemned message's verdict, for every delivery)."""
    sequence = failure.get("sequence_number")
    return sequence is None or not received.sequence_number or sequence == received.sequence_number


def handle_with_ledger(app: SyncApp, received: Received) -> list[Outcome]:
    """A delivery the ledger already condemned is not applied again: it is only walked to the DLQ. The same
    message_id sent again later is a new delivery: it is applied, and on success the old verdict is cleared."""
    message_id = received.envelope.message_id
    known = app.state.get_failure(app.queue, message_id)
    if known is not None and _condemns(known, received):
        raise DeadLetterViaLedger(f"{known['reason']}: {known['description']}")
    settler = LedgerSettler(app)
    # A body carried by reference is fetched here; on a transient store error the raise makes the host retry.
    [received] = app.bus.claims.resolve_all([received], lambda _: None)
    # The host completes after we return: a body carried by reference is released then (on the rare failure
    # of that completion, the redelivery finds no body and is dead-lettered as PayloadMissing, replayable).
    outcomes = handle_delivery(app, [received], app.bus.claims.settler(settler))
    if settler.dead:
        failure = app.state.get_failure(app.queue, message_id) or {}
        raise DeadLetterViaLedger(f"{failure.get('reason', 'abandoned')}: {failure.get('description', '')}")
    if known is not None:
        app.state.clear_failure(app.queue, message_id)
    return outcomes


# -- the settlement extension (SETTLEMENT_MODE=extension) -----------------------------------------------------


class ActionsSettler:
    """Settler over the Functions Service Bus settlement extension.

    ``actions`` is duck-typed like ``azurefunctions.extensions.bindings.servicebus.ServiceBusMessageActions``:
    ``complete(message)``, ``abandon(message)`` and ``deadletter(message, deadletter_reason=...,
    deadletter_error_description=...)``, each taking the SDK message the host delivered (it settles by that
    message's lock token over the host's gRPC settlement service). ``Received.handle`` holds that SDK message.

    It remembers which deliveries it settled, so that after a failure exactly the rest can be abandoned.
    """

    def __init__(self, actions: Any) -> None:
        self.actions = actions
        self._settled: set[int] = set()

    def is_settled(self, message: Received) -> bool:
        return id(message) in self._settled

    def complete(self, messages: Sequence[Received]) -> None:
        # Service Bus settles one delivery at a time: settle every one that can be, then report the failures.
        failed: list[tuple[Received, Exception]] = []
        for message in messages:
            try:
                self.actions.complete(message.handle)
            except Exception as exc:  # noqa: BLE001 - reported together below
                failed.append((message, exc))
            else:
                self._settled.add(id(message))
        if failed:
            ids = ", ".join(m.envelope.message_id for m, _ in failed)
            raise SettlementFailed(f"could not complete {len(failed)} message(s): {ids}") from failed[0][1]

    def abandon(self, message: Received) -> None:
        self.actions.abandon(message.handle)
        self._settled.add(id(message))

    def dead_letter(self, message: Received, reason: str, description: str) -> None:
        self.actions.deadletter(message.handle, deadletter_reason=reason, deadletter_error_description=description)
        self._settled.add(id(message))

    def abandon_unsettled(self, messages: Sequence[Received]) -> None:
        """Best effort after a failure: every delivery not yet settled goes back to the queue now (its delivery
        count goes up) rather than waiting out its lock. A failure here is logged, never raised: the caller is
        already raising the error that matters, and an expired lock redelivers the message anyway."""
        for message in messages:
            if self.is_settled(message):
                continue
            try:
                self.abandon(message)
            except Exception as exc:  # noqa: BLE001 - see above
                _LOG.warning("could not abandon message %s: %s: %s", message.envelope.message_id,
                             type(exc).__name__, exc)


class SettlementFailed(Exception):
    """The settlement extension refused to settle a delivery (lock lost, host unreachable)."""


def abandon_all(messages: Any, actions: Any) -> None:
    """Abandon SDK messages the trigger could not even start on (no SyncApp, unreadable batch), best effort."""
    for message in _as_list(messages):
        try:
            actions.abandon(message)
        except Exception as exc:  # noqa: BLE001 - the caller re-raises the real error
            _LOG.warning("could not abandon message %s: %s: %s", getattr(message, "message_id", "?"),
                         type(exc).__name__, exc)


def handle_with_actions(app: SyncApp, messages: Any, actions: Any) -> list[Outcome]:
    """The whole body of the extension-mode apply trigger, for one delivered message or a batch of them.

    Every delivery ends settled: applied and skipped ones are completed; a transient failure's clone is
    scheduled on the bus first (settle() does that) and only then the original completes; a permanent failure
    is dead-lettered with its reason and a description naming record and field; an auth failure defers a copy,
    pauses the flow and completes. A message that cannot even be read as a Service Bus message is
    dead-lettered as MalformedMessage. If anything raises unexpectedly, every delivery not yet settled is
    abandoned and the error propagates (the host logs the failed invocation).
    """
    from shared.bus.servicebus import to_received  # azure-servicebus only where Service Bus is used

    settler = ActionsSettler(actions)
    received: list[Received] = []
    unreadable: list[tuple[Any, Exception]] = []
    for message in _as_list(messages):
        try:
            received.append(to_received(message, message))
        except Exception as exc:  # noqa: BLE001 - an unreadable delivery is dead-lettered, not retried
            unreadable.append((message, exc))
    try:
        for message, exc in unreadable:
            _dead_letter_unreadable(actions, message, exc)
        # Bodies carried by reference are fetched here and released once their delivery completed.
        received = app.bus.claims.resolve_all(received, settler.abandon)
        return handle_delivery(app, received, app.bus.claims.settler(settler))
    except BaseException:
        settler.abandon_unsettled(received)
        raise


def _dead_letter_unreadable(actions: Any, message: Any, exc: Exception) -> None:
    message_id = getattr(message, "message_id", None) or "?"
    description = f"message {message_id}: cannot read the delivered Service Bus message: {type(exc).__name__}: {exc}"
    actions.deadletter(message, deadletter_reason=str(Reason.MALFORMED_MESSAGE),
                       deadletter_error_description=description[:4096])


def _as_list(messages: Any) -> list[Any]:
    """cardinality=many delivers a list; cardinality=one a single message."""
    if messages is None:
        return []
    if isinstance(messages, list | tuple):
        return list(messages)
    return [messages]
