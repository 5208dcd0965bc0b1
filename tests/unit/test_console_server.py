"""`dualsync ui`'s server over real HTTP on loopback: other local web pages cannot use it (Host check against DNS
rebinding, the launch token against cross-site requests), the page itself needs no token, and replay runs as a
job whose progress any request can read."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.console_server import TOKEN_HEADER, ConsoleServer
from tests.unit.conftest import account, deliver

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(app):
    running = ConsoleServer(app, port=0)
    running.start()
    yield running
    running.close()


def request(server, method: str, path: str, body: object = None, token: str | None = "", host: str | None = None,
            content_type: str = "application/json") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    headers = {"Host": host or f"127.0.0.1:{server.port}", "Content-Type": content_type}
    if token is not None:
        headers[TOKEN_HEADER] = token or server.token
    connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def test_the_page_needs_no_token_and_allows_only_its_own_script(server):
    status, headers, body = request(server, "GET", "/", token=None)
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"/api/console.js" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"] and "frame-ancestors 'none'" in headers[
        "Content-Security-Policy"]
    status, headers, body = request(server, "GET", "/api/console.js", token=None)
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"innerHTML" not in body  # data goes on the page as text only


def test_the_api_needs_the_launch_token(server):
    assert request(server, "GET", "/api/flows", token=None)[0] == 401
    assert request(server, "GET", "/api/flows", token="guess")[0] == 401
    status, _, body = request(server, "GET", "/api/flows")
    assert status == 200 and [f["flow"] for f in json.loads(body)["flows"]] == ["accounts", "contacts"]


def test_a_request_for_another_host_is_refused_whatever_it_carries(server, app):
    """DNS rebinding: a page on evil.example whose name now points to 127.0.0.1 sends Host: evil.example."""
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1:1"):
        assert request(server, "GET", "/api/flows", host=host)[0] == 421
        assert request(server, "POST", "/api/flows/accounts/pause", {}, host=host)[0] == 421
    assert request(server, "GET", "/api/flows", host=f"localhost:{server.port}")[0] == 200
    assert not app.state.get_cursor("accounts")


def test_a_replay_is_a_job_whose_progress_any_request_reads(server, app, memory):
    deliver(app, account("a1", 1, name="x" * 50))
    memory["crm"].put("accounts", "a1", {"accountid": "a1", "accountnumber": "N-a1", "name": "Fixed", "statecode": 0})
    assert request(server, "POST", "/api/replay", {"key": "a1"}, content_type="text/plain")[0] == 415
    status, _, body = request(server, "POST", "/api/replay", {"key": "a1"})
    assert status == 202
    job_id = json.loads(body)["job"]["id"]
    deadline = time.monotonic() + 10
    while True:
        job = json.loads(request(server, "GET", f"/api/jobs/{job_id}")[2])
        if job["status"] == "done" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (job["status"], job["matched"], job["replayed"], job["keys"]) == ("done", 1, 1, ["accounts:a1"])
    assert app.bus.counts(app.queue).dead_letter == 0


def test_dualsync_ui_prints_a_url_with_the_token_and_serves_there(tmp_path):
    """The command itself, as a subprocess: it binds 127.0.0.1 on the port asked (0: any free one)."""
    from demo import sample_data

    crm_url, erp_url = sample_data.build(tmp_path / "data", accounts=30, contacts=20)
    flows = sample_data.write_flows(tmp_path)
    env = {**os.environ, "CRM_DB_URL": crm_url, "ERP_DB_URL": erp_url}
    (tmp_path / "state").mkdir()  # as a run leaves it: every command but run refuses a workdir that is not there
    process = subprocess.Popen([sys.executable, "-m", "shared.cli", "ui", "--config", str(flows), "--workdir",
                                str(tmp_path / "state"), "--port", "0"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/#token=(\S+)", line)
        assert found, line
        connection = http.client.HTTPConnection("127.0.0.1", int(found[1]), timeout=10)
        connection.request("GET", "/api/flows", headers={TOKEN_HEADER: found[2]})
        response = connection.getresponse()
        assert response.status == 200
        assert [f["flow"] for f in json.loads(response.read())["flows"]] == ["accounts-to-customers", "contacts-to-erp"]
    finally:
        process.terminate()
        process.wait(timeout=10)
