"""Which flows are due: each flow has its own NCRONTAB schedule; the timer only wakes us up."""

from __future__ import annotations

from datetime import datetime

from croniter import croniter

from shared.app import SyncApp
from shared.engine.pull import PullResult, pull_flow


def to_croniter(ncrontab: str) -> str:
    """NCRONTAB puts seconds first; croniter takes them as a sixth field at the end."""
    parts = ncrontab.split()
    return " ".join(parts[1:] + parts[:1])


def is_due(ncrontab: str, last_run: datetime | None, now: datetime) -> bool:
    if last_run is None:
        return True
    return croniter(to_croniter(ncrontab), last_run).get_next(datetime) <= now


def pull_due_flows(app: SyncApp, owner: str | None = None) -> list[PullResult]:
    """The timer function's one core call: pull every enabled flow whose schedule came round."""
    now = app.clock()
    cursors = {c.flow: c for c in app.state.list_cursors()}
    results = []
    for name, flow in app.config.flows.items():
        cursor = cursors.get(name)
        last = cursor.last_run.get("finished_at") if cursor else None
        if flow.enabled and is_due(flow.schedule, datetime.fromisoformat(last) if last else None, now):
            results.append(pull_flow(app, name, owner))
    return results
