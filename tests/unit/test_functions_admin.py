"""The admin HTTP functions, invoked with `azure.functions.HttpRequest` as the host does, and the dead-letter
core they share with the CLI (shared/engine/dead_letters.py), on the SQLite bus and on Service Bus (fake SDK)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import azure.functions as func
import pytest

import functions.admin
import shared.admin_api
from shared.app import SyncApp
from shared.config import parse_config
from shared.engine.dead_letters import DeadLetterFilter, list_dead_letters, purge_dead_letters
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore
from tests.unit.conftest import CONFIG, account, change, deliver
from tests.unit.test_function_app import bindings, indexed

# -- invoking the functions -------------------------------------------------------------------------------------


def principal(*roles: str, name: str = "ops@contoso.example") -> str:
    """The X-MS-CLIENT-PRINCIPAL header App Service authentication passes on (base64 JSON of the claims)."""
    claims = [{"typ": "name", "val": name}, *({"typ": "roles", "val": r} for r in roles)]
    payload = {"auth_typ": "aad", "name_typ": "name", "role_typ": "roles", "claims": claims}
    return base64.b64encode(json.dumps(payload).encode()).decode()


# The admin API's routes by what they do (shared/admin_api.py); all but health go through one function.
ROUTES = {"flows": "flows", "pause_flow": "flows/{flow}/pause", "resume_flow": "flows/{flow}/resume",
          "replay": "replay", "dead_letters": "dead-letters", "purge_dead_letters": "dead-letters/purge",
          "conflicts": "conflicts", "resolve_conflict": "conflicts/resolve", "requests": "requests",
          "approve_request": "requests/approve", "reject_request": "requests/reject", "runs": "runs",
          "job": "jobs/{job_id}"}


def call(name: str, method: str = "GET", body: object = None, route: dict | None = None,
         params: dict | None = None, raw: bytes | None = None, who: str | None = None,
         content_type: str = "application/json") -> tuple[int, dict]:
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    headers = {"content-type": content_type,
               "x-ms-client-principal": principal("Operator") if who is None else who}
    function, path = ("health", "health") if name == "health" else ("admin", ROUTES[name].format(**(route or {})))
    req = func.HttpRequest(method=method, url=f"/api/{path}", headers=headers,
                           params=params or {}, route_params={"path": path}, body=data)
    resp = indexed()[function].get_user_function()(req=req)
    assert resp.mimetype == "application/json"
    return resp.status_code, json.loads(resp.get_body())


@pytest.fixture
def wired(tmp_path, memory, monkeypatch):
    """The function app's production bus: Service Bus (over the fake SDK client), behind App Service auth."""
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    sync = make_app(_servicebus_fake(tmp_path), memory)
    monkeypatch.setattr(functions.admin, "sync_app", lambda: sync)
    yield sync
    sync.close()


def make_app(bus, memory) -> SyncApp:
    return SyncApp(config=parse_config(CONFIG), state=StateStore(SqliteTables(":memory:")), bus=bus,
                   retry_base=0.01, connector_factory=lambda name: memory[name])


def seed_dead_letters(app) -> None:
    """Four dead letters: two ValidationFailed (one per flow), one UnknownFlow, one MalformedMessage."""
    deliver(app, account("a1", 1, name="x" * 50), change("c1", 1, flow="contacts", contactid="c1"),
            change("g1", 1, flow="ghost"), raw=[b"{oops"])
    assert app.bus.counts(app.queue).dead_letter == 4


# -- status, pause, resume ---------------------------------------------------------------------------------------


def test_flows_reports_every_flow(wired):
    status, body = call("flows")
    assert status == 200
    assert body["queue"] == wired.queue
    assert [f["flow"] for f in body["flows"]] == ["accounts", "contacts"]
    assert {"paused", "lag_seconds", "dead_letters", "last_run"} <= set(body["flows"][0])


def test_flows_answers_with_unknown_counts_when_service_bus_refuses_manage(wired):
    """An identity with Data Sender and Receiver only cannot read queue counts (the administration API needs
    Manage): the status still answers, with the counts it could not read shown as unknown and why."""
    seed_dead_letters(wired)
    wired.bus._admin.refuse_manage = True  # noqa: SLF001
    status, body = call("flows", who=principal("Reader"))
    assert status == 200
    assert (body["active"], body["scheduled"]) == (None, None)
    assert body["dead_letter"] == 4  # browsed from the dead-letter queue instead, which Receiver may do
    assert "401" in body["counts_unavailable"] and "Azure Service Bus Data Owner" in body["counts_unavailable"]
    assert body["flows"][0]["dead_letters"] == {"ValidationFailed": 1}
    status, body = call("health")
    assert status == 200 and body["status"] == "ok"


def test_status_cli_shows_counts_it_cannot_read_as_unknown(wired, tmp_path, monkeypatch):
    from contextlib import contextmanager

    from typer.testing import CliRunner

    import shared.cli.common
    from shared.cli import app as cli

    @contextmanager
    def session(config, workdir):
        yield wired

    monkeypatch.setattr(shared.cli.common, "session", session)
    wired.bus._admin.refuse_manage = True  # noqa: SLF001
    result = CliRunner().invoke(cli, ["status"], catch_exceptions=False, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "queue dualsync-changes: counts unknown" in text and "Azure Service Bus Data Owner" in text
    result = CliRunner().invoke(cli, ["status", "--json"], catch_exceptions=False)
    assert result.exit_code == 0 and json.loads(result.output)["active"] is None


def test_pause_and_resume_a_flow(wired):
    status, body = call("pause_flow", "POST", {"reason": "ERP maintenance"}, route={"flow": "accounts"})
    assert (status, body) == (200, {"flow": "accounts", "paused": True, "paused_reason": "ERP maintenance"})
    assert wired.state.get_cursor("accounts").paused
    _, listed = call("flows")
    assert listed["flows"][0]["paused"] is True and listed["flows"][0]["paused_reason"] == "ERP maintenance"
    status, body = call("resume_flow", "POST", route={"flow": "accounts"})
    assert (status, body) == (200, {"flow": "accounts", "paused": False, "paused_reason": None, "released": 0})
    assert not wired.state.get_cursor("accounts").paused


def test_pause_without_a_body_gives_a_default_reason(wired):
    status, body = call("pause_flow", "POST", route={"flow": "contacts"})
    assert status == 200 and body["paused_reason"] == "paused by an operator"


@pytest.mark.parametrize("name", ["pause_flow", "resume_flow"])
def test_unknown_flow_is_404_naming_the_known_ones(wired, name):
    status, body = call(name, "POST", route={"flow": "nope"})
    assert status == 404
    assert body == {"error": "unknown flow 'nope'", "flows": ["accounts", "contacts"]}
    assert wired.state.get_cursor("nope") is None


def test_bad_bodies_are_400(wired):
    assert call("pause_flow", "POST", raw=b"{nope", route={"flow": "accounts"})[0] == 400
    assert call("pause_flow", "POST", body=["a"], route={"flow": "accounts"})[0] == 400
    status, body = call("pause_flow", "POST", body={"reason": 5}, route={"flow": "accounts"})
    assert status == 400 and body["error"] == "'reason' must be a string"


# -- replay -----------------------------------------------------------------------------------------------------


def test_replay_dry_run_then_for_real(wired, memory):
    deliver(wired, account("a1", 1, name="x" * 50))
    memory["crm"].put("accounts", "a1", {"accountid": "a1", "accountnumber": "N-a1", "name": "Fixed", "statecode": 0})
    status, body = call("replay", "POST", {"flow": "accounts", "dry_run": True})
    assert status == 200
    assert body == {"dry_run": True, "matched": 1, "replayed": 0, "skipped": {}, "left": 0, "keys": ["accounts:a1"]}
    assert wired.bus.counts(wired.queue).dead_letter == 1
    status, body = call("replay", "POST", {"flow": "accounts", "reason": "ValidationFailed"})
    assert status == 202  # a job: its first slice ran within the request, and it was all there was to do
    job = body["job"]
    assert (job["status"], job["replayed"], job["keys"]) == ("done", 1, ["accounts:a1"])
    counts = wired.bus.counts(wired.queue)
    assert (counts.dead_letter, counts.active) == (0, 1)
    status, body = call("job", route={"job_id": job["id"]}, who=principal("Reader"))
    assert status == 200 and body["status"] == "done" and body["by"] == "ops@contoso.example"
    assert call("job", route={"job_id": "nope"})[0] == 404


def test_a_purge_confirmed_for_one_set_never_deletes_letters_that_arrived_since(wired):
    seed_dead_letters(wired)
    _, plan = call("purge_dead_letters", "POST", {"dry_run": True})
    deliver(wired, account("a9", 1, name="y" * 50))  # a new dead letter after the dry run
    status, body = call("purge_dead_letters", "POST", {"confirm": plan["confirm"]})
    assert status == 409 and "dry run again" in body["error"]
    assert wired.bus.counts(wired.queue).dead_letter == 5


def test_replay_of_everything_must_say_so(wired, memory):
    deliver(wired, account("a1", 1, name="x" * 50))
    status, body = call("replay", "POST", {})
    assert status == 400 and '"all": true' in body["error"]
    assert wired.bus.counts(wired.queue).dead_letter == 1
    assert call("replay", "POST", {"all": True})[0] == 202


# -- who may call -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "method", "route"), [
    ("flows", "GET", None), ("dead_letters", "GET", None), ("pause_flow", "POST", {"flow": "accounts"}),
    ("resume_flow", "POST", {"flow": "accounts"}), ("replay", "POST", None), ("purge_dead_letters", "POST", None),
    ("conflicts", "GET", None), ("resolve_conflict", "POST", None), ("requests", "GET", None),
    ("approve_request", "POST", None), ("reject_request", "POST", None), ("runs", "GET", None),
    ("job", "GET", {"job_id": "x"}),
])
def test_every_route_but_health_needs_app_service_auth_and_a_role(wired, monkeypatch, name, method, route):
    assert call(name, method, route=route, who="")[0] == 401  # auth on, nobody signed in
    assert call(name, method, route=route, who=principal())[0] == 403  # signed in, no role
    assert call(name, method, route=route, who="not base64 json")[0] == 401
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "False")  # a forged principal header without the platform
    status, body = call(name, method, route=route, who=principal("Operator"))
    assert status == 503 and "App Service authentication" in body["error"]
    assert not wired.state.get_cursor("accounts") or not wired.state.get_cursor("accounts").paused


def test_a_reader_reads_and_cannot_change_anything(wired):
    seed_dead_letters(wired)
    reader = principal("Reader")
    assert call("flows", who=reader)[0] == 200 and call("dead_letters", who=reader)[0] == 200
    for name, route, body in (("pause_flow", {"flow": "accounts"}, None), ("replay", None, {"all": True}),
                              ("purge_dead_letters", None, {"dry_run": True}),
                              ("resolve_conflict", None, {"key": "a1", "take": "crm"}),
                              ("approve_request", None, {"key": "a1"})):
        assert call(name, "POST", body, route=route, who=reader)[0] == 403
    assert wired.bus.counts(wired.queue).dead_letter == 4


def test_only_health_takes_a_function_key(wired):
    assert bindings("health")["req"].auth_level == func.AuthLevel.FUNCTION
    assert bindings("admin")["req"].auth_level == func.AuthLevel.ANONYMOUS
    status, body = call("health", who="")
    assert status == 200 and body == {"status": "ok", "flows": {"accounts": "ok", "contacts": "ok"}}


def test_replay_filters_are_validated(wired):
    assert call("replay", "POST", {"flow": "ghost"})[0] == 404
    status, body = call("replay", "POST", {"dry_run": "yes"})
    assert status == 400 and body["error"] == "'dry_run' must be true or false"


# -- dead letters -----------------------------------------------------------------------------------------------


def test_dead_letters_lists_reason_description_flow_key_attempt_and_time(wired):
    seed_dead_letters(wired)
    status, body = call("dead_letters")
    assert status == 200 and body["count"] == 4 and body["truncated"] is False
    by_key = {d["key"]: d for d in body["dead_letters"]}
    a1 = by_key["a1"]
    assert (a1["flow"], a1["reason"], a1["attempt"]) == ("accounts", "ValidationFailed", 1)
    assert "record a1" in a1["description"] and "field name" in a1["description"]
    assert a1["enqueued_at"] and a1["message_id"].startswith("accounts:a1:")
    assert by_key["g1"]["reason"] == "UnknownFlow" and by_key["g1"]["flow"] == "ghost"
    assert by_key[None]["reason"] == "MalformedMessage" and by_key[None]["flow"] is None


def test_dead_letters_filters_and_limit(wired):
    seed_dead_letters(wired)
    _, body = call("dead_letters", params={"reason": "ValidationFailed"})
    assert sorted(d["key"] for d in body["dead_letters"]) == ["a1", "c1"]
    _, body = call("dead_letters", params={"flow": "contacts"})
    assert [d["key"] for d in body["dead_letters"]] == ["c1"]
    _, body = call("dead_letters", params={"key": "a1", "reason": "ValidationFailed", "flow": "accounts"})
    assert [d["key"] for d in body["dead_letters"]] == ["a1"]
    _, body = call("dead_letters", params={"limit": "2"})
    assert body["count"] == 2 and body["truncated"] is True and len(body["dead_letters"]) == 2
    for bad in ("0", "1001", "x"):
        assert call("dead_letters", params={"limit": bad})[0] == 400
    assert call("dead_letters", params={"flow": "ghost"})[0] == 404
    assert wired.bus.counts(wired.queue).dead_letter == 4  # browsing changes nothing


def test_purge_needs_the_code_of_a_dry_run_and_the_error_reveals_nothing(wired):
    seed_dead_letters(wired)
    for body in (None, {}, {"confirm": "yes"}, {"confirm": wired.queue}, {"confirm": True}):
        status, answer = call("purge_dead_letters", "POST", body)
        assert status in (400, 409), body
        assert wired.queue not in answer["error"]
    assert wired.bus.counts(wired.queue).dead_letter == 4


def purge(body: dict) -> tuple[int, dict]:
    status, plan = call("purge_dead_letters", "POST", {**body, "dry_run": True})
    assert status == 200 and plan["dry_run"] is True
    return call("purge_dead_letters", "POST", {**body, "confirm": plan["confirm"]})


def test_purge_with_a_filter_then_everything(wired):
    seed_dead_letters(wired)
    status, plan = call("purge_dead_letters", "POST", {"reason": "ValidationFailed", "dry_run": True})
    assert (status, plan["count"]) == (200, 2) and wired.bus.counts(wired.queue).dead_letter == 4
    status, body = call("purge_dead_letters", "POST", {"confirm": plan["confirm"], "reason": "ValidationFailed"})
    assert (status, body) == (200, {"purged": 2, "left": 2})
    _, listed = call("dead_letters")
    assert sorted(d["reason"] for d in listed["dead_letters"]) == ["MalformedMessage", "UnknownFlow"]
    status, body = purge({})
    assert (status, body) == (200, {"purged": 2, "left": 0})
    assert wired.bus.counts(wired.queue).dead_letter == 0


def test_an_unexpected_error_is_a_500_without_details(wired, monkeypatch):
    def boom(app):
        raise RuntimeError("secret connection string in here")

    monkeypatch.setattr(shared.admin_api, "collect_status", boom)
    status, body = call("flows")
    assert status == 500 and "RuntimeError" in body["error"] and "secret" not in body["error"]


# -- the core, on both buses ------------------------------------------------------------------------------------


def _sqlite_bus(tmp_path):
    from shared.bus.sqlite_bus import SqliteBus

    return SqliteBus(tmp_path / "bus.db", lock_duration=30)


def _servicebus_fake(tmp_path):
    from shared.bus.servicebus import ServiceBusBus
    from tests.fakes.servicebus import fake_service_bus

    client, admin = fake_service_bus()
    admin.create_queue("dualsync-changes", lock_duration=timedelta(seconds=30), max_delivery_count=5)
    return ServiceBusBus(client, admin=admin)


@pytest.fixture(params=["sqlite", "servicebus-fake"])
def any_bus_app(request, tmp_path, memory):
    bus = {"sqlite": _sqlite_bus, "servicebus-fake": _servicebus_fake}[request.param](tmp_path)
    sync = make_app(bus, memory)
    yield sync
    sync.close()


def test_list_pages_through_the_dead_letter_queue(any_bus_app, monkeypatch):
    import shared.engine.dead_letters as dl

    monkeypatch.setattr(dl, "PAGE", 3)  # several browse pages
    deliver(any_bus_app, *[account(f"a{i}", 1, name="x" * 50) for i in range(8)])
    letters = list_dead_letters(any_bus_app)
    assert [d.key for d in letters] == [f"a{i}" for i in range(8)]
    assert [d.key for d in list_dead_letters(any_bus_app, limit=5)] == [f"a{i}" for i in range(5)]
    assert [d.key for d in list_dead_letters(any_bus_app, DeadLetterFilter(key="a6"))] == ["a6"]


def test_purge_in_batches_leaves_what_does_not_match(any_bus_app):
    deliver(any_bus_app, *[account(f"a{i}", 1, name="x" * 50) for i in range(7)],
            change("c1", 1, flow="contacts", contactid="c1"))
    progress = []
    result = purge_dead_letters(any_bus_app, DeadLetterFilter(flow="accounts"), batch=3, max_wait=0.2,
                                on_progress=lambda r: progress.append(r.purged))
    assert (result.purged, result.left) == (7, 1) and progress[-1] == 7 and len(progress) >= 3
    assert [d.key for d in list_dead_letters(any_bus_app)] == ["c1"]
    # What was held back is receivable again at once, not only after its lock expires.
    assert purge_dead_letters(any_bus_app, max_wait=0.2).purged == 1
    assert any_bus_app.bus.counts(any_bus_app.queue).dead_letter == 0


# -- what the console needs -------------------------------------------------------------------------------------


def test_a_post_that_is_not_json_is_refused_so_another_site_cannot_forge_one(wired):
    """A form or a `text/plain` fetch from another site is sent with the signed-in browser's session and without
    asking first (no CORS preflight): only a JSON content type, which needs the preflight this API never allows,
    is accepted."""
    deliver(wired, account("a1", 1, name="x" * 50))
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        status, body = call("replay", "POST", {"all": True}, content_type=content_type)
        assert status == 415 and "application/json" in body["error"]
    assert wired.bus.counts(wired.queue).dead_letter == 1


def test_an_unknown_reason_is_an_error_naming_the_known_ones(wired):
    seed_dead_letters(wired)
    status, body = call("dead_letters", params={"reason": "ValidationFaild"})
    assert status == 400 and body["error"] == "unknown reason 'ValidationFaild'"
    assert "ValidationFailed" in body["reasons"] and "MaxDeliveryCountExceeded" in body["reasons"]
    assert call("replay", "POST", {"reason": "Nope"})[0] == 400


def test_dead_letters_name_record_field_and_rule_apart(wired):
    seed_dead_letters(wired)
    _, body = call("dead_letters", params={"key": "a1"})
    [a1] = body["dead_letters"]
    assert (a1["record"], a1["field"]) == ("a1", "name")
    assert "max_length" in a1["rule"] and not a1["rule"].startswith("flow")


def test_runs_count_what_became_of_each_pulled_change(wired, memory):
    from shared.engine.pull import pull_flow

    memory["crm"].put("accounts", "a1", {"accountid": "a1", "accountnumber": "N-a1", "name": "Ok", "statecode": 0})
    memory["crm"].put("accounts", "a2", {"accountid": "a2", "accountnumber": "N-a2", "name": "x" * 50,
                                         "statecode": 0})
    from shared.engine.delivery import handle_delivery

    run = pull_flow(wired, "accounts", owner="t")
    handle_delivery(wired, wired.bus.receive(wired.queue, max_messages=10, max_wait=1), wired.bus.settler(wired.queue))
    status, body = call("runs", params={"flow": "accounts"}, who=principal("Reader"))
    assert status == 200
    [latest] = [r for r in body["runs"] if r["run_id"] == run.run_id]
    assert (latest["pulled"], latest["applied"], latest["dead_lettered"]) == (2, 1, 1)
    assert latest["started_at"] and latest["finished_at"] and latest["error"] is None
    quiet = pull_flow(wired, "accounts", owner="t")  # found nothing new
    _, body = call("runs", params={"flow": "accounts"})
    assert [r["run_id"] for r in body["runs"]][:2] == [quiet.run_id, run.run_id]
    _, body = call("runs", params={"flow": "accounts", "busy": "true"})
    assert [r["run_id"] for r in body["runs"]] == [run.run_id]
    assert call("runs", params={"flow": "ghost"})[0] == 404


def test_admin_http_shows_every_route():
    """docs/admin.http documents the API: every route has an example request there."""
    from pathlib import Path

    examples = [line.split(" ", 1) for line in (Path(__file__).parents[2] / "docs" / "admin.http").read_text()
                .splitlines() if line.startswith(("GET ", "POST "))]
    paths = [(method, url.removeprefix("{{base}}/").split("?")[0]) for method, url in examples]
    for route in shared.admin_api._ROUTES:
        if route.static in ("console.js", "console.css"):  # the page's own files
            continue
        assert any(method == route.method and route.pattern.match(path) for method, path in paths), route.pattern
