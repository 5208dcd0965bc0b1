"""Nothing a message says can grant what state does not: anyone with Send rights on the queue can write any
body, so `approved` (past human review), `force` (past the version, echo and conflict checks) and the version
itself (one that sorts above every real version would freeze the record) are checked against state and
against the source's version formats."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from shared.app import SyncApp
from shared.config import parse_config
from shared.engine.decisions import approve_request
from shared.engine.outcome import Kind
from shared.engine.resync import resync
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import REQUESTS, StateStore
from tests.unit.conftest import CONFIG, account, deliver


def kinds(outcomes) -> list[tuple[str, str]]:
    return [(o.kind.value, o.reason) for o in outcomes]


@pytest.fixture
def reviewed(tmp_path, memory):
    config = copy.deepcopy(CONFIG)
    config["flows"]["accounts"]["review"] = True
    from shared.bus.sqlite_bus import SqliteBus

    sync = SyncApp(config=parse_config(config), state=StateStore(SqliteTables(":memory:")),
                   bus=SqliteBus(tmp_path / "bus.db", lock_duration=30), retry_base=0.01,
                   connector_factory=lambda name: memory[name])
    yield sync
    sync.close()


def test_a_message_that_says_approved_is_still_reviewed(reviewed, memory):
    outcomes = deliver(reviewed, account("a1", 1).model_copy(update={"approved": True}))
    assert kinds(outcomes) == [("skipped", "awaiting_review")]
    assert memory["erp"].tables.get("customers", {}) == {}


def test_an_approval_recorded_in_state_lets_the_change_through(reviewed, memory):
    deliver(reviewed, account("a1", 1))
    approve_request(reviewed, "a1")
    [received] = reviewed.bus.receive(reviewed.queue, max_messages=5, max_wait=1)
    from shared.engine.delivery import handle_delivery

    outcomes = handle_delivery(reviewed, [received], reviewed.bus.settler(reviewed.queue))
    assert kinds(outcomes) == [("applied", "upsert")]
    assert not list(reviewed.state.parked(REQUESTS))
    # The approval was for that change once: the same body sent again by anyone is reviewed again.
    assert kinds(deliver(reviewed, account("a1", 2, name="Other").model_copy(update={"approved": True}))) == [
        ("skipped", "awaiting_review")]


def test_a_message_that_says_force_does_not_skip_the_version_check(app, memory):
    deliver(app, account("a1", 5, name="Newer"))
    outcomes = deliver(app, account("a1", 1, name="Forged").model_copy(update={"force": True}))
    assert kinds(outcomes) == [("skipped", "already_applied")]
    assert memory["erp"].tables.get("customers", {})["N-a1"]["name"] == "Newer"


def test_a_resync_granted_in_state_is_forced(app, memory):
    memory["crm"].put("accounts", "a1", {"accountid": "a1", "accountnumber": "N-a1", "name": "Source",
                                         "statecode": 0})
    deliver(app, account("a1", 10**6, name="Newer"))
    resync(app, "accounts", "a1")  # the source's version is lower than what was applied: force is needed
    [received] = app.bus.receive(app.queue, max_messages=5, max_wait=1)
    from shared.engine.delivery import handle_delivery

    outcomes = handle_delivery(app, [received], app.bus.settler(app.queue))
    assert kinds(outcomes) == [("applied", "upsert")]
    assert memory["erp"].tables.get("customers", {})["N-a1"]["name"] == "Source"


@pytest.mark.parametrize("version", [
    "~", "~~~~", "\x7f", "zzzz", "9999-12-31T00:00:00.000000", "99999999999999999999", "a" * 200,
    (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.%f"),
])
def test_a_version_no_source_can_produce_is_dead_lettered(app, memory, version):
    outcomes = deliver(app, account("a1", 1).model_copy(update={"version": version}))
    assert [(o.kind.value, str(o.reason)) for o in outcomes] == [("dead_letter", "MalformedMessage")]
    assert "record a1" in outcomes[0].description and "version" in outcomes[0].description
    assert kinds(deliver(app, account("a1", 2, name="Real"))) == [("applied", "upsert")]


@pytest.mark.parametrize("version", [
    f"{7:020d}", "2024-05-01T10:00:00.000000", "0000000000000000000A~deleted"[:0] + f"{3:020d}~deleted",
    "00FF00AA", f"{12:020d}.5",
])
def test_versions_the_sources_produce_are_accepted(app, memory, version):
    outcomes = deliver(app, account("a1", 1).model_copy(update={"version": version}))
    assert outcomes[0].kind is not Kind.DEAD_LETTER, outcomes[0].description
