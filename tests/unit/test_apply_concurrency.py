"""Two appliers holding versions of one record at once (two instances of the apply trigger, two runners on
one workdir): the newest version wins, in the target and in the record state, whatever the interleaving.

Each applier is its own SyncApp on one shared SQLite state file, as two processes would be; the target is
shared too. The interleavings are forced with events inside the target's write.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import parse_config
from shared.engine.apply import apply_batch
from shared.engine.outcome import Kind, Outcome
from shared.messages import ChangeMessage, to_envelope
from shared.ports.bus import Received
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore
from tests.fakes.memory_connector import MemoryConnector
from tests.unit.conftest import CONFIG, account


class Crash(BaseException):
    """The applier's process dies here (not an error the engine handles)."""


class GatedTarget(MemoryConnector):
    """Writes whose payload name is in `gates` stop inside write_batch until their gate opens; `crash_after`
    names whose writer dies right after the target took the write."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}
        self.crash_after: set[str] = set()

    def write_batch(self, target, ops):  # noqa: ANN001, ANN201
        names = {op.values.get("name") for op in ops}
        for name in names & set(self.gates):
            self.entered[name].set()
            assert self.gates[name].wait(10), f"gate {name} never opened"
        results = super().write_batch(target, ops)
        if names & self.crash_after:
            self.crash_after -= names
            raise Crash()
        return results

    def gate(self, name: str) -> tuple[threading.Event, threading.Event]:
        self.gates[name], self.entered[name] = threading.Event(), threading.Event()
        return self.entered[name], self.gates[name]


@pytest.fixture
def appliers(tmp_path):
    target = GatedTarget()
    crm = MemoryConnector()
    apps = [SyncApp(config=parse_config(CONFIG), state=StateStore(SqliteTables(tmp_path / "state.db")),
                    bus=SqliteBus(tmp_path / f"bus{i}.db"), retry_base=0.01,
                    connector_factory=lambda name: target if name == "erp" else crm) for i in range(2)]
    yield apps, target
    for app in apps:
        app.close()


def received(message: ChangeMessage, n: int = 1) -> Received:
    return Received(to_envelope(message), delivery_count=1, enqueued_at=datetime.now(UTC), sequence_number=n)


def in_thread(app: SyncApp, message: ChangeMessage, into: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            into.extend(apply_batch(app, [received(message)]))
        except Crash as exc:
            into.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def until_settled(app: SyncApp, outcomes: list[Outcome], rounds: int = 20) -> list[Outcome]:
    """Apply the retry clones the outcomes ask for (their delay skipped) until none is left."""
    final = []
    for _ in range(rounds):
        retries = [o for o in outcomes if o.kind is Kind.RETRY]
        final += [o for o in outcomes if o.kind is not Kind.RETRY]
        if not retries:
            return final
        outcomes = apply_batch(app, [received(o.message.retry_clone()) for o in retries])
    raise AssertionError(f"still retrying after {rounds} rounds: {outcomes}")


def assert_newest_won(app: SyncApp, target: GatedTarget, name: str, version: int) -> None:
    assert target.tables["customers"]["N-a1"]["name"] == name
    state = app.state.get_records("accounts", ["crm|a1"])["crm|a1"]
    assert state.versions["crm"] == f"{version:020d}"
    assert state.values["erp"]["name"] == name


def test_an_older_version_writing_late_does_not_win(appliers):
    """v1's writer is slow: v2 is applied by another applier meanwhile. The end state is v2's."""
    (a, b), target = appliers
    entered, release = target.gate("one")
    first: list[Any] = []
    thread = in_thread(a, account("a1", 1, name="one"), first)
    assert entered.wait(5)
    second = apply_batch(b, [received(account("a1", 2, name="two"))])
    release.set()
    thread.join(10)
    settled = until_settled(a, first) + until_settled(b, second)
    assert sorted((o.kind.value, o.reason) for o in settled) == [("applied", "upsert"), ("applied", "upsert")]
    assert_newest_won(a, target, "two", 2)


def test_an_older_version_whose_writer_dies_after_the_target_write_does_not_win(appliers):
    """v1's writer reaches the target after v2 was decided, then dies before recording it; v1 comes back."""
    (a, b), target = appliers
    entered, release = target.gate("one")
    target.crash_after.add("one")
    first: list[Any] = []
    thread = in_thread(a, account("a1", 1, name="one"), first)
    assert entered.wait(5)
    second = apply_batch(b, [received(account("a1", 2, name="two"))])
    release.set()
    thread.join(10)
    assert len(first) == 1 and isinstance(first[0], Crash)
    again = apply_batch(a, [received(account("a1", 1, name="one"), 2)])  # the bus redelivers v1
    until_settled(a, again)
    until_settled(b, second)
    assert_newest_won(a, target, "two", 2)


def test_a_dead_holders_lease_holds_other_versions_back_only_until_it_expires(appliers):
    (a, b), target = appliers
    target.crash_after.add("one")
    with pytest.raises(Crash):
        apply_batch(a, [received(account("a1", 1, name="one"))])  # dies holding the lease
    [wait] = apply_batch(b, [received(account("a1", 2, name="two"))])
    assert (wait.kind, wait.reason) == (Kind.RETRY, "record_busy")
    lease = b.state.get_records("accounts", ["crm|a1"])["crm|a1"].lease
    assert lease is not None and wait.retry_at <= lease.until
    later = lease.until + timedelta(seconds=1)
    b.clock = lambda: later
    [done] = apply_batch(b, [received(wait.message.retry_clone())])
    assert (done.kind, done.reason) == (Kind.APPLIED, "upsert")
    [stale] = apply_batch(a, [received(account("a1", 1, name="one"), 2)])  # the bus redelivers v1
    assert stale.reason == "already_applied"
    assert_newest_won(a, target, "two", 2)


def test_a_commit_that_loses_its_race_resends_the_record_as_its_source_has_it_now(appliers):
    """The holder outlived its lease mid-write and someone else recorded v2 meanwhile: v1's write may have
    overwritten v2's, so the record goes again, read from the source, past the version check."""
    (a, b), target = appliers
    crm = a.connector("crm")
    crm.put("accounts", "a1", {"accountnumber": "N-a1", "name": "two", "statecode": 0})
    entered, release = target.gate("one")
    first: list[Any] = []
    thread = in_thread(a, account("a1", 1, name="one"), first)
    assert entered.wait(5)
    taken = b.state.get_records("accounts", ["crm|a1"])["crm|a1"]
    taken.lease = None
    taken.versions["crm"] = f"{2:020d}"
    assert not b.state.save_records("accounts", [taken])  # as a takeover after expiry would
    release.set()
    thread.join(10)
    [lost] = first
    assert (lost.kind, lost.reason) == (Kind.RETRY, "lost_race")
    assert lost.message.force and lost.message.payload["name"] == "two"
    assert lost.message.version == crm.read_record(a.config.flows["accounts"].source, "a1").version
    until_settled(a, [lost])
    assert target.tables["customers"]["N-a1"]["name"] == "two"


def test_waiting_for_another_versions_lease_spends_no_attempt(app):
    from shared.engine import record_lock
    from shared.state.store import RecordState

    holder = account("a1", 2)
    state = RecordState("crm|a1")
    record_lock.claim(app, "accounts", [(state, record_lock.owner_of(holder))])
    [outcome] = apply_batch(app, [received(account("a1", 3, name="Later"))])
    assert (outcome.kind, outcome.reason) == (Kind.RETRY, "record_busy")
    assert outcome.clone is not None and outcome.clone.attempt == 1 and outcome.clone.throttles == 1
