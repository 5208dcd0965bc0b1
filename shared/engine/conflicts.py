"""Which fields of an incoming change to write when the target may have changed too.

Baseline = what the record state says both sides last agreed on (what we last wrote to, or saw on, the
target). A field the target changed since the baseline and the incoming change did not is the target's to
keep; a field both changed to different values is a conflict, settled by the flow's policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.config import Flow
from shared.engine.values import canonical, same_value


@dataclass
class Decision:
    write: dict[str, Any]  # the fields to write (keys included)
    kept: list[str] = field(default_factory=list)  # target-changed fields left as the target has them
    conflicts: list[str] = field(default_factory=list)  # fields both sides changed
    winners: dict[str, str] = field(default_factory=dict)  # conflict field -> system whose value stays
    park: bool = False  # policy manual: an operator decides


def decide(
    flow: Flow,
    mapped: dict[str, Any],
    baseline: dict[str, Any] | None,
    current: dict[str, Any] | None,
    incoming_at: datetime | None = None,
    target_at: datetime | None = None,
) -> Decision:
    if not baseline or current is None:
        return Decision(write=dict(mapped))
    owners = {f.to: f.owner for f in flow.fields}
    keys = set(flow.target.key)
    decision = Decision(write={})
    for name, value in mapped.items():
        if name in keys or name not in baseline or name not in current:
            # No baseline, or a field the target does not report (e.g. a lookup it reads back under another
            # name): nothing to compare, so the incoming value stands.
            decision.write[name] = value
            continue
        base = baseline[name]
        incoming_changed = not same_value(value, base)
        target_changed = not same_value(current[name], base)
        if not target_changed or same_value(value, canonical(current[name])):
            decision.write[name] = value
        elif not incoming_changed:
            decision.kept.append(name)
        else:
            decision.conflicts.append(name)
            winner = _winner(flow, owners.get(name), incoming_at, target_at)
            if winner is None:
                decision.park = True
            else:
                decision.winners[name] = winner
                if winner == flow.source.system:
                    decision.write[name] = value
                else:
                    decision.kept.append(name)
    return decision


def _winner(flow: Flow, owner: str | None, incoming_at: datetime | None, target_at: datetime | None) -> str | None:
    if owner is not None:
        return owner
    if flow.conflicts == "manual":
        return None
    if flow.conflicts == "last_writer_wins" and incoming_at is not None and target_at is not None:
        return flow.source.system if incoming_at >= target_at else flow.target.system
    return flow.master or flow.source.system
