"""A pair of flows (crm -> erp, erp -> crm): no ping-pong, merges, conflicts by policy, review."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import parse_config
from shared.engine.apply import apply_batch
from shared.engine.decisions import DecisionError, approve_request, list_parked, reject_request, resolve_conflict
from shared.engine.pull import pull_flow
from shared.engine.reconcile import reconcile_deletes
from shared.engine.settle import settle
from shared.engine.tally import Tally
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import CONFLICTS, REQUESTS, RecordLease, StateStore
from tests.fakes.memory_connector import MemoryConnector


def pair_config(conflicts: str = "master_wins", review: bool = False, owner_phone: str | None = None,
                deletes: str = "ignore") -> dict:
    phone_a = {"from": "telephone1", "to": "phone"} | ({"owner": owner_phone} if owner_phone else {})
    phone_b = {"from": "phone", "to": "telephone1"} | ({"owner": owner_phone} if owner_phone else {})
    common = {"pair": "accounts", "master": "crm", "conflicts": conflicts, "deletes": deletes}
    return {
        "systems": {"crm": {"kind": "sql", "url": "sqlite://"}, "erp": {"kind": "sql", "url": "sqlite://"}},
        "flows": {
            "accounts-to-erp": common | {
                "source": {"system": "crm", "entity": "accounts", "key": "accountnumber", "watermark": "modified"},
                "target": {"system": "erp", "entity": "customers", "key": "account_number"},
                "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"},
                           phone_a]},
            "customers-to-crm": common | {
                "review": review,
                "source": {"system": "erp", "entity": "customers", "key": "account_number", "watermark": "modified"},
                "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
                "fields": [{"from": "account_number", "to": "accountnumber"}, {"from": "name", "to": "name"},
                           phone_b]},
        },
    }


@pytest.fixture
def make(tmp_path):
    apps = []

    def build(**kw) -> tuple[SyncApp, dict[str, MemoryConnector]]:
        memory = {"crm": MemoryConnector(), "erp": MemoryConnector()}
        app = SyncApp(config=parse_config(pair_config(**kw)), state=StateStore(SqliteTables(":memory:")),
                      bus=SqliteBus(tmp_path / f"bus{len(apps)}.db"), retry_base=0.01,
                      connector_factory=lambda name: memory[name])
        apps.append(app)
        return app, memory

    yield build
    for app in apps:
        app.close()


def drain(app: SyncApp) -> Tally:
    tally = Tally()
    while batch := app.bus.receive(app.queue, max_messages=500, max_wait=0.05):
        outcomes = apply_batch(app, batch)
        settle(app, app.bus.settler(app.queue), outcomes)
        tally.record(outcomes)
    return tally


def sync(app: SyncApp, *flows: str) -> Tally:
    for flow in flows or ("accounts-to-erp", "customers-to-crm"):
        pull_flow(app, flow, owner="test")
    return drain(app)


def seed(app, memory, n: int = 3) -> None:
    for i in range(n):
        memory["crm"].put("accounts", f"A{i}", {"accountnumber": f"A{i}", "name": f"n{i}", "telephone1": f"t{i}"})
    sync(app, "accounts-to-erp")
    sync(app, "customers-to-crm")


def test_our_own_write_coming_back_is_an_echo_not_a_write(make):
    app, memory = make()
    memory["crm"].put("accounts", "A1", {"accountnumber": "A1", "name": "Acme", "telephone1": "1"})
    first = sync(app, "accounts-to-erp")
    assert first.flows["accounts-to-erp"].applied == 1
    crm_writes = memory["crm"].writes
    back = sync(app, "customers-to-crm")
    assert dict(back.flows["customers-to-crm"].skipped) == {"echo": 1}
    assert memory["crm"].writes == crm_writes
    settled = sync(app)
    assert sum(c.applied for c in settled.flows.values()) == 0 and memory["crm"].writes == crm_writes


@pytest.mark.parametrize("order", [("accounts-to-erp", "customers-to-crm"), ("customers-to-crm", "accounts-to-erp")])
def test_different_fields_changed_on_both_sides_are_merged(make, order):
    app, memory = make()
    seed(app, memory)
    memory["crm"].put("accounts", "A1", {**memory["crm"].tables["accounts"]["A1"], "name": "crm-name"})
    memory["erp"].put("customers", "A1", {**memory["erp"].tables["customers"]["A1"], "phone": "erp-phone"})
    pull_flow(app, "accounts-to-erp", owner="t")
    pull_flow(app, "customers-to-crm", owner="t")
    tally = drain(app)
    for _ in range(2):
        tally = sync(app)
    assert memory["crm"].tables["accounts"]["A1"]["name"] == "crm-name" == memory["erp"].tables["customers"]["A1"]["name"]
    assert memory["crm"].tables["accounts"]["A1"]["telephone1"] == "erp-phone" == memory["erp"].tables["customers"]["A1"]["phone"]
    assert sum(c.applied for c in tally.flows.values()) == 0  # settled: nothing left to write, no ping-pong


@pytest.mark.parametrize("first", ["accounts-to-erp", "customers-to-crm"])
def test_same_field_changed_on_both_sides_master_wins(make, first):
    app, memory = make()
    seed(app, memory)
    memory["crm"].put("accounts", "A1", {**memory["crm"].tables["accounts"]["A1"], "name": "from-crm"})
    memory["erp"].put("customers", "A1", {**memory["erp"].tables["customers"]["A1"], "name": "from-erp"})
    second = "customers-to-crm" if first == "accounts-to-erp" else "accounts-to-erp"
    pull_flow(app, first, owner="t")
    pull_flow(app, second, owner="t")
    tally = drain(app)
    sync(app)
    sync(app)
    assert memory["crm"].tables["accounts"]["A1"]["name"] == "from-crm"
    assert memory["erp"].tables["customers"]["A1"]["name"] == "from-crm"
    assert sum(c.conflicts for c in tally.flows.values()) == 1


def test_field_owner_overrides_the_flow_master(make):
    app, memory = make(owner_phone="erp")
    seed(app, memory)
    memory["crm"].put("accounts", "A1", {**memory["crm"].tables["accounts"]["A1"], "telephone1": "crm-phone"})
    memory["erp"].put("customers", "A1", {**memory["erp"].tables["customers"]["A1"], "phone": "erp-phone"})
    sync(app)
    sync(app)
    assert memory["crm"].tables["accounts"]["A1"]["telephone1"] == "erp-phone"
    assert memory["erp"].tables["customers"]["A1"]["phone"] == "erp-phone"


def test_last_writer_wins_by_change_time(make):
    app, memory = make(conflicts="last_writer_wins")
    seed(app, memory)
    memory["crm"].put("accounts", "A1", {**memory["crm"].tables["accounts"]["A1"], "name": "older",
                                         "modified": "2026-05-01T10:00:00+00:00"})
    memory["erp"].put("customers", "A1", {**memory["erp"].tables["customers"]["A1"], "name": "newer",
                                          "modified": "2026-05-01T10:05:00+00:00"})
    sync(app)
    sync(app)
    assert memory["crm"].tables["accounts"]["A1"]["name"] == "newer" == memory["erp"].tables["customers"]["A1"]["name"]


def test_manual_policy_parks_the_conflict_until_an_operator_takes_a_side(make):
    app, memory = make(conflicts="manual")
    seed(app, memory)
    memory["crm"].put("accounts", "A1", {**memory["crm"].tables["accounts"]["A1"], "name": "crm-says"})
    memory["erp"].put("customers", "A1", {**memory["erp"].tables["customers"]["A1"], "name": "erp-says"})
    pull_flow(app, "accounts-to-erp", owner="t")
    tally = drain(app)
    assert dict(tally.flows["accounts-to-erp"].skipped) == {"conflict_parked": 1}
    [parked] = list_parked(app, CONFLICTS)
    assert (parked.flow, parked.key, parked.data["fields"]) == ("accounts-to-erp", "A1", ["name"])
    assert parked.data["incoming"] == {"name": "crm-says"} and parked.data["target"] == {"name": "erp-says"}
    assert memory["erp"].tables["customers"]["A1"]["name"] == "erp-says"
    with pytest.raises(DecisionError, match="--take must be crm or erp"):
        resolve_conflict(app, "A1", take="sap")
    resolve_conflict(app, "A1", take="erp")
    drain(app)
    assert memory["crm"].tables["accounts"]["A1"]["name"] == "erp-says"
    assert list_parked(app, CONFLICTS) == []
    sync(app)
    assert memory["erp"].tables["customers"]["A1"]["name"] == "erp-says"


def test_review_turns_changes_into_requests_until_approved(make):
    app, memory = make(review=True)
    seed(app, memory)
    memory["erp"].put("customers", "A2", {**memory["erp"].tables["customers"]["A2"], "name": "web shop edit"})
    memory["erp"].put("customers", "A0", {**memory["erp"].tables["customers"]["A0"], "name": "spam"})
    tally = sync(app, "customers-to-crm")
    assert dict(tally.flows["customers-to-crm"].skipped) == {"awaiting_review": 2}
    assert memory["crm"].tables["accounts"]["A2"]["name"] == "n2"
    assert sorted(p.key for p in list_parked(app, REQUESTS)) == ["A0", "A2"]
    approve_request(app, "A2")
    reject_request(app, "A0", reason="spam")
    drain(app)
    assert memory["crm"].tables["accounts"]["A2"]["name"] == "web shop edit"
    assert memory["crm"].tables["accounts"]["A0"]["name"] == "n0"
    assert list_parked(app, REQUESTS) == []


def test_a_throttled_source_read_retries_the_batch_instead_of_failing_it(make):
    from shared.errors import TransientError

    app, memory = make()
    seed(app, memory)
    memory["crm"].put("accounts", "A1", {**memory["crm"].tables["accounts"]["A1"], "name": "later"})
    pull_flow(app, "accounts-to-erp", owner="t")

    def throttled(*args, **kwargs):
        raise TransientError("429 Too Many Requests", retry_after=0.2)

    memory["crm"].read_records = throttled
    batch = app.bus.receive(app.queue, max_messages=10, max_wait=0.5)
    outcomes = apply_batch(app, batch)
    settle(app, app.bus.settler(app.queue), outcomes)
    assert [(o.kind.value, str(o.reason)) for o in outcomes] == [("retry", "throttled")]
    del memory["crm"].read_records

    time.sleep(0.3)
    drain(app)
    assert memory["erp"].tables["customers"]["A1"]["name"] == "later"


def test_a_record_the_master_deleted_and_the_other_side_created_again_is_applied_once(make):
    """The delete unlinks the keys but keeps the record's state (its versions and the tombstone) under the
    master's key. The ERP's re-creation is named by the ERP's key until it is linked; its first sync must take
    that state over, not count it as someone else's: that was reported as a lost race, and the forced resync
    then overwrote whatever the master's user had changed in between."""
    app, memory = make(deletes="delete")
    deleted_by_the_master_then_created_in_the_erp(app, memory)
    assert deliver(app) == [("applied", "upsert")]
    memory["crm"].put("accounts", "A0", {**memory["crm"].tables["accounts"]["A0"], "name": "master's edit"})
    sync(app)
    sync(app)
    assert memory["crm"].tables["accounts"]["A0"]["name"] == "master's edit"
    assert memory["erp"].tables["customers"]["A0"]["name"] == "master's edit"
    [state] = app.state.get_records("accounts", ["crm|A0", "erp|A0"]).values()
    assert state.record_id == "crm|A0" and state.lease is None


def test_a_record_created_again_on_the_other_side_waits_while_a_change_of_it_is_applied(make):
    """The state under the master's key may be leased by a change being applied right now: the re-creation
    waits for it before writing anything, rather than write and then find the record taken."""
    app, memory = make(deletes="delete")
    deleted_by_the_master_then_created_in_the_erp(app, memory)
    [state] = app.state.get_records("accounts", ["crm|A0"]).values()
    state.lease = RecordLease("someone else", app.clock() + timedelta(seconds=60))
    app.state.save_records("accounts", [state])

    assert deliver(app) == [("retry", "record_busy")]
    assert "A0" not in memory["crm"].tables["accounts"]

    state.lease = None
    app.state.save_records("accounts", [state])
    time.sleep(0.1)  # the retry's backoff (retry_base 0.01)
    assert deliver(app) == [("applied", "upsert")]
    assert memory["crm"].tables["accounts"]["A0"]["name"] == "again"


def deleted_by_the_master_then_created_in_the_erp(app: SyncApp, memory: dict[str, MemoryConnector]) -> None:
    """A0 synced, deleted in the CRM (the delete applied to the ERP), then created again in the ERP and pulled."""
    seed(app, memory, n=1)
    del memory["crm"].tables["accounts"]["A0"]
    del memory["crm"].versions[("accounts", "A0")]
    reconcile_deletes(app, "accounts-to-erp")
    assert drain(app).flows["accounts-to-erp"].applied == 1
    assert "A0" not in memory["erp"].tables["customers"]
    memory["erp"].put("customers", "A0", {"account_number": "A0", "name": "again", "phone": "p"})
    pull_flow(app, "customers-to-crm", owner="t")


def deliver(app: SyncApp) -> list[tuple[str, str]]:
    outcomes = apply_batch(app, app.bus.receive(app.queue, max_messages=10, max_wait=0.05))
    settle(app, app.bus.settler(app.queue), outcomes)
    return [(o.kind.value, str(o.reason)) for o in outcomes]


def test_a_conflict_met_by_both_flows_is_one_conflict_and_one_decision_closes_it(make, monkeypatch):
    """Both sides changed one field and each flow met the other's change: the record is one open conflict (not
    one per direction), listed once with each system's value, and resolving it leaves nothing open."""
    from shared.engine.views import conflict_views

    app, memory = make(conflicts="manual")
    seed(app, memory)
    memory["crm"].put("accounts", "A1", {**memory["crm"].tables["accounts"]["A1"], "name": "crm-says"})
    memory["erp"].put("customers", "A1", {**memory["erp"].tables["customers"]["A1"], "name": "erp-says"})
    tally = sync(app)
    assert sum(c.skipped["conflict_parked"] for c in tally.flows.values()) == 2
    assert len(list_parked(app, CONFLICTS)) == 1
    [view] = conflict_views(app)
    assert view.keys == {"crm": "A1", "erp": "A1"} if view.flow == "accounts-to-erp" else {"erp": "A1", "crm": "A1"}
    assert [(f.field, f.values) for f in view.fields] in (
        [("name", {"crm": "crm-says", "erp": "erp-says"})], [("name", {"erp": "erp-says", "crm": "crm-says"})])
    shown = cli_output(monkeypatch, app, "conflicts", "list")
    assert "open conflicts: 1" in shown and shown.count(" A1 ") == 1
    row = next(line for line in shown.splitlines() if " A1 " in line).split()
    assert row[:2] == ["A1", "name"] and "crm-says" in row and "erp-says" in row
    resolve_conflict(app, "A1", take="crm")
    assert list_parked(app, CONFLICTS) == [] and conflict_views(app) == []
    sync(app)
    sync(app)
    assert memory["erp"].tables["customers"]["A1"]["name"] == "crm-says" == memory["crm"].tables["accounts"]["A1"]["name"]
    assert list_parked(app, CONFLICTS) == []


def test_a_change_request_shows_each_changed_field_as_synced_and_as_proposed(make, tmp_path, monkeypatch):
    import json

    from shared.engine.views import change_request_views

    app, memory = make(review=True)
    seed(app, memory)
    memory["erp"].put("customers", "A2", {**memory["erp"].tables["customers"]["A2"], "name": "web shop edit"})
    sync(app, "customers-to-crm")
    [request] = change_request_views(app)
    assert (request.flow, request.key, request.op) == ("customers-to-crm", "A2", "upsert")
    assert [(f.field, f.to, f.before, f.after) for f in request.fields] == [("name", "name", "n2", "web shop edit")]

    shown = cli_output(monkeypatch, app, "requests", "list")
    row = next(line for line in shown.splitlines() if "web shop edit" in line)
    assert "customers-to-crm" in row and "A2" in row and "n2" in row and "telephone" not in shown
    [listed] = json.loads(cli_output(monkeypatch, app, "requests", "list", "--json"))["requests"]
    assert listed["fields"] == [{"field": "name", "to": "name", "before": "n2", "after": "web shop edit"}]


def cli_output(monkeypatch, app: SyncApp, *args: str) -> str:
    """What `dualsync ARGS` prints at 80 columns over this app's stores."""
    from contextlib import contextmanager

    from typer.testing import CliRunner

    import shared.cli.common
    from shared.cli import app as cli

    @contextmanager
    def session(config, workdir):
        yield app

    monkeypatch.setattr(shared.cli.common, "session", session)
    monkeypatch.setattr(shared.cli.common.console, "width", 80)
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    assert "--json" in args or max(len(line) for line in result.output.splitlines()) <= 80
    return result.output
