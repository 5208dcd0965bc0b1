"""The function app as the Functions host sees it: indexed once, triggers invoked with the host's types.

`FunctionApp.get_functions()` may run only once per process (a second call reports every function name as a
duplicate), so `indexed()` caches it for every test module that needs the app's functions. The apply trigger's
settlement decisions are in test_functions_apply.py, the admin functions in test_functions_admin.py and the full
indexing contract in test_functions_indexing.py.
"""

from __future__ import annotations

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from shared.settings import setting


def indexed() -> dict[str, func.FunctionBuilder]:
    """Cached on the function_app module itself, not here: pytest imports this file as `test_function_app` and
    other test modules import it as `tests.unit.test_function_app`, two module objects with two caches."""
    import function_app

    if not hasattr(function_app, "_indexed_by_tests"):
        function_app._indexed_by_tests = {f.get_function_name(): f for f in function_app.app.get_functions()}
    return function_app._indexed_by_tests


def bindings(name: str) -> dict:
    return {b.name: b for b in indexed()[name].get_bindings()}


def test_functions_are_indexed_with_their_triggers_and_settings():
    assert set(indexed()) >= {"pull", "apply"}
    timer = bindings("pull")["timer"]
    assert timer.type == "timerTrigger" and timer.schedule == "%PULL_SCHEDULE%"
    arg = "messages" if setting("SETTLEMENT_MODE") == "extension" else "msg"
    trigger = bindings("apply")[arg]
    assert trigger.type == "serviceBusTrigger"
    assert trigger.queue_name == "%APPLY_QUEUE%" and trigger.connection == "ServiceBusConnection"


@pytest.fixture
def wired(app, monkeypatch):
    import functions.pull

    monkeypatch.setattr(functions.pull, "sync_app", lambda: app)
    return app


def run(name: str, **kwargs):
    return indexed()[name].get_user_function()(**kwargs)


def test_timer_pulls_due_flows_onto_the_bus(wired, memory):
    memory["crm"].put("accounts", "a1", {"accountid": "a1", "accountnumber": "N1", "name": "n", "statecode": 0})
    run("pull", timer=TimerRequest(past_due=True))
    assert wired.bus.counts(wired.queue).active == 1
    assert wired.state.get_cursor("accounts").last_run["pulled"] == 1
