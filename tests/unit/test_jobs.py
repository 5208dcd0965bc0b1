"""Long operations as jobs (shared/engine/jobs.py): a replay runs in slices under a lease, its progress is in the
state store for any instance to read, and whatever instance finds its lease free carries it on."""

from __future__ import annotations

from datetime import timedelta

import shared.engine.replay
from shared.engine import jobs
from shared.engine.replay import ReplayFilter
from tests.unit.conftest import account, deliver


def dead_letters(app, memory, n: int) -> None:
    deliver(app, *[account(f"a{i}", 1, name="x" * 50) for i in range(n)])
    for i in range(n):  # fixed at the source: replay sends what the source has now
        memory["crm"].put("accounts", f"a{i}", {"accountid": f"a{i}", "accountnumber": f"N-a{i}", "name": "Fixed",
                                                "statecode": 0})


def test_a_slice_stops_when_its_time_is_spent_and_the_next_one_carries_on(app, memory, monkeypatch):
    monkeypatch.setattr(shared.engine.replay, "BATCH", 2)
    dead_letters(app, memory, 5)
    job = jobs.start_replay(app, ReplayFilter(flow="accounts"), by="ops")
    first = jobs.run_slice(app, job.id, "instance-1", budget=0)  # spent at once: one batch, then it stops
    assert first is not None and (first.status, first.matched, first.replayed, first.slices) == ("running", 2, 2, 1)
    assert jobs.get_job(app, job.id).lease_owner is None  # given back: any instance may carry on
    assert app.bus.counts(app.queue).dead_letter == 3
    assert jobs.run_due_jobs(app, "instance-2", budget=30) == [job.id]
    done = jobs.get_job(app, job.id)
    assert (done.status, done.matched, done.replayed, done.slices, done.by) == ("done", 5, 5, 2, "ops")
    assert sorted(done.keys) == [f"accounts:a{i}" for i in range(5)]
    assert app.bus.counts(app.queue).dead_letter == 0
    assert jobs.run_due_jobs(app, "instance-2", budget=30) == []  # finished jobs are left alone
    week_later = app.clock() + jobs.KEPT + timedelta(minutes=1)
    app.clock = lambda: week_later
    jobs.run_due_jobs(app, "instance-2", budget=30)
    assert jobs.get_job(app, job.id) is None  # and forgotten a week after


def test_a_job_another_instance_holds_waits_for_its_lease_to_run_out(app, memory):
    dead_letters(app, memory, 1)
    job = jobs.start_replay(app, ReplayFilter(key="a0"), by="ops")
    _, etag = app.state.get_job(job.id)
    held = job.model_copy(update={"status": "running", "lease_owner": "instance-1",
                                  "lease_until": app.clock() + timedelta(minutes=2)})
    app.state.save_job(job.id, held.model_dump(mode="json"), etag)
    assert jobs.run_slice(app, job.id, "instance-2", budget=30) is None
    assert app.bus.counts(app.queue).dead_letter == 1
    later = app.clock() + timedelta(minutes=3)  # instance-1 died: its lease ran out
    app.clock = lambda: later
    assert jobs.run_slice(app, job.id, "instance-2", budget=30).status == "done"
    assert app.bus.counts(app.queue).dead_letter == 0


def test_a_replay_that_fails_says_so_on_the_job(app, memory, monkeypatch):
    dead_letters(app, memory, 1)

    def broken(*args, **kwargs):
        raise RuntimeError("the source is down")

    monkeypatch.setattr(jobs, "replay_dead_letters", broken)
    job = jobs.start_replay(app, ReplayFilter(), by="ops")
    failed = jobs.run_slice(app, job.id, "instance-1", budget=30)
    assert failed.status == "failed" and failed.error == "RuntimeError: the source is down"
    assert jobs.get_job(app, job.id).status == "failed" and jobs.run_due_jobs(app, "instance-1", 30) == []
