"""Apply: delivered ChangeMessages -> writes on the target, each message ending in one Outcome.

Per flow, a batch is: parse -> drop stale and superseded versions -> drop echoes -> resolve lookups in
one key-map read -> map and validate -> one connector write_batch -> key map and record state in
one batched write each. The target is written before the state, so a crash in between re-applies an
idempotent upsert on redelivery rather than losing the change.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared.app import SyncApp
from shared.config import Flow
from shared.engine.backoff import retry_at
from shared.engine.mapping import Lookups, lookup_requests, map_record
from shared.engine.outcome import Kind, Outcome
from shared.engine.values import canonical_row, same_value
from shared.errors import AuthError, MissingReferenceError, PermanentError, Reason, SyncError, TransientError
from shared.keys import key_of, parse_key
from shared.messages import ChangeMessage, fingerprint, parse_body
from shared.ports.bus import Received
from shared.ports.connector import WriteOp, WriteResult
from shared.state.store import KeyLink, RecordState


@dataclass
class _Item:
    received: Received
    message: ChangeMessage
    record_id: str
    values: dict[str, Any] | None = None


def apply_batch(app: SyncApp, batch: Sequence[Received]) -> list[Outcome]:
    """Decide the outcome of every delivered message; writes to the target but settles nothing."""
    outcomes: list[Outcome] = []
    by_flow: dict[str, list[_Item]] = defaultdict(list)
    paused = {c.flow for c in app.state.list_cursors() if c.paused}
    for received in batch:
        try:
            message = parse_body(received.envelope.body)
        except (ValidationError, ValueError) as exc:
            outcomes.append(_malformed(received, exc))
            continue
        if message.flow not in app.config.flows:
            outcomes.append(Outcome(received, message, Kind.DEAD_LETTER, Reason.UNKNOWN_FLOW,
                                    f"flow {message.flow} record {message.key}: no such flow in the config"))
        elif message.flow in paused:
            outcomes.append(Outcome(received, message, Kind.DEFERRED, "flow_paused"))
        else:
            record_id = f"{message.source_system}|{message.key}"
            by_flow[message.flow].append(_Item(received, message, record_id))
    for flow_name, items in by_flow.items():
        outcomes.extend(_apply_flow(app, flow_name, items))
    return outcomes


def _malformed(received: Received, exc: Exception) -> Outcome:
    first = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return Outcome(received, None, Kind.DEAD_LETTER, Reason.MALFORMED_MESSAGE,
                   f"message {received.envelope.message_id}: {where}: {first['msg']}")


def _apply_flow(app: SyncApp, flow_name: str, items: list[_Item]) -> list[Outcome]:
    flow = app.config.flows[flow_name]
    pair = app.config.pair_of(flow_name)
    outcomes: list[Outcome] = []
    items = _newest_per_record(items, outcomes)
    states = app.state.get_records(pair, [i.record_id for i in items])
    live: list[_Item] = []
    for item in items:
        state = states.get(item.record_id)
        skip = _skip_reason(item.message, state)
        if skip:
            outcomes.append(Outcome(item.received, item.message, Kind.SKIPPED, skip))
        else:
            live.append(item)
    lookups = _resolve_lookups(app, flow, live)
    target_keys = app.state.lookup_keys(pair, flow.source.system, [i.message.key for i in live])
    ops: list[WriteOp] = []
    for item in live:
        try:
            op = _write_op(flow_name, flow, item, lookups, target_keys)
        except SyncError as exc:
            outcomes.append(_failure(app, flow, item, exc))
            continue
        if op is None:
            reason = "deletes_ignored" if flow.deletes == "ignore" else "never_synced"
            outcomes.append(Outcome(item.received, item.message, Kind.SKIPPED, reason))
        else:
            ops.append(op)
    if ops:
        results = _write(app, flow, ops)
        outcomes.extend(_record_results(app, flow_name, flow, pair, results, states))
    return outcomes


def _newest_per_record(items: list[_Item], outcomes: list[Outcome]) -> list[_Item]:
    """Within one batch only the newest version of a record is worth writing."""
    newest: dict[str, _Item] = {}
    for item in items:
        current = newest.get(item.record_id)
        if current is None or item.message.version > current.message.version:
            if current is not None:
                outcomes.append(Outcome(current.received, current.message, Kind.SKIPPED, "superseded"))
            newest[item.record_id] = item
        else:
            outcomes.append(Outcome(item.received, item.message, Kind.SKIPPED, "superseded"))
    return list(newest.values())


def _skip_reason(message: ChangeMessage, state: RecordState | None) -> str | None:
    if state is None:
        return None
    applied = state.versions.get(message.source_system)
    if applied is not None and message.version <= applied:
        return "already_applied"
    written = state.values.get(message.source_system)
    if message.op == "upsert" and written and all(
        same_value(message.payload.get(field), value) for field, value in written.items()
    ):
        # Every field we manage on the source equals what we last wrote there: our own write coming back.
        return "echo"
    return None


def _resolve_lookups(app: SyncApp, flow: Flow, items: list[_Item]) -> Lookups:
    wanted: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if item.message.op == "upsert":
            for lookup_flow, parent_key in lookup_requests(flow, item.message.payload):
                wanted[lookup_flow].add(parent_key)
    lookups: Lookups = {}
    for lookup_flow, keys in wanted.items():
        parent = app.config.flows[lookup_flow]
        found = app.state.lookup_keys(app.config.pair_of(lookup_flow), parent.source.system, keys)
        lookups.update({(lookup_flow, k): v for k, v in found.items()})
    return lookups


def _write_op(
    flow_name: str, flow: Flow, item: _Item, lookups: Lookups, target_keys: dict[str, str]
) -> WriteOp | None:
    message = item.message
    if message.op == "delete":
        target_key = target_keys.get(message.key)
        if flow.deletes == "ignore" or target_key is None:
            return None
        key = parse_key(flow.target.key, target_key)
        if flow.deletes == "delete":
            return WriteOp("delete", key, ref=item)
        item.values = {flow.target.deactivate_field: flow.target.deactivate_value}
        return WriteOp("update", key, dict(item.values), ref=item)
    item.values = map_record(flow_name, flow, message.key, message.payload, lookups)
    key = {k: item.values[k] for k in flow.target.key}
    return WriteOp("upsert", key, item.values, ref=item)


def _write(app: SyncApp, flow: Flow, ops: list[WriteOp]) -> list[WriteResult]:
    try:
        return app.connector(flow.target.system).write_batch(flow.target, ops)
    except SyncError as exc:
        return [WriteResult(op, ok=False, error=exc) for op in ops]


def _record_results(
    app: SyncApp, flow_name: str, flow: Flow, pair: str, results: list[WriteResult], states: dict[str, RecordState]
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    links: list[KeyLink] = []
    unlinks: list[KeyLink] = []
    records: list[RecordState] = []
    now = app.clock()
    for result in results:
        item: _Item = result.op.ref
        message = item.message
        if not result.ok:
            outcomes.append(_failure(app, flow, item, result.error or TransientError("no result from the target")))
            continue
        target_key = result.key or key_of(flow.target.key, result.op.key)
        link = KeyLink(flow.source.system, message.key, flow.target.system, target_key)
        (unlinks if result.op.kind == "delete" else links).append(link)
        state = states.get(item.record_id) or RecordState(item.record_id)
        state.versions[flow.source.system] = message.version
        written = canonical_row(item.values or {})
        state.values[flow.target.system] = written
        state.fingerprints[flow.target.system] = fingerprint(written)
        state.synced_at = now
        records.append(state)
        outcomes.append(Outcome(item.received, message, Kind.APPLIED, result.op.kind))
    if links:
        app.state.link_keys(pair, links)
    if unlinks:
        app.state.unlink_keys(pair, unlinks)
    if records:
        app.state.put_records(pair, records)
    return outcomes


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
    if message.attempt >= flow.max_attempts:
        return Outcome(item.received, message, Kind.DEAD_LETTER, Reason.RETRIES_EXHAUSTED,
                       f"{description} (after {message.attempt} attempts)")
    return _retry(app, item, "transient", description, retry_after)


def _retry(app: SyncApp, item: _Item, reason: str, description: str, retry_after: float | None) -> Outcome:
    when = retry_at(app.clock(), item.message.attempt, retry_after, app.retry_base)
    return Outcome(item.received, item.message, Kind.RETRY, reason, description, retry_at=when)
