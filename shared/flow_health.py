"""Per-flow health gauges, so a flow that stopped pulling is not silent.

End-to-end lag is measured only when a change is applied: a flow whose pull has failed for hours (an expired
secret, a dropped table) applies nothing and so raises no lag at all. Two observable gauges report every
flow's state from its cursor in the state store, whichever instance pulled it last:

- ``dualsync.since_last_pull`` (seconds): now minus the end of the flow's last successful pull. Grows while the
  pull fails or never runs. Not reported for paused or disabled flows (they are not expected to pull).
- ``dualsync.flow_paused`` (1 or 0): the flow is paused (an auth failure, or an operator).

The alerts in infra/app/alerts.bicep read both from Application Insights (`customMetrics`). The cursors are
read at most once per collection (every export interval, a minute by default): one small query.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from shared.app import SyncApp
from shared.state.store import Cursor

log = logging.getLogger("dualsync.health")
_meter = metrics.get_meter("dualsync")

SINCE_LAST_PULL = "dualsync.since_last_pull"
FLOW_PAUSED = "dualsync.flow_paused"
_SNAPSHOT_SECONDS = 10.0  # both gauges are collected together: one read of the cursors serves both

_lock = threading.Lock()
_watched: list[SyncApp] = []
_snapshot: tuple[float, list[tuple[SyncApp, list[Cursor]]]] = (0.0, [])


def watch(app: SyncApp) -> None:
    """Report this app's flows in the gauges (once per process; the Functions worker's app, `dualsync run`'s)."""
    with _lock:
        if not any(w is app for w in _watched):
            _watched.append(app)


def unwatch(app: SyncApp) -> None:
    with _lock:
        _watched[:] = [w for w in _watched if w is not app]


def last_successful_pull(cursor: Cursor) -> datetime | None:
    """When the flow's last successful pull ended. Cursors written before `last_success` existed: the end of
    the last run if it succeeded, else the first failure since (the last success was before it)."""
    moment = cursor.last_success
    if moment is None and cursor.last_run.get("status") == "ok":
        moment = cursor.last_run.get("finished_at")
    if moment is None and cursor.last_error:
        moment = cursor.last_error.get("since")
    return datetime.fromisoformat(moment) if moment else None


def _cursors() -> list[tuple[SyncApp, list[Cursor]]]:
    global _snapshot
    with _lock:
        taken, cursors = _snapshot
        if time.monotonic() - taken < _SNAPSHOT_SECONDS:
            return cursors
        watched = list(_watched)
    fresh = []
    for app in watched:
        try:
            fresh.append((app, [c for c in app.state.list_cursors() if c.flow in app.config.flows]))
        except Exception as exc:  # noqa: BLE001 - a gauge must never break the exporter; the next collection retries
            log.warning("flow health: cannot read the cursors: %s: %s", type(exc).__name__, exc)
    with _lock:
        _snapshot = (time.monotonic(), fresh)
    return fresh


def _since_last_pull(options: CallbackOptions) -> Iterable[Observation]:
    for app, cursors in _cursors():
        now = app.clock()
        for cursor in cursors:
            if cursor.paused or not app.config.flows[cursor.flow].enabled:
                continue
            last = last_successful_pull(cursor)
            if last is not None:
                yield Observation(max(0.0, (now - last).total_seconds()), {"flow": cursor.flow})


def _paused(options: CallbackOptions) -> Iterable[Observation]:
    for app, cursors in _cursors():
        for cursor in cursors:
            yield Observation(1 if cursor.paused else 0, {"flow": cursor.flow})


def _forget_snapshot() -> None:
    """Tests: the next collection reads the cursors again."""
    global _snapshot
    with _lock:
        _snapshot = (0.0, [])


_meter.create_observable_gauge(SINCE_LAST_PULL, [_since_last_pull], unit="s",
                               description="seconds since the flow's last successful pull")
_meter.create_observable_gauge(FLOW_PAUSED, [_paused], unit="{flow}", description="1 while the flow is paused")
