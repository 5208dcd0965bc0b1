"""Which flows are due: each flow has its own NCRONTAB schedule; the timer only wakes us up.

A flow with a `reconcile` NCRONTAB also gets a key-set reconciliation (shared.engine.reconcile) when that
comes round, after the pulls; its last run is read from the runs table (`reconcile:<flow>` partition).
A failing reconciliation is logged and recorded as that slot's run (the next try waits for the next slot);
it never stops the pulls. A failing pull never stops the other flows' pulls either (see shared.engine.pull).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from croniter import croniter

from shared.app import SyncApp
from shared.engine.pull import PullResult, pull_flow
from shared.engine.reconcile import ReconcileResult, last_reconciled, reconcile_deletes, record_run
from shared.errors import SyncError
from shared.messages import new_run_id

log = logging.getLogger("dualsync.schedule")


def to_croniter(ncrontab: str) -> str:
    """NCRONTAB puts seconds first; croniter takes them as a sixth field at the end."""
    parts = ncrontab.split()
    return " ".join(parts[1:] + parts[:1])


def is_due(ncrontab: str, last_run: datetime | None, now: datetime) -> bool:
    if last_run is None:
        return True
    return croniter(to_croniter(ncrontab), last_run).get_next(datetime) <= now


def pull_due_flows(
    app: SyncApp, owner: str | None = None, on_reconcile: Callable[[ReconcileResult], None] | None = None,
    check: bool = False,
) -> list[PullResult]:
    """The timer function's one core call: pull every enabled flow whose schedule came round, then run the
    key-set reconciliations that are due (their results go to `on_reconcile` and the runs table). `check`:
    each flow's file is checked against its systems before its first pull in this process (see pull_flow)."""
    now = app.clock()
    cursors = {c.flow: c for c in app.state.list_cursors()}
    results = []
    for name, flow in app.config.flows.items():
        cursor = cursors.get(name)
        last = cursor.last_run.get("finished_at") if cursor else None
        if flow.enabled and is_due(flow.schedule, datetime.fromisoformat(last) if last else None, now):
            results.append(_pull(app, name, owner, check))
    for result in reconcile_due_flows(app, now):
        if on_reconcile:
            on_reconcile(result)
    return results


def pull_flows(app: SyncApp, names: list[str], owner: str | None = None) -> list[PullResult]:
    """Pull these flows now, whatever their schedules (an event said their source has something new)."""
    return [_pull(app, name, owner) for name in names]


def _pull(app: SyncApp, name: str, owner: str | None, check: bool = False) -> PullResult:
    """pull_flow records a flow's own failures on the flow; this also keeps one whose recording failed (the
    state store is down) from stopping the flows after it."""
    try:
        return pull_flow(app, name, owner, check=check)
    except Exception as exc:  # noqa: BLE001 - reported in the result, which the timer function raises on
        log.exception("pull flow=%s failed and could not be recorded", name)
        return PullResult(name, new_run_id(), status="failed", error=f"{type(exc).__name__}: {exc}")


def reconcile_due_flows(app: SyncApp, now: datetime | None = None) -> list[ReconcileResult]:
    now = now or app.clock()
    results = []
    for name, flow in app.config.flows.items():
        if not (flow.enabled and flow.reconcile) or not is_due(flow.reconcile, last_reconciled(app, name), now):
            continue
        try:
            result = reconcile_deletes(app, name)
        except SyncError as exc:  # the source is down, or its key order is not usable: try next time
            log.warning("reconcile flow=%s failed: %s", name, exc)
            result = ReconcileResult(name, new_run_id(), status="failed", notes=[f"{type(exc).__name__}: {exc}"])
            record_run(app, result)  # counts as this slot's run: the next try waits for the next slot
        else:
            log.info("reconcile flow=%s status=%s scanned=%d known=%d deleted=%d", name, result.status,
                     result.scanned, result.known, result.deleted)
        results.append(result)
    return results
