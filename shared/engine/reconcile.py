"""Key-set reconciliation: find records deleted at a source that cannot report deletes (no change tracking).

The source's keys (`Connector.iter_keys`, ascending) are merge-joined with the keys the pair has linked
for that system (`StateStore.linked_keys`, ascending): a linked key the source no longer has was deleted.
Both sides are streams and the join holds one key of each, plus at most one batch of candidates, so
memory stays flat whatever the table size (tests/unit/test_reconcile.py measures it).

A candidate is confirmed by a re-read from the source before its delete is sent, by the mechanism pull's
snapshot delete inference shares (`shared.engine.deletes.send_confirmed_deletes`): a record created and
linked while the scan ran (after the database took its snapshot), or a database whose order is not quite
Python's, must never turn into a false delete. A stream found out of order raises ConfigError; deletes
already sent were all confirmed that way. Both build the same messages, so the same deletion found by
both yields one message_id and duplicate detection drops whichever comes second. Pull also uses this
scan (`missing_keys`) to finish the delete inference of a full read whose run died before it.

Every run is recorded twice in `runs`: in the flow's own partition (`kind: reconcile`, for status) and
as the newest row of partition `reconcile:<flow>`, which the scheduler reads to decide whether the flow's
`reconcile` NCRONTAB is due (a flow's own partition fills with pull runs every few minutes, so a daily
reconcile would soon fall out of `recent_runs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime

from shared.app import SyncApp
from shared.connectors.keysort import ascending
from shared.engine import snapshot
from shared.engine.deletes import BATCH, send_confirmed_deletes
from shared.messages import new_run_id


def runs_partition(flow_name: str) -> str:
    """Where the scheduler finds a flow's last reconciliation (newest first)."""
    return f"reconcile:{flow_name}"


@dataclass
class ReconcileResult:
    flow: str
    run_id: str
    status: str = "ok"  # ok | disabled | paused | deletes_ignored
    scanned: int = 0  # keys the source has
    known: int = 0  # keys the key map has for the source system
    deleted: int = 0  # delete messages sent
    duplicates: int = 0  # of those, dropped by duplicate detection (found and sent before)
    present_on_recheck: int = 0  # candidates the confirming read still found (created during the scan)
    notes: list[str] = field(default_factory=list)


def reconcile_deletes(app: SyncApp, flow_name: str, batch_size: int = BATCH) -> ReconcileResult:
    flow = app.config.flows[flow_name]
    result = ReconcileResult(flow_name, new_run_id())
    if not flow.enabled:
        result.status = "disabled"
    elif flow.deletes == "ignore":
        result.status = "deletes_ignored"  # apply would skip every delete: no point reading every key
    else:
        cursor = app.state.get_cursor(flow_name)
        if cursor is not None and cursor.paused:
            result.status = "paused"
    if result.status != "ok":
        return result
    confirmed = send_confirmed_deletes(app, flow_name, missing_keys(app, flow_name, result), result.run_id,
                                       batch_size, on_sent=snapshot.deletes_sent(app, flow_name))
    result.deleted, result.duplicates = confirmed.sent, confirmed.duplicates
    result.present_on_recheck = confirmed.present
    record_run(app, result)
    return result


def missing_keys(app: SyncApp, flow_name: str, result: ReconcileResult | None = None) -> Iterator[str]:
    """Linked keys of the flow's source system that the source's key listing lacks (candidates, not yet
    confirmed); counts what it scans into `result`."""
    flow = app.config.flows[flow_name]
    result = result or ReconcileResult(flow_name, "")
    pair = app.config.pair_of(flow_name)
    system = flow.source.system
    listing = app.connector(system).iter_keys(flow.source)
    source = _counted(ascending(listing, f"{system} {flow.source.entity}"), result, "scanned")
    known = _counted(ascending(app.state.linked_keys(pair, system), f"key map {pair}/{system}"), result, "known")
    return _missing(source, known)


def last_reconciled(app: SyncApp, flow_name: str) -> datetime | None:
    runs = app.state.recent_runs(runs_partition(flow_name), limit=1)
    finished = runs[0].get("finished_at") if runs else None
    return datetime.fromisoformat(finished) if finished else None


def _missing(source: Iterator[str], known: Iterable[str]) -> Iterator[str]:
    """Keys of `known` that `source` lacks; both ascending."""
    current = next(source, None)
    for key in known:
        while current is not None and current < key:
            current = next(source, None)
        if current == key:
            current = next(source, None)
        else:
            yield key
    for _ in source:  # read to the end, so `scanned` counts every source key
        pass


def _counted(keys: Iterable[str], result: ReconcileResult, attribute: str) -> Iterator[str]:
    for key in keys:
        setattr(result, attribute, getattr(result, attribute) + 1)
        yield key


def record_run(app: SyncApp, result: ReconcileResult) -> None:
    summary = {k: v for k, v in asdict(result).items() if k != "notes"} | {
        "kind": "reconcile", "notes": "; ".join(result.notes), "finished_at": app.clock().isoformat()}
    app.state.add_run(result.flow, summary)
    app.state.add_run(runs_partition(result.flow), summary)
