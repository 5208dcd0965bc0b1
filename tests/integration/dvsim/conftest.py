"""Fixtures for the simulator's own tests: real HTTP on loopback with httpx."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest

# Make the repo root importable when pytest is started without it on sys.path (no pyproject yet).
_ROOT = Path(__file__).resolve().parents[3]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from dvsim import DataverseSimulator  # noqa: E402
from dvsim.pytest_fixtures import dataverse_sim, dataverse_sim_factory, identity_provider  # noqa: E402,F401

HEADERS = {
    "Authorization": "Bearer test-token",
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
    "If-None-Match": "null",
}


@pytest.fixture
def sim(dataverse_sim: DataverseSimulator) -> DataverseSimulator:
    return dataverse_sim


@pytest.fixture
def client(sim: DataverseSimulator) -> Iterator[httpx.Client]:
    """An httpx client rooted at the Web API service root, with the headers Dataverse recommends."""
    with httpx.Client(base_url=sim.api, headers=HEADERS, timeout=10) as c:
        yield c
