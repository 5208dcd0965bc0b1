"""Change tracking: Prefer: odata.track-changes, delta links, paged deltas, deletions, token expiry."""

from __future__ import annotations

import re
from typing import Any

import httpx

from dvsim import DataverseSimulator

TRACK = {"Prefer": "odata.track-changes,odata.maxpagesize=2"}
# "919042!08/22/2017 08:10:44", URL-encoded the way Dataverse writes it.
DELTA_TOKEN_IN_LINK = re.compile(r"\$deltatoken=\d+%21\d\d%2f\d\d%2f\d{4}%20\d\d%3a\d\d%3a\d\d$")


def read_all(client: httpx.Client, first: httpx.Response) -> tuple[list[dict[str, Any]], list[dict], str]:
    """Follow nextLinks to the end: (rows, page bodies, deltaLink). Asserts link placement on every page."""
    pages = [first.json()]
    while "@odata.nextLink" in pages[-1]:
        assert "@odata.deltaLink" not in pages[-1]  # only the last page carries the delta link
        resp = client.get(pages[-1]["@odata.nextLink"], headers={"Prefer": "odata.maxpagesize=2"})
        assert resp.status_code == 200, resp.text
        pages.append(resp.json())
    rows = [row for page in pages for row in page["value"]]
    return rows, pages, pages[-1]["@odata.deltaLink"]


def initial_sync(client: httpx.Client) -> tuple[list[dict[str, Any]], str]:
    resp = client.get("accounts", params={"$select": "name,accountnumber"}, headers=TRACK)
    assert resp.status_code == 200, resp.text
    rows, _, delta_link = read_all(client, resp)
    return rows, delta_link


def test_initial_sync_is_paged_and_ends_with_a_delta_link(sim: DataverseSimulator, client: httpx.Client) -> None:
    created = [sim.insert("accounts", {"name": f"A{i}", "accountnumber": f"N{i}"}) for i in range(5)]
    resp = client.get("accounts", params={"$select": "name,accountnumber"}, headers=TRACK)
    assert resp.headers["Preference-Applied"] == "odata.track-changes,odata.maxpagesize=2"
    body = resp.json()
    assert body["@odata.context"] == f"{sim.api}$metadata#accounts(name,accountnumber)"
    rows, pages, delta_link = read_all(client, resp)
    assert [len(p["value"]) for p in pages] == [2, 2, 1]
    assert [r["accountid"] for r in rows] == [c["accountid"] for c in created]
    assert rows[0] == {
        "@odata.etag": f'W/"{created[0]["versionnumber"]}"',
        "name": "A0",
        "accountnumber": "N0",
        "accountid": created[0]["accountid"],
    }
    assert delta_link.startswith(f"{sim.api}accounts?$select=name,accountnumber&$deltatoken=")
    assert DELTA_TOKEN_IN_LINK.search(delta_link), delta_link


def test_delta_pages_updates_then_deletions(sim: DataverseSimulator, client: httpx.Client) -> None:
    a = [sim.insert("accounts", {"name": f"A{i}", "accountnumber": f"N{i}"}) for i in range(4)]
    _, delta_link = initial_sync(client)

    sim.update("accounts", a[1]["accountid"], {"name": "A1 renamed"})
    new = sim.insert("accounts", {"name": "New", "accountnumber": "N9"})
    sim.update("accounts", a[0]["accountid"], {"telephone1": "555"})  # not selected, still a change
    sim.delete("accounts", a[2]["accountid"])
    ephemeral = sim.insert("accounts", {"name": "Gone", "accountnumber": "N8"})
    sim.delete("accounts", ephemeral["accountid"])  # created and deleted since the token: reported deleted

    first = client.get(delta_link, headers={"Prefer": "odata.maxpagesize=2"})
    assert first.status_code == 200
    assert first.json()["@odata.context"] == f"{sim.api}$metadata#accounts(name,accountnumber)/$delta"
    rows, pages, next_delta = read_all(client, first)
    # 3 upserts then 2 deletions, 2 per page: the boundary falls between an update and a deletion.
    assert [len(p["value"]) for p in pages] == [2, 2, 1]
    assert [r.get("name") for r in rows[:3]] == ["A1 renamed", "New", "A0"]
    assert rows[2]["accountid"] == a[0]["accountid"]
    assert rows[3:] == [
        {"@odata.context": f"{sim.api}$metadata#accounts/$deletedEntity", "id": a[2]["accountid"], "reason": "deleted"},
        {"@odata.context": f"{sim.api}$metadata#accounts/$deletedEntity", "id": ephemeral["accountid"], "reason": "deleted"},
    ]
    assert new["accountid"] == rows[1]["accountid"]

    # Nothing changed since: an empty delta, with a fresh delta link.
    again = client.get(next_delta)
    assert again.status_code == 200
    assert again.json()["value"] == []
    assert DELTA_TOKEN_IN_LINK.search(again.json()["@odata.deltaLink"])
    assert sim.stats.by_kind["delta"] == 2 and sim.stats.by_kind["delta_next_page"] == 2


def test_a_write_during_initial_paging_is_in_neither_the_snapshot_nor_the_next_delta(
        sim: DataverseSimulator, client: httpx.Client) -> None:
    """Pessimistic, as nothing documented promises better: the delta token is stamped when the last page is
    served, so a change made while the client pages through the initial read is not in the next delta."""
    a = [sim.insert("accounts", {"name": f"A{i}"}) for i in range(4)]
    first = client.get("accounts", params={"$select": "name"}, headers=TRACK)
    seen = [r["accountid"] for r in first.json()["value"]]
    sim.update("accounts", a[3]["accountid"], {"name": "late change"})  # not yet read by the initial sync
    rows, _, delta_link = read_all(client, first)
    seen = [r["accountid"] for r in rows]
    delta_rows = client.get(delta_link).json()["value"]
    assert a[3]["accountid"] not in seen
    assert delta_rows == []
    # A change after the last page is in the next delta, as documented.
    sim.update("accounts", a[0]["accountid"], {"name": "after"})
    assert [r["name"] for r in client.get(delta_link).json()["value"]] == ["after"]


def test_expire_all_delta_tokens(sim: DataverseSimulator, client: httpx.Client) -> None:
    sim.insert("accounts", {"name": "A"})
    _, delta_link = initial_sync(client)
    sim.expire_all_delta_tokens()
    resp = client.get(delta_link)
    assert resp.status_code == 400
    assert resp.json()["error"] == {
        "code": "0x80044352",
        "message": "Version stamp associated with the client has expired. Please perform a full sync.",
    }
    # A full sync issues a token that works.
    rows, fresh_link = initial_sync(client)
    assert len(rows) == 1
    assert client.get(fresh_link).status_code == 200


def test_delta_tokens_expire_after_a_time_to_live(dataverse_sim_factory) -> None:
    sim = dataverse_sim_factory(expire_tokens_after_s=3600)
    with httpx.Client(base_url=sim.api, headers={"Authorization": "Bearer t"}) as client:
        old = client.get("accounts", params={"$select": "name", "$deltatoken": "1000!01/01/2020 00:00:00"})
        assert old.status_code == 400 and old.json()["error"]["code"] == "0x80044352"
        _, fresh_link = initial_sync(client)
        assert client.get(fresh_link).status_code == 200


def test_track_changes_rejects_filter_and_bad_tokens(sim: DataverseSimulator, client: httpx.Client) -> None:
    resp = client.get("accounts", params={"$select": "name", "$filter": "name eq 'x'"}, headers=TRACK)
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == 'The "$filter" query parameter isn\'t supported when Change Tracking is enabled.'
    resp = client.get("accounts", params={"$deltatoken": "garbage"})
    assert resp.status_code == 400
