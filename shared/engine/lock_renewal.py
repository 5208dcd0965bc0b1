"""Keep a delivered batch's peek-locks alive while it is applied.

The Functions host renews locks (host.json ``maxAutoLockRenewalDuration``) only for functions that take one
message at a time; for a batch (``cardinality=many``) nothing does. A batch written to a throttled target can
outlive the queue's lock duration: every settlement then fails, the whole batch is redelivered, and after
``maxDeliveryCount`` healthy messages land in the dead-letter queue as MaxDeliveryCountExceeded. So while a batch
is applied, a background thread renews the lock of every delivery not yet settled, each round a third of the lock
span after the last: a lock is renewed with two thirds of its duration to spare, so one slow or failed round still
leaves time for the next. The batch as a whole is bounded by the host's ``functionTimeout`` (host.json), after
which the host ends the invocation and the locks lapse.

The span is read from the deliveries themselves (the broker's ``locked-until`` on each SDK message): the lock
duration is a property of the queue, and reading it here needs no setting that could disagree with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from shared.ports.bus import Received

_LOG = logging.getLogger("dualsync.apply")

FALLBACK_INTERVAL = 10.0  # seconds, when no delivery says when its lock ends (Service Bus's shortest lock is 5 s)
MIN_INTERVAL = 0.2


def renewal_interval(messages: Sequence[Received], now: datetime) -> float:
    """A third of the shortest lock span left among the deliveries."""
    spans = []
    for message in messages:
        until = getattr(message.handle, "locked_until_utc", None)
        if isinstance(until, datetime):
            spans.append((until - now).total_seconds())
    if not spans:
        return FALLBACK_INTERVAL
    return max(min(spans) / 3, MIN_INTERVAL)


@contextmanager
def locks_kept(messages: Sequence[Received], renew: Callable[[Received], None],
               is_settled: Callable[[Received], bool], interval: float) -> Iterator[None]:
    """Renew each message's lock every ``interval`` seconds until the block ends or the message is settled.

    A renewal that fails (the lock is already gone, the host cannot be reached) is logged and that message is left
    alone from then on: its settlement will report the lost lock, which is handled there."""
    stop = threading.Event()
    given_up: set[int] = set()

    def run() -> None:
        while not stop.wait(interval):
            for message in messages:
                if stop.is_set():
                    return
                if id(message) in given_up or is_settled(message):
                    continue
                try:
                    renew(message)
                except Exception as exc:  # noqa: BLE001 - see the docstring
                    given_up.add(id(message))
                    _LOG.warning("could not renew the lock of message %s: %s: %s", message.envelope.message_id,
                                 type(exc).__name__, exc)

    thread = threading.Thread(target=run, name="dualsync-lock-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
