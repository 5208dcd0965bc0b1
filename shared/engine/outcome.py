"""What became of one delivered message. Every message ends in exactly one of these."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from shared.messages import ChangeMessage
from shared.ports.bus import Received


class Kind(StrEnum):
    APPLIED = "applied"
    SKIPPED = "skipped"  # reason: already_applied, superseded, echo, deletes_ignored, never_synced
    RETRY = "retry"  # a clone is scheduled; the original completes
    DEAD_LETTER = "dead_letter"
    DEFERRED = "deferred"  # flow paused (auth failure or operator): re-scheduled untouched


@dataclass
class Outcome:
    received: Received
    message: ChangeMessage | None
    kind: Kind
    reason: str = ""
    description: str = ""
    retry_at: datetime | None = None
    conflicts: int = 0  # fields both sides had changed, settled by the flow's policy
    # the flow a change was sent through on demand (a missing parent, the winner of a delete race)
    fetched_parent: str | None = None
    clone: ChangeMessage | None = None  # RETRY: the message to schedule (default: the next attempt)

    @property
    def flow(self) -> str:
        if self.message is not None:
            return self.message.flow
        return str(self.received.envelope.application_properties.get("flow", self.received.envelope.subject))
