"""The embedded runtime behind `dualsync run`: pullers on their schedules, apply workers, one machine.

Workers take a batch from the bus and split it by record so no two threads ever apply the same record
at once (out-of-order writes of one record would let an older version win).
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from shared.app import SyncApp
from shared.engine.apply import apply_batch
from shared.engine.pull import pull_flow
from shared.engine.schedule import to_croniter
from shared.engine.settle import settle
from shared.engine.tally import Tally
from shared.ports.bus import Received

APPLY_BATCH = 1000


@dataclass
class RunOptions:
    workers: int = 2
    drain_bound: float = 60.0  # --once waits for retries due within this many seconds
    batch_size: int = APPLY_BATCH


def _record_of(received: Received) -> str:
    props = received.envelope.application_properties
    return f"{props.get('flow', '')}|{props.get('key', received.envelope.message_id)}"


class ApplyWorkers:
    """One receiver; each batch is split by record hash across a thread pool."""

    def __init__(self, app: SyncApp, tally: Tally, options: RunOptions) -> None:
        self.app, self.tally, self.options = app, tally, options
        self.pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="apply")
        self.settler = app.bus.settler(app.queue)
        self.errors: list[str] = []

    def step(self, max_wait: float = 0.2) -> int:
        batch = self.app.bus.receive(self.app.queue, max_messages=self.options.batch_size, max_wait=max_wait)
        if not batch:
            return 0
        parts: list[list[Received]] = [[] for _ in range(self.options.workers)]
        for received in batch:
            parts[zlib.crc32(_record_of(received).encode()) % self.options.workers].append(received)
        for future in [self.pool.submit(self._apply, part) for part in parts if part]:
            future.result()
        return len(batch)

    def _apply(self, part: list[Received]) -> None:
        try:
            outcomes = apply_batch(self.app, part)
            settle(self.app, self.settler, outcomes)
        except Exception as exc:  # a bug or an outage: leave the messages to the lock expiry / delivery count
            self.errors.append(f"{type(exc).__name__}: {exc}")
            for received in part:
                try:
                    self.settler.abandon(received)
                except Exception:  # noqa: BLE001 - the lock expiry redelivers it anyway
                    pass
            return
        self.tally.record(outcomes)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def run_once(
    app: SyncApp, options: RunOptions | None = None, on_progress: Callable[[Tally], None] | None = None
) -> Tally:
    """Pull every enabled flow once, apply everything, wait for retries due within the bound, report."""
    options = options or RunOptions()
    tally = Tally()
    _recover(app)
    for flow, n in _unsettled(app).items():
        tally.flows[flow].backlog = n
    workers = ApplyWorkers(app, tally, options)
    pulling = threading.Event()
    pulling.set()

    def pull_all() -> None:
        try:
            for name in app.config.flows:
                result = pull_flow(app, name, on_page=lambda n, name=name: on_progress and on_progress(tally))
                tally.pulled(name, result.pulled, result.duplicates)
        finally:
            pulling.clear()

    puller = threading.Thread(target=pull_all, name="pull")
    puller.start()
    try:
        while pulling.is_set() or not _drained(app, options.drain_bound):
            workers.step()
            if on_progress:
                on_progress(tally)
    finally:
        puller.join()
        workers.close()
    for flow, n in _unsettled(app).items():
        tally.flows[flow].waiting = n
    tally.errors = workers.errors  # type: ignore[attr-defined]
    return tally


def _recover(app: SyncApp) -> None:
    release = getattr(app.bus, "release_orphaned_locks", None)
    if release:
        release(app.queue)


def _drained(app: SyncApp, bound: float) -> bool:
    counts = app.bus.counts(app.queue)
    if counts.active:
        return False
    next_due = getattr(app.bus, "next_due", lambda q: None)(app.queue)
    return next_due is None or next_due > datetime.now(UTC) + timedelta(seconds=bound)


def _unsettled(app: SyncApp) -> dict[str, int]:
    by_flow = getattr(app.bus, "counts_by_flow", None)
    return by_flow(app.queue) if by_flow else {}


def run_forever(app: SyncApp, options: RunOptions, stop: threading.Event,
                on_progress: Callable[[Tally], None] | None = None) -> Tally:
    """Pull each flow on its NCRONTAB schedule while workers apply continuously, until `stop` is set."""
    tally = Tally()
    _recover(app)
    workers = ApplyWorkers(app, tally, options)
    now = datetime.now(UTC)
    schedules = {name: _schedule(flow.schedule, now) for name, flow in app.config.flows.items()}
    due = {name: next(iter_) for name, iter_ in schedules.items()}
    try:
        while not stop.is_set():
            now = datetime.now(UTC)
            for name, when in due.items():
                if when <= now:
                    result = pull_flow(app, name)
                    tally.pulled(name, result.pulled, result.duplicates)
                    due[name] = next(schedules[name])
            if not workers.step(max_wait=0.5):
                time.sleep(0.1)
            if on_progress:
                on_progress(tally)
    finally:
        workers.close()
    return tally


def _schedule(ncrontab: str, start: datetime):  # noqa: ANN202 - an iterator of datetimes
    cron = croniter(to_croniter(ncrontab), start)
    while True:
        yield cron.get_next(datetime)
