"""A delete on one side of a pair racing an update of the same record on the other side.

Whichever of the two changes is delivered first, the same rule must decide, or the sides end different
for good (an update re-creating the record after its delete went the other way, say). Apply meets the
race from either end:

- the delete arrives while the other side's row differs from what both last agreed on (it was updated);
- the update arrives while the other side's row is gone although the pair had synced it (it was deleted).

The flow's conflict policy settles it; a per-field `owner:` does not apply, since a delete is no field:

- `master_wins`: the master's change stands: its delete deletes the other side's (updated) row, its update
  re-creates the record where it was deleted.
- `last_writer_wins`: a delete carries no change time (Dataverse change tracking and key-set
  reconciliation both report a deletion when they notice it, and a deleted row has no `modifiedon` left to
  read), so the master decides, and the outcome says so.
- `manual`: parked as a conflict; `dualsync conflicts resolve KEY --take SYSTEM` sends the delete or the
  re-creation.

The side that settles the race also sends the winner's change through the other flow (`carry_delete`,
`carry_record`) rather than count on the other change being in flight: a source without delete detection
never reports its delete, and an update seen only because a value came back in another form has no change
of its own. Both messages get the message_id the other flow's own change would have (inferred-delete version,
the record's version), so when that change is in flight too, duplicate detection or the version check drops
one of them.

A pair without `master:` lets its anchor system (the one whose keys name the pair's records) decide, so
both flows give the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.app import SyncApp
from shared.config import Flow
from shared.engine.deletes import delete_messages
from shared.engine.values import Equivalence, same_value
from shared.messages import ChangeMessage, to_envelope


@dataclass(frozen=True)
class DeleteRace:
    deleted_in: str
    updated_in: str
    winner: str | None  # None: parked for an operator
    note: str  # one line for the outcome's description

    @property
    def delete_wins(self) -> bool:
        return self.winner == self.deleted_in


def settle_race(flow: Flow, anchor: str, deleted_in: str, updated_in: str) -> DeleteRace:
    what = f"deleted in {deleted_in} while changed in {updated_in}"
    if flow.conflicts == "manual":
        return DeleteRace(deleted_in, updated_in, None, f"{what}: parked for an operator (conflicts: manual)")
    winner = flow.master or anchor
    why = f"{winner} (master) wins" if flow.master else f"{winner} (the pair's anchor, no master set) wins"
    if flow.conflicts == "last_writer_wins":
        why = f"last_writer_wins: a delete has no change time, so {why}"
    outcome = "the delete stands" if winner == deleted_in else "the record is kept"
    return DeleteRace(deleted_in, updated_in, winner, f"{what}: {why}; {outcome}")


def changed_since(baseline: Mapping[str, Any] | None, current: Mapping[str, Any],
                  rules: Equivalence | None = None) -> bool:
    """Does a row differ from the values both sides last agreed on (so someone changed it since)? `rules`: the
    flow's equivalence, so a value that only came back in another form is no change."""
    # Only fields the row reports are compared, as conflicts.decide does: write-only names (Dataverse's
    # `x@odata.bind`) never come back in a read, and a field the target does not report cannot tell.
    return bool(baseline) and any(
        not (rules.target(name).same(current[name], value) if rules else same_value(current[name], value))
        for name, value in baseline.items() if name in current)


def carry_delete(app: SyncApp, flow_name: str, key: str, run_id: str) -> bool:
    """Send `flow_name` the delete of its source record `key`; False when the bus already had it."""
    return app.bus.send(app.queue, [to_envelope(m) for m in delete_messages(app, flow_name, [key], run_id)]) != 0


def carry_record(app: SyncApp, flow_name: str, key: str, run_id: str) -> bool:
    """Send `flow_name` its source record `key` as it is now; False when it is gone or the bus had it."""
    flow = app.config.flows[flow_name]
    record = app.connector(flow.source.system).read_record(flow.source, key)
    if record is None:
        return False
    message = ChangeMessage(flow=flow_name, op="upsert", source_system=flow.source.system,
                            entity=flow.source.entity, key=record.key, version=record.version,
                            changed_at=record.changed_at, payload=record.values, correlation_id=run_id,
                            first_enqueued_at=app.clock())
    return app.bus.send(app.queue, [to_envelope(message)]) != 0
