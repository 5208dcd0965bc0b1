"""Metrics and structured logs for settled messages: counted by flow and reason, no payload in logs."""

from __future__ import annotations

import logging

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.unit.conftest import account, deliver

READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def meter_provider():
    # The global provider can be set once per process; the instruments created at import bind to it.
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))


def points(name: str) -> dict[tuple, float]:
    found: dict[tuple, float] = {}
    data = READER.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    for p in metric.data.data_points:
                        value = getattr(p, "value", None)
                        found[tuple(sorted(p.attributes.items()))] = value if value is not None else p.count
    return found


def test_outcomes_are_counted_by_flow_and_reason_and_logged_without_payload(app, caplog):
    caplog.set_level(logging.INFO, logger="dualsync")
    secret_name = "Top Secret Customer Name That Is Far Too Long"
    deliver(app, account("ok", 1), account("bad", 1, name=secret_name))
    applied = points("dualsync.applied")
    dead = points("dualsync.dead_lettered")
    assert applied[(("flow", "accounts"),)] >= 1
    assert dead[(("flow", "accounts"), ("reason", "ValidationFailed"))] >= 1
    assert points("dualsync.end_to_end_lag")[(("flow", "accounts"),)] >= 2
    [record] = [r for r in caplog.records if getattr(r, "outcome", None) == "dead_letter"]
    assert (record.flow, record.key, record.attempt, record.reason) == ("accounts", "bad", 1, "ValidationFailed")
    assert record.levelno == logging.WARNING
    assert secret_name not in record.getMessage()


def test_a_flow_name_the_config_does_not_know_is_counted_as_unknown(app):
    from tests.unit.conftest import change

    crafted = [f"crafted-{i}" for i in range(5)]
    deliver(app, *(change("k", 1, flow=name) for name in crafted))
    dead = points("dualsync.dead_lettered")
    assert not [attrs for attrs in dead if any(v.startswith("crafted-") for _, v in attrs)]
    assert dead[(("flow", "unknown"), ("reason", "UnknownFlow"))] >= 5


def test_flow_health_gauges_are_exported_per_flow(app):
    from shared import flow_health
    from shared.engine.cursor_lease import pause_flow
    from shared.engine.pull import pull_flow

    pull_flow(app, "accounts", owner="t")
    pause_flow(app.state, "contacts", "paused by an operator")
    flow_health.watch(app)
    flow_health._forget_snapshot()
    try:
        since = points(flow_health.SINCE_LAST_PULL)
        assert set(since) == {(("flow", "accounts"),)} and 0 <= since[(("flow", "accounts"),)] < 60
        assert points(flow_health.FLOW_PAUSED) == {(("flow", "accounts"),): 0, (("flow", "contacts"),): 1}
    finally:
        flow_health.unwatch(app)
