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
