"""Service protection limits per user (requests, execution time, concurrency), the headers that come with
them, 413 for an oversized request, and writes that run concurrently (an upsert racing a create)."""

from __future__ import annotations

import threading
import time
import uuid

import httpx

from dvsim import DataverseSimulator
from dvsim.batch import build_batch_body, json_operation
from dvsim.limits import ServiceLimits

HEADERS = {"Authorization": "Bearer user-a", "Accept": "application/json", "OData-Version": "4.0",
           "Content-Type": "application/json"}


def _patch(sim: DataverseSimulator, number: str, token: str = "user-a", **extra: str) -> httpx.Response:
    headers = {**HEADERS, "Authorization": f"Bearer {token}", **extra}
    return httpx.patch(f"{sim.api}accounts(accountnumber='{number}')", json={"name": number}, headers=headers,
                       timeout=10)


def test_number_of_requests_limit_per_user_with_growing_retry_after(dataverse_sim_factory) -> None:
    sim: DataverseSimulator = dataverse_sim_factory(limits=ServiceLimits(window_s=1.5, max_requests=3))
    for i in range(3):
        assert _patch(sim, f"A-{i}").status_code == 204
    first = _patch(sim, "A-9")
    assert first.status_code == 429
    assert first.json()["error"]["code"] == "0x80072322"
    assert "limit of 3 over time window of 1.5 seconds" in first.json()["error"]["message"]
    waits = [float(first.headers["Retry-After"])]
    for _ in range(2):  # coming back before Retry-After has passed makes it longer
        again = _patch(sim, "A-9")
        assert again.status_code == 429
        waits.append(float(again.headers["Retry-After"]))
    assert waits[0] < waits[1] < waits[2]
    assert _patch(sim, "B-1", token="user-b").status_code == 204  # another user has a window of its own
    time.sleep(1.6)
    assert _patch(sim, "A-9").status_code == 204  # the window slid on


def test_execution_time_limit_charges_each_operation(dataverse_sim_factory) -> None:
    sim: DataverseSimulator = dataverse_sim_factory(
        limits=ServiceLimits(window_s=3, max_execution_s=0.2, op_time_s=0.05))
    boundary = "batch_x"
    ops = [json_operation("PATCH", f"accounts(accountnumber='E-{i}')", {"name": "x"}) for i in range(6)]
    resp = httpx.post(sim.api + "$batch", content=build_batch_body(list(ops), boundary), timeout=10,
                      headers={**HEADERS, "Content-Type": f"multipart/mixed; boundary={boundary}"})
    assert resp.status_code == 200  # admitted: the limit is checked before a request runs
    assert float(resp.headers["x-ms-ratelimit-time-remaining-xrm-requests"]) == 0
    refused = _patch(sim, "E-9")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "0x80072321"
    assert refused.json()["error"]["message"].startswith(
        "Combined execution time of incoming requests exceeded limit of 200 milliseconds over time window of 3")
    assert 0 < float(refused.headers["Retry-After"]) <= 3


def test_concurrency_limit_fails_at_once(dataverse_sim_factory) -> None:
    sim: DataverseSimulator = dataverse_sim_factory(limits=ServiceLimits(max_concurrent=2, op_time_s=1.0))
    answers: list[tuple[int, float]] = []

    def one(n: int) -> None:
        started = time.monotonic()
        resp = _patch(sim, f"C-{n}")
        answers.append((resp.status_code, time.monotonic() - started))
        if resp.status_code == 429:
            assert resp.json()["error"]["code"] == "0x80072326"
            assert resp.json()["error"]["message"] == "Number of concurrent requests exceeded the limit of 2."

    threads = [threading.Thread(target=one, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert sorted(s for s, _ in answers) == [204, 204, 429]
    assert [e for s, e in answers if s == 429][0] < 0.6  # refused without waiting for a slot (1 s)


def test_headers_dop_hint_rate_limit_and_affinity_cookie(dataverse_sim_factory) -> None:
    sim: DataverseSimulator = dataverse_sim_factory(limits=ServiceLimits(max_requests=10, dop_hint=3))
    resp = _patch(sim, "H-1")
    assert resp.headers["x-ms-dop-hint"] == "3"
    assert resp.headers["x-ms-ratelimit-burst-remaining-xrm-requests"] == "9"
    assert resp.headers["Set-Cookie"].startswith("ARRAffinity=")
    assert sim.stats.affinity_cookies == 0
    _patch(sim, "H-2", Cookie=resp.headers["Set-Cookie"].split(";")[0])
    assert sim.stats.affinity_cookies == 1


def test_413_above_the_request_size(dataverse_sim_factory) -> None:
    sim: DataverseSimulator = dataverse_sim_factory(max_request_bytes=200)
    resp = httpx.patch(f"{sim.api}accounts(accountnumber='P-1')", json={"name": "x" * 300}, headers=HEADERS)
    assert resp.status_code == 413
    assert sim.rows("accounts") == []
    assert _patch(sim, "P-2").status_code == 204
    assert sim.stats.rejected == {413: 1}


def test_upsert_racing_a_create_of_the_same_key_gets_412(dataverse_sim_factory) -> None:
    """Writes run concurrently: both upserts see no row, both create, the second create fails."""
    sim: DataverseSimulator = dataverse_sim_factory(limits=ServiceLimits(op_time_s=0.2))
    number = f"R-{uuid.uuid4().hex[:6]}"
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(_patch(sim, number).status_code)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [204, 412]
    assert len(sim.rows("accounts")) == 1
