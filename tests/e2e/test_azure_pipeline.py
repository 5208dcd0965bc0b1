"""The whole pipeline on the Azure backends: SQL CRM -> the `pull` timer function -> ServiceBusBus over the fake
Service Bus SDK client -> the `apply` trigger in extension mode (batches decoded by the settlement extension,
settled through ServiceBusMessageActions) -> SQL ERP, with all sync state in Table Storage on Azurite.

It must pass the foundation's end-to-end scenario unchanged: the assertions are those of
test_local_pipeline.py::test_demo_scenario_counts_add_up_and_name_every_bad_row.

`HostLoop` plays the Functions host's part for the Service Bus trigger: it receives batches of at most
host.json's maxMessageBatchSize under a peek-lock, hands them to the registered `apply` function exactly as the
worker does (SDK messages decoded by the extension, plus message actions that settle by lock token), and keeps
going until the queue holds nothing active or scheduled (retries are scheduled clones a fraction of a second
ahead: retry_base=0.02).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from azure.functions.timer import TimerRequest

import functions.apply
import functions.pull
from demo import sample_data
from functions.apply import build_apply_blueprint
from shared.app import SyncApp
from shared.bus.servicebus import ServiceBusBus
from shared.config import load_config
from shared.engine.pull import pull_flow
from shared.engine.tally import Tally
from shared.state.azure_tables import AzureTables
from shared.state.store import StateStore
from tests.e2e.scenario import assert_demo_scenario, erp_count
from tests.fakes.servicebus import fake_service_bus
from tests.unit.test_function_app import indexed
from tests.unit.test_functions_apply import RecordingActions, host_delivered, user_function

QUEUE = "dualsync-changes"
MAX_BATCH = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())[
    "extensions"]["serviceBus"]["maxMessageBatchSize"]




class HostLoop:
    def __init__(self, app: SyncApp, client, monkeypatch) -> None:
        self.app = app
        self.receiver = client.get_queue_receiver(QUEUE)
        self.apply = user_function(build_apply_blueprint("extension"))
        self.tally = Tally()
        self.invocations = 0
        real = functions.apply.handle_with_actions

        def counted(app, messages, actions):  # the trigger's own core call, with its outcomes tallied
            outcomes = real(app, messages, actions)
            self.tally.record(outcomes)
            return outcomes

        monkeypatch.setattr(functions.apply, "handle_with_actions", counted)

    def drain(self, bound: float = 240.0) -> None:  # a bound on a hang, not a speed test: CI machines vary
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            got = self.receiver.receive_messages(max_message_count=MAX_BATCH, max_wait_time=0.1)
            if got:
                assert len(got) <= MAX_BATCH
                self.invocations += 1
                self.apply(messages=host_delivered(got), message_actions=RecordingActions(self.receiver, got))
                continue
            counts = self.app.bus.counts(QUEUE)
            if counts.active == 0 and counts.scheduled == 0:
                return
        raise AssertionError(f"the queue did not drain within {bound}s: {self.app.bus.counts(QUEUE)}")

    def waiting_by_flow(self) -> Counter[str]:
        return Counter(str(m.envelope.application_properties.get("flow")) for m in self.app.bus.peek(QUEUE, 1000))

    def close(self) -> None:
        self.receiver.close()


@pytest.fixture
def azure_sample(tmp_path, monkeypatch, azurite_tables, azurite_table_prefix):
    crm_url, erp_url = sample_data.build(tmp_path / "data", 2000, 3000, with_bad_rows=True)
    monkeypatch.setenv("CRM_DB_URL", crm_url)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    client, admin = fake_service_bus()
    admin.create_queue(QUEUE, lock_duration=timedelta(minutes=5), max_delivery_count=10,
                       requires_duplicate_detection=True, duplicate_detection_history_time_window=timedelta(minutes=10))
    tables = AzureTables.from_settings({"STATE_TABLES_CONNECTION": azurite_tables,
                                        "STATE_TABLE_PREFIX": azurite_table_prefix})
    app = SyncApp(config=load_config(sample_data.write_flows(tmp_path)), state=StateStore(tables),
                  bus=ServiceBusBus(client, admin=admin), queue=QUEUE, retry_base=0.02)
    monkeypatch.setattr(functions.pull, "sync_app", lambda: app)
    monkeypatch.setattr(functions.apply, "sync_app", lambda: app)
    host = HostLoop(app, client, monkeypatch)
    yield app, host, erp_url
    host.close()
    app.close()


def test_demo_scenario_on_service_bus_and_table_storage(azure_sample):
    app, host, erp_url = azure_sample
    indexed()["pull"].get_user_function()(timer=TimerRequest(past_due=False))
    for name in app.config.flows:
        host.tally.pulled(name, app.state.get_cursor(name).last_run["pulled"])
    host.drain()
    for flow, n in host.waiting_by_flow().items():
        host.tally.flows[flow].waiting = n

    assert_demo_scenario(app, host.tally, erp_url)
    # A second run finds nothing new and changes nothing.
    assert sum(pull_flow(app, name).pulled for name in app.config.flows) == 0
    host.drain(bound=5)
    assert erp_count(erp_url, "customers") == 1996 and erp_count(erp_url, "contacts") == 2997
    counts = app.bus.counts(QUEUE)
    assert (counts.active, counts.scheduled, counts.dead_letter) == (0, 0, 7)
    # Batches as the host would dispatch them: each one applied with one target write per flow.
    assert host.invocations >= (2000 + 3000) // MAX_BATCH
