"""Running the simulator: serve(), python -m dvsim, a database file, a custom schema."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dvsim import DataverseSimulator, serve
from dvsim.schema import SchemaError, load_schema

ROOT = Path(__file__).resolve().parents[3]
AUTH = {"Authorization": "Bearer t"}


def test_serve_runs_until_stopped() -> None:
    stop = threading.Event()
    ready: dict = {}
    thread = threading.Thread(
        target=serve,
        kwargs={"port": 0, "identity_port": 0, "stop_event": stop, "out": lambda line: None,
                "ready": lambda sim, idp: ready.update(sim=sim, idp=idp)},
        daemon=True,
    )
    thread.start()
    for _ in range(100):
        if ready:
            break
        thread.join(0.05)
    sim, idp = ready["sim"], ready["idp"]
    # With an identity provider, only its tokens are accepted.
    assert httpx.get(sim.api + "accounts", headers=AUTH).status_code == 401
    token = httpx.post(idp.token_endpoint, data={
        "grant_type": "client_credentials", "client_id": "dvsim-client", "client_secret": "dvsim-secret",
        "scope": f"{sim.url}/.default",
    }).json()["access_token"]
    assert httpx.get(sim.api + "accounts", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_python_dash_m_dvsim(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvsim", "--port", "0", "--rate-429", "1.0", "--retry-after", "3"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        api = line.split(" at ")[1].split()[0]
        resp = httpx.get(api + "accounts", headers=AUTH)
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"
    finally:
        proc.terminate()
        proc.wait(5)


def test_database_file_survives_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "crm.sqlite")
    with DataverseSimulator(db_path=db) as sim:
        row = sim.insert("accounts", {"name": "Persistent", "accountnumber": "P-1"})
        sim.delete("accounts", sim.insert("accounts", {"name": "gone"})["accountid"])
    with DataverseSimulator(db_path=db) as sim:
        assert sim.get("accounts", row["accountid"])["name"] == "Persistent"
        later = sim.insert("accounts", {"name": "Later"})
        assert later["versionnumber"] > row["versionnumber"] + 1  # the counter resumes past the tombstone


def test_concurrent_clients(sim: DataverseSimulator) -> None:
    def work(worker: int) -> list[int]:
        with httpx.Client(base_url=sim.api, headers=AUTH) as c:
            return [
                c.patch(f"accounts(accountnumber='W{worker}-{i % 10}')", json={"name": f"w{worker} {i}"}).status_code
                for i in range(30)
            ]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = [s for statuses in pool.map(work, range(6)) for s in statuses]
    assert set(results) == {204}
    rows = sim.rows("accounts")
    assert len(rows) == 60
    assert len({r["versionnumber"] for r in rows}) == 60


def test_custom_schema_is_loaded_generically(tmp_path: Path) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text(
        "entities:\n"
        "  widget:\n"
        "    set: widgets\n"
        "    id: widgetid\n"
        "    keys: {code_key: [code]}\n"
        "    attributes:\n"
        "      code: {type: string, max_length: 10, required: true}\n"
        "      size: {type: int}\n"
        "      active: {type: bool}\n"
        "      due: {type: datetime}\n"
    )
    with DataverseSimulator(schema_path=schema) as sim, httpx.Client(base_url=sim.api, headers=AUTH) as c:
        assert c.patch("widgets(code='W-1')", json={"size": 3, "active": True, "due": "2024-05-01T10:00:00+02:00"}).status_code == 204
        rows = c.get("widgets", params={"$filter": "active eq true and due lt 2024-05-01T09:00:00Z"}).json()["value"]
        assert [(r["code"], r["size"], r["due"]) for r in rows] == [("W-1", 3, "2024-05-01T08:00:00Z")]
        assert c.get("accounts").status_code == 404


def test_schema_errors_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("entities:\n  x:\n    set: xs\n    id: xid\n    attributes:\n      y: {type: lookup, target: nowhere, nav: y}\n")
    with pytest.raises(SchemaError, match="unknown lookup target"):
        load_schema(bad)
