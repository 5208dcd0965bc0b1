"""A staging table with N/U/P/E flags, and children that fetch their missing parent on demand."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from shared.app import SyncApp
from shared.config import parse_config
from shared.engine.delivery import handle_delivery
from shared.engine.pull import pull_flow
from shared.local_runtime import RunOptions, run_once


def test_status_flag_source_marks_sent_rows_p_and_failed_rows_e_with_the_reason(tmp_path):
    staging_url, erp_url = f"sqlite:///{tmp_path / 'shop.db'}", f"sqlite:///{tmp_path / 'erp.db'}"
    with create_engine(staging_url).begin() as conn:
        conn.execute(text("CREATE TABLE web_customers (id TEXT PRIMARY KEY, name TEXT, sync_status TEXT, "
                          "sync_error TEXT)"))
        conn.execute(text("INSERT INTO web_customers VALUES ('w1', 'Ann', 'N', NULL), ('w2', :long, 'U', NULL), "
                          "('w3', 'Bob', 'P', NULL)"), {"long": "x" * 80})
    with create_engine(erp_url).begin() as conn:
        conn.execute(text("CREATE TABLE customers (code TEXT PRIMARY KEY, name TEXT)"))
    config = parse_config({
        "systems": {"shop": {"kind": "sql", "url": staging_url}, "erp": {"kind": "sql", "url": erp_url}},
        "flows": {"web-customers": {
            "source": {"system": "shop", "entity": "web_customers", "key": "id", "changes": "status_flag"},
            "target": {"system": "erp", "entity": "customers", "key": "code"},
            "fields": [{"from": "id", "to": "code"}, {"from": "name", "to": "name", "max_length": 40}]}},
    })
    app = SyncApp.local(config, tmp_path / "state", retry_base=0.01)
    try:
        tally = run_once(app, RunOptions(workers=0, drain_bound=1))
    finally:
        app.close()
    counts = tally.flows["web-customers"]
    assert (counts.pulled, counts.applied, dict(counts.dead_lettered)) == (2, 1, {"ValidationFailed": 1})
    with create_engine(staging_url).connect() as conn:
        rows = {r[0]: (r[1], r[2]) for r in conn.execute(text("SELECT id, sync_status, sync_error FROM web_customers"))}
    assert rows["w1"] == ("P", None) and rows["w3"] == ("P", None)
    assert rows["w2"][0] == "E"
    assert "record w2: field name (from name): is 80 characters, longer than max_length 40" in rows["w2"][1]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_missing_parent_is_fetched_on_demand(tmp_path, workers):
    crm_url, erp_url = f"sqlite:///{tmp_path / 'crm.db'}", f"sqlite:///{tmp_path / 'erp.db'}"
    with create_engine(crm_url).begin() as conn:
        conn.execute(text("CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT, modified TEXT)"))
        conn.execute(text("CREATE TABLE contacts (id TEXT PRIMARY KEY, account TEXT, modified TEXT)"))
        conn.execute(text("INSERT INTO accounts VALUES ('a1', 'Acme', '2026-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO contacts VALUES ('c1', 'a1', '2026-01-01 00:00:00')"))
    with create_engine(erp_url).begin() as conn:
        conn.execute(text("CREATE TABLE customers (code TEXT PRIMARY KEY, name TEXT)"))
        conn.execute(text("CREATE TABLE people (code TEXT PRIMARY KEY, customer TEXT)"))
    config = parse_config({
        "systems": {"crm": {"kind": "sql", "url": crm_url}, "erp": {"kind": "sql", "url": erp_url}},
        "flows": {
            # The contacts flow comes first and the accounts flow is disabled: without fetching, c1 would wait
            # and then dead-letter; with it, its parent is read from the CRM and sent through the accounts flow.
            "contacts": {"source": {"system": "crm", "entity": "contacts", "key": "id", "watermark": "modified"},
                         "target": {"system": "erp", "entity": "people", "key": "code"},
                         "fetch_missing_parents": True, "missing_reference_attempts": 5,
                         "fields": [{"from": "id", "to": "code"},
                                    {"from": "account", "to": "customer", "lookup": "accounts"}]},
            "accounts": {"source": {"system": "crm", "entity": "accounts", "key": "id", "watermark": "modified"},
                         "target": {"system": "erp", "entity": "customers", "key": "code"}, "enabled": False,
                         "fields": [{"from": "id", "to": "code"}, {"from": "name", "to": "name"}]},
        },
    })
    app = SyncApp.local(config, tmp_path / "state", retry_base=0.01)
    try:
        tally = run_once(app, RunOptions(workers=workers, drain_bound=2))
    finally:
        app.close()
    assert tally.flows["contacts"].applied == 1 and not tally.flows["contacts"].dead_lettered
    assert tally.flows["accounts"].applied == 1  # the parent, fetched on demand
    assert all(c.adds_up() for c in tally.flows.values())
    with create_engine(erp_url).connect() as conn:
        assert conn.execute(text("SELECT customer FROM people WHERE code = 'c1'")).scalar() == "a1"
        assert conn.execute(text("SELECT name FROM customers WHERE code = 'a1'")).scalar() == "Acme"


def test_a_dead_letter_of_an_old_version_keeps_the_users_fix_flagged(tmp_path):
    staging_url, erp_url = f"sqlite:///{tmp_path / 'shop.db'}", f"sqlite:///{tmp_path / 'erp.db'}"
    staging = create_engine(staging_url)
    with staging.begin() as conn:
        conn.execute(text("CREATE TABLE web_customers (id TEXT PRIMARY KEY, name TEXT, sync_status TEXT, "
                          "sync_error TEXT)"))
        conn.execute(text("INSERT INTO web_customers VALUES ('w1', 'Ann', 'N', NULL), ('w2', :long, 'U', NULL)"),
                     {"long": "x" * 80})
    with create_engine(erp_url).begin() as conn:
        conn.execute(text("CREATE TABLE customers (code TEXT PRIMARY KEY, name TEXT)"))
    config = parse_config({
        "systems": {"shop": {"kind": "sql", "url": staging_url}, "erp": {"kind": "sql", "url": erp_url}},
        "flows": {"web-customers": {
            "source": {"system": "shop", "entity": "web_customers", "key": "id", "changes": "status_flag"},
            "target": {"system": "erp", "entity": "customers", "key": "code"},
            "fields": [{"from": "id", "to": "code"}, {"from": "name", "to": "name", "max_length": 40}]}},
    })
    app = SyncApp.local(config, tmp_path / "state", retry_base=0.01)
    try:
        assert pull_flow(app, "web-customers").pulled == 2  # both sent and marked P
        with staging.begin() as conn:  # the user fixes w2 before the old version has been applied
            conn.execute(text("UPDATE web_customers SET name = 'Bob', sync_status = 'U' WHERE id = 'w2'"))
        received = app.bus.receive(app.queue, max_messages=10, max_wait=0.5)
        outcomes = handle_delivery(app, received, app.bus.settler(app.queue))
        assert sorted((o.message.key, o.kind.value) for o in outcomes) == [("w1", "applied"), ("w2", "dead_letter")]
        with staging.connect() as conn:
            assert conn.execute(text("SELECT sync_status, sync_error FROM web_customers WHERE id = 'w2'")).one() == (
                "U", None)  # the fix is still flagged: the dead letter of the old version did not overwrite it
        tally = run_once(app, RunOptions(workers=0, drain_bound=1))
    finally:
        app.close()
    assert (tally.flows["web-customers"].pulled, tally.flows["web-customers"].applied) == (1, 1)
    with create_engine(erp_url).connect() as conn:
        assert conn.execute(text("SELECT name FROM customers WHERE code = 'w2'")).scalar() == "Bob"
    with staging.connect() as conn:
        assert conn.execute(text("SELECT sync_status FROM web_customers WHERE id = 'w2'")).scalar() == "P"
