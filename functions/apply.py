"""Service Bus trigger: apply one ChangeMessage to its target and settle it."""

from __future__ import annotations

import azure.functions as func

from functions import sync_app
from shared.engine.delivery import handle_with_ledger
from shared.messages import Envelope
from shared.ports.bus import Received

bp = func.Blueprint()


def to_received(msg: func.ServiceBusMessage) -> Received:
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


@bp.function_name("apply")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%APPLY_QUEUE%", connection="ServiceBusConnection")
def apply(msg: func.ServiceBusMessage) -> None:
    handle_with_ledger(sync_app(), to_received(msg))
