"""Replay re-reads the source before sending again; status reports per flow what an operator needs."""

from __future__ import annotations

from shared.engine import cursor_lease
from shared.engine.outcome import Kind
from shared.engine.replay import ReplayFilter, replay_dead_letters
from shared.engine.status import collect_status
from tests.unit.conftest import account, deliver


def seed_dead_letters(app, memory) -> None:
    for key, name in (("a1", "x" * 20), ("a2", "y" * 30), ("a3", "ok")):
        memory["crm"].put("accounts", key, {"accountid": key, "accountnumber": f"N-{key}", "name": name,
                                            "statecode": 0})
    outcomes = deliver(app, account("a1", 1, name="x" * 20), account("a2", 1, name="y" * 30))
    assert all(o.kind is Kind.DEAD_LETTER for o in outcomes)


def drain(app):
    from shared.engine.delivery import handle_delivery

    outcomes = []
    while batch := app.bus.receive(app.queue, max_messages=100, max_wait=0.1):
        outcomes += handle_delivery(app, batch, app.bus.settler(app.queue))
    return outcomes


def test_dry_run_changes_nothing(app, memory):
    seed_dead_letters(app, memory)
    result = replay_dead_letters(app, ReplayFilter(flow="accounts"), dry_run=True)
    assert (result.matched, result.replayed, result.left) == (2, 0, 0)
    assert app.bus.counts(app.queue).dead_letter == 2 and app.bus.counts(app.queue).active == 0


def test_replay_after_the_fix_sends_the_current_record_once(app, memory):
    seed_dead_letters(app, memory)
    memory["crm"].put("accounts", "a1", {"accountid": "a1", "accountnumber": "N-a1", "name": "Fixed",
                                         "statecode": 0})
    result = replay_dead_letters(app, ReplayFilter(key="a1"))
    assert (result.matched, result.replayed, result.left) == (1, 1, 1)
    [applied] = drain(app)
    assert applied.kind is Kind.APPLIED
    assert memory["erp"].tables["customers"]["N-a1"]["name"] == "Fixed"
    # Replaying again finds nothing to do: a2 still fails the same way, a1 is gone from the DLQ.
    again = replay_dead_letters(app, ReplayFilter())
    assert (again.matched, again.replayed) == (1, 1)
    [still_bad] = drain(app)
    assert still_bad.kind is Kind.DEAD_LETTER and still_bad.message.key == "a2"


def test_replay_skips_what_is_already_applied_or_gone(app, memory):
    seed_dead_letters(app, memory)
    # a1 is fixed at the source and the regular pull applies the fix before anyone replays; a2 is deleted.
    memory["crm"].put("accounts", "a1", {"accountid": "a1", "accountnumber": "N-a1", "name": "Fine",
                                         "statecode": 0})
    from shared.engine.pull import pull_flow

    pull_flow(app, "accounts", owner="t")
    drain(app)
    del memory["crm"].tables["accounts"]["a2"]
    del memory["crm"].versions[("accounts", "a2")]
    result = replay_dead_letters(app, ReplayFilter())
    assert dict(result.skipped) == {"already_applied": 1, "source_gone": 2}  # a2 failed twice: seed and pull
    assert result.replayed == 0 and app.bus.counts(app.queue).dead_letter == 0
    assert memory["erp"].tables["customers"]["N-a1"]["name"] == "Fine"


def test_status_reports_queue_dead_letters_lag_and_pause(app, memory):
    seed_dead_letters(app, memory)
    from shared.engine.pull import pull_flow

    pull_flow(app, "accounts", owner="t")
    cursor_lease.pause_flow(app.state, "contacts", "auth failure: 401")
    report = collect_status(app)
    flows = {f.flow: f for f in report.flows}
    assert report.dead_letter == 2 and report.active == 3
    assert flows["accounts"].dead_letters == {"ValidationFailed": 2}
    assert flows["accounts"].queued == 3 and flows["accounts"].lag_seconds is not None
    assert flows["accounts"].last_run["pulled"] == 3 and flows["accounts"].cursor == {"version": 3}
    assert flows["contacts"].paused and flows["contacts"].paused_reason == "auth failure: 401"
    assert report.model_dump(mode="json")["flows"][0]["flow"] == "accounts"
