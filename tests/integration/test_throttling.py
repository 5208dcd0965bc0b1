"""Throttling is not failure: against the Dataverse simulator with injected 429s, throttled changes wait as long
as the server asks (within the flow's throttle budget, measured in time) and keep their attempts for real
errors, which still dead-letter after max_attempts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dvsim.pytest_fixtures import dataverse_sim, dataverse_sim_factory  # noqa: F401
from shared.engine.outcome import Kind
from shared.engine.pull import pull_flow
from shared.engine.replay import ReplayFilter, replay_dead_letters
from shared.errors import Reason
from shared.messages import ChangeMessage, to_envelope
from tests.integration.test_dataverse_connector import (  # noqa: F401 - fixtures
    CUSTOMERS_TO_CRM,
    _token,
    drain,
    erp,
    insert_erp,
    sim,
    kinds,
    make_app,
)

RECORDS = 200
# The connector waits out a 429 itself, for all its requests at once (test_dataverse_write_limits); with no
# time for that, it hands every 429 to the engine, whose throttle budget these tests are about.
HAND_ON = {"max_throttle_wait_seconds": 0}


def customers(n: int) -> list[dict]:
    return [{"account_number": f"C{i:04d}", "name": f"Customer {i}", "status": 0, "credit": None,
             "modified_at": datetime(2026, 1, 1) + timedelta(seconds=i)} for i in range(n)]


def flow(**settings) -> dict:  # noqa: ANN003
    return {"customers-to-crm": {**CUSTOMERS_TO_CRM, "max_attempts": 4, **settings}}


def test_a_429_soak_dead_letters_no_healthy_record(tmp_path, dataverse_sim_factory, erp):  # noqa: F811
    # Most requests are throttled (Retry-After 0, so the test is quick), a few fail with a 503 (a real error).
    sim = dataverse_sim_factory(rate_429=0.7, rate_5xx=0.03, retry_after_s=0, seed=11)
    insert_erp(erp, "erp_customers", customers(RECORDS))
    app = make_app(tmp_path, sim, flow(), **HAND_ON)
    pull_flow(app, "customers-to-crm", owner="test")
    outcomes = drain(app, timeout=120, max_messages=20)
    dead = [f"{o.message.key}: {o.description}" for o in outcomes if o.kind == Kind.DEAD_LETTER]
    assert dead == []
    # Throttled more often than max_attempts: each of these would have been dead-lettered as RetriesExhausted.
    assert len({o.message.key for o in outcomes if o.reason == "throttled" and o.message.throttles + 1 >= 4}) > 10
    assert kinds(outcomes)["applied"] == RECORDS and len(sim.rows("accounts")) == RECORDS
    app.close()


def test_a_long_throttle_does_not_dead_letter_and_a_real_error_still_does(tmp_path, sim, erp):
    insert_erp(erp, "erp_customers", customers(1))
    app = make_app(tmp_path, sim, flow(), **HAND_ON)
    pull_flow(app, "customers-to-crm", owner="test")
    sim.faults.inject(429, count=12, retry_after_s=0)  # three times max_attempts
    outcomes = drain(app, timeout=60)
    assert sim.stats.rejected[429] == 12
    assert [(o.kind, o.message.attempt, o.message.throttles) for o in outcomes] == (
        [(Kind.RETRY, 1, n) for n in range(12)] + [(Kind.APPLIED, 1, 12)])
    assert len(sim.rows("accounts")) == 1

    sim.faults.settings.rate_5xx = 1.0  # a real error on every try: dead-lettered after max_attempts
    insert_erp(erp, "erp_customers", [{"account_number": "X1", "name": "Broken", "status": 0, "credit": None,
                                        "modified_at": datetime(2026, 2, 1)}])
    pull_flow(app, "customers-to-crm", owner="test")
    outcomes = drain(app, timeout=60)
    assert [(o.kind, o.message.attempt) for o in outcomes] == [(Kind.RETRY, 1), (Kind.RETRY, 2), (Kind.RETRY, 3),
                                                               (Kind.DEAD_LETTER, 4)]
    assert outcomes[-1].reason == Reason.RETRIES_EXHAUSTED and "503" in outcomes[-1].description
    app.close()


@pytest.mark.parametrize(("throttled_for", "kind"), [(timedelta(hours=5), Kind.RETRY),
                                                     (timedelta(hours=7), Kind.DEAD_LETTER)])
def test_throttling_is_budgeted_by_time_from_the_first_throttle(tmp_path, sim, erp, throttled_for, kind):
    insert_erp(erp, "erp_customers", customers(2))
    app = make_app(tmp_path, sim, flow(throttle_budget="PT6H"), **HAND_ON)
    since = datetime.now(UTC) - throttled_for
    message = ChangeMessage(flow="customers-to-crm", op="upsert", source_system="erp", entity="erp_customers",
                            key="C0001", version="2026-01-01T00:00:00.000000", changed_at=since,
                            payload={"account_number": "C0001", "name": "Customer 1", "status": 0, "credit": None},
                            attempt=1, throttles=40, throttled_since=since)
    app.bus.send(app.queue, [to_envelope(message)])
    sim.faults.settings.rate_429 = 1.0
    batch = app.bus.receive(app.queue, max_messages=1, max_wait=1)
    from shared.engine.delivery import handle_delivery

    [outcome] = handle_delivery(app, batch, app.bus.settler(app.queue))
    assert outcome.kind == kind
    if kind == Kind.DEAD_LETTER:
        assert outcome.reason == Reason.RETRIES_EXHAUSTED
        assert "throttled since" in outcome.description and "budget 6:00:00" in outcome.description
        # Replayed once the target has room again: a fresh start, with a whole throttle budget.
        sim.faults.settings.rate_429 = 0.0
        assert replay_dead_letters(app, ReplayFilter()).replayed == 1
        [again] = app.bus.peek(app.queue)
        resent = ChangeMessage.model_validate_json(again.envelope.body)
        assert (resent.attempt, resent.throttles, resent.throttled_since) == (1, 0, None)
        assert [o.kind for o in drain(app)] == [Kind.APPLIED]
    else:
        [clone] = app.bus.peek(app.queue)
        resent = ChangeMessage.model_validate_json(clone.envelope.body)
        assert (resent.attempt, resent.throttles, resent.throttled_since) == (1, 41, since)
    app.close()
