"""Reusable pytest fixtures. Import them in a conftest.py::

    from dvsim.pytest_fixtures import dataverse_sim, dataverse_sim_factory, identity_provider  # noqa: F401
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from .identity import IdentityProvider
from .server import DataverseSimulator


@pytest.fixture
def dataverse_sim() -> Iterator[DataverseSimulator]:
    """A fresh, empty simulator on a free loopback port, accepting any bearer token."""
    with DataverseSimulator() as sim:
        yield sim


@pytest.fixture
def dataverse_sim_factory() -> Iterator[Callable[..., DataverseSimulator]]:
    """Build simulators with options (faults, token_verifier, db_path...); all are stopped at teardown."""
    started: list[DataverseSimulator] = []

    def make(**kwargs: Any) -> DataverseSimulator:
        sim = DataverseSimulator(**kwargs)
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.close()


@pytest.fixture
def identity_provider() -> Iterator[IdentityProvider]:
    """A local OAuth2/OIDC endpoint with one client (dvsim-client / dvsim-secret)."""
    with IdentityProvider() as idp:
        yield idp
