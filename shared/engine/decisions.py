"""Operator decisions on what the engine parked: field conflicts (policy manual) and change requests
(flows with review: true). Each decision is sent as a new message, so it travels the normal apply path."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared.app import SyncApp
from shared.engine.deletes import delete_messages
from shared.engine.grants import APPROVED, FORCE, granted
from shared.messages import ChangeMessage, bounded_id, to_envelope
from shared.state.store import CONFLICTS, REQUESTS


class DecisionError(ValueError):
    """The decision cannot be carried out as asked (no such item, wrong system)."""


@dataclass
class Parked:
    flow: str
    key: str
    data: dict[str, Any]


def list_parked(app: SyncApp, table: str, flow: str | None = None) -> list[Parked]:
    return [Parked(f, k, d) for f, k, d in app.state.parked(table, flow)]


def find(app: SyncApp, table: str, key: str, flow: str | None = None) -> Parked:
    matches = [p for p in list_parked(app, table, flow) if p.key == key]
    what = "conflict" if table == CONFLICTS else "change request"
    if not matches:
        raise DecisionError(f"no open {what} for record {key}" + (f" in flow {flow}" if flow else ""))
    if table == CONFLICTS and len({app.config.pair_of(p.flow) for p in matches if p.flow in app.config.flows}) == 1:
        matches = matches[:1]  # both flows of one pair (parked by an earlier release): one decision closes both
    if len(matches) > 1:
        flows = ", ".join(p.flow for p in matches)
        raise DecisionError(f"record {key} has an open {what} in several flows ({flows}): name one with --flow")
    return matches[0]


def _send(app: SyncApp, message: ChangeMessage, tag: str) -> str:
    message_id = bounded_id(f"{message.base_message_id()}:{tag}-{uuid.uuid4().hex[:8]}")
    app.bus.send(app.queue, [to_envelope(message, message_id=message_id)])
    return message_id


def resolve_conflict(app: SyncApp, key: str, take: str, flow: str | None = None) -> str:
    """Make `take`'s values win on both sides; returns the message_id sent."""
    item = find(app, CONFLICTS, key, flow)
    flow_cfg = app.config.flows[item.flow]
    message = ChangeMessage.model_validate(item.data["message"])
    if take == flow_cfg.source.system:
        sent = _send(app, granted(app, message.restarted(), FORCE), "resolved")
    elif take == flow_cfg.target.system:
        sent = _send_reverse(app, item.flow, message)
    else:
        raise DecisionError(f"--take must be {flow_cfg.source.system} or {flow_cfg.target.system}")
    app.state.unpark(CONFLICTS, item.flow, item.key)
    _close_reverse(app, item.flow, item.key)
    app.state.add_run(item.flow, {"kind": "conflict_resolved", "key": key, "take": take, "message_id": sent})
    return sent


def park_conflict(app: SyncApp, flow: str, key: str, data: dict[str, Any]) -> None:
    """One open conflict per record of a pair: when the reverse flow parked the same record (it met this
    flow's change as this flow met its), the newer parking replaces it. Apply holds the record's lease here, and
    both flows of a pair lease the same record, so the two never park it at once."""
    _close_reverse(app, flow, key)
    app.state.park(CONFLICTS, flow, key, data)


def _close_reverse(app: SyncApp, flow: str, key: str) -> None:
    """The reverse flow's conflict for this record, if any, is this one: a decision settles both (releases
    before one conflict per record parked it once per direction)."""
    reverse = app.config.reverse_of(flow)
    if reverse is None:
        return
    source = app.config.flows[flow].source.system
    other_key = app.state.lookup_keys(app.config.pair_of(flow), source, [key]).get(key)
    if other_key is not None:
        app.state.unpark(CONFLICTS, reverse, other_key)


def _send_reverse(app: SyncApp, flow: str, message: ChangeMessage) -> str:
    """The target's current record, sent back through the reverse flow with force; its delete, when the
    target no longer has the record."""
    reverse = app.config.reverse_of(flow)
    if reverse is None:
        raise DecisionError(f"flow {flow} has no reverse flow to carry the target's values back")
    rflow = app.config.flows[reverse]
    target_key = app.state.lookup_keys(app.config.pair_of(flow), message.source_system, [message.key]).get(message.key)
    if target_key is None:
        raise DecisionError(f"record {message.key} was never synced to {rflow.source.system}")
    record = app.connector(rflow.source.system).read_record(rflow.source, target_key)
    if record is None:
        [delete] = delete_messages(app, reverse, [target_key], run_id=message.correlation_id)
        return _send(app, granted(app, delete, FORCE), "resolved")
    back = ChangeMessage(flow=reverse, op="upsert", source_system=rflow.source.system, entity=rflow.source.entity,
                         key=record.key, version=record.version, changed_at=record.changed_at,
                         payload=record.values)
    return _send(app, granted(app, back, FORCE), "resolved")


def approve_request(app: SyncApp, key: str, flow: str | None = None) -> str:
    item = find(app, REQUESTS, key, flow)
    message = ChangeMessage.model_validate(item.data["message"])
    sent = _send(app, granted(app, message.restarted(), APPROVED), "approved")
    app.state.unpark(REQUESTS, item.flow, item.key)
    app.state.add_run(item.flow, {"kind": "request_approved", "key": key, "message_id": sent})
    return sent


def reject_request(app: SyncApp, key: str, reason: str, flow: str | None = None) -> None:
    item = find(app, REQUESTS, key, flow)
    app.state.unpark(REQUESTS, item.flow, item.key)
    app.state.add_run(item.flow, {"kind": "request_rejected", "key": key, "reason": reason})
