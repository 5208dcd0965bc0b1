"""Dead-letter queue tooling on the bus port, shared by the admin HTTP functions and the CLI.

* ``list_dead_letters`` browses the DLQ (peek: nothing is locked, nothing changes) page by page and returns
  what an operator needs to decide: reason, description, flow, key, attempt, enqueued time.
* ``purge_dead_letters`` deletes dead-lettered messages for good: it receives them under a lock in batches
  and completes those matching the filter; the others are abandoned back to the DLQ untouched at the end.
  Callers ask for a confirmation first: the admin endpoint wants the ``confirm`` code of a dry run
  (``plan_purge``), which only a caller who looked at exactly those dead letters has; the CLI ``--yes``.

Replaying dead letters is shared/engine/replay.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from shared.app import SyncApp
from shared.engine.ledger_reasons import peek_dead_letters, receive_dead_letters
from shared.messages import parse_body
from shared.ports.bus import Received

PAGE = 250  # browse page size (Service Bus peeks at most a few hundred per call anyway)
BATCH = 100  # receive batch size when purging


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters: every given criterion must match; None matches anything."""

    flow: str | None = None
    reason: str | None = None
    key: str | None = None
    only: frozenset[str] | None = None  # message ids (a purge confirmed from a dry run touches only those)

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (self.flow is None or letter.flow == self.flow)
            and (self.reason is None or letter.reason == self.reason)
            and (self.key is None or letter.key == self.key)
            and (self.only is None or letter.message_id in self.only)
        )


@dataclass(frozen=True)
class DeadLetter:
    sequence_number: int
    message_id: str
    reason: str | None
    description: str | None
    flow: str | None
    key: str | None
    attempt: int | None
    enqueued_at: datetime | None


def describe(received: Received) -> DeadLetter:
    """A dead-lettered delivery as an operator reads it. Flow, key and attempt come from the application
    properties (what Service Bus Explorer shows); a message without them (sent by something else) falls back to
    its body, and a malformed one keeps None."""
    props = received.envelope.application_properties
    flow, key, attempt = props.get("flow"), props.get("key"), props.get("attempt")
    if flow is None or key is None or attempt is None:
        try:
            message = parse_body(received.envelope.body)
        except (ValidationError, ValueError):
            message = None
        if message is not None:
            flow = message.flow if flow is None else flow
            key = message.key if key is None else key
            attempt = message.attempt if attempt is None else attempt
    if flow is None and received.envelope.subject:
        flow = received.envelope.subject
    return DeadLetter(
        sequence_number=received.sequence_number,
        message_id=received.envelope.message_id,
        reason=received.dead_letter_reason,
        description=received.dead_letter_description,
        flow=None if flow is None else str(flow),
        key=None if key is None else str(key),
        attempt=_int(attempt),
        enqueued_at=received.enqueued_at,
    )


def list_dead_letters(app: SyncApp, which: DeadLetterFilter | None = None, limit: int = 100) -> list[DeadLetter]:
    """Up to ``limit`` dead letters matching ``which``, oldest first, browsed without locking anything."""
    which = which or DeadLetterFilter()
    found: list[DeadLetter] = []
    seen: set[int] = set()
    start = 0
    while len(found) < limit:
        page = peek_dead_letters(app, max_messages=PAGE, from_sequence=start)
        # Browse continues after the highest sequence number seen, whatever order a page comes in.
        fresh = sorted((r for r in page if r.sequence_number not in seen), key=lambda r: r.sequence_number)
        if not fresh:
            break
        for received in fresh:
            seen.add(received.sequence_number)
            letter = describe(received)
            if which.matches(letter):
                found.append(letter)
                if len(found) >= limit:
                    break
        start = fresh[-1].sequence_number + 1
    return found


@dataclass
class PurgeResult:
    purged: int = 0  # completed, i.e. deleted for good
    left: int = 0  # received but not matching the filter: abandoned back to the DLQ


def purge_dead_letters(
    app: SyncApp,
    which: DeadLetterFilter | None = None,
    *,
    batch: int = BATCH,
    max_wait: float = 1.0,
    on_progress: Callable[[PurgeResult], None] | None = None,
) -> PurgeResult:
    """Delete the dead letters matching ``which`` (all of them when None): receive in batches, complete the
    matching ones. Messages that do not match stay locked until the end so they are not received twice, then
    are abandoned back to the DLQ (a lock that expired meanwhile releases them just the same)."""
    which = which or DeadLetterFilter()
    result = PurgeResult()
    held_back: list[Received] = []
    try:
        while got := receive_dead_letters(app, max_messages=batch, max_wait=max_wait):
            doomed = []
            for received in got:
                (doomed if which.matches(describe(received)) else held_back).append(received)
            if doomed:
                app.bus.complete_dead_letters(app.queue, doomed)
                result.purged += len(doomed)
            if on_progress:
                on_progress(result)
    finally:
        settler = app.bus.settler(app.queue)
        for received in held_back:
            try:
                settler.abandon(received)
            except Exception:  # noqa: BLE001 - lock already expired: the message is back in the DLQ anyway
                pass
    result.left = len(held_back)
    return result


PLAN_LIMIT = 100_000


@dataclass(frozen=True)
class PurgePlan:
    """What a purge with this filter would delete now, and the code that confirms exactly that."""

    which: DeadLetterFilter
    count: int
    confirm: str


def plan_purge(app: SyncApp, which: DeadLetterFilter | None = None) -> PurgePlan:
    """A dry run: the matching dead letters and a confirmation code derived from their message ids, so a purge
    is confirmed only by someone who has seen this very set (if it changes, the code does too)."""
    letters = list_dead_letters(app, which, limit=PLAN_LIMIT)
    ids = frozenset(letter.message_id for letter in letters)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(app.queue.encode())
    for message_id in sorted(ids):
        digest.update(b"\0" + message_id.encode())
    return PurgePlan(replace(which or DeadLetterFilter(), only=ids), len(ids), digest.hexdigest())


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
