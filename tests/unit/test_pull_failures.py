"""One flow's failing pull is its own: recorded on the flow with since-when, lease released, counted, shown by
status / the admin endpoint / `dualsync run`, and the other flows are pulled. Real SQLite sources."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import azure.functions as func
import pytest
import sqlalchemy as sa
import yaml
from azure.functions.timer import TimerRequest
from typer.testing import CliRunner

import functions.admin
import functions.pull
from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.cli import app as cli
from shared.config import parse_config
from shared.connectors.sql import SqlConnector
from shared.engine.pull import pull_flow
from shared.engine.schedule import pull_due_flows
from shared.errors import ConfigError
from shared.local_runtime import RunOptions, run_once
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore
from tests.unit.test_function_app import indexed

META = sa.MetaData()
ACCOUNTS = sa.Table("accounts", META, sa.Column("id", sa.String(20), primary_key=True),
                    sa.Column("name", sa.String(100)), sa.Column("modified_at", sa.DateTime))
CUSTOMERS = sa.Table("customers", META, sa.Column("number", sa.String(20), primary_key=True),
                     sa.Column("name", sa.String(100)))


def flows_config(crm_url: str, erp_url: str) -> dict:
    def flow(entity: str) -> dict:
        return {"source": {"system": "crm", "entity": entity, "key": "id"}, "page_size": 2,
                "target": {"system": "erp", "entity": "customers", "key": "number"},
                "fields": [{"from": "id", "to": "number"}, {"from": "name", "to": "name"}]}

    # "broken" comes first: its failure must not keep "accounts" from being pulled.
    return {"systems": {"crm": {"kind": "sql", "url": crm_url}, "erp": {"kind": "sql", "url": erp_url}},
            "flows": {"broken": flow("no_such_table"), "accounts": flow("accounts")}}


@pytest.fixture
def dbs(tmp_path):
    urls = {name: f"sqlite:///{tmp_path / f'{name}.db'}" for name in ("crm", "erp")}
    engines = {name: sa.create_engine(url) for name, url in urls.items()}
    for engine in engines.values():
        META.create_all(engine)
    with engines["crm"].begin() as conn:
        conn.execute(ACCOUNTS.insert(), [{"id": f"A{i}", "name": f"a{i}", "modified_at": datetime(2026, 1, 1, 0, i)}
                                         for i in range(5)])
    yield urls, engines
    for engine in engines.values():
        engine.dispose()


@pytest.fixture
def app(tmp_path, dbs):
    urls, _ = dbs
    now = [datetime(2026, 3, 1, 12, 0, tzinfo=UTC)]
    config = parse_config(flows_config(urls["crm"], urls["erp"]))
    connectors = {name: SqlConnector(url) for name, url in urls.items()}
    sync = SyncApp(config=config, state=StateStore(SqliteTables(":memory:")), bus=SqliteBus(tmp_path / "bus.db"),
                   retry_base=0.01, clock=lambda: now[0], connector_factory=lambda name: connectors[name])
    sync.now = now  # type: ignore[attr-defined] - the tests move the clock
    yield sync
    sync.close()


def test_a_failing_flow_is_recorded_released_and_the_others_are_pulled(app):
    results = {r.flow: r for r in pull_due_flows(app, owner="t")}

    assert (results["accounts"].status, results["accounts"].pulled) == ("ok", 5)
    broken = results["broken"]
    assert broken.status == "failed" and "no_such_table: no such table" in broken.error
    cursor = app.state.get_cursor("broken")
    assert cursor.lease_owner is None and cursor.lease_expires is None
    first = cursor.last_error
    assert first["error"] == broken.error and first["since"] == first["at"] == "2026-03-01T12:00:00+00:00"
    run = app.state.recent_runs("broken", 1)[0]
    assert (run["kind"], run["status"], run["error"]) == ("pull", "failed", broken.error)

    app.now[0] += timedelta(minutes=5)
    pull_flow(app, "broken", owner="t")
    again = app.state.get_cursor("broken").last_error
    assert again["since"] == first["since"] and again["at"] == "2026-03-01T12:05:00+00:00"


def test_the_error_is_cleared_by_the_next_successful_pull(app, dbs):
    pull_flow(app, "broken", owner="t")
    with dbs[1]["crm"].begin() as conn:
        conn.execute(sa.text("CREATE TABLE no_such_table (id TEXT PRIMARY KEY, name TEXT, modified_at TIMESTAMP)"))
    app.connector("crm")._tables.clear()  # as a fresh process would: reflect again
    assert pull_flow(app, "broken", owner="t").status == "ok"
    assert app.state.get_cursor("broken").last_error is None


def test_a_pull_that_fails_part_way_counts_what_it_sent_and_the_run_adds_up(app, dbs):
    def drop_the_table(_: int) -> None:  # the source goes away after the first page was sent
        with dbs[1]["crm"].begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS accounts"))

    result = pull_flow(app, "accounts", owner="t", on_page=drop_the_table)
    assert (result.status, result.pulled, result.pages) == ("failed", 2, 1)
    assert app.state.recent_runs("accounts", 1)[0]["pulled"] == 2
    assert app.state.get_cursor("accounts").position["last_key"] == ["A1"]

    tally = run_once(app, RunOptions(workers=0, drain_bound=0))  # the 2 sent are applied; both pulls fail
    assert sorted(flow for flow, _ in tally.pull_errors) == ["accounts", "broken"]
    assert tally.flows["accounts"].backlog == 2 and tally.flows["accounts"].applied == 2
    assert all(c.adds_up() for c in tally.flows.values())


def test_run_once_counts_a_partial_pull(app, dbs):
    real_read = app.connector("crm").read_changes

    def read_then_fail(source, position, page_size):
        for n, page in enumerate(real_read(source, position, page_size)):
            if n == 2:
                raise sa.exc.OperationalError("SELECT", {}, Exception("disk I/O error"))
            yield page

    app.connector("crm").read_changes = read_then_fail
    tally = run_once(app, RunOptions(workers=0, drain_bound=0))
    counts = tally.flows["accounts"]
    assert (counts.pulled, counts.applied) == (4, 4) and counts.adds_up()
    assert [flow for flow, _ in tally.pull_errors] == ["broken", "accounts"]


def test_the_timer_pulls_every_due_flow_then_fails_the_invocation(app, monkeypatch):
    monkeypatch.setattr(functions.pull, "sync_app", lambda: app)
    with pytest.raises(functions.pull.PullFailures, match="broken: PreflightError: .*no entity 'no_such_table'"):
        indexed()["pull"].get_user_function()(timer=TimerRequest(past_due=False))
    assert app.state.get_cursor("accounts").last_run["pulled"] == 5
    assert app.bus.counts(app.queue).active == 5


def test_the_timer_checks_a_flow_before_its_first_pull_and_again_while_it_fails(app, dbs, monkeypatch):
    monkeypatch.setattr(functions.pull, "sync_app", lambda: app)
    timer = indexed()["pull"].get_user_function()
    data = flows_config(*dbs[0].values())
    data["flows"]["broken"]["source"]["entity"] = "accounts"
    data["flows"]["broken"]["fields"][1]["from"] = "nmae"  # would write NULL names into every customer
    app.config = parse_config(data)
    with pytest.raises(functions.pull.PullFailures, match="broken: PreflightError: .*did you mean 'name'"):
        timer(timer=TimerRequest(past_due=False))
    error = app.state.get_cursor("broken").last_error
    assert "flows.broken.fields[1].from: 'nmae' is not a column of accounts in crm" in error["error"]
    assert app.state.get_cursor("broken").last_run["pulled"] == 0 and app.checked_flows == {"accounts"}

    data["flows"]["broken"]["fields"][1]["from"] = "name"  # fixed and redeployed: the next tick checks again
    app.config = parse_config(data)
    app.now[0] += timedelta(minutes=5)
    timer(timer=TimerRequest(past_due=False))
    assert app.state.get_cursor("broken").last_error is None and app.checked_flows == {"accounts", "broken"}
    assert app.state.get_cursor("broken").last_run["pulled"] == 5


def test_status_and_the_admin_endpoint_show_the_error_and_since_when(app, monkeypatch):
    pull_due_flows(app, owner="t")
    from tests.unit.test_functions_admin import principal

    monkeypatch.setattr(functions.admin, "sync_app", lambda: app)
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    req = func.HttpRequest(method="GET", url="/api/flows", headers={"x-ms-client-principal": principal("Reader")},
                           params={}, route_params={"path": "flows"}, body=b"")
    body = json.loads(indexed()["admin"].get_user_function()(req=req).get_body())
    flows = {f["flow"]: f for f in body["flows"]}
    assert flows["broken"]["last_error"]["since"] == "2026-03-01T12:00:00+00:00"
    assert "no such table" in flows["broken"]["last_error"]["error"]
    assert flows["broken"]["lease_owner"] is None
    assert flows["accounts"]["last_error"] is None


def test_run_once_prints_the_failure_and_exits_non_zero_then_status_shows_it(tmp_path, dbs, monkeypatch):
    urls, engines = dbs
    config = tmp_path / "flows.yaml"
    data = flows_config(urls["crm"], urls["erp"])
    config.write_text(yaml.safe_dump(data))
    common = ["--config", str(config), "--workdir", str(tmp_path / "state")]
    runner = CliRunner()

    refused = runner.invoke(cli, ["run", "--once", "--workers", "0", "--drain-bound", "0", *common])
    assert refused.exit_code == 2  # a missing table is found before anything runs
    assert "flows.broken.source.entity: no entity 'no_such_table' in crm" in " ".join(refused.output.split())

    # A failure no start-up check can see: the source fails while it is read.
    data["flows"]["broken"]["source"] |= {"entity": "accounts", "watermark": "name"}
    config.write_text(yaml.safe_dump(data))
    read_changes = SqlConnector.read_changes

    def failing(self, source, position, page_size):
        if source.watermark == "name":
            raise ConfigError(["accounts: the database refused the read (disk I/O error)"])
        return read_changes(self, source, position, page_size)

    monkeypatch.setattr(SqlConnector, "read_changes", failing)
    ran = runner.invoke(cli, ["run", "--once", "--workers", "0", "--drain-bound", "0", *common])

    assert ran.exit_code == 1, ran.output
    assert "pull failed broken: ConfigError: accounts: the database refused the read" in " ".join(ran.output.split())
    with engines["erp"].connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(CUSTOMERS)).scalar() == 5
    shown = runner.invoke(cli, ["status", *common])
    assert "failing since" in shown.output
    status = json.loads(runner.invoke(cli, ["status", "--json", *common]).output)
    broken = next(f for f in status["flows"] if f["flow"] == "broken")
    assert "the database refused the read" in broken["last_error"]["error"] and broken["last_run"]["status"] == "failed"


def test_a_stalled_flow_reports_the_time_since_its_last_good_pull_and_a_paused_one_reports_paused(app):
    from shared import flow_health
    from shared.engine.cursor_lease import pause_flow

    def gauges() -> tuple[dict[str, float], dict[str, float]]:
        flow_health._forget_snapshot()
        since = {o.attributes["flow"]: o.value for o in flow_health._since_last_pull(None)}
        return since, {o.attributes["flow"]: o.value for o in flow_health._paused(None)}

    flow_health.watch(app)
    try:
        pull_due_flows(app, owner="t")  # 12:00: accounts pulls, broken fails
        app.now[0] += timedelta(hours=2)
        pull_flow(app, "broken", owner="t")  # 14:00: still failing
        assert gauges() == ({"accounts": 7200.0, "broken": 7200.0}, {"accounts": 0, "broken": 0})
        pull_flow(app, "accounts", owner="t")
        assert gauges()[0] == {"accounts": 0.0, "broken": 7200.0}  # only the broken one is stale

        pause_flow(app.state, "broken", "auth failure while pulling: AADSTS7000222: client secret expired")
        app.now[0] += timedelta(minutes=30)
        since, paused = gauges()
        assert since == {"accounts": 1800.0}  # a paused flow is reported as paused, not also as stale
        assert paused == {"accounts": 0, "broken": 1}
    finally:
        flow_health.unwatch(app)
    assert gauges() == ({}, {})


def test_last_good_pull_of_a_cursor_written_before_it_was_recorded():
    from shared import flow_health
    from shared.state.store import Cursor

    ok = Cursor("f", last_run={"status": "ok", "finished_at": "2026-03-01T12:00:00+00:00"})
    failing = Cursor("f", last_run={"status": "failed"}, last_error={"since": "2026-03-01T11:00:00+00:00"})
    assert flow_health.last_successful_pull(ok) == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert flow_health.last_successful_pull(failing) == datetime(2026, 3, 1, 11, tzinfo=UTC)
    assert flow_health.last_successful_pull(Cursor("f")) is None


def test_a_system_refusing_the_check_is_left_to_the_pull_which_pauses_on_auth_failure(app):
    from shared.errors import AuthError

    def refused(name: str) -> SqlConnector:
        raise AuthError("401: the token was refused")

    app.connector_factory = refused
    results = {r.flow: r for r in pull_due_flows(app, owner="t", check=True)}
    assert results["accounts"].status == "auth_failed" and "PreflightError" not in results["accounts"].error
    assert app.state.get_cursor("accounts").paused and app.checked_flows == set()
