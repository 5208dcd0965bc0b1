"""Long operator operations (replaying thousands of dead letters) as jobs that outlive the request that started
them: an HTTP request is cut off after about 230 seconds on Azure.

A job is a row in the state store's `jobs` table (Table Storage on Azure, SQLite locally), so any instance can
report its progress. Whoever runs it takes a lease on it (an etag-guarded write, like a flow's cursor) and works
in slices: each slice replays until its time budget is spent, adds what it did to the job and gives the lease
back. Replay is resumable by nature (what was replayed has left the dead-letter queue; the same filter finds the
rest), so a slice that died is simply run again once its lease has expired.

Who runs the slices: `dualsync ui` starts a thread at once; on Azure the admin API runs the first slice inside
the request and the `jobs` timer function (every minute) carries on any job whose lease is free
(`run_due_jobs`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.app import SyncApp
from shared.engine.replay import ReplayFilter, ReplayResult, replay_dead_letters
from shared.errors import ConcurrencyError

log = logging.getLogger("dualsync.jobs")

KEYS_KEPT = 50  # replayed keys a job remembers (its counts are complete)
_LEASE_MARGIN = timedelta(seconds=60)  # a slice's lease outlasts its budget by this much
KEPT = timedelta(days=7)  # how long a finished job stays readable


class JobView(BaseModel):
    id: str
    kind: Literal["replay"] = "replay"
    params: dict[str, Any]  # the replay's filter: flow, reason, key
    status: Literal["queued", "running", "done", "failed"] = "queued"
    by: str = ""  # who started it
    created_at: datetime
    updated_at: datetime
    matched: int = 0
    replayed: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)
    left: int = 0  # in the dead-letter queue after the last slice: not matching, or not replayable
    keys: list[str] = Field(default_factory=list)  # the first KEYS_KEPT replayed, as flow:key
    slices: int = 0
    error: str | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")


def start_replay(app: SyncApp, which: ReplayFilter, by: str) -> JobView:
    now = app.clock()
    job = JobView(id=uuid.uuid4().hex, params={"flow": which.flow, "reason": which.reason, "key": which.key},
                  by=by, created_at=now, updated_at=now)
    app.state.create_job(job.id, job.model_dump(mode="json"))
    return job


def get_job(app: SyncApp, job_id: str) -> JobView | None:
    found = app.state.get_job(job_id)
    return JobView.model_validate(found[0]) if found else None


def run_slice(app: SyncApp, job_id: str, owner: str, budget: float) -> JobView | None:
    """Run the job for about `budget` seconds (until it is done, if sooner). None: someone else holds it, or it
    is finished already."""
    claimed = _claim(app, job_id, owner, budget)
    if claimed is None:
        return None
    job, etag = claimed
    deadline = time.monotonic() + budget
    saved = {"etag": etag}

    def progress(result: ReplayResult) -> None:
        # Counts so far, so a reader sees the job move; a lost lease ends the slice at the next batch.
        current = _with(job, result)
        try:
            saved["etag"] = app.state.save_job(job_id, current.model_dump(mode="json"), saved["etag"])
        except ConcurrencyError:
            saved["etag"] = ""

    which = ReplayFilter(**job.params)
    try:
        result = replay_dead_letters(app, which, on_progress=progress,
                                     stop=lambda: time.monotonic() >= deadline or not saved["etag"])
    except Exception as exc:  # the job says it failed and why; the operator starts it again
        log.exception("replay job %s failed", job_id)
        job = job.model_copy(update={"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]})
        return _release(app, job, saved["etag"])
    if not saved["etag"]:
        return None  # another instance took the job over (our lease ran out): its slice reports
    job = _with(job, result).model_copy(update={"status": "running" if result.stopped else "done",
                                                "slices": job.slices + 1})
    return _release(app, job, saved["etag"])


def run_in_background(app: SyncApp, job_id: str, owner: str, budget: float = 60.0) -> None:
    """Slice after slice until the job is finished (a thread's body in `dualsync ui`)."""
    job = run_slice(app, job_id, owner, budget)
    while job is not None and not job.finished:
        job = run_slice(app, job_id, owner, budget)


def run_due_jobs(app: SyncApp, owner: str, budget: float, clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Carry on every unfinished job whose lease is free, within `budget` seconds in all (the timer function);
    forget jobs finished more than KEPT ago."""
    deadline = clock() + budget
    ran = []
    for job_id, data in list(app.state.list_jobs()):
        if data.get("status") in ("done", "failed"):
            if JobView.model_validate(data).updated_at < app.clock() - KEPT:
                app.state.delete_job(job_id)
            continue
        left = deadline - clock()
        if left <= 1:
            continue
        if run_slice(app, job_id, owner, left) is not None:
            ran.append(job_id)
    return ran


def _with(job: JobView, result: ReplayResult) -> JobView:
    """The job's counts with this slice's added. Letters left aside for an initial sync stay in the queue, so each
    slice meets them again: the last slice's count is the one that holds."""
    skipped = dict(job.skipped)
    for why, n in result.skipped.items():
        skipped[why] = n if why == "needs_initial_sync" else skipped.get(why, 0) + n
    return job.model_copy(update={
        "matched": job.matched + result.matched, "replayed": job.replayed + result.replayed, "skipped": skipped,
        "left": result.left, "keys": (job.keys + result.keys)[:KEYS_KEPT]})


def _claim(app: SyncApp, job_id: str, owner: str, budget: float) -> tuple[JobView, str] | None:
    found = app.state.get_job(job_id)
    if found is None:
        return None
    data, etag = found
    job = JobView.model_validate(data)
    now = app.clock()
    if job.finished or (job.lease_until is not None and job.lease_until > now and job.lease_owner != owner):
        return None
    job = job.model_copy(update={"status": "running", "lease_owner": owner, "updated_at": now,
                                 "lease_until": now + timedelta(seconds=budget) + _LEASE_MARGIN})
    try:
        return job, app.state.save_job(job_id, job.model_dump(mode="json"), etag)
    except ConcurrencyError:
        return None


def _release(app: SyncApp, job: JobView, etag: str) -> JobView:
    job = job.model_copy(update={"lease_owner": None, "lease_until": None, "updated_at": app.clock()})
    try:
        app.state.save_job(job.id, job.model_dump(mode="json"), etag)
    except ConcurrencyError:  # taken over meanwhile: the new holder's slice reports
        log.info("job %s was taken over by another instance", job.id)
    return job
