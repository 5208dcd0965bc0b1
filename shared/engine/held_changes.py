"""Changes held while their flow is paused, and released the moment it resumes.

Apply does not touch a paused flow's changes: settle sends each one again, unchanged, scheduled
`PAUSED_RECHECK` later and marked with the `held` application property. Resuming makes every held change of
the flow due at once through the bus's `release_held` (the embedded queue moves their due time to now; on
Service Bus, where a scheduled message's time cannot change, each is sent again now with a new message_id and
the scheduled one cancelled after, so a crash in between leaves a duplicate the version check drops, never a
lost change). A bus without `release_held` leaves them to their recheck.
"""

from __future__ import annotations

from shared.app import SyncApp
from shared.engine.cursor_lease import resume_flow
from shared.state.store import Cursor

HELD_PAUSED = "paused"  # the value of the bus's HELD_PROPERTY on a change held for a pause


def resume(app: SyncApp, flow: str) -> tuple[Cursor, int]:
    """Resume `flow`; returns its cursor and how many held changes were made due now."""
    cursor = resume_flow(app.state, flow)
    release = getattr(app.bus, "release_held", None)
    return cursor, (release(app.queue, flow) if release else 0)
