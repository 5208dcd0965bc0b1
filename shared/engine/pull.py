"""Pull: read a flow's changes page by page, put them on the bus, then advance the cursor.

Enqueue first, advance after: a crash between the two re-sends a page (dropped by duplicate detection
or the version check), it never skips one.

A full read (`ChangePage.snapshot`) also finds deletes: linked keys it did not see are candidates, and
`shared.engine.deletes` confirms each by a re-read before sending its delete. The cursor records that a full
read started (`deletes_pending`) in the same write as its first page and clears it once the deletes were
sent, so a run that died in between is finished by the next run, by a key-set comparison, before it reads on.

Change mode `snapshot` (a source with no change marker hands over every row each time): only rows that
differ from what is known of them are sent (shared.engine.snapshot); every row read still counts as seen.

A failing pull is the flow's own business: its error (first seen when, last seen when) is recorded on the
cursor, the lease is released, what it had already sent is counted and its run written, and the caller
goes on with the other flows. An auth failure also pauses the flow, as it does when writing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime

from shared import telemetry
from shared.app import SyncApp
from shared.config import Flow
from shared.engine import aliases, cursor_lease, snapshot
from shared.engine.deletes import Confirmed, send_confirmed_deletes
from shared.engine.preflight import require_ready
from shared.engine.reconcile import missing_keys
from shared.engine.verdicts import condemned, record_verdicts
from shared.errors import AuthError, ConcurrencyError, Reason
from shared.messages import ChangeMessage, Envelope, fingerprint, new_run_id, to_envelope
from shared.ports.connector import SourceRecord
from shared.process_identity import current_holder
from shared.state.store import Cursor

log = logging.getLogger("dualsync.pull")

MAX_ERROR = 2000


@dataclass
class PullResult:
    flow: str
    run_id: str
    status: str = "ok"  # ok | leased | paused | newer_format | lease_lost | disabled | failed | auth_failed (now paused)
    pulled: int = 0
    duplicates: int = 0  # re-sent after a crash and dropped by duplicate detection (when the bus can tell)
    deletes_inferred: int = 0
    unchanged: int = 0  # change mode snapshot: rows read that equal what is known of them, not sent
    pages: int = 0
    error: str | None = None  # why the pull failed (status failed / auth_failed)
    notes: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        """Changes this run put on the bus: what apply will settle (duplicates aside)."""
        return self.pulled + self.deletes_inferred


def pull_flow(
    app: SyncApp, flow_name: str, owner: str | None = None,
    on_page: Callable[[int], None] | None = None, check: bool = False,
) -> PullResult:
    """`check`: first make sure the flows file matches the systems (shared.engine.preflight.require_ready), so
    a misspelt column fails the pull, recorded on the flow, instead of every record it would send."""
    flow = app.config.flows[flow_name]
    result = PullResult(flow_name, new_run_id())
    started_at = app.clock().isoformat()
    cursor, result.status = cursor_lease.start_run(app.state, flow_name, flow.enabled, owner or current_holder(),
                                                   app.clock())
    if cursor is None:
        return result
    try:
        if check:
            require_ready(app, flow_name)
        _finish_pending_deletes(app, flow_name, flow, cursor, result)
        _read(app, flow_name, flow, cursor, result, on_page)
        cursor.last_error = None
        cursor.last_success = app.clock().isoformat()
    except ConcurrencyError:
        result.status = "lease_lost"
        return result
    except Exception as exc:  # noqa: BLE001 - any failure of this flow is recorded on it; the others go on
        _failed(app, cursor, result, exc)
    summary = {k: v for k, v in asdict(result).items() if k != "notes"} | {
        "notes": "; ".join(result.notes), "started_at": started_at, "finished_at": app.clock().isoformat()}
    try:
        cursor_lease.release(app.state, cursor, summary)
    except ConcurrencyError:
        result.status = "lease_lost"
        return result
    app.state.add_run(flow_name, {"kind": "pull", **summary})
    telemetry.record_pull(flow_name, result.pulled, result.run_id, result.status)
    return result


def _read(app: SyncApp, flow_name: str, flow: Flow, cursor: Cursor, result: PullResult,
          on_page: Callable[[int], None] | None) -> None:
    connector = app.connector(flow.source.system)
    infers_deletes = flow.deletes != "ignore"  # apply would skip every delete: no point looking for them
    seen: set[str] | None = None  # the keys of a full read
    complete = True
    for page in connector.read_changes(flow.source, cursor.position, flow.page_size):
        named = aliases.name_deletes(app, flow_name, flow, page.records)
        if named.unresolved:
            result.notes.append(f"{named.unresolved} deletes left out: only their id came, and no record with "
                                "that id was pulled by this flow")
        records = named.records
        if flow.source.changes == snapshot.MODE:
            records = snapshot.changed(app, flow_name, records)
            result.unchanged += len(named.records) - len(records)
        messages = [_message(flow_name, flow, record, result.run_id, app.clock()) for record in records]
        accepted = app.bus.send(app.queue, _envelopes(app, messages, records)) if messages else None
        if accepted is not None:
            result.duplicates += len(messages) - accepted
        if flow.source.changes == snapshot.MODE:
            snapshot.remember_sent(app, flow_name, records)
        aliases.forget(app, flow_name, flow, named)
        if connector.capabilities.acknowledges(flow.source):
            connector.acknowledge(flow.source, named.records, [])
        complete = not page.stopped_early  # a page cap cut the read short: it resumes next run
        if page.snapshot and infers_deletes:
            if seen is None:
                seen = set()
                cursor.deletes_pending = app.clock().isoformat()  # stored with this page's position
            seen.update(r.key for r in named.records)
        result.pulled += len(messages)
        result.pages += 1
        result.notes.extend(page.notes)
        cursor_lease.advance(app.state, cursor, page.position, app.clock())
        if on_page:
            on_page(len(messages))
    # A snapshot cut short keeps its deletes pending: the next run infers them from the source's key listing.
    if seen is not None and cursor.deletes_pending and complete:
        pair = app.config.pair_of(flow_name)
        candidates = (key for key in app.state.linked_keys(pair, flow.source.system) if key not in seen)
        _count(result, send_confirmed_deletes(app, flow_name, candidates, result.run_id,
                                              on_sent=snapshot.deletes_sent(app, flow_name)))
        cursor.deletes_pending = None  # stored by the release


def _finish_pending_deletes(app: SyncApp, flow_name: str, flow: Flow, cursor: Cursor, result: PullResult) -> None:
    """The full read of an earlier run ended (or died) before its deletes were inferred: infer them now, from
    the source's key listing, since that run's key set is gone."""
    if not cursor.deletes_pending:
        return
    if flow.deletes != "ignore":
        _count(result, send_confirmed_deletes(app, flow_name, missing_keys(app, flow_name), result.run_id,
                                              on_sent=snapshot.deletes_sent(app, flow_name)))
        result.notes.append(f"inferred the deletes of the full read started {cursor.deletes_pending}")
    cursor.deletes_pending = None
    app.state.save_cursor(cursor)


def _count(result: PullResult, confirmed: Confirmed) -> None:
    result.deletes_inferred += confirmed.sent
    result.duplicates += confirmed.duplicates


def _failed(app: SyncApp, cursor: Cursor, result: PullResult, exc: Exception) -> None:
    """Record the failure on the flow: since when it has been failing, and the latest error."""
    result.error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
    result.status = "failed"
    now = app.clock().isoformat()
    since = (cursor.last_error or {}).get("since") or now
    cursor.last_error = {"error": result.error, "since": since, "at": now, "run_id": result.run_id}
    if isinstance(exc, AuthError):
        result.status = "auth_failed"
        cursor.paused, cursor.paused_reason = True, f"auth failure while pulling: {exc}"[:MAX_ERROR]
    log.error("pull flow=%s run_id=%s failed after %d changes: %s", result.flow, result.run_id, result.sent,
              result.error)


def _envelopes(app: SyncApp, messages: list[ChangeMessage], records: list[SourceRecord]) -> list[Envelope]:
    """A record the source refused to vouch for (see SourceRecord.refused) travels condemned."""
    envelopes = [condemned(m, Reason.VALIDATION_FAILED, f"flow {m.flow} record {m.key}: {r.refused}")
                 if r.refused else to_envelope(m) for m, r in zip(messages, records, strict=True)]
    record_verdicts(app, [e for e, r in zip(envelopes, records, strict=True) if r.refused])
    return envelopes


def _message(flow_name: str, flow: Flow, record: SourceRecord, run_id: str, now: datetime) -> ChangeMessage:
    return ChangeMessage(
        flow=flow_name,
        op="delete" if record.deleted else "upsert",
        source_system=flow.source.system,
        entity=flow.source.entity,
        key=record.key,
        version=record.version,
        changed_at=record.changed_at,
        payload={} if record.deleted else record.values,
        fingerprint="" if record.deleted else fingerprint(record.values),
        correlation_id=run_id,
        first_enqueued_at=now,
    )
