"""Structured logs and OpenTelemetry metrics for every pull and every settled message.

Where it goes, configured exactly once per process:
- Azure Functions: the Python worker configures Azure Monitor itself when the app setting
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true, before it imports the app: it calls
  ``configure_azure_monitor(connection_string=APPLICATIONINSIGHTS_CONNECTION_STRING,
  logger_name=PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME)`` (azure_functions_worker, ``initialize_azure_monitor``),
  and the exporter signs in with the managed identity named in APPLICATIONINSIGHTS_AUTHENTICATION_STRING. The
  Bicep sets the logger name to ``dualsync``, so exactly our loggers are collected (not the root logger, which
  would also export the SDKs' own logs, the exporter's included). Our metrics, created on the global meter
  provider's proxy, export through the provider the worker set. Configuring again here would add a second
  handler on the ``dualsync`` path and export every line twice, so ``configure`` leaves it to the worker.
  With host.json ``telemetryMode: OpenTelemetry`` the host does not forward worker logs either.
- Elsewhere with APPLICATIONINSIGHTS_CONNECTION_STRING set (the CLI or `dualsync run` reporting to Azure):
  ``configure_azure_monitor`` here, for the ``dualsync`` logger, with the managed identity in AZURE_CLIENT_ID.
- Locally: metrics to the console every minute for the long-running `dualsync run`; `--once` prints its
  own summary table instead.

Logs carry flow, key, attempt, reason and correlation id as custom dimensions, never payload values
(they may hold personal data or secrets).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable
from datetime import UTC, datetime

from opentelemetry import metrics

from shared.engine.outcome import Kind, Outcome
from shared.settings import setting

log = logging.getLogger("dualsync")
_meter = metrics.get_meter("dualsync")
_configured = threading.Lock()
_done = False

PULLED = _meter.create_counter("dualsync.pulled", unit="{change}", description="changes read from a source")
APPLIED = _meter.create_counter("dualsync.applied", unit="{change}", description="changes written to a target")
SKIPPED = _meter.create_counter("dualsync.skipped", unit="{change}", description="changes skipped, by reason")
RETRIED = _meter.create_counter("dualsync.retried", unit="{change}", description="retries scheduled")
DEAD_LETTERED = _meter.create_counter("dualsync.dead_lettered", unit="{change}",
                                      description="changes dead-lettered, by reason")
APPLY_LATENCY = _meter.create_histogram("dualsync.apply_latency", unit="s",
                                        description="seconds to apply and settle one batch")
END_TO_END_LAG = _meter.create_histogram("dualsync.end_to_end_lag", unit="s",
                                         description="seconds from the source change to its outcome")


def configure(console: bool = False) -> str:
    """Set up exporters once per process; returns where telemetry goes."""
    global _done
    with _configured:
        if _done:
            return "configured"
        _done = True
        if (setting("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY") or "").strip().lower() == "true":
            return "worker"  # the Functions Python worker configured Azure Monitor already (see above)
        if setting("APPLICATIONINSIGHTS_CONNECTION_STRING"):
            from azure.identity import ManagedIdentityCredential
            from azure.monitor.opentelemetry import configure_azure_monitor

            client_id = setting("AZURE_CLIENT_ID")
            configure_azure_monitor(
                connection_string=setting("APPLICATIONINSIGHTS_CONNECTION_STRING"),
                credential=ManagedIdentityCredential(client_id=client_id) if client_id else None,
                logger_name="dualsync",
            )
            return "azure-monitor"
        if console:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

            exporter = ConsoleMetricExporter(formatter=_one_line_per_point)
            reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
            metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
            return "console"
        return "none"


def _one_line_per_point(data) -> str:  # noqa: ANN001 - opentelemetry MetricsData
    """`dualsync.applied flow=accounts 1200` rather than the exporter's page of JSON per minute."""
    lines = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attrs = " ".join(f"{k}={v}" for k, v in sorted(point.attributes.items()))
                    value = getattr(point, "value", None)
                    shown = value if value is not None else f"count={point.count} sum={point.sum:.3f}"
                    lines.append(f"metric {metric.name} {attrs} {shown}".replace("  ", " "))
    return "\n".join(lines) + ("\n" if lines else "")


def record_pull(flow: str, pulled: int, run_id: str, status: str) -> None:
    PULLED.add(pulled, {"flow": flow})
    log.info("pulled %d changes for flow %s (%s)", pulled, flow, status,
             extra={"flow": flow, "correlation_id": run_id, "pulled": pulled, "status": status})


UNKNOWN_FLOW = "unknown"


def record_outcomes(outcomes: Iterable[Outcome], flows: Collection[str], started: float | None = None,
                    finished: float | None = None) -> None:
    """`flows`: the configured flow names. A message names its own flow, and anyone who can send to the queue
    could invent names: only configured ones become metric attributes, so the series stay bounded."""
    now = datetime.now(UTC)
    batch = list(outcomes)
    for o in batch:
        attrs = {"flow": o.flow if o.flow in flows else UNKNOWN_FLOW}
        if o.kind is Kind.APPLIED:
            APPLIED.add(1, attrs)
        elif o.kind is Kind.SKIPPED:
            SKIPPED.add(1, attrs | {"reason": o.reason})
        elif o.kind is Kind.RETRY:
            RETRIED.add(1, attrs | {"reason": str(o.reason)})
        elif o.kind is Kind.DEAD_LETTER:
            DEAD_LETTERED.add(1, attrs | {"reason": str(o.reason)})
        if o.message is not None and o.kind is not Kind.RETRY and o.kind is not Kind.DEFERRED:
            END_TO_END_LAG.record(max(0.0, (now - o.message.changed_at).total_seconds()), attrs)
        if o.kind is not Kind.APPLIED:
            _log_outcome(o)
    if started is not None and finished is not None and batch:
        APPLY_LATENCY.record(finished - started, {"flow": batch[0].flow if batch[0].flow in flows else UNKNOWN_FLOW})


def _log_outcome(o: Outcome) -> None:
    extra = {"flow": o.flow, "outcome": o.kind.value, "reason": str(o.reason),
             "message_id": o.received.envelope.message_id}
    if o.message is not None:
        extra |= {"key": o.message.key, "attempt": o.message.attempt, "correlation_id": o.message.correlation_id}
    level = logging.WARNING if o.kind is Kind.DEAD_LETTER else logging.INFO
    # The description names record, field and rule; it never carries the payload.
    log.log(level, "%s %s: %s %s", o.kind.value, extra.get("key", extra["message_id"]), o.reason, o.description,
            extra=extra)
