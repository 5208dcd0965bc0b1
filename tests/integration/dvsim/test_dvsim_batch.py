"""$batch: multipart format, continue-on-error, stop-on-error, change set atomicity, Content-ID references."""

from __future__ import annotations

import httpx

from dvsim import DataverseSimulator
from dvsim.batch import ChangeSet, build_batch_body, json_operation, parse_batch_response

BOUNDARY = "batch_4f1c"


def post_batch(client: httpx.Client, items: list, continue_on_error: bool = False) -> httpx.Response:
    headers = {"Content-Type": f'multipart/mixed; boundary="{BOUNDARY}"'}
    if continue_on_error:
        headers["Prefer"] = "odata.continue-on-error"
    return client.post("$batch", content=build_batch_body(items, BOUNDARY), headers=headers)


def parts(resp: httpx.Response):
    return parse_batch_response(resp.content, resp.headers["Content-Type"])


def test_batch_of_100_with_3_invalid_continues_on_error(sim: DataverseSimulator, client: httpx.Client) -> None:
    bad = {10: {"name": "x" * 200}, 50: {"name": "ok", "nope": 1}, 90: {"name": "ok", "statecode": 9}}
    ops = [
        json_operation("POST", "/api/data/v9.2/accounts", bad.get(i, {"name": f"Batch {i}", "accountnumber": f"B-{i}"}))
        for i in range(100)
    ]
    resp = post_batch(client, ops, continue_on_error=True)
    assert resp.status_code == 200
    assert resp.headers["Preference-Applied"] == "odata.continue-on-error"
    assert resp.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    results = parts(resp)
    assert len(results) == 100
    failed = [i for i, p in enumerate(results) if p.status != 204]
    assert failed == [10, 50, 90]
    assert [results[i].json()["error"]["code"] for i in failed] == ["0x80044331", "0x80048d19", "0x8004431a"]
    assert all(p.headers["odata-entityid"].startswith(f"{sim.api}accounts(") for i, p in enumerate(results) if i not in failed)
    assert len(sim.rows("accounts")) == 97
    assert sim.stats.requests == 1
    assert sim.stats.by_kind == {"batch": 1}
    assert sim.stats.batch_operations == {"create": 97, "error": 3}


def test_batch_stops_at_first_failure_without_continue_on_error(sim: DataverseSimulator, client: httpx.Client) -> None:
    ops = [
        json_operation("POST", "accounts", {"name": "one"}),
        json_operation("POST", "accounts", {"name": "x" * 161}),
        json_operation("POST", "accounts", {"name": "three"}),
    ]
    resp = post_batch(client, ops)
    # Dataverse documents the batch itself answering 400 when it stops on a 400 inside.
    assert resp.status_code == 400
    results = parts(resp)
    assert [p.status for p in results] == [204, 400]
    assert [r["name"] for r in sim.rows("accounts")] == ["one"]


def test_changeset_is_atomic(sim: DataverseSimulator, client: httpx.Client) -> None:
    failing = ChangeSet([
        json_operation("POST", "accounts", {"name": "Parent", "accountnumber": "CS-1"}, content_id="1"),
        json_operation("POST", "contacts", {"lastname": "Child", "parentcustomerid_account@odata.bind": "$1"}, content_id="2"),
        json_operation("POST", "contacts", {"lastname": "x" * 51}, content_id="3"),
    ])
    resp = post_batch(client, [failing], continue_on_error=True)
    assert resp.status_code == 200
    results = parts(resp)
    # A failed change set answers with the single failing operation, not a nested multipart.
    assert len(results) == 1
    assert results[0].status == 400 and results[0].content_id == "3" and not results[0].in_changeset
    assert sim.rows("accounts") == [] and sim.rows("contacts") == []


def test_changeset_content_id_references(sim: DataverseSimulator, client: httpx.Client) -> None:
    changeset = ChangeSet([
        json_operation("POST", "accounts", {"name": "Parent"}, content_id="1"),
        json_operation("POST", "contacts", {"lastname": "Child", "parentcustomerid_account@odata.bind": "$1"}, content_id="2"),
        json_operation("PATCH", "$1", {"primarycontactid@odata.bind": "$2"}, content_id="3"),
    ])
    get_after = json_operation("GET", "accounts?$select=name,_primarycontactid_value")
    resp = post_batch(client, [changeset, get_after])
    assert resp.status_code == 200
    results = parts(resp)
    assert [(p.status, p.content_id, p.in_changeset) for p in results] == [
        (204, "1", True), (204, "2", True), (204, "3", True), (200, None, False),
    ]
    account, contact = sim.rows("accounts")[0], sim.rows("contacts")[0]
    assert contact["_parentcustomerid_value"] == account["accountid"]
    assert results[3].json()["value"][0]["_primarycontactid_value"] == contact["contactid"]


def test_raw_batch_in_the_documented_format(sim: DataverseSimulator, client: httpx.Client) -> None:
    # Written by hand after "Execute batch operations using the Web API" (LF line ends, absolute URLs).
    body = (
        "--batch_AAA123\n"
        "Content-Type: multipart/mixed;boundary=changeset_BBB456\n"
        "\n"
        "--changeset_BBB456\n"
        "Content-Type: application/http\n"
        "Content-Transfer-Encoding:binary\n"
        "Content-ID: 1\n"
        "\n"
        f"POST {sim.api}accounts HTTP/1.1\n"
        "Content-Type: application/json;type=entry\n"
        "\n"
        '{"name":"Raw 1"}\n'
        "--changeset_BBB456--\n"
        "\n"
        "--batch_AAA123\n"
        "Content-Type: application/http\n"
        "Content-Transfer-Encoding:binary\n"
        "\n"
        f"GET {sim.api}accounts?$select=name HTTP/1.1\n"
        "Accept: application/json\n"
        "\n"
        "--batch_AAA123--\n"
    )
    resp = client.post("$batch", content=body.encode(), headers={"Content-Type": "multipart/mixed;boundary=batch_AAA123"})
    assert resp.status_code == 200
    text = resp.text
    boundary = resp.headers["Content-Type"].split("boundary=")[1]
    assert text.startswith(f"--{boundary}\r\nContent-Type: multipart/mixed; boundary=changesetresponse_")
    assert "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\nHTTP/1.1 204 No Content\r\n" in text
    assert "OData-EntityId: " in text and "HTTP/1.1 200 OK\r\n" in text
    assert text.endswith(f"--{boundary}--\r\n")
    assert '"name": "Raw 1"' in text


def test_more_than_1000_requests_is_rejected(sim: DataverseSimulator, client: httpx.Client) -> None:
    ops = [json_operation("POST", "accounts", {"name": f"n{i}"}) for i in range(1001)]
    resp = post_batch(client, ops)
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "The batch contains 1001 requests; the maximum is 1000."
    assert sim.rows("accounts") == []


def test_get_is_not_allowed_in_a_changeset(client: httpx.Client) -> None:
    resp = post_batch(client, [ChangeSet([json_operation("GET", "accounts")])], continue_on_error=True)
    assert parts(resp)[0].status == 400
