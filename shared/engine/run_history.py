"""The run history an operator reads (`dualsync runs`): what each run of each flow pulled, applied, skipped,
retried and dead-lettered, and its error.

`dualsync run` stores one record per flow when it ends (also when stopped or interrupted), in a partition of
its own (`run:<flow>`) beside the pulls'. On Azure nothing runs a whole sync: pulls are timer runs and apply is
continuous, so a flow without run records shows its pulls (pulled and error; the apply counts are unknown).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared.app import SyncApp
from shared.engine.tally import FlowCounts, Tally


class RunRecord(BaseModel):
    flow: str
    kind: str  # "run" (dualsync run) or "pull" (a pull on its own: the timer on Azure)
    started_at: str | None = None
    finished_at: str | None = None
    status: str = "ok"  # ok | interrupted | stopped | failed (run); the pull's status for a pull
    pulled: int = 0
    applied: int | None = None
    skipped: dict[str, int] | None = None
    retried: int | None = None
    dead_lettered: dict[str, int] | None = None
    waiting: int | None = None
    error: str | None = None


def runs_partition(flow: str) -> str:
    return f"run:{flow}"


def record_run(app: SyncApp, tally: Tally, started: datetime, finished: datetime, status: str) -> None:
    """One record per configured flow, so a quiet flow's run shows too."""
    errors: dict[str, list[str]] = {}
    for flow, error in tally.pull_errors:
        errors.setdefault(flow, []).append(error)
    for flow in app.config.flows:
        c = tally.flows.get(flow) or FlowCounts()
        failed = status == "ok" and flow in errors
        record = RunRecord(
            flow=flow, kind="run", started_at=started.isoformat(), finished_at=finished.isoformat(),
            status="failed" if failed else status, pulled=c.pulled, applied=c.applied, skipped=dict(c.skipped),
            retried=c.retried, dead_lettered=dict(c.dead_lettered), waiting=c.waiting,
            error="; ".join(errors.get(flow, [])) or None)
        app.state.add_run(runs_partition(flow), record.model_dump(), at=finished)


def list_runs(app: SyncApp, flow: str | None = None, limit: int = 20) -> list[RunRecord]:
    """Newest first, across flows unless one is named."""
    found: list[RunRecord] = []
    for name in [flow] if flow else list(app.config.flows):
        rows = app.state.recent_runs(runs_partition(name), limit)
        if rows:
            found += [RunRecord.model_validate(row) for row in rows]
        else:
            found += [_from_pull(name, row) for row in app.state.recent_runs(name, limit) if row.get("kind") == "pull"]
    found.sort(key=lambda r: r.finished_at or r.started_at or "", reverse=True)
    return found[:limit]


def _from_pull(flow: str, row: dict[str, Any]) -> RunRecord:
    return RunRecord(flow=flow, kind="pull", finished_at=row.get("finished_at") or row.get("at"),
                     status=str(row.get("status", "ok")), pulled=int(row.get("pulled") or 0),
                     error=row.get("error") or None)
