"""Upgrades with messages in flight: this release reads the previous release's messages and cursors (fixtures
captured from that release, tests/fixtures/release_formats), and leaves a newer release's alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from shared.engine.delivery import handle_delivery
from shared.engine.outcome import Kind
from shared.engine.pull import pull_flow
from shared.messages import MESSAGE_FORMAT, ChangeMessage, Envelope, NewerFormat, parse_body, to_envelope
from shared.state.store import CURSOR_FORMAT, CURSORS
from tests.integration.test_dataverse_connector import drain, kinds

FIXTURES = Path(__file__).parents[1] / "fixtures" / "release_formats"
PREVIOUS_MESSAGES = json.loads((FIXTURES / "messages.json").read_text())
PREVIOUS_CURSORS = json.loads((FIXTURES / "cursors.json").read_text())


def _envelope(raw: dict) -> Envelope:
    return Envelope(message_id=raw["message_id"], body=raw["body"].encode(), subject=json.loads(raw["body"])["flow"],
                    application_properties=raw["application_properties"])


@pytest.mark.parametrize("raw", PREVIOUS_MESSAGES, ids=lambda raw: raw["message_id"])
def test_every_previous_message_reads_with_its_fields_and_message_id(raw):
    body = json.loads(raw["body"])
    assert "v" not in body  # the previous format had none
    message = parse_body(raw["body"].encode())
    assert message.v == MESSAGE_FORMAT
    for name in ("flow", "op", "key", "version", "attempt", "force", "approved", "inferred", "fingerprint"):
        assert getattr(message, name) == body[name]
    assert message.payload == body["payload"]
    assert message.message_id() == raw["message_id"]  # a re-send is still dropped by duplicate detection
    assert parse_body(to_envelope(message).body) == message  # and this release's own body round-trips


def test_previous_messages_in_flight_are_applied_not_dead_lettered(sample):
    app, _, _ = sample(accounts=5, contacts=3, bad=False)
    pulled = [raw for raw in PREVIOUS_MESSAGES if raw["message_id"].startswith("accounts-to-customers:acc-000000")
              and json.loads(raw["body"])["correlation_id"] != "run-1"]
    assert len(pulled) == 3
    app.bus.send(app.queue, [_envelope(raw) for raw in pulled])
    assert kinds(drain(app, timeout=5)) == {"applied": 3}
    assert app.bus.peek_dead_letters(app.queue) == []


def test_a_message_of_a_newer_release_waits_on_the_bus_for_that_release(sample):
    app, _, _ = sample(accounts=5, contacts=0, bad=False)
    newer = json.loads(PREVIOUS_MESSAGES[0]["body"]) | {"v": MESSAGE_FORMAT + 1, "a_field_from_the_future": 1}
    with pytest.raises(NewerFormat):
        parse_body(json.dumps(newer))
    sent = Envelope(message_id="m-newer", body=json.dumps(newer).encode(), subject=newer["flow"],
                    application_properties={"flow": newer["flow"]})
    app.bus.send(app.queue, [sent])
    (outcome,) = handle_delivery(app, app.bus.receive(app.queue, max_wait=0.1), app.bus.settler(app.queue))
    assert outcome.kind is Kind.DEFERRED and outcome.reason == "newer_format"
    assert app.bus.peek_dead_letters(app.queue) == []
    assert app.bus.counts(app.queue).scheduled == 1  # the same body, for later, under a new message id
    (waiting,) = app.bus.peek(app.queue)
    assert waiting.envelope.body == sent.body and waiting.envelope.message_id.startswith("m-newer:p")


@pytest.mark.parametrize("bad", [{"v": "2"}, {"v": 0}, {"v": True}])
def test_a_nonsense_format_is_malformed(bad):
    body = json.loads(PREVIOUS_MESSAGES[0]["body"]) | bad
    with pytest.raises(ValueError) as raised:
        parse_body(json.dumps(body))
    assert not isinstance(raised.value, NewerFormat)


def test_this_release_writes_the_format_it_reads():
    body = json.loads(to_envelope(parse_body(PREVIOUS_MESSAGES[3]["body"])).body)
    assert body["v"] == MESSAGE_FORMAT and body["force"] is True
    assert ChangeMessage.model_json_schema()["properties"]["v"]["default"] == MESSAGE_FORMAT


def _store_previous_cursors(app) -> None:
    for flow, data in PREVIOUS_CURSORS.items():
        app.state.tables.insert(CURSORS, flow, "cursor", data)


def test_previous_cursors_read_with_their_positions_and_flags(sample):
    app, _, _ = sample(accounts=5, contacts=3, bad=False)
    _store_previous_cursors(app)
    for flow, data in PREVIOUS_CURSORS.items():
        cursor = app.state.get_cursor(flow)
        assert cursor.position == data["position"] and cursor.format == CURSOR_FORMAT
        assert (cursor.paused, cursor.paused_reason, cursor.last_error) == (
            data["paused"], data["paused_reason"], data["last_error"])
        assert cursor.last_run == data["last_run"]


def test_a_pull_resumes_from_a_previous_cursor_and_stores_the_current_format(sample):
    app, crm_url, _ = sample(accounts=5, contacts=3, bad=False)
    _store_previous_cursors(app)
    engine = create_engine(crm_url)
    with engine.begin() as conn:  # one row changed since, one stamped long before the cursor (a full read has it)
        for key, stamp in (("acc-new", "2026-02-01 00:00:00.000000"), ("acc-old", "2025-06-01 00:00:00.000000")):
            conn.execute(text("INSERT INTO accounts (accountid, accountnumber, name, statecode, modifiedon) "
                              "VALUES (:k, :k, 'New', 0, :m)"), {"k": key, "m": stamp})
    engine.dispose()
    result = pull_flow(app, "accounts-to-customers", owner="test")
    assert result.status == "ok"
    sent = {json.loads(m.envelope.body)["key"] for m in app.bus.peek(app.queue)}
    # Read on from the previous position: the new row, not the old one (and, within the SQL connector's
    # look-back, the rows sharing the position's stamp again, which the version check drops).
    assert "acc-new" in sent and "acc-old" not in sent
    stored = app.state.tables.get(CURSORS, "accounts-to-customers", "cursor").data
    assert stored["format"] == CURSOR_FORMAT and stored["position"]["last_key"] == ["acc-new"]


def test_a_cursor_of_a_newer_release_is_not_pulled_and_kept_as_written(sample):
    app, _, _ = sample(accounts=5, contacts=0, bad=False)
    future = PREVIOUS_CURSORS["accounts-to-customers"] | {
        "format": CURSOR_FORMAT + 1, "position": {"shape": "from the future", "watermark": None}}
    app.state.tables.insert(CURSORS, "accounts-to-customers", "cursor", future)
    result = pull_flow(app, "accounts-to-customers", owner="test")
    assert (result.status, result.pulled) == ("newer_format", 0)
    stored = app.state.tables.get(CURSORS, "accounts-to-customers", "cursor").data
    assert stored["format"] == CURSOR_FORMAT + 1 and stored["position"] == future["position"]
    assert stored["lease_owner"] is None
