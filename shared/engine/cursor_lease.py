"""Leases and flags on a flow's cursor, all through etag-guarded writes.

A lease is an owner and an expiry on the cursor row. Whoever wins the etag race holds the flow until the
lease expires or is released, so overlapping timer runs or scaled-out instances never pull a flow twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from shared.errors import ConcurrencyError
from shared.process_identity import holder_is_gone
from shared.state.store import Cursor, StateStore

LEASE_TTL = timedelta(minutes=10)


def acquire(state: StateStore, flow: str, owner: str, now: datetime, ttl: timedelta = LEASE_TTL) -> Cursor | None:
    """The cursor under our lease, or None when another owner holds an unexpired one (or won the race)."""
    cursor = state.get_cursor(flow)
    try:
        if cursor is None:
            return state.create_cursor(Cursor(flow, lease_owner=owner, lease_expires=now + ttl))
        if (
            cursor.lease_owner not in (None, owner)
            and cursor.lease_expires
            and cursor.lease_expires > now
            and not holder_is_gone(cursor.lease_owner)  # a crashed `dualsync run` on this host
        ):
            return None
        cursor.lease_owner, cursor.lease_expires = owner, now + ttl
        return state.save_cursor(cursor)
    except ConcurrencyError:
        return None


def start_run(state: StateStore, flow: str, enabled: bool, owner: str, now: datetime) -> tuple[Cursor | None, str]:
    """Lease a flow's cursor for one run, or say why the run must not start: disabled, leased, paused, or
    its cursor written by a newer release (mid-deployment: that release pulls it)."""
    if not enabled:
        return None, "disabled"
    cursor = acquire(state, flow, owner, now)
    if cursor is None:
        return None, "leased"
    if cursor.paused:
        release(state, cursor, cursor.last_run)
        return None, "paused"
    if cursor.newer_format:
        release(state, cursor, cursor.last_run)
        return None, "newer_format"
    return cursor, "ok"


def advance(state: StateStore, cursor: Cursor, position: dict[str, Any], now: datetime,
            ttl: timedelta = LEASE_TTL) -> Cursor:
    """Store the new position and extend the lease; ConcurrencyError means the lease was lost."""
    cursor.position = position
    cursor.lease_expires = now + ttl
    return state.save_cursor(cursor)


def release(state: StateStore, cursor: Cursor, last_run: dict[str, Any]) -> Cursor:
    cursor.lease_owner, cursor.lease_expires = None, None
    cursor.last_run = last_run
    return state.save_cursor(cursor)


def _update(state: StateStore, flow: str, change: Callable[[Cursor], None]) -> Cursor:
    """Read-modify-write retried on a lost race: operator flags must not be lost."""
    for _ in range(20):
        cursor = state.get_cursor(flow)
        try:
            if cursor is None:
                cursor = Cursor(flow)
                change(cursor)
                return state.create_cursor(cursor)
            change(cursor)
            return state.save_cursor(cursor)
        except ConcurrencyError:
            continue
    raise ConcurrencyError(f"flow {flow}: cursor kept changing; try again")


def pause_flow(state: StateStore, flow: str, reason: str) -> Cursor:
    def change(c: Cursor) -> None:
        c.paused, c.paused_reason = True, reason

    return _update(state, flow, change)


def resume_flow(state: StateStore, flow: str) -> Cursor:
    def change(c: Cursor) -> None:
        c.paused, c.paused_reason = False, None

    return _update(state, flow, change)
