"""The Dataverse connector's writes against a simulator as slow, as concurrent and as strict about service
protection limits as Dataverse: timed-out batches, execution time, 429 for the whole connector, the
recommended degree of parallelism, the affinity cookie, upserts racing a create, and 413 for a batch."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from dvsim import DataverseSimulator
from dvsim.limits import ServiceLimits
from dvsim.pytest_fixtures import dataverse_sim_factory  # noqa: F401
from shared.config import DataverseSystem, TargetSpec
from shared.connectors.dataverse import DataverseConnector
from shared.errors import TargetChanged, TransientError
from shared.ports.connector import WriteOp, WriteResult

TOKEN = "static-test-token-limits"
ACCOUNTS = TargetSpec(system="crm", entity="accounts", key=["accountnumber"])


@pytest.fixture(autouse=True)
def _token(monkeypatch):
    monkeypatch.setenv("DV_TOKEN", TOKEN)


def connect(sim: DataverseSimulator, **overrides: Any) -> DataverseConnector:
    data: dict[str, Any] = {"kind": "dataverse", "url": sim.url, "auth": {"static_token": "env:DV_TOKEN"}}
    data.update(overrides)
    return DataverseConnector.from_config("crm", DataverseSystem.model_validate(data))


def account(number: str, create_only: bool = False, **values: Any) -> WriteOp:
    return WriteOp("upsert", {"accountnumber": number}, {"accountnumber": number, "name": number, **values},
                   create_only=create_only)


def failures(results: list[WriteResult]) -> list[str]:
    return [f"{r.key}: {r.error}" for r in results if not r.ok]


def test_a_timed_out_batch_is_reread_not_run_twice(dataverse_sim_factory):  # noqa: F811
    """Dataverse goes on committing a batch the client stopped waiting for. Creates whose outcome is unknown
    are re-read: a row created since the attempt began is done, not 'already exists'."""
    sim = dataverse_sim_factory(limits=ServiceLimits(op_time_s=0.05))
    crm = connect(sim, timeout_seconds=0.4)
    ops = [account(f"T-{i:02d}", create_only=True) for i in range(24)]
    results = crm.write_batch(ACCOUNTS, ops)
    if any(isinstance(r.error, TransientError) for r in results):  # what the engine would do: retry later
        time.sleep(1.5)
        retried = crm.write_batch(ACCOUNTS, [r.op for r in results if not r.ok])
        results = [r for r in results if r.ok] + retried
    assert failures(results) == []
    assert not any(isinstance(r.error, TargetChanged) for r in results)
    assert sim.stats.by_kind.get("query", 0) >= 1  # the unanswered creates were read back
    time.sleep(1.5)  # let the simulator finish whatever it still runs
    assert sorted(r["accountnumber"] for r in sim.rows("accounts")) == [f"T-{i:02d}" for i in range(24)]
    crm.close()


def test_a_create_only_op_on_a_row_that_existed_before_is_still_refused(dataverse_sim_factory):  # noqa: F811
    sim = dataverse_sim_factory(limits=ServiceLimits(op_time_s=0.05))
    sim.insert("accounts", {"accountnumber": "T-05", "name": "someone else's"})
    time.sleep(2.1)  # createdon has whole seconds, and a second of clock slack: the row is older
    crm = connect(sim, timeout_seconds=0.4)
    results = crm.write_batch(ACCOUNTS, [account(f"T-{i:02d}", create_only=True) for i in range(12)])
    refused = [r for r in results if not r.ok]
    assert [r.key for r in refused] == ["T-05"] and isinstance(refused[0].error, TargetChanged)
    assert "already exists" in str(refused[0].error)
    crm.close()


def test_execution_time_throttling_is_waited_out_with_smaller_batches(dataverse_sim_factory):  # noqa: F811
    sim = dataverse_sim_factory(limits=ServiceLimits(window_s=1.0, max_execution_s=0.3, op_time_s=0.01))
    crm = connect(sim)
    for round_ in range(3):
        results = crm.write_batch(ACCOUNTS, [account(f"E-{round_}-{i:03d}") for i in range(60)])
        assert failures(results) == []
    assert len(sim.rows("accounts")) == 180
    crm.close()


def test_a_429_pauses_the_whole_connector(dataverse_sim_factory):  # noqa: F811
    """Eight threads write one record at a time into a limit of 10 requests per second: after the first 429
    nobody sends until Retry-After has passed, and every write lands."""
    sim = dataverse_sim_factory(limits=ServiceLimits(window_s=1.0, max_requests=10))
    crm = connect(sim, max_concurrency=8)
    results: list[WriteResult] = []

    def writer(n: int) -> None:
        for i in range(5):
            results.extend(crm.write_batch(ACCOUNTS, [account(f"P-{n}-{i}")]))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures(results) == []
    assert len(sim.rows("accounts")) == 40
    assert sim.stats.rejected[429] <= 16  # about one refusal per thread per window, not a storm
    crm.close()


def test_the_concurrency_limit_and_the_dop_hint(dataverse_sim_factory):  # noqa: F811
    sim = dataverse_sim_factory(limits=ServiceLimits(max_concurrent=2, dop_hint=2, op_time_s=0.1))
    crm = connect(sim, max_concurrency=6)
    assert crm.write_batch(ACCOUNTS, [account("D-0")])[0].ok  # the first answer carries the hint
    results: list[WriteResult] = []
    threads = [threading.Thread(target=lambda n=n: results.extend(crm.write_batch(ACCOUNTS, [account(f"D-{n}")])))
               for n in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures(results) == []
    assert sim.stats.rejected.get(429, 0) == 0  # never more in flight than the hint says
    crm.close()


def test_the_affinity_cookie_is_not_sent_back(dataverse_sim_factory):  # noqa: F811
    sim = dataverse_sim_factory()
    crm = connect(sim)
    for i in range(3):
        assert crm.write_batch(ACCOUNTS, [account(f"K-{i}")])[0].ok
    assert sim.stats.affinity_cookies == 0
    crm.close()


def test_an_upsert_racing_a_create_of_the_same_key_is_retried_as_an_update(dataverse_sim_factory):  # noqa: F811
    sim = dataverse_sim_factory(limits=ServiceLimits(op_time_s=0.2))
    crm = connect(sim)
    results: list[WriteResult] = []
    threads = [threading.Thread(target=lambda n=n: results.extend(
        crm.write_batch(ACCOUNTS, [account("R-1", telephone1=f"writer {n}")]))) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures(results) == []
    assert len(sim.rows("accounts")) == 1
    crm.close()


def test_a_batch_too_large_is_split_not_dead_lettered(dataverse_sim_factory):  # noqa: F811
    sim = dataverse_sim_factory(max_request_bytes=2500)
    crm = connect(sim)
    ops = [account(f"L-{i:02d}", name="n" * 150) for i in range(30)]
    huge = account("L-99", name="h" * 3000)  # larger than any request may be, even alone
    results = crm.write_batch(ACCOUNTS, [*ops, huge])
    assert failures(results[:30]) == []
    assert not results[30].ok and "413" in str(results[30].error)
    assert len(sim.rows("accounts")) == 30
    crm.close()
