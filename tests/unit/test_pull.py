"""Pull: enqueue first, advance after; one puller per flow; deletes inferred from a full read."""

from __future__ import annotations

from datetime import timedelta

from shared.engine import cursor_lease
from shared.engine.pull import pull_flow
from shared.engine.schedule import is_due, pull_due_flows
from shared.messages import parse_body
from shared.process_identity import current_holder


def seed(memory, n: int) -> None:
    for i in range(n):
        memory["crm"].put("accounts", f"a{i:03d}", {"accountid": f"a{i:03d}", "accountnumber": f"N{i}",
                                                    "name": f"n{i}", "statecode": 0})


def queued(app) -> list:
    got = []
    while batch := app.bus.receive(app.queue, max_messages=500, max_wait=0.1):
        got += batch
    return got


def test_pull_sends_one_message_per_change_and_advances(app, memory):
    seed(memory, 25)
    result = pull_flow(app, "accounts", owner="t")
    assert (result.status, result.pulled, result.pages) == ("ok", 25, 1)
    messages = [parse_body(r.envelope.body) for r in queued(app)]
    assert sorted(m.key for m in messages) == [f"a{i:03d}" for i in range(25)]
    first = messages[0]
    assert first.flow == "accounts" and first.source_system == "crm" and first.correlation_id == result.run_id
    cursor = app.state.get_cursor("accounts")
    assert cursor.position == {"version": 25} and cursor.lease_owner is None
    assert cursor.last_run["pulled"] == 25
    assert pull_flow(app, "accounts", owner="t").pulled == 0
    memory["crm"].put("accounts", "a001", {"accountid": "a001", "accountnumber": "N1", "name": "renamed",
                                           "statecode": 0})
    assert pull_flow(app, "accounts", owner="t").pulled == 1
    assert app.state.recent_runs("accounts", limit=1)[0]["pulled"] == 1


def test_send_failure_leaves_the_cursor_where_it_was(app, memory):
    seed(memory, 5)

    def broken_send(queue, envelopes):
        raise ConnectionError("bus down")

    real = app.bus.send
    app.bus.send = broken_send
    failed = pull_flow(app, "accounts", owner="t")
    app.bus.send = real
    assert (failed.status, failed.error) == ("failed", "ConnectionError: bus down")
    cursor = app.state.get_cursor("accounts")
    assert cursor.position is None and cursor.lease_owner is None  # released: the next run may start at once
    assert pull_flow(app, "accounts", owner="other").pulled == 5


def test_resend_after_crash_is_dropped_by_duplicate_detection(app, memory):
    seed(memory, 10)
    pull_flow(app, "accounts", owner="t")
    cursor = app.state.get_cursor("accounts")
    cursor.position = None  # as if we crashed after sending, before advancing
    app.state.save_cursor(cursor)
    result = pull_flow(app, "accounts", owner="t")
    assert (result.pulled, result.duplicates) == (10, 10)
    assert len(queued(app)) == 10


def test_one_lease_holder_at_a_time(app):
    now = app.clock()
    mine = cursor_lease.acquire(app.state, "accounts", "me", now)
    assert mine is not None
    assert cursor_lease.acquire(app.state, "accounts", "you", now) is None
    assert cursor_lease.acquire(app.state, "accounts", "you", now + timedelta(minutes=11)) is not None


def test_paused_flow_is_not_pulled(app, memory):
    seed(memory, 3)
    cursor_lease.pause_flow(app.state, "accounts", "operator")
    assert pull_flow(app, "accounts").status == "paused"
    cursor_lease.resume_flow(app.state, "accounts")
    assert pull_flow(app, "accounts").pulled == 3


def test_full_read_infers_deletes_of_linked_keys(app, memory):
    from shared.state.store import KeyLink

    seed(memory, 3)
    app.state.link_keys("accounts", [KeyLink("crm", "gone-1", "erp", "N-g1"), KeyLink("crm", "a001", "erp", "N1")])
    result = pull_flow(app, "accounts", owner="t")
    assert result.deletes_inferred == 1
    deletes = [m for m in (parse_body(r.envelope.body) for r in queued(app)) if m.op == "delete"]
    assert [(m.key, m.version) for m in deletes] == [("gone-1", "~deleted")]


def test_schedule_due(app, memory):
    now = app.clock().replace(second=30, microsecond=0)
    assert is_due("0 */5 * * * *", None, now)
    assert is_due("0 */5 * * * *", now - timedelta(minutes=6), now)
    assert not is_due("0 0 * * * *", now.replace(minute=1), now.replace(minute=2))
    seed(memory, 2)
    results = pull_due_flows(app, owner="t")
    assert sorted(r.flow for r in results) == ["accounts", "contacts"]
    assert pull_due_flows(app, owner="t") == []  # both ran moments ago; next slot not reached


def test_lease_of_a_dead_process_on_this_host_is_taken_over(app):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ghost = f"{socket.gethostname()}:{dead.stdout.strip()}"
    now = app.clock()
    assert cursor_lease.acquire(app.state, "accounts", ghost, now) is not None
    assert cursor_lease.acquire(app.state, "accounts", current_holder(), now) is not None
    # We are alive, so nobody takes the lease before it expires; a holder on another host is never judged.
    assert cursor_lease.acquire(app.state, "accounts", "otherhost:1", now) is None


def test_a_snapshot_cut_short_by_the_page_cap_infers_no_delete(app, memory):
    from shared.ports.connector import ChangePage
    from shared.state.store import KeyLink

    seed(memory, 3)
    app.state.link_keys("accounts", [KeyLink("crm", "not-read-yet", "erp", "N-x")])
    connector = app.connector("crm")
    real = connector.read_changes

    def capped(source, position, page_size):
        pages = list(real(source, position, page_size))
        yield ChangePage(pages[0].records, pages[0].position, snapshot=True, stopped_early=True)

    connector.read_changes = capped
    result = pull_flow(app, "accounts", owner="t")
    assert (result.pulled, result.deletes_inferred) == (3, 0)
    assert not [m for m in (parse_body(r.envelope.body) for r in queued(app)) if m.op == "delete"]
