"""Pulling from the Dataverse simulator over HTTP: a re-baseline infers only confirmed deletes, a failing
pull is recorded on its flow (an auth failure pauses it), and deletes reach flows keyed by an alternate key."""

from __future__ import annotations

from typing import Any

import pytest

from dvsim.pytest_fixtures import dataverse_sim, dataverse_sim_factory  # noqa: F401
from shared.engine.pull import pull_flow
from shared.state.store import KeyLink
from tests.integration.test_dataverse_connector import (  # noqa: F401 - fixtures
    ACCOUNTS_TO_ERP,
    _token,
    drain,
    erp,
    erp_rows,
    insert_erp,
    kinds,
    make_app,
    seed,
    sim,
)


def paged(flow: dict[str, Any], size: int) -> dict[str, Any]:
    return flow | {"page_size": size}


def test_a_rebaseline_does_not_delete_what_was_created_and_linked_while_it_read(tmp_path, sim, erp):  # noqa: F811
    rows = seed(sim, 6)
    app = make_app(tmp_path, sim, {"accounts-to-erp": paged(ACCOUNTS_TO_ERP, 2)})
    assert pull_flow(app, "accounts-to-erp", owner="t").pulled == 6
    assert kinds(drain(app)) == {"applied": 6}

    sim.delete("accounts", rows[0]["accountid"])
    sim.expire_all_delta_tokens()
    created: list[str] = []

    def meanwhile(_: int) -> None:  # the reverse flow (say) creates a CRM account and links it mid-read
        if not created:
            row = sim.insert("accounts", {"name": "New", "accountnumber": "A-NEW"})
            created.append(row["accountid"])
            insert_erp(erp, "customers", [{"account_number": "A-NEW", "name": "New", "crm_id": row["accountid"]}])
            app.state.link_keys("accounts-to-erp", [KeyLink("crm", row["accountid"], "erp", "A-NEW")])

    again = pull_flow(app, "accounts-to-erp", owner="t", on_page=meanwhile)

    assert again.deletes_inferred == 1
    drain(app)
    customers = erp_rows(erp)
    assert "A-0000" not in customers and "A-NEW" in customers and len(customers) == 6
    app.close()


def test_an_auth_failure_while_pulling_pauses_the_flow_and_releases_it(tmp_path, sim, erp):  # noqa: F811
    seed(sim, 3)
    app = make_app(tmp_path, sim, {"accounts-to-erp": ACCOUNTS_TO_ERP})
    sim.faults.inject(403)
    result = pull_flow(app, "accounts-to-erp", owner="t")
    assert result.status == "auth_failed" and "403" in result.error
    cursor = app.state.get_cursor("accounts-to-erp")
    assert cursor.paused and cursor.paused_reason.startswith("auth failure while pulling")
    assert cursor.lease_owner is None and cursor.last_error["error"] == result.error
    assert pull_flow(app, "accounts-to-erp", owner="t").status == "paused"
    app.close()


def test_a_503_after_the_first_page_counts_the_page_it_sent(tmp_path, sim, erp):  # noqa: F811
    seed(sim, 5)
    app = make_app(tmp_path, sim, {"accounts-to-erp": paged(ACCOUNTS_TO_ERP, 2)})
    result = pull_flow(app, "accounts-to-erp", owner="t", on_page=lambda _: sim.faults.inject(503))
    assert (result.status, result.pulled, result.pages) == ("failed", 2, 1)
    assert "503" in result.error
    assert app.state.recent_runs("accounts-to-erp", 1)[0]["pulled"] == 2
    assert kinds(drain(app)) == {"applied": 2}
    resumed = pull_flow(app, "accounts-to-erp", owner="t")  # from the stored next link
    # 3 new rows, and the 2 rows of the first page again: the full read ends by re-reading what changed since
    # it began (every row here), which the earlier run read at the same version.
    assert (resumed.status, resumed.pulled) == ("ok", 5)
    assert kinds(drain(app)) == {"applied": 3}  # the bus drops the two re-sent by their message ids
    assert app.state.get_cursor("accounts-to-erp").last_error is None
    app.close()


BY_NUMBER = {
    "source": {"system": "crm", "entity": "accounts", "key": "accountnumber", "changes": "change_tracking",
               "select": ["name", "accountnumber"]},
    "target": {"system": "erp", "entity": "customers", "key": "account_number"},
    "deletes": "delete",
    "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"},
               {"from": "accountid", "to": "crm_id"}],
}


@pytest.mark.parametrize("form", ["deletedEntity", "removed"])
def test_deletes_reach_a_flow_keyed_by_an_alternate_key(tmp_path, dataverse_sim_factory, erp, form):  # noqa: F811
    sim = dataverse_sim_factory(deleted_form=form)
    rows = seed(sim, 4)
    app = make_app(tmp_path, sim, {"by-number": BY_NUMBER})
    assert pull_flow(app, "by-number", owner="t").pulled == 4
    assert kinds(drain(app)) == {"applied": 4}

    sim.delete("accounts", rows[1]["accountid"])
    sim.update("accounts", rows[2]["accountid"], {"name": "renamed"})
    short_lived = sim.insert("accounts", {"name": "Brief", "accountnumber": "A-TEMP"})
    sim.delete("accounts", short_lived["accountid"])  # created and deleted between two reads: never seen
    delta = pull_flow(app, "by-number", owner="t")

    assert (delta.status, delta.pulled) == ("ok", 2), getattr(delta, "error", None)
    assert delta.notes == ["1 deletes left out: only their id came, and no record with that id was pulled by "
                           "this flow"]
    assert kinds(drain(app)) == {"applied": 2}
    customers = erp_rows(erp)
    assert sorted(customers) == ["A-0000", "A-0002", "A-0003"] and customers["A-0002"]["name"] == "renamed"
    app.close()


def test_the_shapes_of_a_deleted_row_an_odata_service_may_send():
    from shared.connectors.dataverse import DataverseConnector as Dv

    guid = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
    rows = {
        "dataverse": {"@odata.context": "x/$metadata#accounts/$deletedEntity", "id": guid.lower(), "reason": "deleted"},
        "odata 4.0": {"@odata.id": f"accounts({guid})", "@removed": {"reason": "deleted"}},
        "odata.removed": {"@odata.id": f"https://org.example/api/data/v9.2/accounts({guid})", "@odata.removed": {}},
        "named key": {"@id": f"accounts(accountid={guid})", "@removed": {"reason": "deleted"}},
    }
    for shape, row in rows.items():
        assert Dv._is_deleted(row), shape
        assert Dv._deleted_id(row) == guid.lower(), shape
    changed = {"@odata.id": f"accounts({guid})", "@removed": {"reason": "changed"}}  # still exists elsewhere
    assert Dv._is_deleted(changed) and Dv._deleted_id(changed) is None


def test_records_matched_by_initial_sync_take_their_deletes_too(tmp_path, sim, erp):  # noqa: F811
    from shared.engine.initial_sync import initial_sync

    rows = seed(sim, 3)
    insert_erp(erp, "customers", [{"account_number": r["accountnumber"], "name": r["name"]} for r in rows])
    app = make_app(tmp_path, sim, {"by-number": BY_NUMBER | {"match_on": ["account_number"]}})
    assert initial_sync(app, "by-number", owner="t").matched == 3
    drain(app)

    sim.delete("accounts", rows[0]["accountid"])
    delta = pull_flow(app, "by-number", owner="t")

    assert (delta.pulled, delta.notes) == (1, [])
    assert kinds(drain(app)) == {"applied": 1}
    assert sorted(erp_rows(erp)) == ["A-0001", "A-0002"]
    app.close()
