"""State store contract: what the engine relies on, whatever holds the state."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from shared.errors import ConcurrencyError
from shared.state.store import Cursor, KeyClaim, KeyLink, RecordState


def test_values_round_trip_exactly(tables):
    data = {"s": "x/y\\z#?", "big": 2**40, "neg": -(2**35), "small": 7, "f": 1.5, "b": True, "n": None,
            "d": {"nested": [1, "two", {"three": 3}]}, "l": ["a", 2**33]}
    tables.insert("cursors", "flow/with#odd?chars", "cursor", data)
    assert tables.get("cursors", "flow/with#odd?chars", "cursor").data == data


def test_insert_is_insert_if_absent(tables):
    tables.insert("cursors", "f", "cursor", {"a": 1})
    with pytest.raises(ConcurrencyError):
        tables.insert("cursors", "f", "cursor", {"a": 2})
    assert tables.get("cursors", "f", "cursor").data == {"a": 1}


def test_update_is_guarded_by_etag(tables):
    etag = tables.insert("cursors", "f", "cursor", {"a": 1})
    newer = tables.update("cursors", "f", "cursor", {"a": 2}, etag)
    assert newer != etag
    with pytest.raises(ConcurrencyError):
        tables.update("cursors", "f", "cursor", {"a": 3}, etag)
    with pytest.raises(ConcurrencyError):
        tables.update("cursors", "absent", "cursor", {"a": 3}, etag)
    assert tables.get("cursors", "f", "cursor").data == {"a": 2}


def test_upsert_many_spans_partitions_and_more_than_a_transaction(tables):
    rows = [(f"p{i % 3}", f"r{i:04d}", {"i": i}) for i in range(250)]
    tables.upsert_many("keymap", rows)
    tables.upsert_many("keymap", [("p0", "r0000", {"i": -1})])
    got = tables.get_many("keymap", "p0", ["r0000", "r0003", "missing"])
    assert {rk: e.data["i"] for rk, e in got.items()} == {"r0000": -1, "r0003": 3}
    assert len(list(tables.query("keymap", "p1"))) == 83
    assert len(list(tables.query("keymap"))) == 250


def test_write_guarded_writes_each_row_on_its_own_condition(tables):
    old = tables.insert("records", "p0", "taken", {"v": 1})
    moved = tables.insert("records", "p0", "moved", {"v": 1})
    tables.update("records", "p0", "moved", {"v": 2}, moved)
    rows = [("p0", "taken", {"v": 9}, None), ("p0", "moved", {"v": 9}, moved), ("p0", "fresh", {"v": 9}, None)]
    rows += [(f"p{i % 2}", f"r{i:03d}", {"v": i}, None) for i in range(230)]  # several transactions
    rows.append(("p1", "taken-update", {"v": 9}, old))  # absent: an update of it cannot hold
    written = tables.write_guarded("records", rows)
    lost = sorted(rk for (_, rk), etag in written.items() if etag is None)
    assert lost == ["moved", "taken", "taken-update"]
    assert len(written) == len(rows)
    assert tables.get("records", "p0", "taken").data == {"v": 1}
    assert tables.get("records", "p0", "moved").data == {"v": 2}
    fresh = tables.get("records", "p0", "fresh")
    assert fresh.data == {"v": 9} and fresh.etag == written[("p0", "fresh")]
    assert len(list(tables.query("records", "p1"))) == 115
    again = tables.write_guarded("records", [("p0", "fresh", {"v": 10}, fresh.etag)])
    assert again[("p0", "fresh")] and tables.get("records", "p0", "fresh").data == {"v": 10}


def test_query_by_prefix_is_ordered_and_complete(tables):
    rows = [("pair", f"{side}|{i:05d}", {}) for side in ("crm", "erp") for i in range(1200)]
    tables.upsert_many("keymap", rows)
    crm = [e.rk for e in tables.query("keymap", "pair", rk_prefix="crm|")]
    assert crm == [f"crm|{i:05d}" for i in range(1200)]


def test_delete(tables):
    tables.upsert_many("keymap", [("p", "r", {})])
    tables.delete("keymap", "p", "r")
    tables.delete("keymap", "p", "never-there")
    assert tables.get("keymap", "p", "r") is None


def test_cursor_lifecycle_and_lost_race(store):
    assert store.get_cursor("f") is None
    expires = datetime.now(UTC) + timedelta(minutes=5)
    created = store.create_cursor(Cursor("f", position={"watermark": "2024-01-01", "last_key": "7"},
                                         lease_owner="me", lease_expires=expires))
    with pytest.raises(ConcurrencyError):
        store.create_cursor(Cursor("f"))
    mine = store.get_cursor("f")
    theirs = store.get_cursor("f")
    mine.position = {"watermark": "2024-01-02", "last_key": "1"}
    store.save_cursor(mine)
    theirs.position = {"watermark": "1999-01-01", "last_key": ""}
    with pytest.raises(ConcurrencyError):
        store.save_cursor(theirs)
    final = store.get_cursor("f")
    assert final.position == {"watermark": "2024-01-02", "last_key": "1"}
    assert final.lease_owner == "me" and final.lease_expires == expires.astimezone(UTC)
    assert created.etag and final.etag == mine.etag


def test_only_one_of_many_concurrent_writers_wins(store):
    store.create_cursor(Cursor("f", position={"n": 0}))
    snapshot = store.get_cursor("f")
    wins, losses = [], []

    def attempt(n: int) -> None:
        c = Cursor("f", position={"n": n}, etag=snapshot.etag)
        try:
            store.save_cursor(c)
            wins.append(n)
        except ConcurrencyError:
            losses.append(n)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    assert store.get_cursor("f").position == {"n": wins[0]}


def test_key_map_both_directions(store):
    store.link_keys("pair", [KeyLink("crm", "A/1#", "erp", "C-1"), KeyLink("crm", "A-2", "erp", "C-2")])
    assert store.lookup_keys("pair", "crm", ["A/1#", "A-2", "nope"]) == {"A/1#": "C-1", "A-2": "C-2"}
    assert store.lookup_keys("pair", "erp", ["C-1"]) == {"C-1": "A/1#"}
    assert store.count_keys("pair", "erp") == 2
    assert list(store.linked_keys("pair", "crm")) == ["A-2", "A/1#"]
    store.unlink_keys("pair", [KeyLink("crm", "A-2", "erp", "C-2")])
    assert store.count_keys("pair", "crm") == 1


def test_a_target_key_is_claimed_once_and_the_claim_becomes_the_link(store):
    """Two claimants of one free key: one insert wins. A claim is no link (lookups and key listings skip it);
    the link written over it is guarded by its etag, and a claim given back or run out can be taken over."""
    until = datetime(2030, 1, 1, tzinfo=UTC)
    mine = KeyClaim("erp", "N/1#", "crm", "G1", until)
    theirs = KeyClaim("erp", "N/1#", "crm", "G2", until)
    free = KeyClaim("erp", "N2", "crm", "G3", until)
    assert store.claim_keys("pair", [mine, free]) == set() and mine.etag and free.etag
    assert store.claim_keys("pair", [theirs]) == {"N/1#"} and theirs.etag is None
    holders = store.key_holders("pair", "erp", ["N/1#", "N2", "nope"])
    assert {k: (h.owner, h.until) for k, h in holders.items()} == {"N/1#": ("G1", until), "N2": ("G3", until)}
    assert holders["N/1#"].etag == mine.etag
    assert store.lookup_keys("pair", "erp", ["N/1#", "N2"]) == {} and list(store.linked_keys("pair", "erp")) == []

    stale = KeyLink("crm", "G9", "erp", "N/1#", claim=theirs.etag or free.etag)  # not the claim on N/1#
    plain = KeyLink("crm", "G5", "erp", "N5")
    assert store.link_keys("pair", [stale, plain]) == [stale]  # nothing of it written; the others are
    assert store.link_keys("pair", [KeyLink("crm", "G1", "erp", "N/1#", claim=mine.etag)]) == []
    assert store.lookup_keys("pair", "crm", ["G1", "G9", "G5"]) == {"G1": "N/1#", "G5": "N5"}
    assert store.lookup_keys("pair", "erp", ["N/1#"]) == {"N/1#": "G1"}
    assert store.key_holders("pair", "erp", ["N/1#"])["N/1#"].until is None  # a link now

    store.release_keys("pair", [free])
    released = store.key_holders("pair", "erp", ["N2"])["N2"]
    assert released.owner == "G3" and released.until < datetime.now(UTC)
    store.release_keys("pair", [free])  # its etag is gone: taken over or given back already, nothing happens
    taker = KeyClaim("erp", "N2", "crm", "G4", until, etag=released.etag)
    assert store.claim_keys("pair", [taker]) == set()
    assert store.key_holders("pair", "erp", ["N2"])["N2"].owner == "G4"


def test_unlinking_keeps_a_target_key_claimed_in_the_same_write(store):
    store.link_keys("pair", [KeyLink("crm", "G1", "erp", "N1")])
    store.unlink_keys("pair", [KeyLink("crm", "G1", "erp", "N1")], keep={("erp", "N1")})
    assert store.lookup_keys("pair", "crm", ["G1"]) == {}
    assert store.key_holders("pair", "erp", ["N1"])["N1"].owner == "G1"


def test_id_aliases_live_beside_the_key_map_without_being_linked_keys(store):
    store.link_keys("pair", [KeyLink("crm", "A-1", "erp", "C-1")])
    store.put_aliases("pair", "crm", "accounts", {"6f9619ff-0000": "A-1", "7a": '["x/1","#2"]'})
    assert store.get_aliases("pair", "crm", "accounts", ["7a", "6f9619ff-0000", "nope"]) == {
        "6f9619ff-0000": "A-1", "7a": '["x/1","#2"]'}
    assert store.get_aliases("pair", "crm", "contacts", ["7a"]) == {}
    assert list(store.linked_keys("pair", "crm")) == ["A-1"] and store.count_keys("pair", "crm") == 1
    store.drop_aliases("pair", "crm", "accounts", ["7a", "never-there"])
    assert store.get_aliases("pair", "crm", "accounts", ["7a", "6f9619ff-0000"]) == {"6f9619ff-0000": "A-1"}


def test_pull_bookkeeping_round_trips(store):
    error = {"error": "TransientError: 503", "since": "2026-03-01T12:00:00+00:00", "at": "2026-03-01T12:05:00+00:00",
             "run_id": "r1"}
    store.create_cursor(Cursor("f", deletes_pending="2026-03-01T12:00:00+00:00", last_error=error))
    got = store.get_cursor("f")
    assert (got.deletes_pending, got.last_error) == ("2026-03-01T12:00:00+00:00", error)
    store.put_records("pair", [RecordState("crm|1", versions={"crm": "v1"}, tombstones={"crm": "2026-03-01"})])
    assert store.get_records("pair", ["crm|1"])["crm|1"].tombstones == {"crm": "2026-03-01"}


def test_record_state_round_trip_across_buckets(store):
    now = datetime.now(UTC)
    records = [RecordState(f"crm|{i}", versions={"crm": f"{i:020d}"},
                           values={"erp": {"name": f"n{i}", "limit": 2**40}}, synced_at=now) for i in range(300)]
    store.put_records("pair", records)
    got = store.get_records("pair", [f"crm|{i}" for i in range(0, 300, 7)] + ["crm|missing"])
    assert len(got) == len(range(0, 300, 7))
    assert got["crm|14"].versions == {"crm": f"{14:020d}"}
    assert got["crm|14"].values["erp"]["limit"] == 2**40
    assert got["crm|14"].synced_at == now


def test_runs_newest_first(store):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(5):
        store.add_run("f", {"run_id": f"r{i}", "pulled": i}, at=base + timedelta(minutes=i))
    assert [r["pulled"] for r in store.recent_runs("f", limit=3)] == [4, 3, 2]


def test_batches_of_one_run_written_at_the_same_moment_are_all_kept(store):
    """Apply instances count their batches into the run history as rows of their own, never overwriting."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    for batch in ("b1", "b2"):
        store.add_run("applied:f", {"run_id": "r1", "batch": batch, "applied": 1}, at=moment)
    assert sum(r["applied"] for r in store.recent_runs("applied:f")) == 2


def test_jobs_are_written_only_over_the_version_read(store):
    from shared.errors import ConcurrencyError

    etag = store.create_job("0" * 32, {"status": "queued", "matched": 0})
    data, read_etag = store.get_job("0" * 32)
    assert data == {"status": "queued", "matched": 0} and read_etag == etag
    newer = store.save_job("0" * 32, {"status": "running", "matched": 100}, etag)
    with pytest.raises(ConcurrencyError):
        store.save_job("0" * 32, {"status": "done", "matched": 1}, etag)  # another instance wrote since
    assert store.get_job("0" * 32) == ({"status": "running", "matched": 100}, newer)
    assert [job_id for job_id, _ in store.list_jobs()] == ["0" * 32] and store.get_job("f" * 32) is None


def test_failure_ledger(store):
    store.record_failure("q", "flow:key/1:v", "ValidationFailed", "record key/1: field name too long")
    assert store.get_failure("q", "flow:key/1:v") == {"reason": "ValidationFailed",
                                                      "description": "record key/1: field name too long"}
    assert store.get_failure("q", "other") is None
    store.record_failure("q", "flow:key/2:v", "TargetRejected", "rejected", sequence_number=2**40)
    assert store.get_failure("q", "flow:key/2:v")["sequence_number"] == 2**40  # Service Bus numbers are 64-bit
    store.clear_failure("q", "flow:key/2:v")
    assert store.get_failure("q", "flow:key/2:v") is None
