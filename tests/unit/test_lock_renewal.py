"""The lock keeper on its own: cadence from the deliveries' lock spans, and a renewal that fails is given up."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from shared.engine.lock_renewal import FALLBACK_INTERVAL, MIN_INTERVAL, locks_kept, renewal_interval
from shared.messages import Envelope
from shared.ports.bus import Received


def received(n: int, locked_until: datetime | None = None) -> Received:
    return Received(envelope=Envelope(message_id=f"m{n}", body=b"{}"), delivery_count=1,
                    enqueued_at=datetime.now(UTC), sequence_number=n, lock_token=f"t{n}",
                    handle=SimpleNamespace(locked_until_utc=locked_until))


def test_interval_is_a_third_of_the_shortest_lock_left():
    now = datetime.now(UTC)
    batch = [received(1, now + timedelta(seconds=300)), received(2, now + timedelta(seconds=270))]
    assert renewal_interval(batch, now) == 90
    assert renewal_interval([received(1)], now) == FALLBACK_INTERVAL
    assert renewal_interval([received(1, now - timedelta(seconds=1))], now) == MIN_INTERVAL


def test_a_failed_renewal_is_logged_and_not_retried_and_settled_messages_are_left_alone(caplog):
    batch = [received(1), received(2), received(3)]
    calls: list[str] = []
    lock = threading.Lock()

    def renew(message: Received) -> None:
        with lock:
            calls.append(message.envelope.message_id)
        if message.envelope.message_id == "m2":
            raise RuntimeError("lock lost")

    with caplog.at_level(logging.WARNING, logger="dualsync.apply"), \
            locks_kept(batch, renew, lambda m: m.envelope.message_id == "m3", interval=0.05):
        time.sleep(0.4)
    assert calls.count("m2") == 1 and calls.count("m1") >= 3 and "m3" not in calls
    assert "could not renew the lock of message m2" in caplog.text
    stopped = len(calls)
    time.sleep(0.15)
    assert len(calls) == stopped
