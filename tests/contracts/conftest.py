"""Every implementation of a port runs the same contract suite.

Add a backend by adding a param to the fixture; the suite itself never changes.
"""

from __future__ import annotations

import pytest

from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore
from tests.contracts.connector_backends import MARKERS


def pytest_configure(config):
    for signature, meaning in MARKERS.items():  # the connector suite's selection by capability and harness
        config.addinivalue_line("markers", f"{signature}: {meaning}")


def _sqlite_tables(tmp_path, request):
    return SqliteTables(tmp_path / "state.db")


def _azurite_tables(tmp_path, request):
    # Pulled lazily, so a run that selects only sqlite never starts Azurite.
    from shared.state.azure_tables import AzureTables

    connection = request.getfixturevalue("azurite_tables")
    prefix = request.getfixturevalue("azurite_table_prefix")
    return AzureTables.from_settings({"STATE_TABLES_CONNECTION": connection, "STATE_TABLE_PREFIX": prefix})


TABLE_BACKENDS = {"sqlite": _sqlite_tables, "azurite": _azurite_tables}


@pytest.fixture(params=sorted(TABLE_BACKENDS))
def tables(request, tmp_path):
    backend = TABLE_BACKENDS[request.param](tmp_path, request)
    yield backend
    backend.close()


@pytest.fixture
def store(tables):
    return StateStore(tables)


# -- message bus ---------------------------------------------------------------------------------
from shared.bus.sqlite_bus import SqliteBus  # noqa: E402

BUS_CONTRACT = {"lock_duration": 1.0, "max_delivery_count": 3}


def _sqlite_bus(tmp_path, request):
    return SqliteBus(tmp_path / "bus.db", lock_duration=BUS_CONTRACT["lock_duration"],
                     max_delivery_count=BUS_CONTRACT["max_delivery_count"])


CONTRACT_QUEUE = "dualsync-changes"


def _servicebus_fake(tmp_path, request):
    from datetime import timedelta

    from shared.bus.servicebus import ServiceBusBus
    from tests.fakes.servicebus import fake_service_bus

    client, admin = fake_service_bus()
    admin.create_queue(CONTRACT_QUEUE, lock_duration=timedelta(seconds=BUS_CONTRACT["lock_duration"]),
                       max_delivery_count=BUS_CONTRACT["max_delivery_count"], requires_duplicate_detection=True)
    return ServiceBusBus(client, admin=admin)


def _servicebus_live(tmp_path, request):
    import os

    connection = os.environ.get("SERVICEBUS_CONNECTION")
    if not connection:
        pytest.skip("SERVICEBUS_CONNECTION not set: live Service Bus contract not run")
    from tests.fakes.servicebus import live_contract_bus

    # Sets bus.contract (lock duration, max delivery count, queue) from the live queue's properties.
    return live_contract_bus(connection, os.environ.get("SERVICEBUS_QUEUE") or "dualsync-contract")


BUS_BACKENDS = {"sqlite": _sqlite_bus, "servicebus-fake": _servicebus_fake, "servicebus-live": _servicebus_live}
BUS_MARKS = {"servicebus-live": [pytest.mark.live]}


@pytest.fixture(params=[pytest.param(name, marks=BUS_MARKS.get(name, ())) for name in sorted(BUS_BACKENDS)])
def bus(request, tmp_path):
    backend = BUS_BACKENDS[request.param](tmp_path, request)
    if not hasattr(backend, "contract"):  # a live backend reads its own from the queue
        backend.contract = dict(BUS_CONTRACT)
    yield backend
    backend.close()


@pytest.fixture
def queue(bus):
    return bus.contract.get("queue", CONTRACT_QUEUE)
