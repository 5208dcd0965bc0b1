"""Service Bus trigger `apply`: apply delivered ChangeMessages to their targets and settle every delivery.

One function named ``apply``, in the mode the app setting ``SETTLEMENT_MODE`` names when the host indexes the
app (changing it needs a restart, which changing an app setting does anyway):

``extension`` (default)
    The Service Bus settlement extension (``azurefunctions-extensions-bindings-servicebus``): the trigger binds
    SDK ``ServiceBusReceivedMessage`` objects plus ``ServiceBusMessageActions``, with
    ``auto_complete_messages=False`` so the host leaves settlement to the function. Messages arrive in batches
    (``cardinality=many``, at most host.json ``maxMessageBatchSize``), so ``apply_batch`` writes each flow's
    changes to the target in one batch. ``handle_with_actions`` settles every delivery: complete, dead-letter
    with reason and description, or (after an unexpected error) abandon. The host renews no lock for a batch, so
    ``handle_with_actions`` renews them itself while the batch runs (``renew_message_lock``).

``ledger``
    The plain trigger (``func.ServiceBusMessage``, one message per call, the host auto-completes), for plans
    where the extension is not available: a dead-letter reason is written to the failure ledger in the state
    store and the function raises until the queue's maxDeliveryCount moves the message to the DLQ.

Concurrency, so the ERP is not flooded: in extension mode the host runs one batch at a time per instance
(batch functions are dispatched at a concurrency of 1), so ``maxMessageBatchSize`` bounds the in-flight writes
per instance; in ledger mode ``maxConcurrentCalls`` does. Both are in host.json and can be overridden per
environment without a redeploy with the app settings
``AzureFunctionsJobHost__extensions__serviceBus__maxMessageBatchSize`` and
``AzureFunctionsJobHost__extensions__serviceBus__maxConcurrentCalls``. Scale-out multiplies them: cap it with
the plan's maximum instance count.

No ``from __future__ import annotations`` here: the Python worker reads the trigger's parameter types with
``typing.get_type_hints``; they must be real types.
"""

import logging
from collections import Counter
from collections.abc import Sequence
from typing import List  # noqa: UP035 - the worker's annotation checks are written for typing.List

import azure.functions as func

from functions import sync_app
from shared.engine.delivery import abandon_all, handle_with_actions, handle_with_ledger
from shared.engine.outcome import Outcome
from shared.messages import Envelope
from shared.ports.bus import Received
from shared.settings import setting

MODES = ("extension", "ledger")

log = logging.getLogger("dualsync.apply")


def settlement_mode(value: str | None = None) -> str:
    mode = (value if value is not None else setting("SETTLEMENT_MODE") or "extension").strip().lower()
    if mode not in MODES:
        # Fail the indexing loudly: guessing a settlement mode would either lose dead-letter reasons or
        # leave every message unsettled.
        raise ValueError(f"app setting SETTLEMENT_MODE={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def build_apply_blueprint(mode: str | None = None) -> func.Blueprint:
    """The blueprint holding the `apply` function in the given mode (default: from SETTLEMENT_MODE)."""
    mode = settlement_mode(mode)
    bp = func.Blueprint()
    if mode == "extension":
        _register_extension(bp)
    else:
        _register_ledger(bp)
    return bp


def _register_extension(bp: func.Blueprint) -> None:
    # Imported here so ledger mode does not need the (preview) extension package at all.
    from azurefunctions.extensions.bindings.servicebus import ServiceBusMessageActions, ServiceBusReceivedMessage

    @bp.function_name("apply")
    @bp.service_bus_queue_trigger(arg_name="messages", queue_name="%APPLY_QUEUE%", connection="ServiceBusConnection",
                                  cardinality=func.Cardinality.MANY, auto_complete_messages=False)
    def apply(messages: List[ServiceBusReceivedMessage], message_actions: ServiceBusMessageActions) -> None:
        try:
            app = sync_app()
        except BaseException:
            abandon_all(messages, message_actions)
            raise
        _log_outcomes(handle_with_actions(app, messages, message_actions))


def _register_ledger(bp: func.Blueprint) -> None:
    @bp.function_name("apply")
    @bp.service_bus_queue_trigger(arg_name="msg", queue_name="%APPLY_QUEUE%", connection="ServiceBusConnection")
    def apply(msg: func.ServiceBusMessage) -> None:
        _log_outcomes(handle_with_ledger(sync_app(), to_received(msg)))


def to_received(msg: func.ServiceBusMessage) -> Received:
    """The plain trigger's message (ledger mode) as the bus port's Received."""
    envelope = Envelope(
        message_id=msg.message_id,
        body=msg.get_body(),
        subject=msg.label or "",
        correlation_id=msg.correlation_id or "",
        content_type=msg.content_type or "application/json",
        application_properties={str(k): v for k, v in (msg.application_properties or {}).items()},
    )
    return Received(envelope=envelope, delivery_count=msg.delivery_count or 1,
                    enqueued_at=msg.enqueued_time_utc, sequence_number=msg.sequence_number or 0,
                    lock_token=msg.lock_token or "", handle=msg)


def _log_outcomes(outcomes: Sequence[Outcome]) -> None:
    kinds = Counter(f"{o.flow}:{o.kind}" for o in outcomes)
    log.info("apply settled %d message(s): %s", len(outcomes), dict(sorted(kinds.items())))


bp = build_apply_blueprint()
