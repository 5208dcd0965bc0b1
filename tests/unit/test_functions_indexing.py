"""What the Functions host and the Python worker read when they index the app: every function's name, trigger,
setting names, routes and auth level; for the settlement extension, the checks the worker makes before it binds
SDK types and the settlement client; and host.json.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from types import SimpleNamespace

import azure.functions as func
import pytest
from azurefunctions.extensions.base import get_binding_registry
from azurefunctions.extensions.base.utils import get_raw_bindings
from azurefunctions.extensions.bindings.servicebus import ServiceBusMessageActions, ServiceBusReceivedMessage

from functions.apply import build_apply_blueprint
from shared.settings import setting
from tests.unit.test_function_app import indexed

ROOT = Path(__file__).resolve().parents[2]

HTTP = {
    # name: (route, methods, auth level): Entra ID app roles guard every admin API route (shared/admin_api.py) but
    # health, the one a function key opens
    "health": ("health", ["GET"], "FUNCTION"),
    "admin": ("{*path}", ["GET", "POST"], "ANONYMOUS"),
}


def function_json(fn) -> list[dict]:
    return json.loads(fn.get_function_json())["bindings"]


def apply_in(mode: str):
    app = func.FunctionApp()
    app.register_functions(build_apply_blueprint(mode))
    [fn] = app.get_functions()
    return fn


def test_the_app_has_exactly_these_functions():
    assert set(indexed()) == {"pull", "apply", "jobs", "files_arrived", *HTTP}


def test_pull_is_a_timer_on_the_schedule_setting():
    [timer] = function_json(indexed()["pull"])
    assert timer == {"direction": "IN", "type": "timerTrigger", "name": "timer", "schedule": "%PULL_SCHEDULE%",
                     "runOnStartup": False, "useMonitor": True}


def test_files_arrived_is_an_event_grid_trigger():
    [trigger] = function_json(indexed()["files_arrived"])
    assert trigger == {"direction": "IN", "type": "eventGridTrigger", "name": "event"}


@pytest.mark.parametrize("name", sorted(HTTP))
def test_admin_functions_are_http_and_only_health_takes_a_function_key(name):
    route, methods, auth_level = HTTP[name]
    trigger, output = function_json(indexed()[name])
    assert trigger == {"direction": "IN", "type": "httpTrigger", "name": "req", "methods": methods,
                       "authLevel": auth_level, "route": route}
    assert output == {"direction": "OUT", "type": "http", "name": "$return"}


def test_jobs_is_a_timer_every_minute():
    [timer] = function_json(indexed()["jobs"])
    assert timer == {"direction": "IN", "type": "timerTrigger", "name": "timer", "schedule": "0 * * * * *",
                     "runOnStartup": False, "useMonitor": False}


def test_the_app_indexes_apply_in_the_configured_mode():
    [trigger] = function_json(indexed()["apply"])
    expected = function_json(apply_in(setting("SETTLEMENT_MODE")))[0]
    assert trigger == expected


def test_apply_in_extension_mode_binds_sdk_batches_and_settles_itself():
    fn = apply_in("extension")
    assert fn.get_function_name() == "apply"
    [trigger] = function_json(fn)
    assert trigger == {"direction": "IN", "type": "serviceBusTrigger", "name": "messages",
                       "connection": "ServiceBusConnection", "queueName": "%APPLY_QUEUE%",
                       "cardinality": "MANY", "autoCompleteMessages": False}
    # What the worker checks (azure_functions_worker functions.py / bindings/meta.py): the trigger's type hint is an
    # SDK type the extension converts (so the binding is sent with SupportsDeferredBinding), and the one parameter
    # without a binding is a gRPC client type it injects as the settlement client.
    hints = typing.get_type_hints(fn.get_user_function())
    assert hints["messages"] == typing.List[ServiceBusReceivedMessage]  # noqa: UP006
    assert hints["message_actions"] is ServiceBusMessageActions
    registry = get_binding_registry()
    assert registry.check_supported_type(hints["messages"])
    assert registry.check_supported_grpc_client_type(hints["message_actions"])
    assert registry.get("serviceBusTrigger").check_input_type_annotation(hints["messages"])
    [raw], _ = get_raw_bindings(fn, {"messages": SimpleNamespace(pytype=hints["messages"])})
    raw = json.loads(raw)
    assert raw["properties"] == {"SupportsDeferredBinding": True}
    assert raw["autoCompleteMessages"] is False and raw["cardinality"] == "MANY"


def test_apply_in_ledger_mode_is_the_plain_auto_completing_trigger():
    fn = apply_in("ledger")
    [trigger] = function_json(fn)
    assert trigger == {"direction": "IN", "type": "serviceBusTrigger", "name": "msg",
                       "connection": "ServiceBusConnection", "queueName": "%APPLY_QUEUE%"}
    hints = typing.get_type_hints(fn.get_user_function())
    assert hints["msg"] is func.ServiceBusMessage
    assert not get_binding_registry().check_supported_type(hints["msg"])


def test_host_json():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    assert host["functionTimeout"] == "00:10:00"
    sb = host["extensions"]["serviceBus"]
    # Low, so the ERP is not flooded (ledger mode: concurrent single messages; extension mode: one batch at a
    # time per instance, of at most maxMessageBatchSize).
    assert sb["maxConcurrentCalls"] == 4 and sb["maxMessageBatchSize"] == 250 and sb["prefetchCount"] == 0
    # The host renews locks for single-message functions (ledger mode) only, for as long as an invocation may run;
    # a batch (extension mode) keeps its own locks (shared/engine/lock_renewal.py), within the same timeout.
    assert sb["maxAutoLockRenewalDuration"] == host["functionTimeout"]
    # The ledger-mode trigger relies on auto-complete; the extension-mode trigger turns it off for itself.
    assert sb["autoCompleteMessages"] is True
