"""Key-set reconciliation: deletes found by comparing the source's keys with the key map, in flat memory."""

from __future__ import annotations

import copy
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import parse_config
from shared.connectors.sql import SqlConnector
from shared.engine.cursor_lease import pause_flow
from shared.engine.deletes import DELETE_SUFFIX
from shared.engine.delivery import handle_delivery
from shared.engine.reconcile import reconcile_deletes, runs_partition
from shared.engine.schedule import pull_due_flows, reconcile_due_flows
from shared.errors import ConfigError
from shared.messages import parse_body
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import KeyLink, RecordState, StateStore
from tests.fakes.memory_connector import MemoryConnector
from tests.unit.conftest import CONFIG, account, deliver


def _link(app: SyncApp, *keys: str, pair: str = "accounts") -> None:
    app.state.link_keys(pair, [KeyLink("crm", k, "erp", f"N-{k}") for k in keys])


def _queued(app: SyncApp) -> list:
    return [parse_body(r.envelope.body) for r in app.bus.peek(app.queue, max_messages=1000)]


def _drain(app: SyncApp) -> list:
    outcomes = []
    while batch := app.bus.receive(app.queue, max_messages=100, max_wait=0.2):
        outcomes += handle_delivery(app, batch, app.bus.settler(app.queue))
    return outcomes


def test_linked_keys_the_source_lost_become_deletes_that_apply_carries_out(app, memory):
    deliver(app, *(account(k, 1, number=f"N-{k}") for k in ("a1", "a2", "a3", "a4", "a5")))
    for key in ("a1", "a2", "a3", "a4", "a5"):
        memory["crm"].put("accounts", key, {"accountid": key})
    for key in ("a2", "a4"):
        del memory["crm"].tables["accounts"][key]

    result = reconcile_deletes(app, "accounts")

    assert (result.status, result.scanned, result.known, result.deleted) == ("ok", 3, 5, 2)
    queued = _queued(app)
    assert sorted(m.key for m in queued) == ["a2", "a4"]
    assert all(m.op == "delete" and m.version == f"{1:020d}{DELETE_SUFFIX}" for m in queued)
    outcomes = _drain(app)
    assert [o.kind.value for o in outcomes] == ["applied", "applied"]
    erp = memory["erp"].tables["customers"]
    assert {k: r["status"] for k, r in erp.items()} == {
        "N-a1": "active", "N-a2": "inactive", "N-a3": "active", "N-a4": "inactive", "N-a5": "active"}
    run = app.state.recent_runs(runs_partition("accounts"), 1)[0]
    assert (run["kind"], run["deleted"], run["scanned"]) == ("reconcile", 2, 3)


def test_the_same_delete_as_pull_infers_so_duplicate_detection_drops_a_rerun(app, memory):
    _link(app, "k1", "k2")
    memory["crm"].put("accounts", "k1", {})
    assert reconcile_deletes(app, "accounts").deleted == 1
    assert reconcile_deletes(app, "accounts").deleted == 1  # sent again ...
    assert app.bus.counts(app.queue).active == 1  # ... and dropped: same message_id as the first
    (message,) = _queued(app)
    assert (message.key, message.version, message.op) == ("k2", DELETE_SUFFIX, "delete")


def test_an_empty_source_deletes_everything_linked_and_an_empty_key_map_nothing(app, memory):
    _link(app, *(f"k{i}" for i in range(7)))
    assert reconcile_deletes(app, "accounts", batch_size=3).deleted == 7
    memory["crm"].put("accounts", "x", {})
    result = reconcile_deletes(app, "contacts")
    assert (result.scanned, result.known, result.deleted) == (0, 0, 0)


class _Snapshot(MemoryConnector):
    """iter_keys sees the table as it was when the scan started (a database snapshot)."""

    def __init__(self, snapshot: list[str]) -> None:
        super().__init__()
        self.snapshot = snapshot

    def iter_keys(self, source):  # noqa: ANN001, ANN201
        yield from self.snapshot


def test_a_candidate_created_during_the_scan_is_rechecked_not_deleted(app, memory):
    memory["crm"] = _Snapshot(["k1"])
    for key in ("k1", "k2"):  # k2 was created and linked after the scan's snapshot
        memory["crm"].put("accounts", key, {})
    _link(app, "k1", "k2", "k3")
    result = reconcile_deletes(app, "accounts")
    assert (result.deleted, result.present_on_recheck) == (1, 1)
    assert [m.key for m in _queued(app)] == ["k3"]


def test_keys_out_of_order_stop_the_run(app, memory):
    memory["crm"] = _Snapshot(["k1", "k3", "k2"])
    for key in ("k1", "k2", "k3"):
        memory["crm"].put("accounts", key, {})
    _link(app, "k1", "k2", "k3", "k4")
    with pytest.raises(ConfigError, match="not in ascending"):
        reconcile_deletes(app, "accounts")


def test_paused_disabled_and_ignoring_flows_are_not_scanned(app, memory):
    _link(app, "k1")
    pause_flow(app.state, "accounts", "operator")
    assert reconcile_deletes(app, "accounts").status == "paused"
    config = copy.deepcopy(CONFIG)
    config["flows"]["accounts"]["deletes"] = "ignore"
    config["flows"]["contacts"]["enabled"] = False
    app.config = parse_config(config)
    assert reconcile_deletes(app, "accounts").status == "deletes_ignored"
    assert reconcile_deletes(app, "contacts").status == "disabled"
    assert memory["crm"].key_scans == 0 and app.bus.counts(app.queue).active == 0


def test_the_reverse_flow_of_a_pair_versions_its_deletes_by_the_anchor_record(tmp_path):
    from tests.unit.test_bidirectional import pair_config

    config = pair_config()
    config["flows"]["customers-to-crm"]["deletes"] = "delete"
    memory = {"crm": MemoryConnector(), "erp": MemoryConnector()}
    app = SyncApp(config=parse_config(config), state=StateStore(SqliteTables(":memory:")),
                  bus=SqliteBus(tmp_path / "bus.db"), connector_factory=lambda name: memory[name])
    try:
        app.state.link_keys("accounts", [KeyLink("crm", "CRM-1", "erp", "E-1"), KeyLink("crm", "CRM-2", "erp", "E-2")])
        app.state.put_records("accounts", [RecordState("crm|CRM-1", versions={"erp": "v000007", "crm": "v9"})])
        memory["erp"].put("customers", "E-2", {})
        result = reconcile_deletes(app, "customers-to-crm")  # source erp; the pair's anchor is crm
        assert result.deleted == 1
        (message,) = _queued(app)
        assert (message.key, message.source_system, message.version) == ("E-1", "erp", "v000007" + DELETE_SUFFIX)
    finally:
        app.close()


def test_the_scheduler_reconciles_when_the_flows_ncrontab_comes_round(app, memory):
    config = copy.deepcopy(CONFIG)
    config["flows"]["accounts"]["reconcile"] = "0 0 3 * * *"  # 03:00 every day
    app.config = parse_config(config)
    _link(app, "gone")
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    app.clock = lambda: now
    seen = []
    pull_due_flows(app, owner="t", on_reconcile=seen.append)
    assert [(r.flow, r.deleted) for r in seen] == [("accounts", 1)]  # never reconciled: due at once
    assert reconcile_due_flows(app, now + timedelta(hours=14)) == []  # 02:00 next day: not yet
    later = reconcile_due_flows(app, now + timedelta(hours=15, minutes=1))
    assert [r.flow for r in later] == ["accounts"]
    assert [r["kind"] for r in app.state.recent_runs("accounts", 10)].count("reconcile") == 2


def test_a_failing_reconcile_is_recorded_and_waits_for_its_next_slot(app, memory):
    config = copy.deepcopy(CONFIG)
    config["flows"]["accounts"]["reconcile"] = "0 0 * * * *"
    app.config = parse_config(config)
    memory["crm"] = _Snapshot(["b", "a"])
    _link(app, "a")
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    app.clock = lambda: now
    (failed,) = reconcile_due_flows(app, now)
    assert failed.status == "failed" and "not in ascending" in failed.notes[0]
    assert reconcile_due_flows(app, now + timedelta(minutes=5)) == []


# -- flat memory -----------------------------------------------------------------------------------

N_KEYS = 200_000
GONE_EVERY = 200


def test_reconciling_200k_keys_keeps_memory_flat(tmp_path):
    source_url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = sa.create_engine(source_url)
    accounts = sa.Table("accounts", sa.MetaData(), sa.Column("accountid", sa.String(20), primary_key=True),
                        sa.Column("modified_at", sa.DateTime))
    accounts.create(engine)
    keys = [f"acc-{i:07d}" for i in range(N_KEYS)]
    with engine.begin() as conn:
        conn.execute(sa.insert(accounts), [{"accountid": k} for i, k in enumerate(keys) if i % GONE_EVERY])
    engine.dispose()
    state = StateStore(SqliteTables(tmp_path / "state.db"))
    for start in range(0, N_KEYS, 20_000):
        state.link_keys("accounts", [KeyLink("crm", k, "erp", f"N-{k}") for k in keys[start:start + 20_000]])
    del keys
    connectors = {"crm": SqlConnector(source_url), "erp": MemoryConnector()}
    app = SyncApp(config=parse_config(CONFIG), state=state, bus=SqliteBus(tmp_path / "bus.db"),
                  connector_factory=lambda name: connectors[name])
    try:
        spec = app.config.flows["accounts"].source
        tracemalloc.start()
        naive = set(connectors["crm"].iter_keys(spec))  # what holding the source's key set would take
        set_peak = tracemalloc.get_traced_memory()[1]
        set_bytes = sys.getsizeof(naive) + sum(sys.getsizeof(k) for k in naive)
        del naive
        tracemalloc.stop()

        tracemalloc.start()
        started = time.perf_counter()
        result = reconcile_deletes(app, "accounts")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        app.close()
    print(f"\nreconcile {N_KEYS} keys: scanned {result.scanned}, known {result.known}, deleted {result.deleted} "
          f"in {elapsed:.1f}s (traced); tracemalloc peak {peak / 1e6:.2f} MB vs {set_peak / 1e6:.2f} MB to build "
          f"the source's key set ({set_bytes / 1e6:.2f} MB held)")
    gone = N_KEYS // GONE_EVERY
    assert (result.scanned, result.known, result.deleted) == (N_KEYS - gone, N_KEYS, gone)
    assert peak < set_bytes / 4, f"peak {peak} bytes is not well below a key set's {set_bytes} bytes"
