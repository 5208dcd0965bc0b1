"""Pull: read a flow's changes page by page, put them on the bus, then advance the cursor.

Enqueue first, advance after: a crash between the two re-sends a page (dropped by duplicate detection
or the version check), it never skips one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime

from shared import telemetry
from shared.app import SyncApp
from shared.config import Flow
from shared.engine import cursor_lease
from shared.engine.batching import chunked
from shared.engine.deletes import delete_messages
from shared.errors import ConcurrencyError
from shared.messages import ChangeMessage, fingerprint, new_run_id, to_envelope
from shared.ports.connector import SourceRecord
from shared.process_identity import current_holder


@dataclass
class PullResult:
    flow: str
    run_id: str
    status: str = "ok"  # ok | leased | paused | lease_lost | disabled
    pulled: int = 0
    duplicates: int = 0  # re-sent after a crash and dropped by duplicate detection (when the bus can tell)
    deletes_inferred: int = 0
    pages: int = 0
    notes: list[str] = field(default_factory=list)


def pull_flow(
    app: SyncApp, flow_name: str, owner: str | None = None,
    on_page: Callable[[int], None] | None = None,
) -> PullResult:
    flow = app.config.flows[flow_name]
    result = PullResult(flow_name, new_run_id())
    cursor, result.status = cursor_lease.start_run(app.state, flow_name, flow.enabled, owner or current_holder(),
                                                   app.clock())
    if cursor is None:
        return result
    connector = app.connector(flow.source.system)
    snapshot_keys: set[str] | None = None
    try:
        for page in connector.read_changes(flow.source, cursor.position, flow.page_size):
            messages = [_message(flow_name, flow, record, result.run_id, app.clock()) for record in page.records]
            accepted = app.bus.send(app.queue, [to_envelope(m) for m in messages])
            if accepted is not None:
                result.duplicates += len(messages) - accepted
            if flow.source.changes == "status_flag":
                connector.acknowledge(flow.source, [m.key for m in messages], {})
            if page.stopped_early:  # an incomplete snapshot proves no delete
                snapshot_keys = None
            elif page.snapshot:
                snapshot_keys = snapshot_keys if snapshot_keys is not None else set()
                snapshot_keys.update(r.key for r in page.records)
            result.pulled += len(messages)
            result.pages += 1
            result.notes.extend(page.notes)
            cursor = cursor_lease.advance(app.state, cursor, page.position, app.clock())
            if on_page:
                on_page(len(messages))
        if snapshot_keys is not None:
            result.deletes_inferred = _send_inferred_deletes(app, flow_name, flow, snapshot_keys, result.run_id)
    except ConcurrencyError:
        result.status = "lease_lost"
        return result
    summary = {k: v for k, v in asdict(result).items() if k != "notes"} | {
        "notes": "; ".join(result.notes), "finished_at": app.clock().isoformat()}
    cursor_lease.release(app.state, cursor, summary)
    app.state.add_run(flow_name, {"kind": "pull", **summary})
    telemetry.record_pull(flow_name, result.pulled, result.run_id, result.status)
    return result


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


def _send_inferred_deletes(app: SyncApp, flow_name: str, flow: Flow, seen: set[str], run_id: str) -> int:
    """A full read is authoritative: keys we linked before but the source no longer has were deleted."""
    pair = app.config.pair_of(flow_name)
    sent = 0
    gone = (key for key in app.state.linked_keys(pair, flow.source.system) if key not in seen)
    for chunk in chunked(gone, 500):
        app.bus.send(app.queue, [to_envelope(m) for m in delete_messages(app, flow_name, chunk, run_id)])
        sent += len(chunk)
    return sent
