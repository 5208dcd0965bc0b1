"""Two source records mapping to one target key never share a target row (real SQLite on both sides)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, text

from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import parse_config
from shared.engine.apply import apply_batch
from shared.engine.outcome import Outcome
from shared.engine.pull import pull_flow
from shared.engine.reconcile import reconcile_deletes
from shared.engine.settle import settle
from shared.engine.target_claims import CLAIM_SECONDS
from shared.errors import Reason
from shared.messages import ChangeMessage, to_envelope
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import KeyClaim, StateStore

FLOW = "accounts-to-erp"


@pytest.fixture
def dbs(tmp_path):
    crm = create_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    erp = create_engine(f"sqlite:///{tmp_path / 'erp.db'}")
    with crm.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (accountid TEXT PRIMARY KEY, accountnumber TEXT, name TEXT, "
                          "modified TEXT NOT NULL)"))
    with erp.begin() as conn:
        conn.execute(text("CREATE TABLE customers (account_number TEXT PRIMARY KEY, name TEXT, crm_id TEXT)"))
    yield crm, erp
    crm.dispose()
    erp.dispose()


@pytest.fixture
def app(tmp_path, dbs):
    config = parse_config({
        "systems": {"crm": {"kind": "sql", "url": f"sqlite:///{tmp_path / 'crm.db'}"},
                    "erp": {"kind": "sql", "url": f"sqlite:///{tmp_path / 'erp.db'}"}},
        "flows": {FLOW: {
            "source": {"system": "crm", "entity": "accounts", "key": "accountid", "watermark": "modified"},
            "target": {"system": "erp", "entity": "customers", "key": "account_number"},
            "deletes": "delete",
            "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"},
                       {"from": "accountid", "to": "crm_id"}]}},
    })
    app = SyncApp(config=config, state=StateStore(SqliteTables(":memory:")), bus=SqliteBus(tmp_path / "bus.db"),
                  retry_base=0.01)
    yield app
    app.close()


def put(crm, accountid: str, number: str, name: str, modified: str) -> None:
    with crm.begin() as conn:
        conn.execute(text("INSERT INTO accounts VALUES (:i, :n, :m, :t) ON CONFLICT (accountid) DO UPDATE SET "
                          "accountnumber = :n, name = :m, modified = :t"),
                     {"i": accountid, "n": number, "m": name, "t": modified})


def customers(erp) -> dict[str, tuple[str, str]]:
    with erp.connect() as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(text("SELECT account_number, name, crm_id FROM customers"))}


def run(app: SyncApp, reconcile: bool = False) -> list[Outcome]:
    pull_flow(app, FLOW, owner="test")
    if reconcile:
        reconcile_deletes(app, FLOW)
    outcomes: list[Outcome] = []
    while batch := app.bus.receive(app.queue, max_messages=500, max_wait=0.05):
        result = apply_batch(app, batch)
        settle(app, app.bus.settler(app.queue), result)
        outcomes += result
    return outcomes


def dead(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.kind == "dead_letter"]


def test_a_second_source_record_for_a_linked_target_key_is_dead_lettered_and_its_delete_spares_the_row(app, dbs):
    crm, erp = dbs
    put(crm, "G1", "N1", "First", "2026-06-01 00:00:01")
    run(app)
    put(crm, "G2", "N1", "Second", "2026-06-01 00:00:02")
    [refused] = dead(run(app))
    assert refused.reason == Reason.DUPLICATE_TARGET_KEY == "DuplicateTargetKey"
    assert "record G2" in refused.description and "N1" in refused.description and "G1" in refused.description
    assert customers(erp) == {"N1": ("First", "G1")}
    with crm.begin() as conn:
        conn.execute(text("DELETE FROM accounts WHERE accountid = 'G2'"))
    assert not dead(run(app, reconcile=True))
    assert customers(erp) == {"N1": ("First", "G1")}  # the never-linked second record deletes nothing


def test_two_source_records_for_one_target_key_in_one_batch_keep_the_first(app, dbs):
    crm, erp = dbs
    put(crm, "G1", "N1", "First", "2026-06-01 00:00:01")
    put(crm, "G2", "N1", "Second", "2026-06-01 00:00:02")
    put(crm, "G3", "N3", "Third", "2026-06-01 00:00:03")
    outcomes = run(app)
    [refused] = dead(outcomes)
    assert refused.message.key == "G2" and "G1" in refused.description and "N1" in refused.description
    assert customers(erp) == {"N1": ("First", "G1"), "N3": ("Third", "G3")}
    with crm.begin() as conn:
        conn.execute(text("DELETE FROM accounts WHERE accountid = 'G2'"))
    run(app, reconcile=True)
    assert customers(erp) == {"N1": ("First", "G1"), "N3": ("Third", "G3")}


def test_a_target_key_freed_by_a_delete_can_be_taken_by_another_record(app, dbs):
    crm, erp = dbs
    put(crm, "G1", "N1", "First", "2026-06-01 00:00:01")
    run(app)
    with crm.begin() as conn:
        conn.execute(text("DELETE FROM accounts WHERE accountid = 'G1'"))
    run(app, reconcile=True)
    put(crm, "G2", "N1", "Second", "2026-06-01 00:00:02")
    assert not dead(run(app))
    assert customers(erp) == {"N1": ("Second", "G2")}


def test_a_target_key_held_by_a_deleted_record_goes_to_its_new_owner_before_any_reconciliation(app, dbs):
    """G1 is deleted at the source, which reports no deletes (a watermark), and G2 takes its account number
    before any reconciliation: G2 was dead-lettered, waiting for a delete nobody had sent. Now G2 sends G1's
    delete itself and waits for it."""
    crm, erp = dbs
    g1_deleted_and_its_number_taken_by_g2(app, crm)
    outcomes = run(app)
    assert not dead(outcomes)
    assert sorted((o.message.key, o.kind.value, str(o.reason)) for o in outcomes) == [
        ("G1", "applied", "delete"), ("G2", "applied", "upsert"), ("G2", "retry", "target_key_held")]
    assert customers(erp) == {"N1": ("Second", "G2")}
    assert app.state.lookup_keys("accounts-to-erp", "crm", ["G1", "G2"]) == {"G2": "N1"}


def test_a_change_waiting_for_a_deleted_holders_row_is_dead_lettered_once_its_attempts_are_spent(app, dbs):
    """The wait is bounded: a holder's delete that never frees the row (its own delete failed, say) leaves the
    change dead-lettered after the flow's attempts, naming the holder, never retrying for good."""
    crm, erp = dbs
    g1_deleted_and_its_number_taken_by_g2(app, crm)
    flow = app.config.flows[FLOW]
    record = app.connector("crm").read_record(flow.source, "G2")
    last = ChangeMessage(flow=FLOW, op="upsert", source_system="crm", entity="accounts", key="G2",
                         version=record.version, changed_at=record.changed_at, payload=record.values,
                         attempt=app.max_attempts)
    app.bus.send(app.queue, [to_envelope(last)])
    [refused] = apply_batch(app, app.bus.receive(app.queue, max_messages=5, max_wait=0.05))
    assert refused.kind == "dead_letter" and refused.reason == Reason.DUPLICATE_TARGET_KEY
    assert "G1" in refused.description and f"waited {app.max_attempts} attempts" in refused.description
    assert customers(erp) == {"N1": ("First", "G1")}


class Crash(BaseException):
    """A worker dying mid-write: not an error apply may catch."""


def hold_writes(app: SyncApp, monkeypatch, worker: threading.Thread | None = None,
                crash: bool = False) -> tuple[threading.Event, threading.Event]:
    """The ERP write of `worker` (or of anyone, when crash) stops: it waits for `go` after setting `reached`,
    or the worker dies there."""
    erp = app.connector("erp")
    write = erp.write_batch
    reached, go = threading.Event(), threading.Event()

    def held(target, ops):
        if crash:
            raise Crash("the worker died before its write")
        if threading.current_thread() is worker:
            reached.set()
            go.wait(10)
        return write(target, ops)

    monkeypatch.setattr(erp, "write_batch", held)
    return reached, go


def received(app: SyncApp, key: str) -> list:
    """The message of one record, as a worker receives it (everything else goes back to the queue)."""
    batch = app.bus.receive(app.queue, max_messages=50, max_wait=0.05)
    mine = [m for m in batch if m.envelope.application_properties.get("key") == key]
    for other in batch:
        if other not in mine:
            app.bus.settler(app.queue).abandon(other)
    return mine


def one_held_while(app: SyncApp, dbs, monkeypatch, meanwhile) -> tuple[Outcome, list[Outcome]]:
    """G1 and G2 both map to N1. Worker A applies G1 and stops just before writing the ERP; `meanwhile(B's
    batch)` runs; then A goes on. Returns A's outcome and what `meanwhile` returned."""
    crm, _ = dbs
    put(crm, "G1", "N1", "First", "2026-06-01 00:00:01")
    put(crm, "G2", "N1", "Second", "2026-06-01 00:00:02")
    pull_flow(app, FLOW, owner="test")
    first, second = received(app, "G1"), received(app, "G2")
    outcomes: list[Outcome] = []
    worker_a = threading.Thread(target=lambda: outcomes.extend(apply_batch(app, first)))
    reached, go = hold_writes(app, monkeypatch, worker_a)
    worker_a.start()
    assert reached.wait(10)
    try:
        result = meanwhile(second)
    finally:
        go.set()
        worker_a.join(10)
    [a] = outcomes
    return a, result


def crashed_while_writing(app: SyncApp, dbs, monkeypatch) -> list:
    """G1 (to N1) applied by a worker that dies just before its ERP write; returns G1's message."""
    put(dbs[0], "G1", "N1", "First", "2026-06-01 00:00:01")
    pull_flow(app, FLOW, owner="test")
    dying = received(app, "G1")
    hold_writes(app, monkeypatch, crash=True)
    with pytest.raises(Crash):
        apply_batch(app, dying)
    monkeypatch.undo()
    return dying


def test_two_appliers_claiming_one_target_key_at_once_link_it_to_one_record(app, dbs, monkeypatch):
    """Worker A applies G1 and stops just before writing row N1; worker B applies G2, also N1, meanwhile. Both
    read N1 unlinked: B waits for A's claim (spending no attempt), and its retry is dead-lettered once A
    linked the row, never written nor linked."""
    _, erp = dbs
    applied, [waiting] = one_held_while(app, dbs, monkeypatch, lambda second: apply_batch(app, second))
    assert (applied.kind, applied.reason) == ("applied", "upsert")
    assert (waiting.kind, waiting.reason) == ("retry", "record_busy")
    assert "N1" in waiting.description and "G1" in waiting.description
    assert waiting.clone is not None and waiting.clone.attempt == 1  # waiting spends no attempt
    settle(app, app.bus.settler(app.queue), [applied, waiting])
    later = run(app)
    [refused] = dead(later)
    assert refused.message.key == "G2" and refused.reason == Reason.DUPLICATE_TARGET_KEY
    assert "G1" in refused.description and "N1" in refused.description
    assert customers(erp) == {"N1": ("First", "G1")}
    assert app.state.lookup_keys(FLOW, "crm", ["G1", "G2"]) == {"G1": "N1"}
    assert app.state.lookup_keys(FLOW, "erp", ["N1"]) == {"N1": "G1"}


def test_a_claim_whose_applier_died_runs_out_and_the_key_goes_to_the_next_claimant(app, dbs, monkeypatch):
    """A worker dies between claiming N1 for G1 and writing it. Its claim holds G2 back only until it runs
    out (like a record lease), never for good; G1's own redelivered change would take it over at once."""
    crm, erp = dbs
    crashed_while_writing(app, dbs, monkeypatch)
    assert app.state.key_holders(FLOW, "erp", ["N1"])["N1"].owner == "G1"  # claimed, written by nobody
    assert customers(erp) == {}
    with crm.begin() as conn:
        conn.execute(text("DELETE FROM accounts WHERE accountid = 'G1'"))
    put(crm, "G2", "N1", "Second", "2026-06-01 00:00:02")
    pull_flow(app, FLOW, owner="test")
    [waiting] = apply_batch(app, received(app, "G2"))
    assert (waiting.kind, waiting.reason) == ("retry", "record_busy") and "G1" in waiting.description
    assert customers(erp) == {}
    start = app.clock()
    monkeypatch.setattr(app, "clock", lambda: start + timedelta(seconds=CLAIM_SECONDS + 1))
    [applied] = apply_batch(app, [waiting.received])  # its retry
    assert (applied.kind, applied.reason) == ("applied", "upsert")
    assert customers(erp) == {"N1": ("Second", "G2")}
    assert app.state.lookup_keys(FLOW, "erp", ["N1"]) == {"N1": "G2"}


def test_a_crashed_appliers_own_redelivered_change_takes_its_claim_over_at_once(app, dbs, monkeypatch):
    dying = crashed_while_writing(app, dbs, monkeypatch)
    [applied] = apply_batch(app, dying)  # redelivered: the same change, its lease and claim its own
    assert (applied.kind, applied.reason) == ("applied", "upsert")
    assert customers(dbs[1]) == {"N1": ("First", "G1")}


def test_a_writer_whose_claim_ran_out_and_was_taken_records_nothing_and_gives_the_row_back(app, dbs, monkeypatch):
    """Worker A's write of G1 to N1 outlasts its claim; G2 claims N1 meanwhile, writes and links it; then A's
    write lands over G2's row. A's link is written only over its own claim, so it records nothing; G2 is
    sent again as its source has it (its row gets its values back) and G1's change, decided again, is
    dead-lettered as DuplicateTargetKey."""
    _, erp = dbs

    def claim_runs_out_then_b_applies(second: list) -> list[Outcome]:
        held = app.state.key_holders(FLOW, "erp", ["N1"])["N1"]
        # A's claim runs out (as if its write took longer than the claim lasts): for everyone else it is free.
        app.state.release_keys(FLOW, [KeyClaim("erp", "N1", "crm", "G1", app.clock(), etag=held.etag)])
        return apply_batch(app, second)

    overwrote, [taken] = one_held_while(app, dbs, monkeypatch, claim_runs_out_then_b_applies)
    assert (taken.kind, taken.reason) == ("applied", "upsert")
    assert customers(erp) == {"N1": ("First", "G1")}  # A's late write landed over G2's row ...
    assert (overwrote.kind, overwrote.reason) == ("retry", "lost_race")
    assert app.state.lookup_keys(FLOW, "crm", ["G1", "G2"]) == {"G2": "N1"}  # ... but was never linked
    settle(app, app.bus.settler(app.queue), [taken, overwrote])
    later = run(app)
    [refused] = dead(later)
    assert refused.message.key == "G1" and refused.reason == Reason.DUPLICATE_TARGET_KEY
    assert customers(erp) == {"N1": ("Second", "G2")}  # G2's values are back
    assert app.state.lookup_keys(FLOW, "erp", ["N1"]) == {"N1": "G2"}


def g1_deleted_and_its_number_taken_by_g2(app, crm) -> None:
    """G1 synced with account number N1, deleted at the source (which reports no deletes), and G2 created with N1."""
    put(crm, "G1", "N1", "First", "2026-06-01 00:00:01")
    run(app)
    with crm.begin() as conn:
        conn.execute(text("DELETE FROM accounts WHERE accountid = 'G1'"))
    put(crm, "G2", "N1", "Second", "2026-06-01 00:00:02")
