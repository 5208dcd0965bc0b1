"""The function app as the Functions host sees it: indexed once, triggers invoked with the host's types."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import cache

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest

from shared.engine.delivery import DeadLetterViaLedger
from shared.messages import to_envelope
from tests.unit.conftest import account


@cache
def indexed() -> dict[str, func.FunctionBuilder]:
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}


def bindings(name: str) -> dict:
    return {b.name: b for b in indexed()[name].get_bindings()}


def test_functions_are_indexed_with_their_triggers_and_settings():
    assert set(indexed()) >= {"pull", "apply"}
    timer = bindings("pull")["timer"]
    assert timer.type == "timerTrigger" and timer.schedule == "%PULL_SCHEDULE%"
    trigger = bindings("apply")["msg"]
    assert trigger.type == "serviceBusTrigger"
    assert trigger.queue_name == "%APPLY_QUEUE%" and trigger.connection == "ServiceBusConnection"


def host_message(message, delivery_count: int = 1) -> ServiceBusMessage:
    envelope = to_envelope(message)
    return ServiceBusMessage(
        body=envelope.body, message_id=envelope.message_id, content_type="application/json",
        correlation_id=envelope.correlation_id, label=envelope.subject, subject=envelope.subject,
        application_properties=dict(envelope.application_properties), user_properties={},
        delivery_count=delivery_count, enqueued_time_utc=datetime.now(UTC), sequence_number=1,
        lock_token=str(uuid.uuid4()),
    )


@pytest.fixture
def wired(app, monkeypatch):
    import functions.apply
    import functions.pull

    monkeypatch.setattr(functions.apply, "sync_app", lambda: app)
    monkeypatch.setattr(functions.pull, "sync_app", lambda: app)
    return app


def run(name: str, **kwargs):
    return indexed()[name].get_user_function()(**kwargs)


def test_timer_pulls_due_flows_onto_the_bus(wired, memory):
    memory["crm"].put("accounts", "a1", {"accountid": "a1", "accountnumber": "N1", "name": "n", "statecode": 0})
    run("pull", timer=TimerRequest(past_due=True))
    assert wired.bus.counts(wired.queue).active == 1
    assert wired.state.get_cursor("accounts").last_run["pulled"] == 1


def test_apply_applies_and_returns_so_the_host_completes(wired, memory):
    run("apply", msg=host_message(account("a1", 1)))
    assert memory["erp"].tables["customers"]["N-a1"]["name"] == "Acme"


def test_transient_failure_schedules_the_clone_and_returns(wired, memory):
    from shared.errors import TransientError

    memory["erp"].fail_next.append(TransientError("503"))
    run("apply", msg=host_message(account("a1", 1)))
    assert wired.bus.counts(wired.queue).scheduled == 1


def test_permanent_failure_goes_to_the_ledger_and_raises_until_the_dlq_takes_it(wired, memory):
    bad = host_message(account("a1", 1, name="x" * 50))
    with pytest.raises(DeadLetterViaLedger, match="ValidationFailed: flow accounts record a1: field name"):
        run("apply", msg=bad)
    failure = wired.state.get_failure(wired.queue, bad.message_id)
    assert failure["reason"] == "ValidationFailed"
    # Redelivery is not applied again: it only raises with the recorded reason.
    memory["erp"].writes = 0
    with pytest.raises(DeadLetterViaLedger, match="ValidationFailed"):
        run("apply", msg=host_message(account("a1", 1, name="x" * 50), delivery_count=2))
    assert memory["erp"].writes == 0


def test_malformed_message_raises_with_reason(wired):
    msg = ServiceBusMessage(body=b"{oops", message_id="m1", application_properties={}, user_properties={})
    with pytest.raises(DeadLetterViaLedger, match="MalformedMessage"):
        run("apply", msg=msg)
