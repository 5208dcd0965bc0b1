"""What operators see, as typed read models: one shape for the CLI's `--json`, the admin API and the web console.

- `DeadLetterList` / `DeadLetterView`: the dead-letter queue, each letter with the record, field and rule its
  description names.
- `ConflictView`: one open conflict per record of a pair, field by field with each system's value.
- `ChangeRequestView`: a change waiting for review, field by field as last synced (before) and as proposed (after).
- `ReplayView`: what a replay did (or would do).
- `FlowView`: a flow's state, lag and last error (shared.engine.status's model); `RunView`: shared.engine.run_history.

Filters name flows and reasons that exist: an unknown one is an `UnknownName` (naming the known ones), never an
empty list that looks like good news.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from shared.app import SyncApp
from shared.engine.dead_letters import DeadLetter, DeadLetterFilter, list_dead_letters
from shared.engine.identity import record_id
from shared.engine.ledger_reasons import MAX_DELIVERY_EXCEEDED
from shared.engine.replay import ReplayResult
from shared.engine.run_history import RunView, moment, recent_runs
from shared.engine.status import FlowStatus
from shared.engine.values import EXACT
from shared.errors import Reason
from shared.state.store import CONFLICTS, REQUESTS

__all__ = ["ChangeRequestView", "ConflictView", "DeadLetterList", "DeadLetterView", "FlowView", "ReplayView",
           "RunView", "UnknownName", "change_request_views", "conflict_views", "dead_letter_list", "run_views"]

FlowView = FlowStatus
_EPOCH = datetime.min.replace(tzinfo=UTC)  # sorts before any time

# Every description the engine writes starts "flow F record K: ..."; a field's problem goes on "field TO (from
# FROM): rule" (shared.engine.mapping). Read back here so the record, field and rule can be shown apart.
_DESCRIBED = re.compile(r"^flow \S+ record (?P<record>.+?): (?:field (?P<field>\S+)(?: \(from [^)]*\))?: )?"
                        r"(?P<rule>.*)$", re.DOTALL)


class UnknownName(ValueError):
    """A filter names a flow or a reason that does not exist."""

    def __init__(self, what: str, name: str, known: list[str]) -> None:
        super().__init__(f"no {what} named {name!r}; known: {', '.join(known)}")
        self.what, self.name, self.known = what, name, known


def known_reasons() -> list[str]:
    return sorted([r.value for r in Reason] + [MAX_DELIVERY_EXCEEDED])


def check_flow(app: SyncApp, flow: str | None) -> str | None:
    if flow is not None and flow not in app.config.flows:
        raise UnknownName("flow", flow, sorted(app.config.flows))
    return flow


def check_reason(reason: str | None) -> str | None:
    if reason is not None and reason not in known_reasons():
        raise UnknownName("reason", reason, known_reasons())
    return reason


# -- dead letters ---------------------------------------------------------------------------------------------


class DeadLetterView(BaseModel):
    message_id: str
    sequence_number: int
    flow: str | None
    key: str | None
    reason: str | None
    record: str | None  # as the description names it
    field: str | None  # the target field, when one field broke a rule
    rule: str | None  # what was wrong
    description: str | None
    attempt: int | None
    enqueued_at: datetime | None

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterView:
        found = _DESCRIBED.match(letter.description or "")
        return cls(message_id=letter.message_id, sequence_number=letter.sequence_number, flow=letter.flow,
                   key=letter.key, reason=letter.reason, record=found["record"] if found else letter.key,
                   field=found["field"] if found else None,
                   rule=found["rule"] if found else letter.description, description=letter.description,
                   attempt=letter.attempt, enqueued_at=letter.enqueued_at)


class DeadLetterList(BaseModel):
    queue: str
    count: int
    truncated: bool  # more match than `limit`
    dead_letters: list[DeadLetterView]


def dead_letter_list(app: SyncApp, flow: str | None = None, reason: str | None = None, key: str | None = None,
                     limit: int = 100) -> DeadLetterList:
    which = DeadLetterFilter(check_flow(app, flow), check_reason(reason), key)
    found = list_dead_letters(app, which, limit=limit + 1)
    return DeadLetterList(queue=app.queue, count=min(len(found), limit), truncated=len(found) > limit,
                          dead_letters=[DeadLetterView.of(letter) for letter in found[:limit]])


class ReplayView(BaseModel):
    dry_run: bool
    matched: int
    replayed: int
    skipped: dict[str, int]  # why: already_applied, source_gone, needs_initial_sync
    left: int  # still in the dead-letter queue: not matching, or not replayable
    keys: list[str]  # flow:key of what was (or would be) replayed

    @classmethod
    def of(cls, result: ReplayResult) -> ReplayView:
        return cls(dry_run=result.dry_run, matched=result.matched, replayed=result.replayed,
                   skipped=dict(result.skipped), left=result.left, keys=list(result.keys))


# -- conflicts --------------------------------------------------------------------------------------------------


class FieldValues(BaseModel):
    field: str
    values: dict[str, Any]  # system -> its value


class ConflictView(BaseModel):
    """One record both sides changed. `flow` and `key` name it for `conflicts resolve` (either flow of the
    pair would do: resolving closes it for both)."""

    flow: str
    key: str
    pair: str
    keys: dict[str, str]  # system -> the record's key there (the other side's only once linked)
    fields: list[FieldValues]  # empty for a delete racing an update: `detail` says what happened
    detail: str | None = None
    since: datetime | None = None


def conflict_views(app: SyncApp, flow: str | None = None) -> list[ConflictView]:
    """Open conflicts, one per record of a pair: both flows of a pair may have parked the same record (releases
    before one conflict per record kept both), and the newest stands for it."""
    check_flow(app, flow)
    pair_filter = app.config.pair_of(flow) if flow is not None else None
    newest: dict[tuple[str, str], ConflictView] = {}
    for parked_flow, key, data in app.state.parked(CONFLICTS):
        if parked_flow not in app.config.flows:
            continue
        pair = app.config.pair_of(parked_flow)
        if pair_filter is not None and pair != pair_filter:
            continue
        view = _conflict(app, parked_flow, key, data)
        linked = view.keys.get(app.config.flows[parked_flow].target.system)
        identity = (pair, record_id(app.config, parked_flow, key, {key: linked} if linked else {}))
        held = newest.get(identity)
        if held is None or (view.since or _EPOCH) > (held.since or _EPOCH):
            newest[identity] = view
    return sorted(newest.values(), key=lambda v: (v.flow, v.key))


def _conflict(app: SyncApp, flow: str, key: str, data: dict[str, Any]) -> ConflictView:
    spec = app.config.flows[flow]
    source, target = spec.source.system, spec.target.system
    pair = app.config.pair_of(flow)
    keys = {source: key}
    linked = app.state.lookup_keys(pair, source, [key]).get(key)
    if linked is not None:
        keys[target] = linked
    incoming, current = data.get("incoming") or {}, data.get("target") or {}
    fields = [FieldValues(field=name, values={source: incoming.get(name), target: current.get(name)})
              for name in data.get("fields") or []]
    return ConflictView(flow=flow, key=key, pair=pair, keys=keys, fields=fields, detail=data.get("detail") or None,
                        since=moment(data.get("detected_at")))


# -- change requests --------------------------------------------------------------------------------------------


class FieldChange(BaseModel):
    field: str  # as the source names it
    to: str  # as the target (the master under review) names it
    before: Any  # as last synced (None: never synced); a long value is a digest
    after: Any  # as proposed


class ChangeRequestView(BaseModel):
    flow: str
    key: str
    op: str
    fields: list[FieldChange]  # only the fields that change
    since: datetime | None = None


def change_request_views(app: SyncApp, flow: str | None = None) -> list[ChangeRequestView]:
    check_flow(app, flow)
    views = []
    for parked_flow, key, data in app.state.parked(REQUESTS, flow):
        if parked_flow in app.config.flows:
            views.append(_request(app, parked_flow, key, data))
    return views


def _request(app: SyncApp, flow: str, key: str, data: dict[str, Any]) -> ChangeRequestView:
    spec = app.config.flows[flow]
    message = data.get("message") or {}
    payload = message.get("payload") or {}
    pair, source = app.config.pair_of(flow), spec.source.system
    links = app.state.lookup_keys(pair, source, [key])
    rid = record_id(app.config, flow, key, links)
    state = app.state.get_records(pair, [rid]).get(rid)
    known = state.values.get(source, {}) if state else {}
    changes = []
    for mapping in spec.fields:
        name = mapping.from_
        if "@" in name or name not in payload:
            continue
        before, after = known.get(name), payload.get(name)
        if name not in known or not EXACT.same(after, before):
            changes.append(FieldChange(field=name, to=mapping.to, before=before, after=after))
    return ChangeRequestView(flow=flow, key=key, op=str(message.get("op", "upsert")), fields=changes,
                             since=moment(data.get("created_at")))


# -- runs -------------------------------------------------------------------------------------------------------


def run_views(app: SyncApp, flow: str | None = None, limit: int = 20, busy: bool = False) -> list[RunView]:
    """The newest runs of one flow, or of every flow (each flow's newest `limit`), newest first; `busy`: only
    those that sent something or failed."""
    names = [check_flow(app, flow)] if flow is not None else list(app.config.flows)
    runs = [run for name in names for run in recent_runs(app, name, limit, busy)]
    return sorted(runs, key=lambda r: r.finished_at or r.started_at or _EPOCH, reverse=True)
