"""The whole pipeline on the Azure backends: SQL CRM -> the `pull` timer function -> ServiceBusBus over the fake
Service Bus SDK client -> the `apply` trigger -> SQL ERP, in both settlement modes:

* ``extension``: batches decoded by the settlement extension, settled through ServiceBusMessageActions, with all
  sync state in Table Storage on Azurite;
* ``ledger``: the plain trigger, one message per invocation, which the host completes when it returns and
  abandons when it raises, so a dead letter walks to the DLQ through maxDeliveryCount with its reason in the
  failure ledger. Its state is on SQLite: one message per invocation against Azurite would take minutes, and the
  state store is held to one contract on both (tests/contracts).

Both must pass the foundation's end-to-end scenario unchanged: the assertions are those of
test_local_pipeline.py::test_demo_scenario_counts_add_up_and_name_every_bad_row.

`HostLoop` plays the Functions host's part for the Service Bus trigger: it receives batches of at most
host.json's maxMessageBatchSize under a peek-lock, hands them to the registered `apply` function exactly as the
worker does (extension: SDK messages decoded by the extension, plus message actions that settle by lock token;
ledger: each as the plain trigger's ServiceBusMessage, settled by the host from the invocation's result), and keeps
going until the queue holds nothing active or scheduled (retries are scheduled clones a fraction of a second
ahead: retry_base=0.02).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from azure.functions.timer import TimerRequest

import functions.apply
import functions.pull
import shared.engine.delivery
from demo import sample_data
from functions.apply import build_apply_blueprint
from shared.app import SyncApp
from shared.bus.servicebus import ServiceBusBus
from shared.config import load_config
from shared.engine.pull import pull_flow
from shared.engine.tally import Tally
from shared.state.azure_tables import AzureTables
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore
from tests.e2e.scenario import assert_demo_scenario, erp_count
from tests.fakes.servicebus import fake_service_bus
from tests.unit.test_function_app import indexed
from tests.unit.test_functions_apply import RecordingActions, host_delivered, plain_trigger_message, user_function

QUEUE = "dualsync-changes"
MAX_BATCH = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())[
    "extensions"]["serviceBus"]["maxMessageBatchSize"]




class HostLoop:
    def __init__(self, app: SyncApp, client, monkeypatch, mode: str) -> None:
        self.app = app
        self.mode = mode
        self.receiver = client.get_queue_receiver(QUEUE)
        self.apply = user_function(build_apply_blueprint(mode))
        self.tally = Tally()
        self.invocations = 0
        real = shared.engine.delivery.handle_delivery

        def counted(app, received, settler):  # both modes' core call, with its outcomes tallied
            outcomes = real(app, received, settler)
            self.tally.record(outcomes)
            return outcomes

        monkeypatch.setattr(shared.engine.delivery, "handle_delivery", counted)

    def drain(self, bound: float = 300.0) -> None:  # a bound on a hang, not a speed test: CI machines vary
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            got = self.receiver.receive_messages(max_message_count=MAX_BATCH, max_wait_time=0.1)
            if got:
                assert len(got) <= MAX_BATCH
                self._invoke(got)
                continue
            counts = self.app.bus.counts(QUEUE)
            if counts.active == 0 and counts.scheduled == 0:
                return
        raise AssertionError(f"the queue did not drain within {bound}s: {self.app.bus.counts(QUEUE)}")

    def _invoke(self, got) -> None:  # noqa: ANN001
        if self.mode == "extension":
            self.invocations += 1
            self.apply(messages=host_delivered(got), message_actions=RecordingActions(self.receiver, got))
            return
        for m in got:  # autoCompleteMessages: the host completes on success and abandons on failure
            self.invocations += 1
            try:
                self.apply(msg=plain_trigger_message(m))
            except Exception:  # noqa: BLE001 - the host logs the failed invocation and abandons
                self.receiver.abandon_message(m)
            else:
                self.receiver.complete_message(m)

    def waiting_by_flow(self) -> Counter[str]:
        return Counter(str(m.envelope.application_properties.get("flow")) for m in self.app.bus.peek(QUEUE, 1000))

    def close(self) -> None:
        self.receiver.close()


@pytest.fixture(params=["extension", "ledger"])
def azure_sample(request, tmp_path, monkeypatch):
    mode = request.param
    data = tmp_path / "data"
    if mode == "ledger":  # 5,000 single-message commits on the ERP database: kept in memory-backed files
        data = Path(tempfile.mkdtemp(prefix="dualsync-ledger-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        request.addfinalizer(lambda: shutil.rmtree(data, ignore_errors=True))
    crm_url, erp_url = sample_data.build(data, 2000, 3000, with_bad_rows=True)
    monkeypatch.setenv("CRM_DB_URL", crm_url)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    client, admin = fake_service_bus()
    admin.create_queue(QUEUE, lock_duration=timedelta(minutes=5), max_delivery_count=10,
                       requires_duplicate_detection=True, duplicate_detection_history_time_window=timedelta(minutes=10))
    if mode == "extension":
        tables = AzureTables.from_settings({"STATE_TABLES_CONNECTION": request.getfixturevalue("azurite_tables"),
                                            "STATE_TABLE_PREFIX": request.getfixturevalue("azurite_table_prefix")})
    else:
        tables = SqliteTables(":memory:")
    app = SyncApp(config=load_config(sample_data.write_flows(tmp_path)), state=StateStore(tables),
                  bus=ServiceBusBus(client, admin=admin), queue=QUEUE, retry_base=0.02)
    monkeypatch.setattr(functions.pull, "sync_app", lambda: app)
    monkeypatch.setattr(functions.apply, "sync_app", lambda: app)
    host = HostLoop(app, client, monkeypatch, mode)
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
    if host.mode == "extension":
        # Batches as the host would dispatch them: each one applied with one target write per flow.
        assert host.invocations >= (2000 + 3000) // MAX_BATCH
    else:
        # Service Bus itself dead-lettered them after maxDeliveryCount; every reader shows the ledger's reason.
        assert {m.dead_letter_reason for m in app.bus.peek_dead_letters(QUEUE)} == {"MaxDeliveryCountExceeded"}
