"""Telemetry reaches Application Insights once: on Azure the Python worker configures Azure Monitor itself
(app setting PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true: azure_functions_worker's initialize_azure_monitor
calls ``configure_azure_monitor(connection_string=..., logger_name=PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME or "")``
before the app is imported), so the app must not configure it a second time, and the worker must collect the
app's logger, not the root logger.

Each case runs in a fresh interpreter: Azure Monitor sets process-global OpenTelemetry providers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.test_bicep_structure import app_settings

ROOT = Path(__file__).resolve().parents[2]

# What the worker does at startup, then what function_app.py does, then which handlers would export a record
# logged on each of the app's loggers (a record propagates up to every ancestor's handlers).
SCRIPT = r"""
import json, logging, os

if os.environ.get("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "").lower() == "true":
    from azure.monitor.opentelemetry import configure_azure_monitor
    configure_azure_monitor(connection_string=os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"],
                            logger_name=os.environ.get("PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME", ""))

from shared import telemetry
where = telemetry.configure()

def exporting(name):
    count, logger = 0, logging.getLogger(name)
    while logger is not None:
        # OpenTelemetry's LoggingHandler (opentelemetry.instrumentation.logging.handler in the distro, or the SDK's)
        count += sum(type(h).__module__.startswith("opentelemetry") for h in logger.handlers)
        logger = logger.parent if logger.propagate else None
    return count

print(json.dumps({"where": where, "handlers": {n: exporting(n) for n in
                  ("dualsync", "dualsync.apply", "dualsync.admin", "shared.bus.servicebus", "azure.core")}}))
"""

CONNECTION = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"


def run(env: dict[str, str]) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON_APPLICATIONINSIGHTS", "APPLICATIONINSIGHTS",
                                                                     "AZURE_CLIENT_ID", "OTEL_"))}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=base | env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def azure_env() -> dict[str, str]:
    """The app settings the deployment gives the function app (infra/app/function-app.bicep) that decide this."""
    settings = app_settings()
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION, "OTEL_METRIC_EXPORT_INTERVAL": "600000"}
    for name in ("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME"):
        if name in settings:
            env[name] = settings[name]
    return env


@pytest.mark.timeout(180)
def test_on_azure_every_app_log_record_has_exactly_one_exporting_handler():
    got = run(azure_env())
    assert got["where"] == "worker", "the worker configured Azure Monitor; the app must not do it again"
    handlers = got["handlers"]
    assert handlers["dualsync"] == handlers["dualsync.apply"] == handlers["dualsync.admin"] == 1, handlers
    # Only the app's logger is collected: the SDKs' own logs (the exporter's included) would loop and bill.
    assert handlers["azure.core"] == 0 and handlers["shared.bus.servicebus"] == 0, handlers


@pytest.mark.timeout(180)
def test_without_the_worker_the_app_configures_azure_monitor_once_itself():
    """`dualsync run` or the CLI with APPLICATIONINSIGHTS_CONNECTION_STRING set: no worker, so the app does it."""
    got = run({"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION, "OTEL_METRIC_EXPORT_INTERVAL": "600000"})
    assert got["where"] == "azure-monitor"
    assert got["handlers"]["dualsync.apply"] == 1 and got["handlers"]["azure.core"] == 0


def test_host_json_carries_no_sampling_settings_that_would_not_apply():
    """samplingSettings configure the Application Insights SDK's adaptive sampling in the host; under
    telemetryMode OpenTelemetry the host exports with OpenTelemetry instead, and our telemetry never passes the
    host at all (the worker exports it), so such settings would only look like they sample."""
    host = json.loads((ROOT / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"
    assert "applicationInsights" not in host.get("logging", {})
