"""Which fields of an incoming change to write when the target may have changed too.

Baseline = what the record state says both sides last agreed on (what we last wrote to, or saw on, the
target). A field the target changed since the baseline and the incoming change did not is the target's to
keep; a field both changed to different values is a conflict, settled by the flow's policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.config import Flow, SourceSpec
from shared.engine.values import CoercionError, Equivalence, coerce
from shared.ports.connector import Connector


@dataclass
class Decision:
    write: dict[str, Any]  # the fields to write (keys included)
    kept: list[str] = field(default_factory=list)  # target-changed fields left as the target has them
    conflicts: list[str] = field(default_factory=list)  # fields both sides changed
    winners: dict[str, str] = field(default_factory=dict)  # conflict field -> system whose value stays
    park: bool = False  # policy manual: an operator decides
    notes: list[str] = field(default_factory=list)  # how the policy decided when it could not as configured


def decide(
    flow: Flow,
    rules: Equivalence,
    mapped: dict[str, Any],
    baseline: dict[str, Any] | None,
    current: dict[str, Any] | None,
    incoming_at: datetime | None = None,
    target_at: Callable[[], datetime | None] | None = None,
) -> Decision:
    """`target_at` is asked for the target's change time only when a conflict needs it. `baseline` None: no
    comparison at all (an operator forced this change); {} or a field missing from it: nothing agreed yet, so a
    target value that differs from the incoming one is a conflict like any other (a record created on both
    sides before the pair first synced it must not lose the master's values to whichever side went first)."""
    if baseline is None or current is None:
        return Decision(write=dict(mapped))
    owners = {f.to: f.owner for f in flow.fields}
    keys = set(flow.target.key)
    decision = Decision(write={})
    for name, value in mapped.items():
        if name in keys or name not in current:
            # A field the target does not report (e.g. a lookup it reads back under another name): nothing to
            # compare, so the incoming value stands.
            decision.write[name] = value
            continue
        rule = rules.target(name)
        if rule.same(value, current[name]):
            decision.write[name] = value
            continue
        agreed = name in baseline
        incoming_changed = not agreed or not rule.same(value, baseline[name])
        target_changed = not agreed or not rule.same(current[name], baseline[name])
        if not target_changed:
            decision.write[name] = value
        elif not incoming_changed:
            decision.kept.append(name)
        else:
            decision.conflicts.append(name)
            winner = _winner(flow, owners.get(name), incoming_at, target_at, decision)
            if winner is None:
                decision.park = True
            else:
                decision.winners[name] = winner
                if winner == flow.source.system:
                    decision.write[name] = value
                else:
                    decision.kept.append(name)
    return decision


def _winner(flow: Flow, owner: str | None, incoming_at: datetime | None,
            target_at: Callable[[], datetime | None] | None, decision: Decision) -> str | None:
    if owner is not None:
        return owner
    if flow.conflicts == "manual":
        return None
    master = flow.master or flow.source.system
    if flow.conflicts == "last_writer_wins":
        target_time = target_at() if target_at is not None else None
        if incoming_at is not None and target_time is not None:
            return flow.source.system if incoming_at >= target_time else flow.target.system
        missing = flow.target.system if target_time is None else flow.source.system
        note = f"last_writer_wins: no change time from {missing}, so the master {master} wins"
        if note not in decision.notes:
            decision.notes.append(note)
    return master


def target_change_time(connector: Connector, spec: SourceSpec, row: dict[str, Any] | None) -> datetime | None:
    """When the target row last changed, from the column its connector says holds that time (`spec` is the
    target entity as the reverse flow reads it)."""
    column = connector.change_time_column(spec)
    value = row.get(column) if row and column else None
    if value in (None, ""):
        return None
    try:
        return coerce(value, "datetime")
    except CoercionError:
        return None
