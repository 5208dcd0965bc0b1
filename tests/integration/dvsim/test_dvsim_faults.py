"""Authentication, injected faults (429 with Retry-After, 5xx, latency) and request counting."""

from __future__ import annotations

import time

import httpx

from dvsim import DataverseSimulator

AUTH = {"Authorization": "Bearer t"}


def test_401_without_bearer_token(sim: DataverseSimulator) -> None:
    resp = httpx.get(sim.api + "accounts")
    assert resp.status_code == 401
    assert resp.content == b""
    assert resp.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
    assert httpx.get(sim.api + "accounts", headers={"Authorization": "Basic abc"}).status_code == 401
    assert sim.stats.rejected == {401: 2}


def test_token_verifier_decides_which_tokens_are_valid(dataverse_sim_factory) -> None:
    sim = dataverse_sim_factory(token_verifier=lambda token: token == "good")
    assert httpx.get(sim.api + "accounts", headers={"Authorization": "Bearer bad"}).status_code == 401
    assert httpx.get(sim.api + "accounts", headers={"Authorization": "Bearer good"}).status_code == 200


def test_429_with_retry_after_and_documented_body(dataverse_sim_factory) -> None:
    sim = dataverse_sim_factory(rate_429=1.0, retry_after_s=2)
    resp = httpx.get(sim.api + "accounts", headers=AUTH)
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "2"
    assert resp.json() == {
        "error": {
            "code": "0x80072322",
            "message": "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
        }
    }
    assert sim.stats.rejected == {429: 1}


def test_random_faults_are_deterministic_for_a_seed(dataverse_sim_factory) -> None:
    def statuses(seed: int) -> list[int]:
        sim = dataverse_sim_factory(rate_429=0.3, rate_5xx=0.1, seed=seed)
        with httpx.Client(headers=AUTH) as c:
            return [c.get(sim.api + "accounts").status_code for _ in range(40)]

    first, second = statuses(7), statuses(7)
    assert first == second
    assert set(first) == {200, 429, 503}
    assert statuses(8) != first


def test_scripted_faults_and_settings_changed_at_runtime(sim: DataverseSimulator) -> None:
    sim.faults.inject(503)
    sim.faults.inject(429, retry_after_s=5)
    with httpx.Client(headers=AUTH) as c:
        assert c.get(sim.api + "accounts").status_code == 503
        throttled = c.get(sim.api + "accounts")
        assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "5"
        assert c.get(sim.api + "accounts").status_code == 200
        sim.faults.settings.rate_429 = 1.0
        assert c.get(sim.api + "accounts").status_code == 429


def test_latency(dataverse_sim_factory) -> None:
    sim = dataverse_sim_factory(latency_ms=80)
    with httpx.Client(headers=AUTH) as c:
        c.get(sim.api + "accounts")  # connect outside the measurement
        started = time.perf_counter()
        c.get(sim.api + "accounts")
        assert time.perf_counter() - started >= 0.08


def test_stats_count_round_trips_by_kind(sim: DataverseSimulator) -> None:
    with httpx.Client(base_url=sim.api, headers=AUTH) as c:
        c.post("accounts", json={"name": "a"})
        c.patch("accounts(accountnumber='X')", json={"name": "b"})
        c.get("accounts")
        c.get("accounts", headers={"Prefer": "odata.track-changes"})
        c.get("WhoAmI")
    assert sim.stats.snapshot() == {
        "requests": 5,
        "by_method": {"POST": 1, "PATCH": 1, "GET": 3},
        "by_kind": {"create": 1, "upsert": 1, "query": 1, "track_changes": 1, "whoami": 1},
        "batch_operations": {},
        "rejected": {},
    }
    sim.stats.reset()
    assert sim.stats.requests == 0
