"""Settle outcomes on the bus: the one place that decides complete / schedule / dead-letter.

Order matters: a retry clone (or deferred copy) is sent *before* its original completes, so a crash in
between leaves a duplicate that duplicate detection or the version check drops, never a lost change.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta

from shared import telemetry
from shared.app import SyncApp
from shared.bus.claim_check import REF_PROPERTY, SIZE_PROPERTY
from shared.engine.cursor_lease import pause_flow
from shared.engine.held_changes import HELD_PAUSED
from shared.engine.outcome import Kind, Outcome
from shared.engine.run_history import record_outcomes
from shared.messages import bounded_id, to_envelope
from shared.ports.bus import HELD_PROPERTY, Settler

PAUSED_RECHECK = timedelta(minutes=5)


def settle(app: SyncApp, settler: Settler, outcomes: Sequence[Outcome], started: float | None = None) -> None:
    """`started` (time.perf_counter() before apply) lets the batch's apply latency be measured."""
    resend = []
    for o in outcomes:
        if o.kind is Kind.RETRY and o.message is not None:
            clone = o.clone or o.message.retry_clone()
            resend.append(to_envelope(clone, scheduled_at=o.retry_at))
        elif o.kind is Kind.DEFERRED and o.message is not None:
            later = app.clock() + PAUSED_RECHECK
            stamp = int(later.timestamp())
            held = to_envelope(o.message, message_id=bounded_id(f"{o.message.message_id()}:p{stamp}"),
                               scheduled_at=later)
            if o.reason == "flow_paused":  # resuming the flow makes it due at once (shared/engine/held_changes.py)
                held.application_properties[HELD_PROPERTY] = HELD_PAUSED
            resend.append(held)
        elif o.kind is Kind.DEFERRED:  # a body this release cannot read (a newer format): sent on as it is
            later = app.clock() + PAUSED_RECHECK
            envelope = o.received.envelope
            # Its body was fetched if it came by reference: the send stores its own copy again if it must.
            props = {k: v for k, v in envelope.application_properties.items() if k not in (REF_PROPERTY, SIZE_PROPERTY)}
            resend.append(envelope.model_copy(update={
                "message_id": bounded_id(f"{envelope.message_id}:p{int(later.timestamp())}"),
                "application_properties": props, "scheduled_enqueue_time_utc": later}))
    if resend:
        app.bus.send(app.queue, resend)
    for flow, reason in {(o.flow, o.description) for o in outcomes if o.reason == "auth_failed"}:
        pause_flow(app.state, flow, f"auth failure: {reason}")
    done = [o.received for o in outcomes if o.kind is not Kind.DEAD_LETTER]
    if done:
        settler.complete(done)
    for o in outcomes:
        if o.kind is Kind.DEAD_LETTER:
            settler.dead_letter(o.received, str(o.reason), o.description[:4096])
    record_outcomes(app, outcomes)
    telemetry.record_outcomes(outcomes, app.config.flows, started, time.perf_counter() if started is not None else None)
