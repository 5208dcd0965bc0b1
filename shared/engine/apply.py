"""Apply: delivered ChangeMessages -> writes on the target, each message ending in one Outcome.

Per flow, a batch is: parse -> drop stale and superseded versions -> (pairs) re-read the source rows, so a
message overtaken by our own write is recognised -> drop echoes -> park changes that need review ->
resolve lookups in one key-map read -> map and validate -> (pairs) read the target rows and settle field
conflicts -> one connector write_batch -> key map and record state in one batched write each.

The target is written before the state, so a crash in between re-applies an idempotent upsert on
redelivery rather than losing the change.

Concurrency (see shared.engine.record_lock): the decision and the target write happen under a per-record
lease taken by an etag-guarded write of the state that was just read; the state is committed guarded by
the lease's etag. In pairs the target write is conditional on the row as read (If-Match, or the values
read) and writes only the fields that change. A lost race (the state or the target row changed since
read) is decided again from fresh reads, up to MAX_ROUNDS times within one delivery, then retried.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from shared.app import SyncApp
from shared.config import Flow
from shared.engine import grants, record_lock, target_claims
from shared.engine.backoff import retry_at, throttle_delay
from shared.engine.conflicts import Decision, decide, target_change_time
from shared.engine.delete_races import carry_delete, carry_record, changed_since, settle_race
from shared.engine.decisions import park_conflict
from shared.engine.deletes import already_applied, ordering, record_applied
from shared.engine.identity import record_id
from shared.engine.mapping import Lookups, lookup_requests, map_record
from shared.engine.outcome import Kind, Outcome
from shared.engine.record_results import StateWrite, save_states
from shared.engine.resync import resync
from shared.engine.target_claims import Claim, Survey, rivals
from shared.engine.values import Equivalence, canonical_row, equivalence, unchanged
from shared.engine.verdicts import verdict_outcome
from shared.errors import (
    AuthError,
    MissingReferenceError,
    PermanentError,
    Reason,
    SyncError,
    TargetChanged,
    TransientError,
)
from shared.keys import key_of, parse_key
from shared.messages import ChangeMessage, NewerFormat, parse_body, to_envelope
from shared.ports.bus import Received
from shared.ports.connector import SourceRecord, WriteOp, WriteResult
from shared.state.store import REQUESTS, KeyClaim, KeyLink, RecordState
from shared.versions import version_problem

MAX_ROUNDS = 3  # decisions taken again within one delivery after lost races, before it is retried later


@dataclass
class _Item:
    received: Received
    message: ChangeMessage
    record_id: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] | None = None  # mapped values
    decision: Decision | None = None
    noop: bool = False  # the target already holds every value we would write
    race: str = ""  # how a delete racing an update on the other side was settled (pairs)
    forced: bool = False  # an operator's grant in state lets it past the version, echo and conflict checks
    claim: KeyClaim | None = None  # its target key, claimed for this round until the link replaces the claim


@dataclass
class _Flow:
    """A flow as one apply batch needs it."""

    name: str
    flow: Flow
    pair: str
    anchor: str
    bidirectional: bool
    rules: Equivalence  # how values compare, for the echo check, the no-op check and conflicts alike

    @classmethod
    def of(cls, app: SyncApp, name: str) -> _Flow:
        flow = app.config.flows[name]
        rules = equivalence(flow, app.connector(flow.source.system), app.connector(flow.target.system))
        return cls(name, flow, app.config.pair_of(name), app.config.anchor_of(name),
                   app.config.reverse_of(name) is not None, rules)


def apply_batch(app: SyncApp, batch: Sequence[Received]) -> list[Outcome]:
    """Decide the outcome of every delivered message; writes to the target but settles nothing."""
    outcomes: list[Outcome] = []
    by_flow: dict[str, list[_Item]] = defaultdict(list)
    paused = {c.flow for c in app.state.list_cursors() if c.paused}
    for received in batch:
        try:
            message = parse_body(received.envelope.body)
        except NewerFormat as exc:  # sent by a newer release mid-deployment: it is that release's to apply
            outcomes.append(Outcome(received, None, Kind.DEFERRED, "newer_format", str(exc)))
            continue
        except (ValidationError, ValueError) as exc:
            outcomes.append(_malformed(received, exc))
            continue
        condemned = verdict_outcome(received, message)  # e.g. an ambiguous match found by initial sync
        problem = version_problem(message.version, message.op, app.clock())
        if condemned is not None:
            outcomes.append(condemned)
        elif problem is not None:
            outcomes.append(Outcome(received, message, Kind.DEAD_LETTER, Reason.MALFORMED_MESSAGE,
                                    f"flow {message.flow} record {message.key}: field version: {problem}"))
        elif message.flow not in app.config.flows:
            outcomes.append(Outcome(received, message, Kind.DEAD_LETTER, Reason.UNKNOWN_FLOW,
                                    f"flow {message.flow} record {message.key}: no such flow in the config"))
        elif message.flow in paused:
            outcomes.append(Outcome(received, message, Kind.DEFERRED, "flow_paused"))
        else:
            by_flow[message.flow].append(_Item(received, message, payload=message.payload))
    for flow_name, items in by_flow.items():
        flow_outcomes = _apply_flow(app, _Flow.of(app, flow_name), items)
        _flag_failed_sources(app, app.config.flows[flow_name], flow_outcomes)
        outcomes.extend(flow_outcomes)
    return outcomes


def _malformed(received: Received, exc: Exception) -> Outcome:
    first = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return Outcome(received, None, Kind.DEAD_LETTER, Reason.MALFORMED_MESSAGE,
                   f"message {received.envelope.message_id}: {where}: {first['msg']}")


def _apply_flow(app: SyncApp, f: _Flow, items: list[_Item]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    links = app.state.lookup_keys(f.pair, f.flow.source.system, [i.message.key for i in items])
    for item in items:
        item.record_id = record_id(app.config, f.name, item.message.key, links)
    pending = _newest_per_record(app, f, items, outcomes)
    for round_no in range(1, MAX_ROUNDS + 1):
        if not pending:
            break
        pending = _apply_round(app, f, pending, links, outcomes, last=round_no == MAX_ROUNDS)
    for item in pending:
        outcomes.append(_retry(app, item, "lost_race", f"flow {item.message.flow} record {item.message.key}: "
                               f"changed by someone else while it was applied, {MAX_ROUNDS} times", None))
    return outcomes


def _apply_round(app: SyncApp, f: _Flow, items: list[_Item], links: dict[str, str], outcomes: list[Outcome],
                 last: bool) -> list[_Item]:
    """One decision for each item; returns those that lost a race and are to be decided again."""
    flow = f.flow
    states = app.state.get_records(f.pair, [i.record_id for i in items])
    try:
        current = _current_sources(app, f, items)
    except SyncError as exc:  # the source is throttled or down: the whole batch waits, nothing is lost
        outcomes += [_failure(app, flow, item, exc) for item in items]
        return []
    now = app.clock()
    screened: list[_Item] = []
    for item in items:
        item.noop, item.decision, item.race, item.claim = False, None, "", None
        state = states.get(item.record_id)
        busy_until = record_lock.held_by_other(state, record_lock.owner_of(item.message), now)
        skip = None if busy_until else _screen(app, f, item, state, current)
        if busy_until:
            outcomes.append(_busy(app, item, busy_until))
        elif skip:
            outcomes.append(Outcome(item.received, item.message, Kind.SKIPPED, skip))
        else:
            screened.append(item)
    claimed = record_lock.claim(app, f.pair, [(states.setdefault(i.record_id, RecordState(i.record_id)),
                                                record_lock.owner_of(i.message)) for i in screened])
    claimed_at = time.monotonic()
    for item in screened:
        if item.record_id in claimed.failed:
            outcomes.append(_lease_failed(app, f, item, claimed.failed[item.record_id]))
    again = [i for i in screened if i.record_id in claimed.lost]
    live = [i for i in screened if i.record_id not in claimed.lost and i.record_id not in claimed.failed]
    lookups = _resolve_lookups(app, flow, live)
    planned: list[WriteOp] = []
    finishing: list[_Item] = []  # deletes an earlier attempt wrote and unlinked, then died before recording
    for item in live:
        try:
            op = _write_op(f, item, lookups, links)
        except MissingReferenceError as exc:
            outcomes.append(_missing_parent(app, f, item, exc))
            continue
        except SyncError as exc:
            outcomes.append(_failure(app, flow, item, exc))
            continue
        if op is None and _delete_left_unrecorded(f, item, states):
            finishing.append(item)
        elif op is None:
            reason = "deletes_ignored" if flow.deletes == "ignore" else "never_synced"
            outcomes.append(Outcome(item.received, item.message, Kind.SKIPPED, reason))
        else:
            planned.append(op)
    ops: list[WriteOp] = []
    mapped: list[_Item] = []
    deletes: list[WriteOp] = []
    for op in _take_anchor_names(app, f, _claim_target_keys(app, f, planned, links, outcomes), states, outcomes,
                                 again):
        item = op.ref
        if op.kind == "upsert" and f.bidirectional:
            mapped.append(item)
        elif item.message.op == "delete" and f.bidirectional and not item.forced:
            deletes.append(op)
        else:
            ops.append(op)
    try:
        settled = _settle_conflicts(app, f, mapped, states, outcomes)
    except SyncError as exc:  # reading the target failed: these wait, the one-way ops still go
        outcomes += [_failure(app, flow, item, exc) for item in mapped]
        settled = []
    try:
        ops += _settle_delete_races(app, f, deletes, states, outcomes)
    except SyncError as exc:
        outcomes += [_failure(app, flow, op.ref, exc) for op in deletes]
    ops += [op for op in settled if not op.ref.noop]
    if ops and time.monotonic() - claimed_at > record_lock.LEASE_SECONDS / 2:
        # Too slow since the claim: the lease could run out while the target is written. Claim again.
        again += [op.ref for op in ops]
        ops = []
    ops.sort(key=lambda op: op.kind != "delete")  # a row freed by a delete can be taken in the same batch
    results = _write(app, flow, ops) if ops else []
    # A write that would change nothing is not sent, but its versions and values are still recorded.
    results += [WriteResult(op, ok=True, key=key_of(flow.target.key, op.key)) for op in settled if op.ref.noop]
    committed: set[str] = set()
    if finishing:
        again += _record_unrecorded_deletes(app, f, finishing, states, outcomes, committed)
    if results:
        again += _record_results(app, f, results, states, outcomes, committed)
    # Leases of changes that ended without a commit (failed, parked, skipped) are given back at once.
    keep = set() if last else {i.record_id for i in again}
    record_lock.release(app, f.pair, [states[i.record_id] for i in live
                                      if i.record_id not in committed and i.record_id not in keep])
    # Target key claims not turned into links are given back too (one decided again claims afresh).
    target_claims.release(app.state, f.pair, [i.claim for i in live if i.claim is not None])
    return again


def _delete_left_unrecorded(f: _Flow, item: _Item, states: dict[str, RecordState]) -> bool:
    """A delete of a record that has no link but whose state still holds what the target had: an earlier
    attempt deleted the row and unlinked it (unlinks are saved first), then died before it saved the state.
    Skipping it as never synced would keep those values, and the record coming back with them would be
    skipped as unchanged instead of written again."""
    state = states.get(item.record_id)
    return (item.message.op == "delete" and f.flow.deletes == "delete" and state is not None
            and bool(state.values.get(f.flow.target.system)))


def _record_unrecorded_deletes(app: SyncApp, f: _Flow, items: list[_Item], states: dict[str, RecordState],
                               outcomes: list[Outcome], committed: set[str]) -> list[_Item]:
    """Save what the interrupted attempt of these deletes left unsaved (guarded by the lease's etag); returns
    those recorded by someone else meanwhile, to be decided again."""
    for item in items:
        state = states[item.record_id]
        state.lease = None
        record_applied(state, f.flow.source.system, item.message)
        state.forget(f.flow.target.system)
        state.forget(f.flow.source.system)
        state.synced_at = app.clock()
    lost = app.state.save_records(f.pair, [states[item.record_id] for item in items])
    again = [item for item in items if item.record_id in lost]
    for item in items:
        if item.record_id not in lost:
            committed.add(item.record_id)
            outcomes.append(_applied(item, "delete"))
    return again


def _lease_failed(app: SyncApp, f: _Flow, item: _Item, exc: Exception) -> Outcome:
    return _failure(app, f.flow, item, exc if isinstance(exc, SyncError) else TransientError(
        f"flow {f.name} record {item.message.key}: cannot lease its sync state: {type(exc).__name__}: {exc}"))


def _busy(app: SyncApp, item: _Item, until: datetime, why: str = "another change of it is being applied") -> Outcome:
    """Another version of this record (or another record claiming its target key) is being applied: wait for
    it (never past its lease's or claim's expiry)."""
    when = min(retry_at(app.clock(), item.message.attempt, None, app.retry_base), until)
    # Waiting is not failing: like a throttle it spends no attempt, only the flow's throttle budget.
    return Outcome(item.received, item.message, Kind.RETRY, "record_busy",
                   f"flow {item.message.flow} record {item.message.key}: {why}",
                   retry_at=when, clone=item.message.throttled_clone(app.clock()))


def _newest_per_record(app: SyncApp, f: _Flow, items: list[_Item], outcomes: list[Outcome]) -> list[_Item]:
    """Within one batch only the newest version of a record is worth writing. An inferred delete is versioned
    after the last change *applied*, so a change pulled before the record vanished can sort above it: where
    the source confirms the record is gone, the delete is the newest fact.

    Copies of one version (a crash between sending a retry clone and completing its original leaves both)
    go on as the one furthest along its retries: its next retry is then named after every copy completed
    here as superseded, never the same message id, which duplicate detection would drop with the change."""
    groups: dict[str, list[_Item]] = defaultdict(list)
    for item in items:
        groups[item.record_id].append(item)
    chosen = {rid: max(group, key=_furthest) for rid, group in groups.items()}
    doubtful = {rid: next(i for i in group if i.message.inferred) for rid, group in groups.items()
                if chosen[rid].message.op == "upsert" and any(i.message.inferred for i in group)}
    if doubtful:
        try:
            present = _read_sources(app, f, [i.message.key for i in doubtful.values()])
        except SyncError:
            present = {i.message.key for i in doubtful.values()}  # cannot tell: the newest version stands
        for rid, delete in doubtful.items():
            if delete.message.key not in present:
                chosen[rid] = delete
    for rid, group in groups.items():
        outcomes += [Outcome(i.received, i.message, Kind.SKIPPED, "superseded") for i in group if i is not chosen[rid]]
    return list(chosen.values())


def _furthest(item: _Item) -> tuple[tuple[str, bool], int, int]:
    message = item.message
    return ordering(message), message.attempt, message.throttles


def _read_sources(app: SyncApp, f: _Flow, keys: list[str]) -> dict[str, SourceRecord]:
    source = f.flow.source
    return app.connector(source.system).read_records(source.entity, source.key, keys) if keys else {}


def _current_sources(app: SyncApp, f: _Flow, items: list[_Item]) -> dict[str, SourceRecord]:
    """Pairs re-read their source rows: a change that our own write has overtaken must not travel on, nor
    a delete of a record that exists again. Every flow re-reads the records of inferred deletes: a record
    restored since the inference must not be deleted by it, whatever order the two arrive in."""
    keys = [i.message.key for i in items if f.bidirectional or i.message.inferred]
    return _read_sources(app, f, keys)


def _screen(app: SyncApp, f: _Flow, item: _Item, state: RecordState | None,
            current: dict[str, SourceRecord]) -> str | None:
    """The reason to skip this change, or None to apply it."""
    message, source = item.message, f.flow.source.system
    item.forced = grants.honoured(app, message, grants.FORCE)
    if item.forced:
        return None
    if already_applied(state, source, message):
        return "already_applied"
    if message.inferred and message.key in current:
        return "source_exists"  # restored (or re-created) since the delete was inferred
    if f.bidirectional:
        row = current.get(message.key)
        if message.op == "delete":
            if row is not None:
                # Restored, re-created, or re-created by us when an update won a race against this delete:
                # what the record holds now travels (or travelled) as a change of its own.
                return "source_exists"
        elif row is None:
            return "source_gone"  # its delete travels as a change of its own
        else:
            item.payload = row.values
    restored = state is not None and source in state.tombstones  # the target no longer holds what was synced
    if (message.op == "upsert" and state and not restored
            and unchanged(f.rules, [fm.from_ for fm in f.flow.fields], item.payload, state.values.get(source))):
        # Every field we manage equals what was last synced for this side: in a pair, our own write coming
        # back; otherwise a change to fields we do not sync.
        return "echo" if f.bidirectional else "unchanged"
    if f.flow.review and message.op == "upsert" and not grants.honoured(app, message, grants.APPROVED):
        app.state.park(REQUESTS, f.name, message.key, {
            "message": message.model_copy(update={"payload": item.payload}).model_dump(mode="json"),
            "status": "pending", "created_at": app.clock().isoformat(),
        })
        return "awaiting_review"
    return None


def _resolve_lookups(app: SyncApp, flow: Flow, items: list[_Item]) -> Lookups:
    wanted: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if item.message.op == "upsert":
            for lookup_flow, parent_key in lookup_requests(flow, item.payload):
                wanted[lookup_flow].add(parent_key)
    lookups: Lookups = {}
    for lookup_flow, keys in wanted.items():
        parent = app.config.flows[lookup_flow]
        found = app.state.lookup_keys(app.config.pair_of(lookup_flow), parent.source.system, keys)
        lookups.update({(lookup_flow, k): v for k, v in found.items()})
    return lookups


def _write_op(f: _Flow, item: _Item, lookups: Lookups, links: dict[str, str]) -> WriteOp | None:
    flow, message = f.flow, item.message
    if message.op == "delete":
        target_key = links.get(message.key)
        if flow.deletes == "ignore" or target_key is None:
            return None
        key = parse_key(flow.target.key, target_key)
        if flow.deletes == "delete":
            return WriteOp("delete", key, ref=item)
        item.values = {flow.target.deactivate_field: flow.target.deactivate_value}
        return WriteOp("update", key, dict(item.values), ref=item)
    item.values = map_record(f.name, flow, message.key, item.payload, lookups)
    linked = links.get(message.key)
    if linked is not None:
        # A record matched on other fields (initial sync by e-mail, say) keeps the target key it was linked to.
        item.values.update(parse_key(flow.target.key, linked))
    key = {k: item.values[k] for k in flow.target.key}
    return WriteOp("upsert", key, item.values, ref=item)


def _claim_target_keys(app: SyncApp, f: _Flow, ops: list[WriteOp], links: dict[str, str],
                       outcomes: list[Outcome]) -> list[WriteOp]:
    """Dead-letter a change whose target row already belongs to another source record (see target_claims).
    A claimant in this batch that its source no longer has is a stale change on its way out: it is dropped,
    so the record that holds the key now gets the row; a holder its source no longer has is on its way out
    too, and where the flow deletes, the change waits for that holder's delete. A target key another record
    claims right now (its change is being applied) makes the change wait. The changes that go on claim their
    target keys in state before anything is written."""
    target = f.flow.target
    claims = [Claim(op.ref.message.key, key_of(target.key, op.key))
              for op in ops if op.kind == "upsert" and op.ref.message.key not in links]
    survey = rivals(app.state, f.pair, target.system, claims, app.clock())
    refused = survey.refused
    if not refused:
        return _take_claims(app, f, ops, links, survey, outcomes)
    holders = sorted({rival.owner for rival in refused.values() if rival.busy_until is None})
    try:
        gone = set(holders) - set(_read_sources(app, f, holders))
    except SyncError:
        gone = set()  # cannot tell: every holder counts as a rival
    # A holder whose delete is in this very batch frees the row before the new owner's write (deletes go first).
    leaving = {op.ref.message.key for op in ops if op.kind == "delete"}
    kept: list[WriteOp] = []
    for op in ops:
        item: _Item = op.ref
        key = item.message.key
        rival = refused.get(key) if op.kind == "upsert" else None
        if op.kind == "upsert" and key in gone and key not in links:
            outcomes.append(Outcome(item.received, item.message, Kind.SKIPPED, "source_gone",
                                    f"flow {f.name} record {key}: no longer at its source; its delete follows"))
        elif rival is not None and rival.busy_until is not None:
            outcomes.append(_busy(app, item, rival.busy_until, f"target key {key_of(target.key, op.key)} is "
                                  f"claimed by source record {rival.owner}, whose change is being applied"))
        elif rival is None or (rival.owner in gone and (rival.same_batch or rival.owner in leaving)):
            kept.append(op)
        elif (rival.owner in gone and f.flow.deletes == "delete"
              and item.message.attempt < (f.flow.max_attempts or app.max_attempts)):
            outcomes.append(_await_holders_delete(app, f, item, rival.owner, key_of(target.key, op.key)))
        else:
            holder = ("an earlier change of the same batch, for source record" if rival.same_batch
                      else "source record")
            # A linked holder its source no longer has keeps the row for good where deletes are ignored or only
            # deactivate it, or where its delete did not free it in time: the operator replays this change once
            # the row is free.
            waited = f" (waited {item.message.attempt} attempts for it)" if item.message.attempt > 1 else ""
            gone_note = (f"; that record is gone from its source: replay this once its delete has been applied{waited}"
                         if rival.owner in gone else "")
            outcomes.append(Outcome(item.received, item.message, Kind.DEAD_LETTER, Reason.DUPLICATE_TARGET_KEY,
                                    f"flow {f.name} record {key}: target key {key_of(target.key, op.key)} "
                                    f"({target.system} {target.entity}) already belongs to {holder} "
                                    f"{rival.owner}; two source records cannot share one target row{gone_note}"))
    return _take_claims(app, f, kept, links, survey, outcomes)


def _take_claims(app: SyncApp, f: _Flow, ops: list[WriteOp], links: dict[str, str], survey: Survey,
                 outcomes: list[Outcome]) -> list[WriteOp]:
    """Claim the target key of every change that would create a link, in one guarded write. A change whose
    key was claimed or linked by someone else since it was read waits, and then finds who holds it."""
    target = f.flow.target
    wanted = [Claim(op.ref.message.key, key_of(target.key, op.key))
              for op in ops if op.kind == "upsert" and op.ref.message.key not in links]
    now = app.clock()
    try:
        taken, lost = target_claims.take(app.state, f.pair, f.flow.source.system, target.system, wanted,
                                         survey.holders, now)
    except Exception as exc:  # noqa: BLE001 - the store failed: the changes that needed a claim wait
        failed = {c.source_key for c in wanted}
        outcomes += [_failure(app, f.flow, op.ref, TransientError(
            f"flow {f.name} record {op.ref.message.key}: cannot claim its target key: {type(exc).__name__}: {exc}"))
            for op in ops if op.ref.message.key in failed and op.kind == "upsert"]
        return [op for op in ops if not (op.kind == "upsert" and op.ref.message.key in failed)]
    kept: list[WriteOp] = []
    for op in ops:
        item: _Item = op.ref
        key = item.message.key
        if op.kind == "upsert" and key in lost:
            outcomes.append(_busy(app, item, now + timedelta(seconds=target_claims.CLAIM_SECONDS),
                                  f"target key {key_of(target.key, op.key)} was claimed by another record meanwhile"))
            continue
        if op.kind == "upsert":
            item.claim = taken.get(key)
        kept.append(op)
    return kept


def _await_holders_delete(app: SyncApp, f: _Flow, item: _Item, holder: str, target_key: str) -> Outcome:
    """The row still belongs to a record its source no longer has. Its delete frees the row, and this change
    does not count on it being in flight (a worker may have taken the two in different batches, or a delete
    may never have been reported): it sends that delete itself, under the id the inferred delete has, so one
    already on the bus drops it, and retries. The wait spends attempts: a row not freed within the flow's
    attempts gets the change dead-lettered (DuplicateTargetKey, naming the holder), never waiting for good."""
    outcome = _retry(app, item, "target_key_held", f"flow {f.name} record {item.message.key}: target key "
                     f"{target_key} still belongs to source record {holder}, which its source no longer has; "
                     "its delete was sent, waiting for it", None)
    if carry_delete(app, f.name, holder, item.message.correlation_id):
        outcome.fetched_parent = f.name
    return outcome


def _take_anchor_names(app: SyncApp, f: _Flow, ops: list[WriteOp], states: dict[str, RecordState],
                       outcomes: list[Outcome], again: list[_Item]) -> list[WriteOp]:
    """A record created on the pair's non-anchor side is named by its own key until it is linked (see
    identity); once mapped, its anchor key is known, and it takes that name before the target is written. The
    state stored there is taken over, never assumed absent: a delete unlinks the keys but keeps the record's
    versions and tombstones, so a record deleted and created again on the other side finds them. It is leased
    like any claim (a change of the record under way elsewhere makes this one wait), so the commit is guarded
    by the state actually stored under the record's one name."""
    names = {id(op): f"{f.anchor}|{key_of(f.flow.target.key, op.key)}" for op in ops
             if op.kind == "upsert" and f.flow.source.system != f.anchor}
    moving = [op for op in ops if id(op) in names and names[id(op)] != op.ref.record_id]
    if not moving:
        return ops
    stored = app.state.get_records(f.pair, [names[id(op)] for op in moving])
    now = app.clock()
    waiting: set[int] = set()  # id() of items that do not go on to the write
    taken: list[tuple[_Item, str, RecordState]] = []
    for op in moving:
        item: _Item = op.ref
        name, owner = names[id(op)], record_lock.owner_of(item.message)
        busy_until = record_lock.held_by_other(stored.get(name), owner, now)
        if busy_until:  # its old name's lease is given back with the round's
            outcomes.append(_busy(app, item, busy_until))
            waiting.add(id(item))
            continue
        taken.append((item, name, _taken_over(states[item.record_id], stored.get(name) or RecordState(name))))
    claimed = record_lock.claim(app, f.pair, [(state, record_lock.owner_of(item.message)) for item, _, state in taken])
    for item, name, state in taken:
        app.state.forget_record(f.pair, item.record_id)  # the lease claimed under its old name: no longer needed
        item.record_id, states[name] = name, state
        if name in claimed.failed or name in claimed.lost:
            state.lease = None  # not ours: nothing to give back
            waiting.add(id(item))
        if name in claimed.failed:
            outcomes.append(_lease_failed(app, f, item, claimed.failed[name]))
        elif name in claimed.lost:
            again.append(item)  # decided again under its anchor name
    return [op for op in ops if id(op.ref) not in waiting]


def _taken_over(claimed: RecordState, stored: RecordState) -> RecordState:
    """The state stored under a record's anchor name, with what was claimed under its other name added."""
    stored.versions.update(claimed.versions)
    stored.values.update(claimed.values)
    stored.tombstones.update(claimed.tombstones)
    return stored


def _settle_conflicts(app: SyncApp, f: _Flow, items: list[_Item], states: dict[str, RecordState],
                      outcomes: list[Outcome]) -> list[WriteOp]:
    """Pairs only: compare with the target as it is now, keep what it changed, settle what both changed."""
    if not items:
        return []
    flow = f.flow
    target = flow.target
    target_keys = [key_of(target.key, i.values or {}) for i in items]
    connector = app.connector(target.system)
    guard = connector.capabilities.conditional_writes
    rows = connector.read_records(target.entity, target.key, target_keys)
    reverse = app.config.flows[app.config.reverse_of(f.name) or f.name]
    ops: list[WriteOp] = []
    for item, target_key in zip(items, target_keys, strict=True):
        state = states.get(item.record_id)
        row = rows.get(target_key)
        current = row.values if row else None
        baseline = None if item.forced else (state.values.get(target.system) or {}) if state else {}
        if current is None and baseline and _deleted_by_target(app, f, item, outcomes):
            continue
        item.decision = decide(flow, f.rules, item.values or {}, baseline, current, item.message.changed_at,
                               lambda row=current: target_change_time(connector, reverse.source, row))
        if item.decision.park:
            park_conflict(app, f.name, item.message.key, {
                "message": item.message.model_copy(update={"payload": item.payload}).model_dump(mode="json"),
                "fields": item.decision.conflicts,
                "incoming": canonical_row({k: (item.values or {})[k] for k in item.decision.conflicts}),
                "target": canonical_row({k: (current or {}).get(k) for k in item.decision.conflicts}),
                "detected_at": app.clock().isoformat(),
            })
            outcomes.append(Outcome(item.received, item.message, Kind.SKIPPED, "conflict_parked",
                                    f"fields {', '.join(item.decision.conflicts)} changed on both sides"))
            continue
        ops.append(_pair_write(item, row, guard, target.key, f.rules))
    return ops


def _pair_write(item: _Item, row: SourceRecord | None, guard: str | None, key_fields: Sequence[str],
                rules: Equivalence) -> WriteOp:
    """Only the fields that change, on the condition that the row is still as read (where the target can
    say so): a user's edit between our read and our write is then a lost race, decided again, never lost."""
    write = (item.decision.write if item.decision else item.values) or {}
    current = row.values if row else None
    changes = {name: value for name, value in write.items()
               if name in key_fields or current is None or name not in current
               or not rules.target(name).same(value, current[name])}
    item.noop = current is not None and all(name in key_fields for name in changes)
    op = WriteOp("upsert", {k: write[k] for k in key_fields}, changes, ref=item)
    if guard is None:
        return op
    if current is None:
        op.create_only = True  # nobody may have created it meanwhile
    elif guard == "etag" and row is not None and row.etag:
        op.if_match = row.etag  # a row gone meanwhile fails it too
    elif guard == "values":
        op.if_values = {name: current[name] for name in changes if name not in key_fields and name in current}
    return op


def _lost_race(result: WriteResult) -> bool:
    op = result.op
    guarded = op.create_only or op.if_values is not None or op.if_match not in (None, "*")
    return guarded and isinstance(result.error, TargetChanged)


def _deleted_by_target(app: SyncApp, f: _Flow, item: _Item, outcomes: list[Outcome]) -> bool:
    """The target no longer has a record the pair synced: it was deleted there while this update was on its
    way. True when the race is settled against this update (the delete wins, or it is parked)."""
    reverse_name = app.config.reverse_of(f.name) or f.name
    if app.config.flows[reverse_name].deletes == "ignore":
        return False  # the delete never travels back: re-creating the record is the only way to agree
    race = settle_race(f.flow, f.anchor, deleted_in=f.flow.target.system, updated_in=f.flow.source.system)
    if race.winner is None:
        _park_race(app, f, item, race.note)
        outcomes.append(Outcome(item.received, item.message, Kind.SKIPPED, "conflict_parked", race.note,
                                conflicts=1))
        return True
    if race.delete_wins:
        outcome = Outcome(item.received, item.message, Kind.SKIPPED, "target_deleted", race.note, conflicts=1)
        target_key = key_of(f.flow.target.key, item.values or {})
        if carry_delete(app, reverse_name, target_key, item.message.correlation_id):
            outcome.fetched_parent = reverse_name
        outcomes.append(outcome)
        return True
    item.race = race.note  # the update re-creates the record
    return False


def _settle_delete_races(app: SyncApp, f: _Flow, ops: list[WriteOp], states: dict[str, RecordState],
                         outcomes: list[Outcome]) -> list[WriteOp]:
    """Pairs only: a delete whose target row changed since the pair last synced it races that update."""
    if not ops:
        return []
    target = f.flow.target
    keys = [key_of(target.key, op.key) for op in ops]
    rows = app.connector(target.system).read_records(target.entity, target.key, keys)
    kept: list[WriteOp] = []
    for op, key in zip(ops, keys, strict=True):
        item: _Item = op.ref
        state = states.get(item.record_id)
        row = rows.get(key)
        if row is None or not changed_since(state.values.get(target.system) if state else None, row.values,
                                             f.rules):
            kept.append(op)
            continue
        race = settle_race(f.flow, f.anchor, deleted_in=f.flow.source.system, updated_in=target.system)
        if race.winner is None:
            _park_race(app, f, item, race.note)
            outcomes.append(Outcome(item.received, item.message, Kind.SKIPPED, "conflict_parked", race.note,
                                    conflicts=1))
        elif race.delete_wins:
            item.race = race.note
            kept.append(op)
        else:
            outcome = Outcome(item.received, item.message, Kind.SKIPPED, "target_updated", race.note, conflicts=1)
            reverse_name = app.config.reverse_of(f.name) or f.name
            if carry_record(app, reverse_name, key, item.message.correlation_id):
                outcome.fetched_parent = reverse_name
            outcomes.append(outcome)
    return kept


def _park_race(app: SyncApp, f: _Flow, item: _Item, note: str) -> None:
    park_conflict(app, f.name, item.message.key, {
        "message": item.message.model_copy(update={"payload": item.payload}).model_dump(mode="json"),
        "fields": [], "incoming": {}, "target": {}, "detail": note, "detected_at": app.clock().isoformat(),
    })


def _write(app: SyncApp, flow: Flow, ops: list[WriteOp]) -> list[WriteResult]:
    try:
        return app.connector(flow.target.system).write_batch(flow.target, ops)
    except SyncError as exc:
        return [WriteResult(op, ok=False, error=exc) for op in ops]


def _record_results(app: SyncApp, f: _Flow, results: list[WriteResult], states: dict[str, RecordState],
                    outcomes: list[Outcome], committed: set[str]) -> list[_Item]:
    """Key map and record state of what was written (the state guarded by the claim's etag). Returns the
    items whose guarded target write lost a race, to be decided again."""
    flow = f.flow
    again: list[_Item] = []
    writes: list[StateWrite] = []
    written: list[tuple[_Item, str]] = []
    now = app.clock()
    observed_fields = [fm.from_ for fm in flow.fields]
    for result in results:
        item: _Item = result.op.ref
        message = item.message
        if not result.ok:
            if _lost_race(result):
                again.append(item)
            else:
                outcomes.append(_failure(app, flow, item, result.error or TransientError("no result from the target")))
            continue
        target_key = result.key or key_of(flow.target.key, result.op.key)
        # Over the claim taken for it, if any: the claim becomes the link.
        claim = item.claim if item.claim is not None and item.claim.key == target_key else None
        link = KeyLink(flow.source.system, message.key, flow.target.system, target_key,
                       claim=claim.etag if claim else None)
        state = states.get(item.record_id) or RecordState(item.record_id)
        state.lease = None
        record_applied(state, flow.source.system, message)
        if result.op.kind == "delete":
            state.forget(flow.target.system)
        else:
            # What the target holds for every mapped field now: the fields written and those it already had.
            agreed = item.decision.write if item.decision else result.op.values
            state.remember(flow.target.system, {n: f.rules.target(n).stored(v) for n, v in agreed.items()})
        if message.op == "upsert":
            state.remember(flow.source.system,
                           {n: f.rules.source(n).stored(item.payload.get(n)) for n in observed_fields})
        else:
            # The record is gone from the source: if it comes back with the same values, that is a change
            # to write, not one to skip as unchanged.
            state.forget(flow.source.system)
        state.synced_at = now
        writes.append(StateWrite(link, result.op.kind == "delete", state, f"flow {f.name} record {message.key}"))
        written.append((item, result.op.kind))
    saved = save_states(app.state, f.pair, writes)
    for index, (item, kind) in enumerate(written):
        if index in saved.failed:
            outcomes.append(_failure(app, flow, item, saved.failed[index]))
        elif index in saved.unclaimed:
            outcomes.append(_row_taken(app, f, item, writes[index].link.key_b))
        elif index in saved.lost:
            outcomes.append(_resync(app, f, item))
        else:
            committed.add(item.record_id)
            if writes[index].link.claim:
                item.claim = None  # the link was written over it: nothing to give back
            grants.used(app, item.message)
            outcomes.append(_applied(item, kind))
    return again


def _resync(app: SyncApp, f: _Flow, item: _Item) -> Outcome:
    """Our lease ran out while we wrote, and someone else recorded this record meanwhile: our write may have
    overwritten a newer one. The record goes again as its source has it now, past the version check."""
    message = item.message
    fresh = message
    try:
        record = app.connector(f.flow.source.system).read_record(f.flow.source, message.key)
    except SyncError:
        record = None  # the forced retry re-reads it in a pair; one-way, it carries the payload it had
    if record is not None:
        fresh = fresh.model_copy(update={"op": "upsert", "payload": record.values, "changed_at": record.changed_at,
                                         "version": max(record.version, message.version)})
    fresh = grants.granted(app, fresh, grants.FORCE)
    return Outcome(item.received, fresh, Kind.RETRY, "lost_race",
                   f"flow {message.flow} record {message.key}: recorded by someone else while it was written; "
                   "sent again as its source has it now", retry_at=app.clock())


def _row_taken(app: SyncApp, f: _Flow, item: _Item, target_key: str) -> Outcome:
    """Our claim on the target key ran out while we wrote, and another record claimed the row meanwhile: our
    write may have overwritten what it wrote. That record goes again as its source has it now, past the echo
    check, and this change is decided again (it finds the row taken)."""
    holder = app.state.key_holders(f.pair, f.flow.target.system, [target_key]).get(target_key)
    if holder is not None:
        # Gone from its source, or unreadable now: its own next change (or delete) writes the row again.
        with suppress(SyncError):
            resync(app, f.name, holder.owner)
    return _resync(app, f, item)


def _applied(item: _Item, kind: str) -> Outcome:
    decision = item.decision
    notes = "; ".join(decision.notes) if decision else ""  # a policy that could not decide as configured
    if item.noop:
        conflicts = len(decision.conflicts) if decision else 0
        return Outcome(item.received, item.message, Kind.SKIPPED, "target_wins" if conflicts else "target_has_it",
                       notes, conflicts=conflicts)
    if item.race:
        return Outcome(item.received, item.message, Kind.APPLIED, kind, "; ".join([item.race, *decision.notes])
                       if decision else item.race, conflicts=1)
    if decision is None or not (decision.conflicts or decision.kept):
        return Outcome(item.received, item.message, Kind.APPLIED, kind)
    parts = [f"{name}: {winner} wins" for name, winner in decision.winners.items()]
    parts += [f"{name}: target's change kept" for name in decision.kept if name not in decision.winners]
    return Outcome(item.received, item.message, Kind.APPLIED, kind, "; ".join(parts + decision.notes),
                   conflicts=len(decision.conflicts))


def _missing_parent(app: SyncApp, f: _Flow, item: _Item, exc: MissingReferenceError) -> Outcome:
    """Wait for the parent with backoff, or (fetch_missing_parents) ask its flow for it right away."""
    outcome = _failure(app, f.flow, item, exc)
    if f.flow.fetch_missing_parents and outcome.kind is Kind.RETRY and _request_parent(app, exc):
        outcome.fetched_parent = exc.flow
    return outcome


def _request_parent(app: SyncApp, exc: MissingReferenceError) -> bool:
    """True when the parent was read from its source and put on the bus for its own flow."""
    parent = app.config.flows[exc.flow]
    record = app.connector(parent.source.system).read_record(parent.source, exc.key)
    if record is None:
        return False
    message = ChangeMessage(flow=exc.flow, op="upsert", source_system=parent.source.system,
                            entity=parent.source.entity, key=record.key, version=record.version,
                            changed_at=record.changed_at, payload=record.values)
    accepted = app.bus.send(app.queue, [to_envelope(message)])  # deterministic id: asking twice sends once
    return accepted != 0


def _failure(app: SyncApp, flow: Flow, item: _Item, exc: BaseException) -> Outcome:
    message = item.message
    if isinstance(exc, AuthError):
        return Outcome(item.received, message, Kind.DEFERRED, "auth_failed", str(exc))
    if isinstance(exc, MissingReferenceError):
        if message.attempt >= flow.missing_reference_attempts:
            return Outcome(item.received, message, Kind.DEAD_LETTER, Reason.MISSING_REFERENCE,
                           f"{exc} (waited {message.attempt} attempts)")
        return _retry(app, item, Reason.MISSING_REFERENCE, str(exc), None)
    if isinstance(exc, PermanentError):
        return Outcome(item.received, message, Kind.DEAD_LETTER, exc.reason, str(exc))
    retry_after = exc.retry_after if isinstance(exc, TransientError) else None
    description = f"flow {message.flow} record {message.key}: {type(exc).__name__}: {exc}"
    if isinstance(exc, TransientError) and exc.throttled:
        return _throttled(app, flow, item, description, retry_after)
    if message.attempt >= (flow.max_attempts or app.max_attempts):
        return Outcome(item.received, message, Kind.DEAD_LETTER, Reason.RETRIES_EXHAUSTED,
                       f"{description} (after {message.attempt} attempts)")
    return _retry(app, item, "transient", description, retry_after)


def _retry(app: SyncApp, item: _Item, reason: str, description: str, retry_after: float | None) -> Outcome:
    when = retry_at(app.clock(), item.message.attempt, retry_after, app.retry_base)
    return Outcome(item.received, item.message, Kind.RETRY, reason, description, retry_at=when)


def _throttled(app: SyncApp, flow: Flow, item: _Item, description: str, retry_after: float | None) -> Outcome:
    """The target asked us to slow down: wait as long as it says, for up to the flow's throttle budget (time
    since the first throttle), without spending an attempt; attempts are for errors."""
    message, now = item.message, app.clock()
    since = message.throttled_since or now
    if now - since > flow.throttle_budget:
        return Outcome(item.received, message, Kind.DEAD_LETTER, Reason.RETRIES_EXHAUSTED,
                       f"{description} (throttled since {since.isoformat()}, {message.throttles + 1} times; "
                       f"budget {flow.throttle_budget})")
    when = now + timedelta(seconds=throttle_delay(message.throttles + 1, retry_after, app.retry_base))
    return Outcome(item.received, message, Kind.RETRY, "throttled", description, retry_at=when,
                   clone=message.throttled_clone(now))


def _flag_failed_sources(app: SyncApp, flow: Flow, outcomes: list[Outcome]) -> None:
    """Sources whose reads are acknowledged learn which rows failed for good (status flags: E and the reason,
    on the source row)."""
    connector = app.connector(flow.source.system)
    if not connector.capabilities.acknowledges(flow.source):
        return
    # Each with the version and values that failed: a row the user has fixed since keeps its new flag.
    failed = [(SourceRecord(o.message.key, o.message.payload, o.message.version, o.message.changed_at),
               f"{o.reason}: {o.description}"[:2000])
              for o in outcomes if o.kind is Kind.DEAD_LETTER and o.message is not None]
    if failed:
        connector.acknowledge(flow.source, [], failed)
