"""Prints (JSON) the names of the metrics the code really emits while it syncs: pulls, applies, skips, retries,
dead-letters, a paused flow. Run in its own process by tests/infra (a process sets its meter provider once)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

READER = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))

from shared import flow_health  # noqa: E402 - instruments bind to the provider set above
from shared.app import SyncApp  # noqa: E402
from shared.bus.sqlite_bus import SqliteBus  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.engine.cursor_lease import pause_flow  # noqa: E402
from shared.engine.delivery import handle_delivery  # noqa: E402
from shared.engine.pull import pull_flow  # noqa: E402
from shared.errors import TransientError  # noqa: E402
from shared.state.sqlite_tables import SqliteTables  # noqa: E402
from shared.state.store import StateStore  # noqa: E402
from tests.fakes.memory_connector import MemoryConnector  # noqa: E402
from tests.unit.conftest import CONFIG  # noqa: E402


def main() -> None:
    memory = {"crm": MemoryConnector(), "erp": MemoryConnector()}
    with tempfile.TemporaryDirectory() as tmp:
        app = SyncApp(config=parse_config(CONFIG), state=StateStore(SqliteTables(":memory:")),
                      bus=SqliteBus(Path(tmp) / "bus.db"), retry_base=0.01, connector_factory=lambda n: memory[n])
        flow_health.watch(app)
        crm = memory["crm"]
        crm.put("accounts", "ok", {"accountnumber": "N-1", "name": "Acme", "statecode": 0})
        crm.put("accounts", "bad", {"accountnumber": "N-2", "name": "A name far too long", "statecode": 0})
        pull_flow(app, "accounts", owner="metrics")
        memory["erp"].fail_keys["N-1"] = TransientError("503 from the target")
        batch = app.bus.receive(app.queue, max_messages=100, max_wait=0.2)
        handle_delivery(app, batch, app.bus.settler(app.queue))  # bad -> dead letter, ok -> retried
        memory["erp"].fail_keys.clear()
        _drain(app, wait=1.0)  # the retry is applied
        pull_flow(app, "accounts", owner="metrics")
        crm.put("accounts", "ok", {"accountnumber": "N-1", "name": "Acme", "statecode": 0})  # same values again
        pull_flow(app, "accounts", owner="metrics")
        _drain(app)  # skipped: already applied
        pause_flow(app.state, "contacts", "paused by an operator")
        data = READER.get_metrics_data()
        names = sorted({m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                        if m.data.data_points})
        app.close()
    json.dump(names, sys.stdout)


def _drain(app: SyncApp, wait: float = 0.2) -> None:
    while batch := app.bus.receive(app.queue, max_messages=100, max_wait=wait):
        handle_delivery(app, batch, app.bus.settler(app.queue))


if __name__ == "__main__":
    main()
