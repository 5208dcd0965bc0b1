"""The embedded runtime behind `dualsync run`: pullers on their schedules and apply workers, one machine.

The calling process pulls in a thread, drives the apply workers (`shared.apply_workers`) and merges their
counts; it decides when the queue is drained (`run_once`) or keeps going until stopped (`run_forever`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from croniter import croniter

from shared.app import SyncApp
from shared.apply_workers import (
    IDLE_POLL,
    ProgressWatch,
    RunOptions,
    describe_error,
    finish_run,
    has_active,
    release_orphaned_locks,
    start_appliers,
)
from shared.engine.pull import pull_flow
from shared.engine.schedule import reconcile_due_flows, to_croniter
from shared.engine.tally import Tally


def run_once(
    app: SyncApp, options: RunOptions | None = None, on_progress: Callable[[Tally], None] | None = None,
    stop: threading.Event | None = None,
) -> Tally:
    """Pull every enabled flow once, apply everything, wait for retries due within the bound, report.
    `stop` (Ctrl+C) ends it early: no further flow is pulled, workers finish their batch, the rest stays queued."""
    options = options or RunOptions()
    stop = stop or threading.Event()
    tally = Tally()
    release_orphaned_locks(app)
    exhausted_before = _open_counts(app, tally)
    errors: list[str] = []
    appliers = start_appliers(app, tally, options)
    pulling = threading.Event()
    pulling.set()

    def pull_all() -> None:
        try:
            for name in app.config.flows:  # one flow's failure is its own: the others are pulled
                if stop.is_set():
                    break
                _pull(app, tally, name, on_page=lambda n: on_progress and on_progress(tally))
        finally:
            pulling.clear()

    puller = threading.Thread(target=pull_all, name="pull")
    puller.start()
    watch = ProgressWatch(app)
    try:
        while not stop.is_set() and (pulling.is_set() or not _drained(app, options.drain_bound)):
            watch.progressed(appliers.step(max_wait=IDLE_POLL))
            if on_progress:
                on_progress(tally)
    finally:
        puller.join()
        appliers.close()
    _close_counts(app, tally, exhausted_before)
    finish_run(tally, appliers, errors)
    if on_progress:
        on_progress(tally)
    return tally


def _pull(app: SyncApp, tally: Tally, name: str, on_page: Callable[[int], None] | None = None) -> None:
    """Pull one flow and count what it sent, also when it failed part way (its error goes in the tally)."""
    try:
        result = pull_flow(app, name, on_page=on_page)
    except Exception as exc:  # noqa: BLE001 - the state store failed: nothing could be recorded on the flow
        tally.pull_failed(name, describe_error(exc))
        return
    tally.pulled(name, result.sent, result.duplicates)
    if result.error:
        tally.pull_failed(name, result.error)


def _drained(app: SyncApp, bound: float) -> bool:
    if has_active(app):
        return False
    next_due = getattr(app.bus, "next_due", lambda q: None)(app.queue)
    return next_due is None or next_due > datetime.now(UTC) + timedelta(seconds=bound)


def _unsettled(app: SyncApp) -> dict[str, int]:
    by_flow = getattr(app.bus, "counts_by_flow", None)
    return by_flow(app.queue) if by_flow else {}


def _open_counts(app: SyncApp, tally: Tally) -> dict[str, int]:
    """What is on the bus as a run starts; returns the bus's own dead letters so far, per flow."""
    for flow, n in _unsettled(app).items():
        tally.flows[flow].backlog = n
    return _exhausted(app)


def _close_counts(app: SyncApp, tally: Tally, exhausted_before: dict[str, int]) -> None:
    """What is still on the bus as a run ends, so every flow's counts add up."""
    for flow, n in _unsettled(app).items():
        tally.flows[flow].waiting = n
    for flow, n in _exhausted(app).items():
        # Redelivered until the bus gave up (crashes, lost locks): no apply step saw its end, but it counts.
        if n > exhausted_before.get(flow, 0):
            tally.flows[flow].dead_lettered["MaxDeliveryCountExceeded"] += n - exhausted_before.get(flow, 0)


def _exhausted(app: SyncApp) -> dict[str, int]:
    by_flow = getattr(app.bus, "exhausted_by_flow", None)
    return by_flow(app.queue) if by_flow else {}


def run_forever(app: SyncApp, options: RunOptions, stop: threading.Event,
                on_progress: Callable[[Tally], None] | None = None) -> Tally:
    """Pull each flow on its NCRONTAB schedule while workers apply continuously, until `stop` is set."""
    tally = Tally()
    release_orphaned_locks(app)
    exhausted_before = _open_counts(app, tally)
    errors: list[str] = []
    appliers = start_appliers(app, tally, options)
    now = datetime.now(UTC)
    schedules = {name: _schedule(flow.schedule, now) for name, flow in app.config.flows.items()}
    due = {name: now for name in schedules}  # every flow once at start, then on its schedule

    def pull_due() -> None:
        reconciled_at = 0.0
        while not stop.is_set():
            now = datetime.now(UTC)
            for name, when in due.items():
                if when <= now and not stop.is_set():
                    _pull(app, tally, name)  # a failure is recorded and shown; the next schedule tries again
                    due[name] = next(schedules[name])
            if time.monotonic() - reconciled_at >= 60:  # reconcile schedules are coarse; a check a minute will do
                reconciled_at = time.monotonic()
                try:
                    for result in reconcile_due_flows(app):
                        tally.pulled(result.flow, result.deleted, result.duplicates)
                except Exception as exc:  # noqa: BLE001 - the next check tries again
                    errors.append(f"reconcile: {describe_error(exc)}")
            stop.wait(0.5)

    # A daemon, waited for a bounded time: a pull in progress when we stop is dropped (what it sent is on the
    # bus, its cursor did not move, so the next run sends it again and duplicate detection drops the copies).
    puller = threading.Thread(target=pull_due, name="pull", daemon=True)
    puller.start()
    watch = ProgressWatch(app)
    try:
        while not stop.is_set():
            watch.progressed(appliers.step(max_wait=0.5))
            if on_progress:
                on_progress(tally)
    finally:
        stop.set()
        appliers.close()
        puller.join(options.stop_timeout)
        if puller.is_alive():
            errors.append("pull: still running when stopped; its changes are sent again by the next run")
        _close_counts(app, tally, exhausted_before)
        finish_run(tally, appliers, errors)
    return tally


def _schedule(ncrontab: str, start: datetime):  # noqa: ANN202 - an iterator of datetimes
    cron = croniter(to_croniter(ncrontab), start)
    while True:
        yield cron.get_next(datetime)
