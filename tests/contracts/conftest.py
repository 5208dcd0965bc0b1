"""Every implementation of a port runs the same contract suite.

Add a backend by adding a param to the fixture; the suite itself never changes.
"""

from __future__ import annotations

import pytest

from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore


def _sqlite_tables(tmp_path):
    return SqliteTables(tmp_path / "state.db")


TABLE_BACKENDS = {"sqlite": _sqlite_tables}


@pytest.fixture(params=sorted(TABLE_BACKENDS))
def tables(request, tmp_path):
    backend = TABLE_BACKENDS[request.param](tmp_path)
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


BUS_BACKENDS = {"sqlite": _sqlite_bus}


@pytest.fixture(params=sorted(BUS_BACKENDS))
def bus(request, tmp_path):
    backend = BUS_BACKENDS[request.param](tmp_path, request)
    backend.contract = dict(BUS_CONTRACT)
    yield backend
    backend.close()


@pytest.fixture
def queue(request):
    return "dualsync-changes"
