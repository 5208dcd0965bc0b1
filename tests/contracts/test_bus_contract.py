"""Message bus contract: the Service Bus behaviour the engine relies on, whatever carries the messages.

Backends come from the `bus` fixture (tests/contracts/conftest.py); each gives a fresh queue with
a short lock duration and a small max delivery count, described by `bus.contract`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from shared.errors import LockLostError
from shared.messages import Envelope


def env(i: int | str, **kw) -> Envelope:
    return Envelope(message_id=f"m-{i}", body=f'{{"n": "{i}"}}'.encode(), subject="flow-a",
                    correlation_id="run-1", application_properties={"flow": "flow-a", "key": str(i), "attempt": 1},
                    **kw)


def drain(bus, queue, want: int, wait: float = 5.0):
    got, deadline = [], time.monotonic() + wait
    while len(got) < want and time.monotonic() < deadline:
        got += bus.receive(queue, max_messages=want - len(got), max_wait=0.5)
    return got


def test_send_receive_complete_keeps_envelope(bus, queue):
    bus.send(queue, [env(i) for i in range(30)])
    got = drain(bus, queue, 30)
    assert sorted(m.envelope.message_id for m in got) == sorted(f"m-{i}" for i in range(30))
    first = next(m for m in got if m.envelope.message_id == "m-3")
    assert first.envelope.body == b'{"n": "3"}'
    assert first.envelope.subject == "flow-a" and first.envelope.correlation_id == "run-1"
    assert first.envelope.application_properties == {"flow": "flow-a", "key": "3", "attempt": 1}
    assert first.delivery_count == 1
    bus.settler(queue).complete(got)
    assert bus.receive(queue, max_messages=10, max_wait=0.3) == []
    assert bus.counts(queue).active == 0


def test_duplicate_message_id_is_dropped(bus, queue):
    bus.send(queue, [env(1), env(2)])
    bus.send(queue, [env(1)])
    got = drain(bus, queue, 2)
    assert sorted(m.envelope.message_id for m in got) == ["m-1", "m-2"]
    assert bus.receive(queue, max_messages=5, max_wait=0.3) == []


def test_locked_message_is_invisible_until_the_lock_expires(bus, queue):
    bus.send(queue, [env(1)])
    [first] = drain(bus, queue, 1)
    assert bus.receive(queue, max_messages=1, max_wait=0.2) == []
    time.sleep(bus.contract["lock_duration"] + 0.3)
    [again] = drain(bus, queue, 1)
    assert again.delivery_count == 2
    with pytest.raises(LockLostError):
        bus.settler(queue).complete([first])
    bus.settler(queue).complete([again])


def test_abandon_redelivers_and_max_delivery_dead_letters(bus, queue):
    bus.send(queue, [env(1)])
    settler = bus.settler(queue)
    for attempt in range(1, bus.contract["max_delivery_count"] + 1):
        [m] = drain(bus, queue, 1)
        assert m.delivery_count == attempt
        settler.abandon(m)
    assert bus.receive(queue, max_messages=1, max_wait=0.3) == []
    [dead] = bus.peek_dead_letters(queue)
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert bus.counts(queue).dead_letter == 1


def test_dead_letter_with_reason_then_replay_from_dlq(bus, queue):
    bus.send(queue, [env(1), env(2)])
    got = drain(bus, queue, 2)
    settler = bus.settler(queue)
    bad = next(m for m in got if m.envelope.message_id == "m-1")
    settler.dead_letter(bad, "ValidationFailed", "record 1: field name longer than 100")
    settler.complete([m for m in got if m is not bad])
    [peeked] = bus.peek_dead_letters(queue)
    assert (peeked.dead_letter_reason, peeked.dead_letter_description) == (
        "ValidationFailed", "record 1: field name longer than 100")
    assert peeked.envelope.application_properties["key"] == "1"
    # Peeking does not remove; receiving from the DLQ and completing does.
    assert len(bus.peek_dead_letters(queue)) == 1
    [locked] = bus.receive_dead_letters(queue, max_messages=5, max_wait=2)
    bus.send(queue, [env("1-replay")])
    bus.complete_dead_letters(queue, [locked])
    assert bus.peek_dead_letters(queue) == []
    [replayed] = drain(bus, queue, 1)
    assert replayed.envelope.message_id == "m-1-replay"


def test_scheduled_message_arrives_when_due(bus, queue):
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    bus.send(queue, [env("later", scheduled_enqueue_time_utc=due)])
    counts = bus.counts(queue)
    assert (counts.active, counts.scheduled) == (0, 1)
    assert bus.receive(queue, max_messages=1, max_wait=0.3) == []
    [m] = drain(bus, queue, 1, wait=5)
    assert datetime.now(UTC) >= due - timedelta(milliseconds=50)
    assert m.envelope.message_id == "m-later"


def test_release_held_makes_one_flows_held_changes_due_now_and_nothing_else(bus, queue):
    later = datetime.now(UTC) + timedelta(minutes=5)
    held = [env(i, scheduled_enqueue_time_utc=later) for i in range(3)]
    for envelope in held:
        envelope.application_properties["held"] = "paused"
    other = Envelope(message_id="m-other", body=b"{}", subject="flow-b", scheduled_enqueue_time_utc=later,
                     application_properties={"flow": "flow-b", "key": "x", "held": "paused"})
    retry = env("retry", scheduled_enqueue_time_utc=later)  # a retry keeps its backoff
    bus.send(queue, [*held, other, retry])
    assert bus.release_held(queue, "flow-a") == 3
    got = drain(bus, queue, 3)
    assert sorted(str(m.envelope.application_properties["key"]) for m in got) == ["0", "1", "2"]
    bus.settler(queue).complete(got)
    assert bus.receive(queue, max_messages=5, max_wait=0.3) == []
    assert (bus.counts(queue).active, bus.counts(queue).scheduled) == (0, 2)


def test_concurrent_receivers_never_share_a_message(bus, queue):
    import threading

    bus.send(queue, [env(i) for i in range(200)])
    seen: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        settler = bus.settler(queue)
        while True:
            got = bus.receive(queue, max_messages=20, max_wait=0.5)
            if not got:
                return
            with lock:
                seen.extend(m.envelope.message_id for m in got)
            settler.complete(got)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == sorted(f"m-{i}" for i in range(200))


def test_peek_browses_without_locking(bus, queue):
    bus.send(queue, [env(i) for i in range(5)])
    peeked = bus.peek(queue, max_messages=10)
    assert [m.envelope.message_id for m in peeked] == [f"m-{i}" for i in range(5)]
    assert len(drain(bus, queue, 5)) == 5  # nothing was locked by peeking
    later = bus.peek(queue, max_messages=10, from_sequence=peeked[2].sequence_number)
    assert [m.envelope.message_id for m in later][:1] == ["m-2"]


# -- message size: Service Bus Standard's 256 KB, on every bus --------------------------------------------
LIMIT = 256 * 1024


def change_env(i: int | str, text_bytes: int) -> Envelope:
    from shared.messages import ChangeMessage, to_envelope

    change = ChangeMessage(flow="flow-a", op="upsert", source_system="crm", entity="notes", key=str(i),
                           version="0001", changed_at=datetime(2030, 1, 1, tzinfo=UTC), payload={"t": "x" * text_bytes})
    return to_envelope(change, message_id=f"m-{i}")


def test_a_message_over_256_kb_without_a_payload_store_arrives_as_a_payload_too_large_stub(bus, queue):
    bus.claims.store = None
    bus.send(queue, [change_env("small", LIMIT - 4096), change_env("big", LIMIT)])

    got = {m.envelope.message_id: m for m in drain(bus, queue, 2)}

    assert len(got["m-small"].envelope.body) > LIMIT - 4096  # under the limit: carried as it is
    assert "dead_letter_reason" not in got["m-small"].envelope.application_properties
    stub = got["m-big"].envelope
    assert stub.application_properties["dead_letter_reason"] == "PayloadTooLarge"
    assert "flow flow-a record big" in stub.application_properties["dead_letter_description"]
    assert b'"payload":{}' in stub.body and len(stub.body) < 1024
    bus.settler(queue).complete(list(got.values()))


def test_a_message_over_256_kb_travels_by_reference_and_its_body_lives_until_settled_for_good(bus, queue, tmp_path):
    from shared.bus.claim_check import REF_PROPERTY
    from shared.bus.payload_store import FilePayloadStore

    bus.claims.store = store = FilePayloadStore(tmp_path / "payloads")
    applied, failed = change_env("applied", 2 * LIMIT), change_env("failed", 2 * LIMIT)
    bus.send(queue, [applied, failed])
    stored = lambda: sorted(p.name for p in (tmp_path / "payloads").rglob("*") if p.is_file())  # noqa: E731
    assert len(stored()) == 2
    assert all(len(m.envelope.body) < 1024 for m in bus.peek(queue))  # browsing sees the stubs

    got = {m.envelope.message_id: m for m in drain(bus, queue, 2)}

    assert got["m-applied"].envelope.body == applied.body  # receive hands back the message as it was sent
    assert "dead_letter_reason" not in got["m-applied"].envelope.application_properties
    settler = bus.settler(queue)
    settler.complete([got["m-applied"]])
    settler.dead_letter(got["m-failed"], "ValidationFailed", "bad")
    assert len(stored()) == 1  # the dead letter keeps its body, so it can still be looked at and replayed
    [dead] = bus.receive_dead_letters(queue, max_messages=5, max_wait=1.0)
    assert REF_PROPERTY in dead.envelope.application_properties
    bus.complete_dead_letters(queue, [dead])
    assert stored() == []
    assert store.get(str(dead.envelope.application_properties[REF_PROPERTY])) is None
