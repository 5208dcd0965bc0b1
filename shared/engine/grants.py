"""Operator decisions that let one change past apply's checks, kept in state where only the operator's tools
write them.

A message names its own flow, key, version and payload, and anyone with Send rights on the queue can write
one. So the two flags that lift a check are only claims: `force` (past the version, echo and conflict checks:
a resync, a conflict resolved for one side, a record resent after a lost race) and `approved` (past the human
review of a change request) count only when the state holds the same grant for that flow, key and version.
A grant is used up when its change is applied.
"""

from __future__ import annotations

from shared.app import SyncApp
from shared.messages import ChangeMessage

FORCE = "force"
APPROVED = "approved"


def granted(app: SyncApp, message: ChangeMessage, kind: str, **changes: object) -> ChangeMessage:
    """`message` with the flag set, and the grant that makes it count recorded first."""
    flagged = message.model_copy(update={kind: True, **changes})
    app.state.grant(flagged.flow, flagged.key, flagged.version, kind)
    return flagged


def honoured(app: SyncApp, message: ChangeMessage, kind: str) -> bool:
    return bool(getattr(message, kind)) and app.state.has_grant(message.flow, message.key, message.version, kind)


def used(app: SyncApp, message: ChangeMessage) -> None:
    for kind in (FORCE, APPROVED):
        if getattr(message, kind):
            app.state.revoke_grant(message.flow, message.key, message.version, kind)
