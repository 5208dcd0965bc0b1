"""Run history: what each pull run sent and what became of those changes, per flow.

A pull run writes its row in the flow's partition of `runs` (shared.engine.pull). Apply has no run of its
own: every settled batch adds, per flow and per pull run (the messages' correlation id), how many of its
changes were applied, skipped, retried or dead-lettered, as one row in partition `applied:<flow>` (one row per
batch, never a counter updated in place, so concurrent instances never lose each other's counts). Reading the
history joins the two by run id.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel

from shared.app import SyncApp
from shared.engine.outcome import Kind, Outcome

log = logging.getLogger("dualsync.runs")

RUN_KINDS = ("pull", "initial_sync", "reconcile")
SCANNED = 2016  # rows read at most to find a flow's runs: a week of pulls every five minutes  # rows that start changes (decisions are rows too, not runs)
_COUNTED = {Kind.APPLIED: "applied", Kind.SKIPPED: "skipped", Kind.RETRY: "retried",
            Kind.DEAD_LETTER: "dead_lettered"}


def applied_partition(flow_name: str) -> str:
    return f"applied:{flow_name}"


class RunView(BaseModel):
    """One run of a flow and what became of the changes it sent, so far: outcomes are counted as they happen, so
    a change retried and then applied counts in both, and a dead letter replayed later adds where it ends."""

    flow: str
    run_id: str
    kind: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    status: str | None = None
    pulled: int = 0
    applied: int = 0
    skipped: int = 0
    retried: int = 0
    dead_lettered: int = 0
    error: str | None = None


def record_outcomes(app: SyncApp, outcomes: Sequence[Outcome]) -> None:
    """Count one settled batch into the history. A failure here loses a count, never a change: it is logged
    and the batch stays settled."""
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for o in outcomes:
        column = _COUNTED.get(o.kind)
        if column is None:
            continue
        run_id = o.message.correlation_id if o.message is not None else o.received.envelope.correlation_id
        counts[(o.flow, run_id or "")][column] += 1
    for (flow, run_id), counted in counts.items():
        try:
            app.state.add_run(applied_partition(flow), {"run_id": run_id, "batch": uuid.uuid4().hex[:8], **counted},
                              at=app.clock())
        except Exception:  # history is for people; the changes themselves are settled
            log.warning("could not record the outcomes of a batch of flow %s in the run history", flow,
                        exc_info=True)


def recent_runs(app: SyncApp, flow: str, limit: int = 20, busy: bool = False) -> list[RunView]:
    """The newest `limit` runs of `flow`, newest first, with the outcomes of their changes. `busy`: only runs that
    sent something or failed (a flow pulled every few minutes mostly finds nothing)."""
    runs: list[RunView] = []
    for row in app.state.recent_runs(flow, limit=SCANNED):
        if row.get("kind") in RUN_KINDS and (not busy or row.get("pulled") or row.get("error")):
            runs.append(_run(flow, row))
            if len(runs) >= limit:
                break
    if not runs:
        return runs
    by_id = {run.run_id: run for run in runs}
    oldest = min((r.started_at or r.finished_at for r in runs if r.started_at or r.finished_at), default=None)
    for row in app.state.recent_runs(applied_partition(flow), limit=1_000_000):
        at = moment(row.get("at"))
        if oldest is not None and at is not None and at < oldest:
            break  # newest first: everything further is older than the oldest run shown
        run = by_id.get(str(row.get("run_id", "")))
        if run is not None:
            for column in _COUNTED.values():
                setattr(run, column, getattr(run, column) + int(row.get(column, 0)))
    return runs


def _run(flow: str, row: dict) -> RunView:
    finished = moment(row.get("finished_at")) or moment(row.get("at"))
    pulled = row.get("pulled", row.get("sent", 0))
    return RunView(flow=flow, run_id=str(row.get("run_id", "")), kind=str(row.get("kind")),
                   started_at=moment(row.get("started_at")), finished_at=finished, status=row.get("status"),
                   pulled=int(pulled or 0), error=row.get("error") or None)


def moment(text: object) -> datetime | None:
    """An ISO time as stored, or None when there is none (or it is not one)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
