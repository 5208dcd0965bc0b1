"""Per-record leases in the record state: at most one applier writes a record's target row at a time.

Why: appliers run concurrently (several Functions instances, `maxConcurrentCalls`, two runners on one
workdir), and the bus does not keep two versions of one record apart. Guarding only the record-state write
by its etag is not enough: a writer of v1 can overwrite the target after v2 was recorded and then die
before its own (failing) state write; the redelivered v1 is skipped as already applied and the target
stays on v1. So the decision is taken, and the target written, under a lease:

1. claim: the state as read (the one the version check just passed) is written back with a lease
   `{owner, until}`, guarded by its etag (insert-if-absent for a record never synced). Losing that race
   means someone changed the record since we read it: decide again from a fresh read.
2. write the target, only while the lease has at least half its time left.
3. commit: versions and values are written with the lease removed, guarded by the claim's etag.

A record leased by another owner waits (a short retry). The owner is the change itself (flow, key,
version), not the delivery: a crashed holder's redelivered message takes its own lease over at once, and
a retry of the same change keeps it. An expired lease belongs to nobody.

A commit that loses its race means the lease ran out while we wrote (another applier took the record
over meanwhile): our target write may have overwritten a newer one, so the record is resynced from its
source (see apply).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.app import SyncApp
from shared.messages import ChangeMessage
from shared.state.store import RecordLease, RecordState

LEASE_SECONDS = 120.0


def owner_of(message: ChangeMessage) -> str:
    return f"{message.flow}:{message.key}:{message.version}"


def held_by_other(state: RecordState | None, owner: str, now: datetime) -> datetime | None:
    """When another owner's live lease on this record runs out, or None when we may go ahead."""
    lease = state.lease if state else None
    if lease is None or lease.owner == owner or lease.until <= now:
        return None
    return lease.until


@dataclass
class Claimed:
    lost: set[str] = field(default_factory=set)  # record ids whose state changed since it was read
    failed: dict[str, Exception] = field(default_factory=dict)  # record ids whose claim could not be written


def claim(app: SyncApp, pair: str, claims: Iterable[tuple[RecordState, str]]) -> Claimed:
    """Lease each (state as read, owner). A store error on the batch is narrowed down record by record, so
    it holds back only the changes whose lease could not be written, never the whole batch."""
    until = app.clock() + timedelta(seconds=LEASE_SECONDS)
    states = []
    for state, owner in claims:
        state.lease = RecordLease(owner, until)
        states.append(state)
    if not states:
        return Claimed()
    try:
        return Claimed(lost=app.state.save_records(pair, states))
    except Exception:  # noqa: BLE001 - which record's claim fails is found below
        pass
    claimed = Claimed()
    for state in states:
        try:
            claimed.lost |= app.state.save_records(pair, [state])
        except Exception as exc:  # noqa: BLE001 - this change alone waits
            claimed.failed[state.record_id] = exc
    return claimed


def release(app: SyncApp, pair: str, states: Iterable[RecordState]) -> None:
    """Give leases back without recording anything (the change failed, waits or was parked). A release
    that loses its race had nothing left to give back."""
    leased = [s for s in states if s.lease is not None]
    for state in leased:
        state.lease = None
    if leased:
        app.state.save_records(pair, leased)
