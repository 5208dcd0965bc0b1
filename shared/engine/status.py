"""`dualsync status` and the admin endpoint: one picture per flow, from the state store and the bus."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime

from pydantic import BaseModel

from shared.app import SyncApp
from shared.engine.ledger_reasons import peek_dead_letters
from shared.messages import parse_body
from shared.ports.bus import CountsUnavailable, QueueCounts

HEAD = 1000  # how many queued messages are browsed to find each flow's oldest unapplied change


class FlowStatus(BaseModel):
    flow: str
    source: str
    target: str
    paused: bool
    paused_reason: str | None = None
    lease_owner: str | None = None
    cursor: dict | None = None
    queued: int | None = None  # unsettled messages of this flow, when the bus can count per flow
    lag_seconds: float | None = None  # now minus the oldest unapplied change seen at the head of the queue
    dead_letters: dict[str, int] = {}
    last_run: dict = {}
    # The last pull failure, kept until a pull succeeds: {"error", "since" (first failure), "at", "run_id"}
    last_error: dict | None = None


class SystemStatus(BaseModel):
    queue: str
    # None: unknown, and counts_unavailable says why (on Service Bus, counts need the Manage right)
    active: int | None
    scheduled: int | None
    dead_letter: int | None
    flows: list[FlowStatus]
    counts_unavailable: str | None = None


def collect_status(app: SyncApp) -> SystemStatus:
    now = app.clock()
    try:
        counts: QueueCounts | None = app.bus.counts(app.queue)
        unavailable = None
    except CountsUnavailable as exc:
        counts, unavailable = None, str(exc)
    cursors = {c.flow: c for c in app.state.list_cursors()}
    per_flow = getattr(app.bus, "counts_by_flow", lambda q: None)(app.queue)
    oldest = _oldest_unapplied(app)
    dead = _dead_letters_by_flow(app)
    flows = []
    for name, flow in app.config.flows.items():
        cursor = cursors.get(name)
        flows.append(FlowStatus(
            flow=name,
            source=f"{flow.source.system}.{flow.source.entity}",
            target=f"{flow.target.system}.{flow.target.entity}",
            paused=bool(cursor and cursor.paused),
            paused_reason=cursor.paused_reason if cursor else None,
            lease_owner=cursor.lease_owner if cursor else None,
            cursor=cursor.position if cursor else None,
            queued=None if per_flow is None else per_flow.get(name, 0),
            lag_seconds=(now - oldest[name]).total_seconds() if name in oldest else None,
            dead_letters=dict(dead.get(name, {})),
            last_run=cursor.last_run if cursor else {},
            last_error=cursor.last_error if cursor else None,
        ))
    if counts is None:
        # The dead-letter queue was browsed whole above (which Data Receiver may do): its count is still known.
        return SystemStatus(queue=app.queue, active=None, scheduled=None,
                            dead_letter=sum(sum(reasons.values()) for reasons in dead.values()), flows=flows,
                            counts_unavailable=unavailable)
    return SystemStatus(queue=app.queue, active=counts.active, scheduled=counts.scheduled,
                        dead_letter=counts.dead_letter, flows=flows)


def _oldest_unapplied(app: SyncApp) -> dict[str, datetime]:
    oldest: dict[str, datetime] = {}
    for received in app.bus.peek(app.queue, max_messages=HEAD):
        try:
            message = parse_body(received.envelope.body)
        except ValueError:
            continue
        if message.flow not in oldest or message.changed_at < oldest[message.flow]:
            oldest[message.flow] = message.changed_at
    return oldest


def _dead_letters_by_flow(app: SyncApp) -> dict[str, Counter[str]]:
    by_flow: dict[str, Counter[str]] = defaultdict(Counter)
    start = 0
    while page := peek_dead_letters(app, max_messages=250, from_sequence=start):
        for m in page:
            flow = str(m.envelope.application_properties.get("flow", m.envelope.subject))
            by_flow[flow][m.dead_letter_reason or "unknown"] += 1
        start = page[-1].sequence_number + 1
    return by_flow
