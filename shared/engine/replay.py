"""Replay dead-lettered changes once their cause is fixed.

Each DLQ message is re-read from its source first, so a stale copy never overwrites newer data; a
record whose current version is already applied is not sent again. The replayed message has a new
message_id, and the DLQ copy is completed only after the send succeeded: a crash in between leaves
a duplicate that the version check drops, never a loss.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from shared.app import SyncApp
from shared.engine.deletes import already_applied
from shared.engine.ledger_reasons import receive_dead_letters
from shared.errors import Reason
from shared.messages import ChangeMessage, bounded_id, parse_body, to_envelope
from shared.ports.bus import Received

BATCH = 100


@dataclass
class ReplayFilter:
    flow: str | None = None
    reason: str | None = None
    key: str | None = None

    def matches(self, received: Received, message: ChangeMessage) -> bool:
        return (
            (self.flow is None or message.flow == self.flow)
            and (self.reason is None or received.dead_letter_reason == self.reason)
            and (self.key is None or message.key == self.key)
        )


@dataclass
class ReplayResult:
    dry_run: bool
    matched: int = 0
    replayed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # already_applied, source_gone
    left: int = 0  # not matching the filter, or not replayable (malformed, unknown flow)
    keys: list[str] = field(default_factory=list)
    stopped: bool = False  # ended early on request (see `stop`): more may match


def replay_dead_letters(
    app: SyncApp, which: ReplayFilter, dry_run: bool = False, on_progress: Callable[[ReplayResult], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> ReplayResult:
    """`stop` is asked after each batch: True ends the replay there (what it held back goes back to the
    dead-letter queue), so a job can go on later with the same filter where this one left off."""
    result = ReplayResult(dry_run=dry_run)
    settler = app.bus.settler(app.queue)
    held_back: list[Received] = []  # locked but not ours to replay: released at the end, never lost
    try:
        while batch := receive_dead_letters(app, max_messages=BATCH, max_wait=1.0):
            for received in batch:
                message = _parse(app, received)
                if message is None or not which.matches(received, message):
                    held_back.append(received)
                    continue
                if received.dead_letter_reason == Reason.AMBIGUOUS_MATCH:
                    # Sending it again would create a second record: fix the data, then run initial-sync.
                    result.skipped["needs_initial_sync"] += 1
                    held_back.append(received)
                    continue
                result.matched += 1
                if dry_run:
                    held_back.append(received)
                    result.keys.append(f"{message.flow}:{message.key}")
                    continue
                _replay_one(app, received, message, result)
            if on_progress:
                on_progress(result)
            if stop is not None and stop():
                result.stopped = True
                break
    finally:
        for received in held_back:
            settler.abandon(received)
    result.left = len(held_back) - (result.matched if dry_run else 0)
    return result


def _parse(app: SyncApp, received: Received) -> ChangeMessage | None:
    try:
        message = parse_body(received.envelope.body)
    except (ValidationError, ValueError):
        return None
    return message if message.flow in app.config.flows else None


def _replay_one(app: SyncApp, received: Received, message: ChangeMessage, result: ReplayResult) -> None:
    flow = app.config.flows[message.flow]
    fresh = _current(app, message)
    if fresh is None:
        # Gone at the source: its delete travels as its own change; replaying the old copy would resurrect it.
        result.skipped["source_gone"] += 1
    else:
        pair = app.config.pair_of(message.flow)
        state = app.state.get_records(pair, [f"{message.source_system}|{message.key}"]).get(
            f"{message.source_system}|{message.key}")
        if already_applied(state, flow.source.system, fresh):
            result.skipped["already_applied"] += 1
        else:
            replay_id = bounded_id(f"{fresh.base_message_id()}:replay-{uuid.uuid4().hex[:8]}")
            app.bus.send(app.queue, [to_envelope(fresh, message_id=replay_id)])
            result.replayed += 1
            result.keys.append(f"{message.flow}:{message.key}")
    app.bus.complete_dead_letters(app.queue, [received])


def _current(app: SyncApp, message: ChangeMessage) -> ChangeMessage | None:
    """The change as the source has it now (a delete stays a delete while the record stays gone)."""
    flow = app.config.flows[message.flow]
    record = app.connector(flow.source.system).read_record(flow.source, message.key)
    if message.op == "delete":
        return message.restarted() if record is None else _from_record(message, record)
    return None if record is None else _from_record(message, record)


def _from_record(message: ChangeMessage, record) -> ChangeMessage:  # noqa: ANN001 - SourceRecord
    return message.restarted(op="upsert", version=record.version, changed_at=record.changed_at,
                             payload=record.values)
